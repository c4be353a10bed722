#pragma once
// Where systemd is reached. A Bus is a cheap, copyable handle to one D-Bus connection; copies share it.
// Calls through one Bus are serialised by a mutex, so a Bus may be shared between threads; objects that
// want to work in parallel use their own Bus (the default for every sdfutures class).

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace sdbus {
class IConnection;
}

namespace sdfutures {

namespace detail {
struct BusState;
struct BusAccess;  // the library's way to the shared state (src/bus_state.hpp)
}

// How Bus::remote reaches the other host, beyond its name.
struct RemoteOptions {
    // The bus to reach there: empty for its system bus (what `systemd-run -H` talks to); else a D-Bus address on
    // that host, handed to systemd-stdio-bridge as --bus-path=, e.g. "unix:path=/run/user/1000/bus" for a user's
    // manager (log in as that user: "user@host").
    std::string bus_address;
    // The private key to log in with: a path, meant as it is (given as -o IdentityFile="...", with '%' as
    // ssh's "%%", so that neither spaces nor ssh's %-tokens change it; a '"' in it is refused).
    std::string identity_file;
    // ssh -o ConnectTimeout=: how long ssh waits for the TCP connection. Unset: ssh's own default (the kernel's).
    std::optional<std::chrono::seconds> connect_timeout;
    // More arguments for ssh, given before the host, verbatim: {"-o", "StrictHostKeyChecking=yes", "-F", "cfg"}
    // (ssh's own %-tokens and ~ in them are ssh's to expand).
    std::vector<std::string> ssh_arguments;
    // The ssh client (looked up in $PATH when it has no '/') and the bridge program run on the other host.
    std::string ssh_program = "ssh";
    std::string bridge_program = "systemd-stdio-bridge";
};

class Bus {
public:
    // The system manager (what `systemctl` talks to).
    static Bus system();
    // The calling user's manager (what `systemctl --user` talks to): $DBUS_SESSION_BUS_ADDRESS or
    // $XDG_RUNTIME_DIR/bus.
    static Bus user();
    // A bus at a D-Bus address, e.g. "unix:path=/run/user/1000/bus".
    static Bus address(const std::string& address);
    // A manager on another host, reached as `systemd-run -H` does: sd-bus runs
    //     ssh -xT -o BatchMode=yes [-p PORT] [-o IdentityFile=KEY] [-o ConnectTimeout=N] [ARGUMENTS] -- HOST systemd-stdio-bridge [--bus-path=ADDRESS]
    // with its standard input and output as the connection (a unixexec: address; the words for the other host's
    // login shell, the bridge and --bus-path=, are single-quoted for it where they need to be). `host` is "[user@]name[:port]",
    // an IPv6 address in brackets ("[::1]:2222", "root@[fe80::1]"). ssh must be able to log in without asking
    // (BatchMode=yes: a key or an agent, a known host key); the user it logs in as must be allowed to talk to
    // that manager. File descriptors cannot cross ssh: what would pass one (Command's capture, fed input or
    // inherited streams) is refused with Unsupported, and Pools and TransientUnitProcess, whose workers are
    // this host's processes, cannot use a remote bus. Throws BusError naming the host when `host` is malformed,
    // ssh is missing, or nothing answers: its address() is `host`, and what() has ssh's own message.
    static Bus remote(const std::string& host, const RemoteOptions& options = {});
    // $SDFUTURES_BUS when set ("system", "user" or a D-Bus address); else the system bus for root and the
    // user bus for everyone else.
    static Bus automatic();

    // "system", "user", the address given, or "HOST over ssh" (with ", bus ADDRESS" when one was given): for messages.
    const std::string& description() const noexcept;
    // The underlying sdbus-c++ connection, for calls this library does not wrap. Hold lock() while using it.
    sdbus::IConnection& connection() const;
    [[nodiscard]] std::unique_lock<std::mutex> lock() const;

private:
    friend struct detail::BusAccess;
    explicit Bus(std::shared_ptr<detail::BusState> state) : state_(std::move(state)) {}
    std::shared_ptr<detail::BusState> state_;
};

}  // namespace sdfutures
