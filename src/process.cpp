#include "sdfutures/process.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <random>

#include "sdfutures/manager.hpp"
#include "anchored_unit.hpp"
#include "bootstrap.hpp"
#include "bus_state.hpp"
#include "fd_util.hpp"
#include "forked_child.hpp"
#include "unit_entry.hpp"

namespace sdfutures {
namespace {

void close_fd(int& fd) noexcept {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

}  // namespace

namespace detail {

void write_reply_frame(int fd, const EncodedReply& payload) noexcept {
    std::array<char, frame_header_bytes> header;
    try {
        header = frame_header(payload.size());
    } catch (...) {
        return;
    }
    iovec parts[3] = {{header.data(), header.size()},
                      {const_cast<char*>(payload.head().data()), payload.head().size()},
                      {const_cast<char*>(payload.blob().data()), payload.blob().size()}};
    (void)writev_all(fd, parts);  // a parent that stopped listening gets nothing more
}

namespace {

// What the reaper tells the owner: first the child's pid (with a pidfd of it), then, once it has reaped the child,
// its wait status.
struct ReaperReport {
    enum Kind : int32_t { started = 1, ended = 2 } kind;
    int32_t value;  // started: the child's pid; ended: the wait status
};

// The reaper: the owner's direct child, which forks the child that runs the function and waits for it. The owner
// never waits for the function's process itself, so whatever the owner does with SIGCHLD (ignores it, so that the
// kernel reaps its children and drops their status; reaps every child in a handler of its own; blocks it) cannot
// take the exit status away from this library: the reaper has SIGCHLD's default action and no other children.
constexpr int kReportFd = 3;

[[noreturn]] void reaper_main(int report_fd, pid_t owner, const std::function<void(pid_t reaper)>& child_body) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != owner) ::_exit(127);
    reset_child_signal();
    const pid_t self = ::getpid();
    pid_t child = ::fork();
    if (child == 0) {
        ::close(report_fd);
        child_body(self);
    }
    if (child < 0) {
        ReaperReport failed{ReaperReport::ended, -1};
        send_with_fds(report_fd, &failed, sizeof failed);
        ::_exit(127);
    }
    // Holds nothing but its report socket from here on: the owner must see the reply pipe's end of file when the
    // child ends, and the unit's anchor must not outlive the owner in this process.
    if (report_fd != kReportFd) ::dup2(report_fd, kReportFd);
    ::syscall(SYS_close_range, kReportFd + 1, ~0u, 0);
    report_fd = kReportFd;
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, child, 0));  // not reaped yet: the pid is the child's
    ReaperReport started{ReaperReport::started, child};
    const int passed[] = {pidfd};
    send_with_fds(report_fd, &started, sizeof started, pidfd >= 0 ? std::span<const int>(passed) : std::span<const int>());
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    ReaperReport ended{ReaperReport::ended, status};
    send_with_fds(report_fd, &ended, sizeof ended);
    ::_exit(0);
}

}  // namespace

// The descriptors of one start() until each is handed over: what is left is closed when start() leaves.
struct StartDescriptors {
    Fd reply_read, reply_write;      // the child's reply pipe: its report, then its result
    Fd release_read, release_write;  // the child's release (bootstrap.hpp)
    Fd anchor_read, anchor_write;    // the unit's main process reads the one; the owner holds the other
    Fd report_owner, report_reaper;  // the reaper's reports
};

StartDescriptors open_start_descriptors() {
    StartDescriptors d;
    auto pipe = [](Fd& read, Fd& write, const char* what) {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) throw SystemError("pipe2", errno, what);
        read = Fd(fds[0]);
        write = Fd(fds[1]);
    };
    pipe(d.reply_read, d.reply_write, "to create the child's reply pipe");
    pipe(d.release_read, d.release_write, "to create the child's release pipe");
    pipe(d.anchor_read, d.anchor_write, "to create the unit's anchor pipe");
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
        throw SystemError("socketpair", errno, "to create the reaper's report socket");
    d.report_owner = Fd(pair[0]);
    d.report_reaper = Fd(pair[1]);
    return d;
}

struct ProcessCore::Impl {
    Impl(Properties properties, ProcessOptions options);
    ~Impl();
    void start(const Body& body);
    void start_unit(Manager& manager, StartDescriptors& descriptors);
    pid_t fork_child(StartDescriptors& descriptors, const Body& body);
    void release_child(Manager& manager, StartDescriptors& descriptors, pid_t reaper);
    void await_entry();
    bool is_alive();
    bool join(std::optional<std::chrono::milliseconds> timeout);
    void signal(int signo);
    std::string take_reply();
    const Unit& unit() const;

    void finish();
    void reap();
    void abandon_child() noexcept;
    void stop_unit() noexcept;
    void close_all() noexcept;
    bool read_available();
    std::optional<std::string> next_frame();

    Properties properties_;
    ProcessOptions options_;
    WireLimits limits_;
    std::optional<Bus> bus_;
    std::optional<Unit> unit_;
    enum class State { created, running, ended } state_ = State::created;
    pid_t pid_ = -1;
    int pidfd_ = -1;
    int reply_fd_ = -1;
    int anchor_fd_ = -1;  // write end of the unit main process's stdin: the owner's lifeline
    int report_fd_ = -1;  // the reaper's reports: the child's pid and pidfd, then its wait status
    int reaper_pidfd_ = -1;
    std::optional<std::string> channel_error_;  // what was wrong with the child's channel, once it broke
    bool reply_eof_ = false;
    FrameReader reader_;
    std::optional<std::string> reply_;
    std::optional<int> exit_status_;
    bool unit_was_stopped_ = false;
    bool oom_killed_ = false;
};

ProcessCore::Impl::Impl(Properties properties, ProcessOptions options)
    : properties_(std::move(properties)), options_(std::move(options)),
      limits_{options_.max_result_bytes, WireLimits{}.max_depth}, reader_(limits_) {
    check_properties_reach_forked_children(properties_);
    if (options_.unit_name.empty()) options_.unit_name = default_unit_name("process");
    bus_ = options_.bus ? *options_.bus : Bus::automatic();
    state_of(*bus_).refuse_remote("starting a TransientUnitProcess", "its process is this host's");
    unit_.emplace(*bus_, options_.unit_name);
}

ProcessCore::Impl::~Impl() {
    if (state_ == State::running) {
        try {
            signal(SIGKILL);
            join(std::nullopt);
        } catch (...) {
        }
    }
    close_all();
}

const Unit& ProcessCore::Impl::unit() const { return *unit_; }

void ProcessCore::Impl::close_all() noexcept {
    close_fd(pidfd_);
    close_fd(reply_fd_);
    close_fd(anchor_fd_);
    close_fd(report_fd_);
    if (reaper_pidfd_ >= 0) {
        // Reaps the reaper if it is this process's child and nobody else did: by pidfd, never a reusable pid.
        siginfo_t info{};
        while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(reaper_pidfd_), &info, WEXITED) < 0 &&
               errno == EINTR) {
        }
    }
    close_fd(reaper_pidfd_);
}

// start() as bootstrap.hpp's steps: the unit, the child (through the reaper), its release, its report.
void ProcessCore::Impl::start(const Body& body) {
    if (state_ != State::created) throw StateError("start() was already called on " + options_.unit_name);
    require_support(*bus_, properties_);
    Manager manager(*bus_);
    StartDescriptors descriptors = open_start_descriptors();
    start_unit(manager, descriptors);
    const pid_t reaper = fork_child(descriptors, body);
    try {
        release_child(manager, descriptors, reaper);
        await_entry();
    } catch (...) {
        descriptors.release_write.reset();
        abandon_child();
        throw;
    }
}

// Step 1. The unit is started before anything is forked: a unit that cannot start leaves no process to tear down,
// and its failure is read from the unit and named (StartFailed).
void ProcessCore::Impl::start_unit(Manager& manager, StartDescriptors& descriptors) {
    try {
        PendingJob job = manager.start_transient_unit_async(
            options_.unit_name, properties_,
            anchored_service_properties(properties_, descriptors.anchor_read.get(),
                                        "sdfutures process of pid " + std::to_string(getpid())));
        descriptors.anchor_read.reset();  // systemd holds its own copy now
        anchor_fd_ = descriptors.anchor_write.release();
        try {
            wait_anchored_start(*bus_, job, properties_);
        } catch (...) {
            stop_unit();
            throw;
        }
    } catch (...) {
        close_all();
        throw;
    }
}

// Step 2: the reaper forks the child, which waits for its release. Returns the reaper's pid.
pid_t ProcessCore::Impl::fork_child(StartDescriptors& descriptors, const Body& body) {
    const pid_t owner = getpid();
    const int child_reply = descriptors.reply_write.get(), child_release = descriptors.release_read.get(),
              release_write = descriptors.release_write.get();
    auto child_body = [&, child_reply, child_release, release_write](pid_t parent) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // first: a child that dies with its reaper can never be left over
        if (::getppid() != parent) ::_exit(127);
        detach_from_owner_state();
        ::close(release_write);
        // The release comes on a pipe of its own; a failed step is the first frame of the reply pipe (bootstrap.hpp).
        auto receive_release = [child_release] { return read_release_pipe(child_release); };
        enter_when_released(EntryRequest{.parent_pid = parent, .keep_fd = child_reply, .keep_stdio = options_.keep_stdio},
                            receive_release,
                            [](int channel_fd, const std::string& report) { write_reply_frame(channel_fd, report); });
        write_reply_frame(kEnteredPipeFd, encode_void_reply());  // "entered": start() may return
        body(kEnteredPipeFd);
        std::fflush(nullptr);
        ::_exit(0);
    };
    prepare_exit_guard();
    pid_t reaper = ::fork();
    if (reaper < 0) {
        int err = errno;
        stop_unit();
        close_all();
        throw SystemError("fork", err, "of the child");
    }
    if (reaper == 0) {
        ::close(descriptors.report_owner.get());
        reaper_main(descriptors.report_reaper.get(), owner, child_body);
    }
    descriptors.report_reaper.reset();
    descriptors.reply_write.reset();
    descriptors.release_read.reset();
    reply_fd_ = descriptors.reply_read.release();
    report_fd_ = descriptors.report_owner.release();
    // Opened before anything of ours can reap it (an owner's own SIGCHLD handler could, but then the pidfd simply
    // fails and nothing waits for it).
    reaper_pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, reaper, 0));
    state_ = State::running;
    ::fcntl(reply_fd_, F_SETFL, O_NONBLOCK);
    return reaper;
}

// Steps 3 and 4: the child's pid from the reaper, then it is attached and released.
void ProcessCore::Impl::release_child(Manager& manager, StartDescriptors& descriptors, pid_t reaper) {
    ReaperReport started{};
    Fd child_pidfd[1];
    ssize_t got = receive_with_fds(report_fd_, &started, sizeof started, child_pidfd);
    if (got != sizeof started || started.kind != ReaperReport::started)
        throw Error("fork of the child: the reaper (pid " + std::to_string(reaper) + ") could not fork it");
    pid_ = started.value;
    if (!child_pidfd[0]) throw Error("pidfd_open of the child " + std::to_string(pid_) + " failed in the reaper");
    pidfd_ = child_pidfd[0].release();
    const pid_t children[] = {pid_};
    attach_and_release(manager, *unit_, children, [&](std::size_t, const std::string& release) {
        write_release_pipe(descriptors.release_write.get(), release);
    });
    descriptors.release_write.reset();
}

// Step 5: "entered", or the step that failed (SetupError), or the child's end before either.
void ProcessCore::Impl::await_entry() {
    // Wait for "entered" (or the step that failed), or the child's end: end of file on the pipe alone could
    // come late, as a process the owner forks meanwhile holds a copy of its write end until it execs.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
        if (auto frame = next_frame()) {
            decode_reply<void>(*frame, limits_);  // throws SetupError for a failed step
            return;
        }
        if (reply_eof_ || channel_error_) break;
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0)
            throw SetupError("enter the unit", 0, "the child " + std::to_string(pid_) + " did not report within 30 s");
        pollfd fds[2] = {{reply_fd_, POLLIN, 0}, {pidfd_, POLLIN, 0}};
        ::poll(fds, 2, static_cast<int>(left.count()));
        read_available();
        if (fds[1].revents & POLLIN) {
            read_available();
            if (auto frame = next_frame()) {
                decode_reply<void>(*frame, limits_);
                return;
            }
            break;
        }
    }
    join(std::nullopt);
    throw SetupError("enter the unit", 0, "the child " + describe_exit(exit_status_.value_or(0)) +
                                              " before it entered the unit");
}

std::optional<std::string> ProcessCore::Impl::next_frame() {
    if (channel_error_) throw ProtocolError(*channel_error_);
    try {
        return reader_.next();
    } catch (const ProtocolError& e) {
        channel_error_ = e.what();
        throw;
    }
}

void ProcessCore::Impl::reap() {
    ReaperReport ended{};
    ssize_t got = -1;
    for (;;) {
        // The reaper reports at once; one that cannot (stopped by a task of the same uid, say) is not waited for
        // more than 10 s, nor once it has ended.
        pollfd fds[2] = {{report_fd_, POLLIN, 0}, {reaper_pidfd_, POLLIN, 0}};
        int r = ::poll(fds, reaper_pidfd_ >= 0 ? 2 : 1, 10'000);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0 || !(fds[0].revents & (POLLIN | POLLHUP))) {
            if (reaper_pidfd_ >= 0) ::syscall(SYS_pidfd_send_signal, reaper_pidfd_, SIGKILL, nullptr, 0);
            got = -1;
            break;
        }
        got = receive_with_fds(report_fd_, &ended, sizeof ended);
        if (got != static_cast<ssize_t>(sizeof ended) || ended.kind == ReaperReport::ended) break;
    }
    if (got == static_cast<ssize_t>(sizeof ended)) {
        exit_status_ = exit_status_from_wait_status(ended.value);
    } else {
        exit_status_ = -SIGKILL;  // the reaper was killed, and the child with it (its parent-death signal)
    }
    state_ = State::ended;
}

void ProcessCore::Impl::abandon_child() noexcept {
    if (state_ == State::running) {
        if (pidfd_ >= 0) ::syscall(SYS_pidfd_send_signal, pidfd_, SIGKILL, nullptr, 0);
        else if (reaper_pidfd_ >= 0) ::syscall(SYS_pidfd_send_signal, reaper_pidfd_, SIGKILL, nullptr, 0);
        reap();
    }
    stop_unit();
    close_all();
}

bool ProcessCore::Impl::read_available() {
    bool got = false;
    for (;;) {
        if (channel_error_) return got;
        auto area = reader_.write_area(1u << 20);
        ssize_t n = ::read(reply_fd_, area.data(), area.size());
        try {
            reader_.commit(n > 0 ? static_cast<size_t>(n) : 0);
        } catch (const ProtocolError& e) {
            // Garbage from the child (a header above the limit, say): the channel is over, the child is not.
            channel_error_ = e.what();
            return got;
        }
        if (n > 0) {
            got = true;
            continue;
        }
        if (n == 0) reply_eof_ = true;
        else if (errno == EINTR) continue;
        return got;
    }
}

bool ProcessCore::Impl::is_alive() {
    if (state_ != State::running) return false;
    pollfd fd{pidfd_, POLLIN, 0};
    return ::poll(&fd, 1, 0) == 0;
}

void ProcessCore::Impl::signal(int signo) {
    if (state_ == State::created) throw StateError("the process of " + options_.unit_name + " was not started");
    if (state_ == State::running) ::syscall(SYS_pidfd_send_signal, pidfd_, signo, nullptr, 0);
}

bool ProcessCore::Impl::join(std::optional<std::chrono::milliseconds> timeout) {
    if (state_ == State::created) throw StateError("join() before start() on " + options_.unit_name);
    if (state_ == State::ended) return true;
    const auto deadline = std::chrono::steady_clock::now() + timeout.value_or(std::chrono::milliseconds(0));
    for (;;) {
        const bool reading = !reply_eof_ && !channel_error_;
        pollfd fds[2] = {{pidfd_, POLLIN, 0}, {reply_fd_, POLLIN, 0}};
        int wait_ms = -1;
        if (timeout) {
            auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            wait_ms = static_cast<int>(std::max<long long>(0, left.count()));
        }
        int r = ::poll(fds, reading ? 2 : 1, wait_ms);
        if (r < 0 && errno != EINTR) throw SystemError("poll", errno, "waiting for the child");
        // Draining while the child runs keeps a large reply from blocking it on a full pipe.
        if (reading && (fds[1].revents & (POLLIN | POLLHUP))) read_available();
        if (fds[0].revents & POLLIN) break;
        if (r == 0 && timeout && std::chrono::steady_clock::now() >= deadline) return false;
    }
    // It has exited: everything it wrote is in the pipe already.
    read_available();
    finish();
    return true;
}

void ProcessCore::Impl::finish() {
    reap();
    // cat gone means the unit was stopped (from outside, or by RuntimeMaxSec=) rather than the child failing.
    pollfd anchor{anchor_fd_, 0, 0};
    unit_was_stopped_ = ::poll(&anchor, 1, 0) == 1 && (anchor.revents & POLLERR);
    if (*exit_status_ == -SIGKILL) {
        try {
            oom_killed_ = oom_kill_count(unit_->control_group()) > 0;
        } catch (...) {
        }
    }
    // Killed as a stopped unit's processes are, while cat may still be alive (it gets its SIGTERM at the same
    // moment, and systemd holds the pipe's read end until the unit is inactive): the manager says which it was.
    if (!unit_was_stopped_ && !oom_killed_ && (*exit_status_ == -SIGTERM || *exit_status_ == -SIGKILL))
        unit_was_stopped_ = manager_says_unit_stopped(*bus_, options_.unit_name);
    try {
        if (auto frame = next_frame()) reply_ = std::move(*frame);
        else if (reader_.mid_frame()) channel_error_ = "the child's channel ended in the middle of a frame";
    } catch (const ProtocolError&) {
        reply_.reset();
    }
    stop_unit();
    close_all();
}

void ProcessCore::Impl::stop_unit() noexcept { stop_and_wait_gone(*bus_, options_.unit_name); }

std::string ProcessCore::Impl::take_reply() {
    if (state_ != State::ended) throw StateError("the process of " + options_.unit_name + " has not ended");
    if (reply_) return *reply_;
    if (unit_was_stopped_) throw UnitStopped(options_.unit_name);
    if (channel_error_)
        throw ProtocolError("the process running the function " + describe_exit(*exit_status_) +
                            " after sending what is not a reply: " + *channel_error_);
    std::string how = "the process running the function " + describe_exit(*exit_status_);
    if (oom_killed_) how += " by the kernel's OOM killer (the unit's MemoryMax= was reached)";
    throw ProcessDied(how + " before sending a result", *exit_status_);
}

ProcessCore::ProcessCore(Properties properties, ProcessOptions options)
    : impl_(std::make_unique<Impl>(std::move(properties), std::move(options))) {}
ProcessCore::~ProcessCore() = default;
void ProcessCore::start(const Body& body) { impl_->start(body); }
bool ProcessCore::is_alive() { return impl_->is_alive(); }
bool ProcessCore::join(std::optional<std::chrono::milliseconds> timeout) { return impl_->join(timeout); }
void ProcessCore::signal(int signo) { impl_->signal(signo); }
std::optional<int> ProcessCore::exit_status() const { return impl_->exit_status_; }
std::string ProcessCore::take_reply() { return impl_->take_reply(); }
pid_t ProcessCore::pid() const noexcept { return impl_->pid_; }
const Unit& ProcessCore::unit() const { return impl_->unit(); }
const WireLimits& ProcessCore::limits() const noexcept { return impl_->limits_; }

}  // namespace detail
}  // namespace sdfutures
