#include "fork_server.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdio_ext.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <vector>
#include <tuple>

#include "bootstrap.hpp"
#include "channel.hpp"
#include "forked_child.hpp"
#include "heartbeat_page.hpp"
#include "sdfutures/pool.hpp"
#include "unit_entry.hpp"
#include "zygote.hpp"

namespace sdfutures::detail {
namespace {

// Largest task message a worker takes: the owner is trusted, this only bounds a corrupted length.
constexpr std::size_t kMaxTaskMessageBytes = std::size_t{1} << 30;

[[noreturn]] void report_setup_failure(int fd, std::string_view step, int error_number, std::string_view detail) {
    send_message(fd, 0, encode_setup_failure(step, error_number, detail));
    ::_exit(125);
}

// A worker: waits to be released (the owner attached it to the unit), enters the unit, then runs tasks until
// its channel closes or its task quota is used up. Each reply is sent as soon as its task returns, never held
// back to batch with the next: if the next task crashes the worker, the finished one's result must already be
// on its way, or the owner would blame the wrong task. Each reply carries the id of the task it answers.
// How a worker forked outside the unit gets into it (bootstrap.hpp): the release comes as the first record on its
// channel. Returns the descriptor its channel is on afterwards.
int enter_after_release(int socket, pid_t server, const WorkerConfig& config, const InheritedState& inherited,
                        MessageReader& reader) {
    return enter_when_released(
        EntryRequest{.parent_pid = server, .keep_fd = socket, .keep_stdio = config.keep_stdio, .inherited = &inherited},
        [&]() -> std::optional<std::string> {
            Message release;
            if (!receive_message(socket, reader, release) || release.id != 0) return std::nullopt;
            return std::string(release.body.view());
        },
        [](int channel_fd, const std::string& report) { send_message(channel_fd, 0, report); });
}

// A worker born inside the unit (StartMethod::exec) has its identity and sandbox from systemd already; it only
// puts its channel where workers keep it and closes what else its server had open.
int settle_in_unit(int socket) {
    if (socket != kEnteredPipeFd && ::dup2(socket, kEnteredPipeFd) < 0) ::_exit(127);
    ::fcntl(kEnteredPipeFd, F_SETFD, FD_CLOEXEC);
    ::syscall(SYS_close_range, kEnteredPipeFd + 1, ~0u, 0);
    return kEnteredPipeFd;
}

// A worker: gets into the unit, then runs tasks until its channel closes or its task quota is used up. Each reply
// is sent as soon as its task returns, never held back to batch with the next: if the next task crashes the
// worker, the finished one's result must already be on its way, or the owner would blame the wrong task. Each
// reply carries the id of the task it answers.
[[noreturn]] void worker_main(int socket, int heartbeat_page, pid_t server, const WorkerConfig& config,
                              const InheritedState& inherited) {
    detach_from_owner_state();
    if (heartbeat_page >= 0) {
        // Mapped before the channel moves and the other descriptors close: the mapping outlives the descriptor.
        if (!adopt_heartbeat_page(heartbeat_page)) ::_exit(127);
        ::close(heartbeat_page);
    }
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != server) ::_exit(127);
    MessageReader reader(kMaxTaskMessageBytes);
    const int fd =
        config.born_in_unit ? settle_in_unit(socket) : enter_after_release(socket, server, config, inherited, reader);
    if (config.initializer) {
        try {
            config.initializer();
        } catch (const std::exception& e) {
            report_setup_failure(fd, "initializer", 0, e.what());
        } catch (...) {
            report_setup_failure(fd, "initializer", 0, "threw a non-standard exception");
        }
    }
    if (!send_message(fd, 0, encode_void_reply())) ::_exit(0);  // entered and initialized

    std::size_t done = 0;
    for (;;) {
        Message task;
        try {
            if (!receive_message(fd, reader, task)) break;
        } catch (...) {
            break;  // the owner sent what it never sends: give up rather than guess
        }
        EncodedReply reply;
        try {
            auto [invoker, function, arguments] = decode_task(task.body.view(), WireLimits{kMaxTaskMessageBytes});
            const auto code = [&](std::uint64_t at) { return config.code_base + static_cast<std::uintptr_t>(at); };
            reply = reinterpret_cast<TaskInvoker>(code(invoker))(function ? code(function) : 0, arguments,
                                                                 config.limits);
        } catch (...) {
            reply = encode_exception_reply(std::current_exception());
        }
        if (!send_message(fd, task.id, reply.head(), reply.blob())) break;
        if (config.max_tasks && ++done >= config.max_tasks) break;
    }
    std::fflush(nullptr);
    ::_exit(0);
}

// Forks one worker; reports it (with its socket and pidfd) or the failure on the control socket.
void spawn_worker(const WorkerConfig& config, const InheritedState& inherited, pid_t self, int sigfd,
                  std::vector<pid_t>& workers) {
    Fd page;
    if (config.heartbeat) {
        page = create_heartbeat_page();
        if (!page) {
            ForkServerEvent e{ForkServerEvent::spawn_failed, 0, errno};
            send_with_fds(kControlFd, &e, sizeof e);
            return;
        }
    }
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
        ForkServerEvent e{ForkServerEvent::spawn_failed, 0, errno};
        send_with_fds(kControlFd, &e, sizeof e);
        return;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
        ::close(pair[0]);
        ::close(sigfd);
        worker_main(pair[1], page.get(), self, config, inherited);
    }
    ::close(pair[1]);
    // The pidfd is opened here, by the worker's parent, before this loop can reap it: the pid cannot have been
    // reused yet. The owner, not the worker's parent, could not promise that.
    int pidfd = -1;
    int err = errno;
    if (pid > 0) {
        pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
        if (pidfd < 0) {
            err = errno;
            ::kill(pid, SIGKILL);     // its own child, not reaped yet: the pid is still the worker's
            workers.push_back(pid);  // reaped (and reported as exited) like any other
        }
    }
    if (pid < 0 || pidfd < 0) {
        ForkServerEvent e{ForkServerEvent::spawn_failed, 0, err};
        send_with_fds(kControlFd, &e, sizeof e);
    } else {
        workers.push_back(pid);
        ForkServerEvent e{ForkServerEvent::spawned, pid, 0};
        const int passed[] = {pair[0], pidfd, page.get()};
        send_with_fds(kControlFd, &e, sizeof e, std::span<const int>(passed, page ? 3 : 2));
        ::close(pidfd);
    }
    ::close(pair[0]);
}

// The threads of this process, from /proc/self/task (1 when it cannot be read: what a fork leaves).
int thread_count() noexcept {
    DIR* tasks = ::opendir("/proc/self/task");
    if (!tasks) return 1;
    int n = 0;
    while (dirent* e = ::readdir(tasks))  // NOLINT(concurrency-mt-unsafe): a DIR stream of its own, one reader
        if (e->d_name[0] != '.') ++n;
    ::closedir(tasks);
    return std::max(n, 1);
}

}  // namespace

[[noreturn]] void fork_server_main(const WorkerConfig& config) {
    // Exits when the owner's end of the control socket closes (the owner ended), killing its workers. SIGCHLD gets
    // its default action first: inherited as ignored (an owner that ignores it), the kernel would reap the workers
    // itself and their exits would never be reported.
    reset_child_signal();
    // The server of a pool made inside a task is no worker: neither it nor its workers beat for the outer task.
    forget_heartbeat_page();
    // Already registered when the owner forked this server (the flag came along); registered here for a server
    // from the zygote, a single-threaded line from init() on, where taking glibc's exit-handler lock is safe.
    prepare_exit_guard();
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, nullptr);  // NOLINT(concurrency-mt-unsafe): the fork server has one thread
    int sigfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    // What every worker will have when it enters its unit, read here once rather than by each worker: a worker is a
    // fork of this process, which changes none of it from here on. Not by the owner: a server forked from the
    // zygote (StartMethod::forkserver) has the zygote's rlimits, nice, umask, ..., which are those of the program
    // at sdfutures::init(), not necessarily the owner's now. A server born in the unit forks workers that enter
    // nothing.
    const InheritedState inherited = config.born_in_unit ? InheritedState{} : read_inherited_state();
    std::vector<pid_t> workers;
    const pid_t self = ::getpid();
    auto report_exits = [&] {
        for (;;) {
            int status = 0;
            pid_t pid = ::waitpid(-1, &status, WNOHANG | WUNTRACED | WCONTINUED);
            if (pid <= 0) return;
            ForkServerEvent e{ForkServerEvent::exited, pid, status};
            if (WIFSTOPPED(status)) e.kind = ForkServerEvent::stopped;
            else if (WIFCONTINUED(status)) e.kind = ForkServerEvent::continued;
            else std::erase(workers, pid);
            send_with_fds(kControlFd, &e, sizeof e);
        }
    };
    // A SIGCHLD reaches the signalfd only when no thread of this process has it unblocked. A server forked from
    // the owner or the zygote has one thread; one systemd executed (StartMethod::exec) may have others that the
    // program's static constructors or a sanitizer's runtime started before main() reached init(), and the signal
    // may go to one of them instead. So the wait statuses are also looked for at a short interval.
    constexpr int kReapIntervalMs = 100;
    const bool signal_may_go_astray = thread_count() > 1;
    for (;;) {
        pollfd fds[2] = {{kControlFd, POLLIN, 0}, {sigfd, POLLIN, 0}};
        if (::poll(fds, 2, signal_may_go_astray && !workers.empty() ? kReapIntervalMs : -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (fds[1].revents & POLLIN) {
            signalfd_siginfo info;
            while (::read(sigfd, &info, sizeof info) > 0) {
            }
        }
        report_exits();
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ForkServerRequest request{};
            ssize_t n = receive_with_fds(kControlFd, &request, sizeof request);
            if (n <= 0) break;
            for (uint32_t i = 0; i < request.spawn_count; ++i) spawn_worker(config, inherited, self, sigfd, workers);
        }
    }
    for (pid_t pid : workers) ::kill(pid, SIGKILL);
    while (::waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
    }
    ::_exit(0);
}

ForkServer start_fork_server(const WorkerConfig& config, StartMethod method) {
    if (method == StartMethod::forkserver) return fork_server_from_zygote(config);
    prepare_exit_guard();
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
        throw SystemError("socketpair", errno, "for the fork server");
    pid_t pid = ::fork();
    if (pid < 0) {
        int err = errno;
        ::close(pair[0]);
        ::close(pair[1]);
        throw SystemError("fork", err, "of the fork server");
    }
    if (pid == 0) {
        // Holds nothing of the owner's but the control socket: not the bus, not the unit's lifeline. It ends when
        // that socket's other end closes, which the owner's death does too (a parent-death signal would follow
        // the constructing thread, not the owner).
        if (pair[1] != kControlFd) ::dup2(pair[1], kControlFd);
        ::syscall(SYS_close_range, kControlFd + 1, ~0u, 0);
        ::fcntl(kControlFd, F_SETFD, FD_CLOEXEC);
        ::__fpurge(stdout);
        ::__fpurge(stderr);
        fork_server_main(config);
    }
    ::close(pair[1]);
    ForkServer server;
    server.pid = pid;
    server.control = Fd(pair[0]);
    // Nothing but this object reaps it, unless the owner reaps every child itself (a SIGCHLD handler): then the
    // pidfd fails with ESRCH only if it is already gone, which is what it is for.
    server.pidfd = Fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    if (!server.pidfd && errno != ESRCH) {
        int err = errno;
        server.control.reset();
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        throw SystemError("pidfd_open", err, "of the fork server");
    }
    return server;
}

void stop_fork_server(ForkServer& server) noexcept {
    server.control.reset();
    if (server.pidfd) {
        pollfd ended{server.pidfd.get(), POLLIN, 0};
        int r;
        do r = ::poll(&ended, 1, 5000);
        while (r < 0 && errno == EINTR);
        if (r == 0) ::syscall(SYS_pidfd_send_signal, server.pidfd.get(), SIGKILL, nullptr, 0);
        // Reaps it if it is this process's child and nobody else did: by pidfd, never a pid that may be reused.
        siginfo_t info{};
        while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(server.pidfd.get()), &info,
                        WEXITED | (r == 0 ? 0 : WNOHANG)) < 0 &&
               errno == EINTR) {
        }
    }
    server.pidfd.reset();
    server.pid = -1;
}

std::string encode_task(std::uintptr_t invoker, std::uintptr_t function, std::string_view arguments) {
    // Packed in place rather than through a std::tuple, which would copy the arguments once more.
    std::string payload;
    payload.reserve(arguments.size() + 32);
    StringSink sink{&payload};
    msgpack::packer<StringSink> packer(sink);
    packer.pack_array(3);
    packer.pack(static_cast<std::uint64_t>(invoker));
    packer.pack(static_cast<std::uint64_t>(function));
    packer.pack_str(static_cast<uint32_t>(arguments.size()));
    packer.pack_str_body(arguments.data(), static_cast<uint32_t>(arguments.size()));
    return payload;
}

TaskMessage decode_task(std::string_view body, const WireLimits& limits) {
    const msgpack::object_handle handle = parse_untrusted(body, limits, "task message");
    const msgpack::object& task = handle.get();
    const ValuePath where = ValuePath::root("task message");
    check_container_shape(task, where, msgpack::type::ARRAY, 3, "an array");
    const msgpack::object* items = task.via.array.ptr;
    check_integer_shape(items[0], where.child(ValuePath::Step::element, 0), 0, UINT64_MAX);
    check_integer_shape(items[1], where.child(ValuePath::Step::element, 1), 0, UINT64_MAX);
    check_blob_shape(items[2], where.child(ValuePath::Step::element, 2), std::nullopt);
    // parse_untrusted leaves blobs in `body` (it never copies them into its zone): the view outlives the handle.
    return {items[0].via.u64, items[1].via.u64, {items[2].via.str.ptr, items[2].via.str.size}};
}

}  // namespace sdfutures::detail
