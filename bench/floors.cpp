#include "floors.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <sdbus-c++/sdbus-c++.h>

#include "harness.hpp"

namespace bench {
namespace {

constexpr const char* kManagerInterface = "org.freedesktop.systemd1.Manager";
constexpr const char* kFloorPrefix = "sdfutures-floor-";

[[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error(what + ": " + std::strerror(errno));
}

bool write_all(int fd, const void* data, std::size_t size) {
    auto p = static_cast<const char*>(data);
    while (size > 0) {
        ssize_t n = ::write(fd, p, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        size -= static_cast<std::size_t>(n);
    }
    return true;
}

bool read_exact(int fd, void* data, std::size_t size) {
    auto p = static_cast<char*>(data);
    while (size > 0) {
        ssize_t n = ::read(fd, p, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        size -= static_cast<std::size_t>(n);
    }
    return true;
}

// In a forked child: dies with the parent, keeps `fds` as 3, 4, ... and closes every other descriptor above 2,
// so that no copy of another child's (or the pools') socket keeps an end-of-file from being seen.
std::vector<int> become_child(const std::vector<int>& fds) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::vector<int> high;
    for (int fd : fds) high.push_back(::fcntl(fd, F_DUPFD, 1000));
    std::vector<int> kept;
    for (std::size_t i = 0; i < high.size(); ++i) {
        int target = 3 + static_cast<int>(i);
        ::dup2(high[i], target);
        kept.push_back(target);
    }
    ::syscall(SYS_close_range, 3 + static_cast<unsigned>(fds.size()), ~0u, 0);
    return kept;
}

void reap(pid_t pid) {
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
}

pid_t fork_or_throw() {
    pid_t pid = ::fork();
    if (pid < 0) fail("fork");
    return pid;
}

}  // namespace

std::string floor_unit_name() {
    static std::atomic<unsigned> counter{0};
    return kFloorPrefix + std::to_string(::getpid()) + "-" + std::to_string(++counter) + ".service";
}

RawSystemd::RawSystemd(const std::string& spec) {
    if (spec == "system") connection_ = sdbus::createSystemBusConnection();
    else if (spec == "user") connection_ = sdbus::createSessionBusConnection();
    else connection_ = sdbus::createSessionBusConnectionWithAddress(spec);
    manager_ = sdbus::createProxy(*connection_, "org.freedesktop.systemd1", "/org/freedesktop/systemd1");
    manager_->uponSignal("JobRemoved")
        .onInterface(kManagerInterface)
        .call([this](uint32_t, const sdbus::ObjectPath& job, const std::string& unit, const std::string& result) {
            if (unit.rfind(kFloorPrefix, 0) == 0) finished_jobs_[job] = result;
        });
    manager_->uponSignal("UnitRemoved")
        .onInterface(kManagerInterface)
        .call([this](const std::string& unit, const sdbus::ObjectPath&) {
            if (unit.rfind(kFloorPrefix, 0) == 0) removed_units_.insert(unit);
        });
    manager_->finishRegistration();
    // systemd emits JobRemoved and UnitRemoved only while someone is subscribed.
    manager_->callMethod("Subscribe").onInterface(kManagerInterface);
}

RawSystemd::~RawSystemd() = default;

std::string RawSystemd::version() {
    return manager_->getProperty("Version").onInterface(kManagerInterface).get<std::string>();
}

std::string RawSystemd::start_anchored_service(const std::string& unit, int anchor_read_fd) {
    using Property = sdbus::Struct<std::string, sdbus::Variant>;
    using Exec = sdbus::Struct<std::string, std::vector<std::string>, bool>;
    std::vector<Property> properties;
    properties.emplace_back("Description", sdbus::Variant(std::string("sdfutures benchmark floor")));
    properties.emplace_back("Type", sdbus::Variant(std::string("exec")));
    properties.emplace_back("ExecStart", sdbus::Variant(std::vector<Exec>{Exec{"/usr/bin/cat", {"cat"}, false}}));
    properties.emplace_back("StandardInputFileDescriptor", sdbus::Variant(sdbus::UnixFd(anchor_read_fd)));
    properties.emplace_back("StandardOutput", sdbus::Variant(std::string("null")));
    properties.emplace_back("StandardError", sdbus::Variant(std::string("null")));
    properties.emplace_back("Delegate", sdbus::Variant(true));
    properties.emplace_back("CollectMode", sdbus::Variant(std::string("inactive-or-failed")));
    properties.emplace_back("TimeoutStopUSec", sdbus::Variant(uint64_t{1'000'000}));
    std::vector<sdbus::Struct<std::string, std::vector<Property>>> aux;
    sdbus::ObjectPath job;
    manager_->callMethod("StartTransientUnit")
        .onInterface(kManagerInterface)
        .withArguments(unit, std::string("fail"), properties, aux)
        .storeResultsTo(job);
    return job;
}

void RawSystemd::dispatch_until(const std::function<bool()>& done) {
    for (;;) {
        while (connection_->processPendingRequest()) {
            if (done()) return;
        }
        if (done()) return;
        auto poll_data = connection_->getEventLoopPollData();
        pollfd p{poll_data.fd, poll_data.events, 0};
        // sd-bus's own timeouts (method call replies) are not waited for here: the floor only ever waits for
        // signals, so a plain 1 s cap is enough to notice a manager that went away.
        int r = ::poll(&p, 1, 1000);
        if (r < 0 && errno != EINTR) fail("poll on the bus");
    }
}

std::string RawSystemd::wait_job(const std::string& job) {
    dispatch_until([&] { return finished_jobs_.count(job) != 0; });
    auto it = finished_jobs_.find(job);
    std::string result = it->second;
    finished_jobs_.erase(it);
    return result;
}

void RawSystemd::attach(const std::string& unit, const std::vector<uint32_t>& pids) {
    manager_->callMethod("AttachProcessesToUnit")
        .onInterface(kManagerInterface)
        .withArguments(unit, std::string("/"), pids);
}

std::string RawSystemd::stop(const std::string& unit) {
    sdbus::ObjectPath job;
    manager_->callMethod("StopUnit")
        .onInterface(kManagerInterface)
        .withArguments(unit, std::string("replace"))
        .storeResultsTo(job);
    return job;
}

void RawSystemd::wait_removed(const std::string& unit) {
    dispatch_until([&] { return removed_units_.count(unit) != 0; });
    removed_units_.erase(unit);
}

// ---------------------------------------------------------------------------------------------------------------

namespace {

[[noreturn]] void serve_requests(int fd) {
    // Requests and replies are 8-byte integers; a read may end mid-request, whose bytes are carried over.
    char in[4096 + 8];
    std::uint64_t out[512];
    std::size_t have = 0;
    for (;;) {
        ssize_t n = ::read(fd, in + have, 4096);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) ::_exit(0);
        have += static_cast<std::size_t>(n);
        std::size_t count = have / 8;
        for (std::size_t i = 0; i < count; ++i) {
            std::uint64_t x;
            std::memcpy(&x, in + 8 * i, 8);
            out[i] = x + 1;
        }
        if (!write_all(fd, out, count * 8)) ::_exit(0);
        std::memmove(in, in + 8 * count, have - 8 * count);
        have -= 8 * count;
    }
}

}  // namespace

RawWorkers::RawWorkers(std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) fail("socketpair");
        pid_t pid = fork_or_throw();
        if (pid == 0) serve_requests(become_child({pair[1]})[0]);
        ::close(pair[1]);
        pids_.push_back(pid);
        sockets_.push_back(pair[0]);
    }
}

RawWorkers::~RawWorkers() {
    for (int s : sockets_) ::close(s);
    for (pid_t p : pids_) reap(p);
}

double RawWorkers::run(std::size_t tasks, std::size_t window) {
    const std::size_t n = sockets_.size();
    std::vector<std::size_t> outstanding(n, 0);
    std::vector<std::size_t> carry(n, 0);
    std::vector<std::array<char, 8>> partial(n);
    std::size_t sent = 0, done = 0;
    std::uint64_t checksum = 0;
    std::vector<std::uint64_t> buffer(std::max<std::size_t>(window, 1) + 1);
    auto send_more = [&](std::size_t w) {
        std::size_t k = std::min(window - outstanding[w], tasks - sent);
        if (k == 0) return;
        for (std::size_t i = 0; i < k; ++i) buffer[i] = sent + i;
        if (!write_all(sockets_[w], buffer.data(), k * 8)) fail("write to a raw worker");
        outstanding[w] += k;
        sent += k;
    };
    std::vector<pollfd> fds(n);
    for (std::size_t w = 0; w < n; ++w) fds[w] = {sockets_[w], POLLIN, 0};
    char in[8 * 512 + 8];
    auto t0 = Clock::now();
    for (std::size_t w = 0; w < n; ++w) send_more(w);
    while (done < tasks) {
        // With one worker a blocking read is the cheapest wait; with several, poll says which one answered.
        if (n > 1 && ::poll(fds.data(), n, -1) < 0 && errno != EINTR) fail("poll");
        for (std::size_t w = 0; w < n; ++w) {
            if (n > 1 && !(fds[w].revents & POLLIN)) continue;
            std::memcpy(in, partial[w].data(), carry[w]);
            ssize_t r = ::read(sockets_[w], in + carry[w], std::min<std::size_t>(outstanding[w] * 8 - carry[w], 8 * 512));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) fail("read from a raw worker");
            std::size_t bytes = carry[w] + static_cast<std::size_t>(r);
            std::size_t replies = bytes / 8;
            for (std::size_t i = 0; i < replies; ++i) {
                std::uint64_t x;
                std::memcpy(&x, in + 8 * i, 8);
                checksum += x;
            }
            carry[w] = bytes - replies * 8;
            std::memcpy(partial[w].data(), in + replies * 8, carry[w]);
            outstanding[w] -= replies;
            done += replies;
            send_more(w);
        }
    }
    auto t1 = Clock::now();
    // Requests 0..tasks-1 each came back incremented.
    if (checksum != tasks * (tasks + 1) / 2) throw std::runtime_error("raw workers answered wrongly");
    return seconds_between(t0, t1);
}

std::vector<double> RawWorkers::round_trips(std::size_t calls) {
    std::vector<double> samples;
    samples.reserve(calls);
    for (std::size_t i = 0; i < calls; ++i) {
        std::uint64_t x = i, y = 0;
        auto t0 = Clock::now();
        if (!write_all(sockets_[0], &x, 8) || !read_exact(sockets_[0], &y, 8)) fail("raw round trip");
        samples.push_back(seconds_between(t0, Clock::now()));
        if (y != x + 1) throw std::runtime_error("raw worker answered wrongly");
    }
    return samples;
}

// ---------------------------------------------------------------------------------------------------------------

RawSender::RawSender(const char* data, std::size_t bytes, bool through_pipe) : bytes_(bytes) {
    int request[2], channel[2];
    if (::pipe2(request, O_CLOEXEC) != 0) fail("pipe");
    if (through_pipe ? ::pipe2(channel, O_CLOEXEC) != 0
                     : ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channel) != 0)
        fail("data channel");
    // A pipe carries data from [1] to [0]; for the socketpair the same orientation is kept.
    pid_t pid = fork_or_throw();
    if (pid == 0) {
        auto fds = become_child({request[0], channel[1]});
        for (;;) {
            char go;
            if (!read_exact(fds[0], &go, 1)) ::_exit(0);
            if (!write_all(fds[1], data, bytes)) ::_exit(0);
        }
    }
    ::close(request[0]);
    ::close(channel[1]);
    pid_ = pid;
    request_fd_ = request[1];
    data_fd_ = channel[0];
}

RawSender::~RawSender() {
    ::close(request_fd_);
    ::close(data_fd_);
    reap(pid_);
}

double RawSender::transfer(bool huge_pages) {
    // Fresh and untouched, like the memory malloc gives a new 64 MiB result: its pages are first touched by the
    // kernel's copy.
    void* mapped = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) fail("mmap");
    std::unique_ptr<char, std::function<void(char*)>> destination(static_cast<char*>(mapped),
                                                                  [this](char* p) { ::munmap(p, bytes_); });
    if (huge_pages) ::madvise(mapped, bytes_, MADV_HUGEPAGE);
    auto t0 = Clock::now();
    if (!write_all(request_fd_, "g", 1)) fail("request a transfer");
    std::size_t got = 0;
    while (got < bytes_) {
        ssize_t n = ::read(data_fd_, destination.get() + got, bytes_ - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("receive the transfer");
        got += static_cast<std::size_t>(n);
    }
    auto t1 = Clock::now();
    if (destination.get()[bytes_ - 1] != 'Z') throw std::runtime_error("the raw transfer carried the wrong bytes");
    return seconds_between(t0, t1);
}

// ---------------------------------------------------------------------------------------------------------------

double floor_pool_ready(RawSystemd* shared, const std::string& spec, std::size_t workers) {
    const std::string unit = floor_unit_name();
    auto t0 = Clock::now();
    std::unique_ptr<RawSystemd> own;
    if (!shared) own = std::make_unique<RawSystemd>(spec);
    RawSystemd& systemd = shared ? *shared : *own;
    int anchor[2];
    if (::pipe2(anchor, O_CLOEXEC) != 0) fail("pipe");
    std::string job = systemd.start_anchored_service(unit, anchor[0]);
    ::close(anchor[0]);
    std::vector<pid_t> pids;
    std::vector<int> sockets;
    for (std::size_t i = 0; i < workers; ++i) {
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) fail("socketpair");
        pid_t pid = fork_or_throw();
        if (pid == 0) {
            int fd = become_child({pair[1]})[0];
            char c;
            if (!read_exact(fd, &c, 1) || !write_all(fd, &c, 1)) ::_exit(1);
            while (::read(fd, &c, 1) > 0) {
            }
            ::_exit(0);
        }
        ::close(pair[1]);
        pids.push_back(pid);
        sockets.push_back(pair[0]);
    }
    std::string result = systemd.wait_job(job);
    if (result != "done") throw std::runtime_error("floor start job of " + unit + ": " + result);
    systemd.attach(unit, std::vector<uint32_t>(pids.begin(), pids.end()));
    for (int s : sockets)
        if (!write_all(s, "x", 1)) fail("release a floor worker");
    for (int s : sockets) {
        char c;
        if (!read_exact(s, &c, 1)) fail("hear from a floor worker");
    }
    auto t1 = Clock::now();

    for (int s : sockets) ::close(s);
    for (pid_t p : pids) reap(p);
    ::close(anchor[1]);  // cat reads end of file and the unit ends
    systemd.wait_removed(unit);
    return seconds_between(t0, t1);
}

double floor_process(RawSystemd* shared, const std::string& spec, bool stop_job) {
    const std::string unit = floor_unit_name();
    auto t0 = Clock::now();
    std::unique_ptr<RawSystemd> own;
    if (!shared) own = std::make_unique<RawSystemd>(spec);
    RawSystemd& systemd = shared ? *shared : *own;
    int anchor[2], release[2], reply[2];
    if (::pipe2(anchor, O_CLOEXEC) != 0 || ::pipe2(release, O_CLOEXEC) != 0 || ::pipe2(reply, O_CLOEXEC) != 0)
        fail("pipe");
    std::string job = systemd.start_anchored_service(unit, anchor[0]);
    ::close(anchor[0]);
    pid_t pid = fork_or_throw();
    if (pid == 0) {
        auto fds = become_child({release[0], reply[1]});
        char c;
        if (!read_exact(fds[0], &c, 1) || !write_all(fds[1], "r", 1)) ::_exit(1);
        ::_exit(0);
    }
    ::close(release[0]);
    ::close(reply[1]);
    std::string result = systemd.wait_job(job);
    if (result != "done") throw std::runtime_error("floor start job of " + unit + ": " + result);
    systemd.attach(unit, {static_cast<uint32_t>(pid)});
    char c;
    if (!write_all(release[1], "g", 1) || !read_exact(reply[0], &c, 1)) fail("floor child");
    reap(pid);
    if (stop_job) {
        systemd.wait_job(systemd.stop(unit));
    } else {
        ::close(anchor[1]);
        anchor[1] = -1;
    }
    systemd.wait_removed(unit);
    own.reset();  // run() closes its connection before it returns
    auto t1 = Clock::now();
    for (int fd : {anchor[1], release[1], reply[0]})
        if (fd >= 0) ::close(fd);
    return seconds_between(t0, t1);
}

}  // namespace bench
