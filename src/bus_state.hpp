#pragma once
// What a Bus handle shares: the connection, the lock that serialises its use, and the bookkeeping of the
// Manager signals sdfutures waits for. Private to the library.

#include <poll.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include <sdbus-c++/sdbus-c++.h>

#include "sdfutures/bus.hpp"
#include "sdfutures/completion.hpp"

namespace sdfutures::detail {

inline constexpr const char* kSystemdService = "org.freedesktop.systemd1";
inline constexpr const char* kManagerPath = "/org/freedesktop/systemd1";
inline constexpr const char* kManagerInterface = "org.freedesktop.systemd1.Manager";
inline constexpr const char* kUnitInterface = "org.freedesktop.systemd1.Unit";
inline constexpr const char* kPropertiesInterface = "org.freedesktop.DBus.Properties";

struct BusState;

// What a Bus handle shares, for the library's own classes: users see only Bus's public surface.
struct BusAccess {
    static BusState& state(const Bus& bus) noexcept { return *bus.state_; }
};
inline BusState& state_of(const Bus& bus) noexcept { return BusAccess::state(bus); }

using Deadline = std::optional<std::chrono::steady_clock::time_point>;  // deadline_after(): completion.hpp

struct BusState {
    std::string description;
    std::mutex mutex;
    std::unique_ptr<sdbus::IConnection> connection;
    std::unique_ptr<sdbus::IProxy> manager;
    pid_t owner_pid = 0;
    // Bus::remote: the host as given. Such a connection runs through ssh, which carries no file descriptors.
    std::optional<std::string> remote_host;
    // Jobs and units someone waits for; JobRemoved/UnitRemoved of anything else is dropped, so memory stays
    // bounded however busy the manager is.
    std::map<std::string, std::optional<std::string>> awaited_jobs;  // job path → result
    std::map<std::string, bool> awaited_removals;                     // unit name → removed

    // Dispatches bus messages until done() holds (true) or the deadline passes (false). Caller holds mutex.
    bool dispatch_until(const std::function<bool()>& done, Deadline deadline);
    // One poll(2) over the connection and the caller's own descriptors (their revents are filled in), so a
    // loop that feeds and drains pipes dispatches systemd's signals in the same thread. Sleeps until the bus
    // needs processing, one of `fds` is ready, or the deadline (or a timeout sd-bus asks for) passes; false
    // only when the deadline has passed. The caller holds mutex and has just drained the connection
    // (processPendingRequest() returned false): messages already queued would not wake poll(2).
    bool poll_with(std::span<pollfd> fds, Deadline deadline);
    // Throws StateError when used in a forked child: an sd-bus connection belongs to the process that made it.
    void check_owner() const;
    // Throws Unsupported naming `what` (and `instead`, the way out, when given) on a remote bus: what needs file
    // descriptors or this host's processes to reach the manager cannot be done over ssh.
    void refuse_remote(const std::string& what, const std::string& instead = {}) const;
};

// Registers interest in a unit's UnitRemoved signal for its lifetime, so that a removal between asking
// whether the unit is loaded and waiting for it to go is still seen. Caller holds the bus mutex throughout.
class RemovalWatch {
public:
    RemovalWatch(BusState& state, const std::string& unit);
    ~RemovalWatch();
    RemovalWatch(const RemovalWatch&) = delete;
    RemovalWatch& operator=(const RemovalWatch&) = delete;
    bool removed() const { return it_->second; }
    // Dispatches until UnitRemoved arrived or the deadline passed.
    bool wait(Deadline deadline) { return state_.dispatch_until([this] { return removed(); }, deadline); }

private:
    BusState& state_;
    std::map<std::string, bool>::iterator it_;
    bool owned_;
};

// A descriptor as a D-Bus value (type "h"), for the *FileDescriptor properties of a transient unit. Every copy is
// close-on-exec: sdbus::UnixFd(int) would dup() without O_CLOEXEC, so a concurrent fork+exec elsewhere in the
// program could inherit it; this adopts a CLOEXEC duplicate, and sd-bus's own copy uses F_DUPFD_CLOEXEC. Throws
// sdfutures::Error naming `what` when a copy cannot be made (the descriptor limit, say).
sdbus::Variant fd_variant(int fd, const std::string& what);

// Runs a D-Bus call, translating sdbus::Error into SystemdError naming the call.
template <class F>
auto translate_errors(const std::string& call, F&& f) -> decltype(f());

[[noreturn]] void throw_systemd_error(const std::string& call, const sdbus::Error& e);

template <class F>
auto translate_errors(const std::string& call, F&& f) -> decltype(f()) {
    try {
        return f();
    } catch (const sdbus::Error& e) {
        throw_systemd_error(call, e);
    }
}

}  // namespace sdfutures::detail
