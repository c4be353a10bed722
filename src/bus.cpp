#include "sdfutures/bus.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>
#include <ctime>

#include "bus_state.hpp"
#include "sys.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures {
namespace detail {

Deadline deadline_after(std::optional<std::chrono::milliseconds> timeout) {
    if (!timeout) return std::nullopt;
    return std::chrono::steady_clock::now() + *timeout;
}

void throw_systemd_error(const std::string& call, const sdbus::Error& e) {
    throw SystemdError(call, e.getName(), e.getMessage());
}

sdbus::Variant fd_variant(int fd, const std::string& what) {
    auto refused = [&](const std::string& why) {
        return Error(what + ": descriptor " + std::to_string(fd) + " cannot be passed to systemd (" + why + ")");
    };
    int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0) throw refused(errno_text(errno));
    try {
        return sdbus::Variant(sdbus::UnixFd(copy, sdbus::adopt_fd));
    } catch (const sdbus::Error& e) {  // sd-bus's own copy of it failed (EMFILE, most likely)
        throw refused(e.getMessage());
    }
}

void BusState::check_owner() const {
    if (getpid() != owner_pid)
        throw StateError("the D-Bus connection to " + description +
                         " belongs to the process that opened it and cannot be used after fork()");
}

bool BusState::dispatch_until(const std::function<bool()>& done, Deadline deadline) {
    check_owner();
    for (;;) {
        while (connection->processPendingRequest()) {
            if (done()) return true;
        }
        if (done()) return true;
        if (!poll_with({}, deadline)) return false;
    }
}

bool BusState::poll_with(std::span<pollfd> fds, Deadline deadline) {
    auto poll_data = connection->getEventLoopPollData();
    int timeout_ms = -1;
    if (deadline) {
        auto now = std::chrono::steady_clock::now();
        if (now >= *deadline) return false;
        timeout_ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(*deadline - now).count());
    }
    if (poll_data.timeout_usec != UINT64_MAX) {
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now_usec = uint64_t(ts.tv_sec) * 1'000'000 + uint64_t(ts.tv_nsec) / 1000;
        int bus_ms = poll_data.timeout_usec <= now_usec ? 0 : int((poll_data.timeout_usec - now_usec + 999) / 1000);
        timeout_ms = timeout_ms < 0 ? bus_ms : std::min(timeout_ms, bus_ms);
    }
    std::vector<pollfd> all;
    all.reserve(fds.size() + 1);
    all.push_back(pollfd{poll_data.fd, poll_data.events, 0});
    for (auto& p : fds) all.push_back(pollfd{p.fd, p.events, 0});
    int r = detail::sys::poll(all.data(), all.size(), timeout_ms);
    if (r < 0 && errno != EINTR) throw BusError(description, "poll failed: " + errno_text(errno));
    for (size_t i = 0; i < fds.size(); ++i) fds[i].revents = r > 0 ? all[i + 1].revents : short{0};
    if (r > 0 && (all[0].revents & (POLLHUP | POLLERR)) && !(all[0].revents & POLLIN))
        throw BusError(description, "the connection was closed");
    return true;
}

RemovalWatch::RemovalWatch(BusState& state, const std::string& unit) : state_(state) {
    auto emplaced = state.awaited_removals.emplace(unit, false);
    it_ = emplaced.first;
    owned_ = emplaced.second;
}

RemovalWatch::~RemovalWatch() {
    if (owned_) state_.awaited_removals.erase(it_);
}

}  // namespace detail

namespace {

std::shared_ptr<detail::BusState> connect(const std::string& description,
                                          const std::function<std::unique_ptr<sdbus::IConnection>()>& open) {
    auto state = std::make_shared<detail::BusState>();
    state->description = description;
    state->owner_pid = getpid();
    try {
        state->connection = open();
    } catch (const sdbus::Error& e) {
        throw BusError(description, e.getMessage().empty() ? e.getName() : e.getMessage());
    }
    detail::BusState* raw = state.get();
    try {
        state->manager = sdbus::createProxy(*state->connection, detail::kSystemdService, detail::kManagerPath);
        state->manager->uponSignal("JobRemoved")
            .onInterface(detail::kManagerInterface)
            .call([raw](uint32_t, const sdbus::ObjectPath& job, const std::string&, const std::string& result) {
                auto it = raw->awaited_jobs.find(job);
                if (it != raw->awaited_jobs.end()) it->second = result;
            });
        state->manager->uponSignal("UnitRemoved")
            .onInterface(detail::kManagerInterface)
            .call([raw](const std::string& unit, const sdbus::ObjectPath&) {
                auto it = raw->awaited_removals.find(unit);
                if (it != raw->awaited_removals.end()) it->second = true;
            });
        state->manager->finishRegistration();
        // Without a subscriber the manager does not broadcast UnitRemoved; the subscription ends with
        // the connection.
        state->manager->callMethod("Subscribe").onInterface(detail::kManagerInterface);
    } catch (const sdbus::Error& e) {
        throw BusError(description, "no systemd manager answers there: " + e.getName() + ": " + e.getMessage());
    }
    return state;
}

}  // namespace

Bus Bus::system() {
    return Bus(connect("system", [] { return sdbus::createSystemBusConnection(); }));
}

Bus Bus::user() {
    return Bus(connect("user", [] { return sdbus::createSessionBusConnection(); }));
}

Bus Bus::address(const std::string& address) {
    if (address.empty()) throw BusError(address, "the address is empty");
    return Bus(connect(address, [&] { return sdbus::createSessionBusConnectionWithAddress(address); }));
}

Bus Bus::automatic() {
    // getenv races only with setenv/putenv, which sdfutures calls in forked children alone.
    const char* env = std::getenv("SDFUTURES_BUS");  // NOLINT(concurrency-mt-unsafe)
    std::string choice = env ? env : "";
    if (choice == "system") return system();
    if (choice == "user") return user();
    if (!choice.empty()) return address(choice);
    return geteuid() == 0 ? system() : user();
}

const std::string& Bus::description() const noexcept { return state_->description; }

sdbus::IConnection& Bus::connection() const { return *state_->connection; }

std::unique_lock<std::mutex> Bus::lock() const { return std::unique_lock(state_->mutex); }

}  // namespace sdfutures
