#include "sdfutures/daemon.hpp"

#include <unistd.h>

#include <systemd/sd-daemon.h>

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "sdfutures/error.hpp"

namespace sdfutures::daemon {
namespace {

// "READY=1\nSTATUS=x\n" → "READY=1, STATUS=x", for messages.
std::string one_line(std::string_view assignments) {
    std::string line;
    for (char c : assignments) {
        if (c == '\n') line += ", ";
        else line += c;
    }
    while (line.ends_with(", ")) line.resize(line.size() - 2);
    return line;
}

// sd_notify(3) with its result as notify() reports it.
bool send(const std::string& assignments) {
    int r = sd_notify(0, assignments.c_str());
    if (r < 0) throw SystemError("sd_notify", -r, "to send " + one_line(assignments) + " to $NOTIFY_SOCKET");
    return r > 0;
}

std::string count_of(std::string_view what, std::chrono::microseconds value) {
    if (value.count() < 0)
        throw Error("the " + std::string(what) + " must not be negative, got " + std::to_string(value.count()) + " us");
    return std::to_string(value.count());
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Notifications

Notification& Notification::add(std::string_view name, std::string_view value) {
    text_.append(name).append("=").append(value).append("\n");
    return *this;
}

Notification& Notification::ready() { return add("READY", "1"); }
Notification& Notification::reloading() { return add("RELOADING", "1"); }
Notification& Notification::stopping() { return add("STOPPING", "1"); }
Notification& Notification::watchdog_ping() { return add("WATCHDOG", "1"); }

Notification& Notification::status(std::string_view text) {
    // A newline would start a new assignment the manager reads as one (STATUS=x\nREADY=1), and sd_notify takes a C
    // string, which a NUL would cut short.
    if (text.find_first_of(std::string_view("\n\0", 2)) != std::string_view::npos)
        throw Error("STATUS= text must be one line without NUL characters: '" + one_line(text) + "'");
    return add("STATUS", text);
}

Notification& Notification::watchdog_interval(std::chrono::microseconds interval) {
    return add("WATCHDOG_USEC", count_of("watchdog interval (WATCHDOG_USEC=)", interval));
}

Notification& Notification::extend_timeout(std::chrono::microseconds extension) {
    return add("EXTEND_TIMEOUT_USEC", count_of("timeout extension (EXTEND_TIMEOUT_USEC=)", extension));
}

Notification& Notification::main_pid(pid_t pid) {
    if (pid <= 0) throw Error("MAINPID= must be a process id, got " + std::to_string(pid));
    return add("MAINPID", std::to_string(pid));
}

bool notify(const Notification& notification) {
    if (notification.empty()) throw Error("an empty notification has nothing to tell the manager");
    return send(notification.text());
}

bool notify_ready(std::string_view status) {
    Notification n;
    n.ready();
    if (!status.empty()) n.status(status);
    return notify(n);
}

bool notify_status(std::string_view text) { return notify(Notification().status(text)); }
bool notify_watchdog() { return notify(Notification().watchdog_ping()); }

bool notify_barrier(std::chrono::microseconds timeout) {
    (void)count_of("barrier timeout", timeout);  // throws for a negative one
    int r = sd_notify_barrier(0, static_cast<uint64_t>(timeout.count()));
    if (r < 0) throw SystemError("sd_notify_barrier", -r, "to wait for the manager to read the notifications sent");
    return r > 0;
}

// ---------------------------------------------------------------------------------------------------------
// The watchdog

std::optional<std::chrono::microseconds> watchdog_enabled() {
    uint64_t usec = 0;
    int r = sd_watchdog_enabled(0, &usec);
    if (r < 0) throw SystemError("sd_watchdog_enabled", -r, "to read $WATCHDOG_USEC and $WATCHDOG_PID");
    if (r == 0) return std::nullopt;
    return std::chrono::microseconds(usec);
}

// The pinging thread and what it shares with the Watchdog's callers. A ping is sent while `mutex` is held, so
// that stall() (which takes it) returns only once no ping is under way.
struct Watchdog::Pinger {
    explicit Pinger(std::chrono::microseconds watchdog_interval)
        : interval(watchdog_interval), thread([this] { run(); }) {}

    void run() {
        std::unique_lock lock(mutex);
        bool ping_now = true;
        while (!stopping) {
            if (ping_now && !stalled) (void)sd_notify(0, "WATCHDOG=1");  // a failed ping is retried next time
            uint64_t seen = generation;
            // Woken by resume(), which has just pinged: a new period starts without another ping.
            bool woken = wake.wait_for(lock, interval / 2, [&] { return stopping || generation != seen; });
            ping_now = !woken;
        }
    }

    const std::chrono::microseconds interval;
    const pid_t owner = ::getpid();
    std::mutex mutex;
    std::condition_variable wake;
    bool stalled = false;
    bool stopping = false;
    uint64_t generation = 0;  // counts resume() calls
    std::thread thread;       // last: it runs as soon as it is made
};

Watchdog::Watchdog() {
    if (auto watched = watchdog_enabled()) pinger_ = std::make_unique<Pinger>(*watched);
}

Watchdog::Watchdog(std::chrono::microseconds interval) {
    if (interval.count() <= 0)
        throw Error("a watchdog interval must be positive, got " + std::to_string(interval.count()) + " us");
    pinger_ = std::make_unique<Pinger>(interval);
}

Watchdog::~Watchdog() {
    if (!pinger_) return;
    if (::getpid() != pinger_->owner) {
        // A forked child: its copy of the thread does not run and cannot be joined, and its mutex may have been
        // held by that thread at the fork. The memory stays with the child's image, as everything else does.
        (void)pinger_.release();
        return;
    }
    {
        std::lock_guard lock(pinger_->mutex);
        pinger_->stopping = true;
    }
    pinger_->wake.notify_all();
    pinger_->thread.join();
}

void Watchdog::stall() {
    if (!pinger_) return;
    std::lock_guard lock(pinger_->mutex);
    pinger_->stalled = true;
}

void Watchdog::resume() {
    if (!pinger_) return;
    {
        std::lock_guard lock(pinger_->mutex);
        if (!pinger_->stalled) return;
        pinger_->stalled = false;
        ++pinger_->generation;
        int r = sd_notify(0, "WATCHDOG=1");
        pinger_->wake.notify_all();
        if (r < 0) throw SystemError("sd_notify", -r, "to send WATCHDOG=1 to $NOTIFY_SOCKET");
    }
}

bool Watchdog::stalled() const {
    if (!pinger_) return false;
    std::lock_guard lock(pinger_->mutex);
    return pinger_->stalled;
}

bool Watchdog::active() const noexcept { return pinger_ != nullptr; }

std::optional<std::chrono::microseconds> Watchdog::interval() const noexcept {
    if (!pinger_) return std::nullopt;
    return pinger_->interval;
}

// ---------------------------------------------------------------------------------------------------------
// Passed descriptors, and the machine

namespace {

// The NULL-terminated array of names sd_listen_fds_with_names(3) allocates, freed as it says.
struct FdNames {
    char** names = nullptr;
    FdNames() = default;
    FdNames(const FdNames&) = delete;
    FdNames& operator=(const FdNames&) = delete;
    FdNames(FdNames&&) = delete;
    FdNames& operator=(FdNames&&) = delete;
    ~FdNames() {
        if (!names) return;
        for (char** name = names; *name; ++name) std::free(*name);
        std::free(static_cast<void*>(names));
    }
};

}  // namespace

std::vector<ListenFd> listen_fds(bool unset_environment) {
    FdNames names;
    int n = sd_listen_fds_with_names(unset_environment ? 1 : 0, &names.names);
    if (n < 0) throw SystemError("sd_listen_fds_with_names", -n, "to read $LISTEN_FDS and $LISTEN_FDNAMES");
    std::vector<ListenFd> fds;
    fds.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
        const char* name = names.names && names.names[i] ? names.names[i] : "unknown";
        fds.push_back(ListenFd{SD_LISTEN_FDS_START + i, name});
    }
    return fds;
}

std::vector<int> listen_fds_named(std::string_view name) {
    std::vector<int> fds;
    for (const auto& passed : listen_fds())
        if (passed.name == name) fds.push_back(passed.fd);
    return fds;
}

bool booted() {
    int r = sd_booted();
    if (r < 0) throw SystemError("sd_booted", -r, "to examine /run/systemd/system/");
    return r > 0;
}

}  // namespace sdfutures::daemon
