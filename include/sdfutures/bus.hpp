#pragma once
// Where systemd is reached. A Bus is a cheap, copyable handle to one D-Bus connection; copies share it.
// Calls through one Bus are serialised by a mutex, so a Bus may be shared between threads; objects that
// want to work in parallel use their own Bus (the default for every sdfutures class).

#include <memory>
#include <mutex>
#include <string>

namespace sdbus {
class IConnection;
}

namespace sdfutures {

namespace detail {
struct BusState;
struct BusAccess;  // the library's way to the shared state (src/bus_state.hpp)
}

class Bus {
public:
    // The system manager (what `systemctl` talks to).
    static Bus system();
    // The calling user's manager (what `systemctl --user` talks to): $DBUS_SESSION_BUS_ADDRESS or
    // $XDG_RUNTIME_DIR/bus.
    static Bus user();
    // A bus at a D-Bus address, e.g. "unix:path=/run/user/1000/bus".
    static Bus address(const std::string& address);
    // $SDFUTURES_BUS when set ("system", "user" or a D-Bus address); else the system bus for root and the
    // user bus for everyone else.
    static Bus automatic();

    // "system", "user" or the address given: for messages.
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
