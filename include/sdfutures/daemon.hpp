#pragma once
// The service side: what a program that systemd runs as a service tells its manager and learns from it, on
// libsystemd's sd-daemon (what Python's pystemd.daemon offers). Start-up, reload and shutdown notifications and
// status text (sd_notify(3)), the watchdog (WatchdogSec=), the sockets the manager passed (socket activation),
// and whether the machine runs systemd.
//
// Nothing here talks D-Bus, and nothing fails because the program was not started by a manager: notify()
// returns false, watchdog_enabled() and listen_fds() find nothing, a Watchdog does nothing. A manager's own
// units get these from their unit's properties: Type=notify (the unit stays "activating" until READY=1),
// NotifyAccess=main (only the main process may notify), WatchdogSec=, and sockets from a .socket unit.
//
// Spelled sdfutures::daemon::notify(...), or daemon::notify(...) after `using namespace sdfutures;`. A global
// `namespace daemon = ...` alias cannot be declared next to <unistd.h>'s daemon(3); one in a namespace of your own can.

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sdfutures::daemon {

// One notification: assignments that travel to the manager in one datagram, so that it sees them together
// (READY=1 with the STATUS= text saying what the service is ready for). Each member adds one assignment.
class Notification {
public:
    // READY=1: start-up is finished; a Type=notify unit goes from "activating" to "active".
    Notification& ready();
    // RELOADING=1: the service reloads its configuration; send ready() when done.
    Notification& reloading();
    // STOPPING=1: the service is shutting down.
    Notification& stopping();
    // STATUS=: free text, shown by `systemctl status` and in the unit's StatusText property. One line: throws
    // sdfutures::Error for a text with a newline or a NUL, which would end the assignment.
    Notification& status(std::string_view text);
    // WATCHDOG=1: the service is alive; the manager restarts its WatchdogSec= count-down.
    Notification& watchdog_ping();
    // WATCHDOG_USEC=: a new watchdog interval for the unit from now on (0 turns the watchdog off).
    Notification& watchdog_interval(std::chrono::microseconds interval);
    // EXTEND_TIMEOUT_USEC=: the current start, reload or stop may take `extension` more from now on, whatever
    // TimeoutStartSec= (or TimeoutStopSec=) said; send it again before it runs out to extend further.
    Notification& extend_timeout(std::chrono::microseconds extension);
    // MAINPID=: the service's main process is `pid` (a daemon that forked its real server).
    Notification& main_pid(pid_t pid);

    // The assignments, one a line ("READY=1\nSTATUS=serving\n"), as sd_notify(3) takes them.
    const std::string& text() const noexcept { return text_; }
    bool empty() const noexcept { return text_.empty(); }

private:
    Notification& add(std::string_view name, std::string_view value);
    std::string text_;
};

// Sends `notification` to the manager that started this process (the socket in $NOTIFY_SOCKET). true when it
// was sent; false when this process has no manager to tell ($NOTIFY_SOCKET is not set). Sent is not accepted: a
// manager drops what NotifyAccess= does not allow (only the main process, with NotifyAccess=main). Throws
// SystemError with the errno when the socket cannot be reached.
bool notify(const Notification& notification);
// The common notifications, each on its own: READY=1 (with STATUS= when `status` is not empty), STATUS=, and
// WATCHDOG=1. The same results and errors as notify().
bool notify_ready(std::string_view status = {});
bool notify_status(std::string_view text);
bool notify_watchdog();
// Waits until the manager has read every notification this process sent before (sd_notify_barrier(3)), e.g.
// before telling someone else that a STATUS= is there to be seen. false when there is no manager; throws
// SystemError (ETIMEDOUT when the manager did not answer within `timeout`).
bool notify_barrier(std::chrono::microseconds timeout = std::chrono::seconds(5));

// The watchdog interval the manager expects pings within (WatchdogSec= of the unit, from $WATCHDOG_USEC), when
// it watches this process; nothing otherwise (no WatchdogSec=, not started by a manager, or the variables are
// meant for another process: $WATCHDOG_PID). Throws SystemError (EINVAL) when the variables are malformed.
std::optional<std::chrono::microseconds> watchdog_enabled();

// Pings the manager's watchdog every half interval, from a thread of its own, until destroyed; and can be told
// that progress stalled, so that the manager acts as WatchdogSec= says (WatchdogSignal=, SIGABRT by default, and
// the unit's Result= "watchdog"). A ping that cannot be sent is tried again at the next one. Not copyable or
// movable: the thread refers to it.
//
// Meant for the process the manager watches; a child forked from it has no thread and no watchdog (the
// manager's $WATCHDOG_PID is the parent's), and its copy of the object does nothing, not even at destruction.
class Watchdog {
public:
    // Pings at half of watchdog_enabled(), at once first. Without a watchdog it does nothing (active() is
    // false), so the same program runs under a unit with or without WatchdogSec=. Throws what
    // watchdog_enabled() throws.
    Watchdog();
    // Pings at half of `interval`, whatever the environment says, e.g. after watchdog_interval() changed it.
    // Throws sdfutures::Error for an interval that is not positive.
    explicit Watchdog(std::chrono::microseconds interval);
    ~Watchdog();
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;
    Watchdog(Watchdog&&) = delete;
    Watchdog& operator=(Watchdog&&) = delete;

    // Progress stalled: no ping is sent after stall() returns, so the manager's count-down runs out.
    void stall();
    // Progress again: pings at once, from the calling thread (so the manager has the ping, or it could not be
    // sent, when resume() returns: SystemError then), and regularly after. Nothing happens when not stalled.
    void resume();
    bool stalled() const;
    // Whether there is a watchdog to ping: false for Watchdog() in a process the manager does not watch.
    bool active() const noexcept;
    // The interval the manager expects pings within (pings go at half of it); nothing when not active.
    std::optional<std::chrono::microseconds> interval() const noexcept;

private:
    struct Pinger;
    std::unique_ptr<Pinger> pinger_;
};

// A descriptor the manager passed to this process (socket activation, or the service's file descriptor store),
// with the name it was given: FileDescriptorName= of its socket unit, FDNAME= of the store, "unknown" when none
// was given. The process owns it.
struct ListenFd {
    int fd;
    std::string name;
};

// The descriptors the manager passed ($LISTEN_FDS, numbered from 3, with the names in $LISTEN_FDNAMES), in order;
// empty when none were passed or the variables are meant for another process ($LISTEN_PID). Marks each
// close-on-exec. With `unset_environment` the variables are removed, so that later calls (and children) see
// none; that modifies the environment, which no other thread may read meanwhile. Throws SystemError when the
// variables are malformed or name a descriptor that is not open.
std::vector<ListenFd> listen_fds(bool unset_environment = false);
// The descriptors of `name` among listen_fds(), in order (a socket unit with several Listen*= passes several).
std::vector<int> listen_fds_named(std::string_view name);

// Whether the machine was booted with systemd, as sd_booted(3) tells: whether /run/systemd/system/ exists, as
// this process sees it. A manager's services see the manager's mount namespace, where it exists, so inside a
// unit it is true even on a machine whose PID 1 is not systemd when the manager made the directory in a
// namespace of its own (as scripts/with-systemd does). Throws SystemError when the directory cannot be examined.
bool booted();

}  // namespace sdfutures::daemon
