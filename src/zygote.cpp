#include "zygote.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio_ext.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>

#include "exec_server.hpp"
#include "forked_child.hpp"
#include "sdfutures/init.hpp"

namespace sdfutures {
namespace detail {
namespace {

struct ZygoteRequest {
    std::uint64_t max_frame_bytes;
    std::uint64_t max_depth;
    std::uint64_t max_tasks;
    std::uint64_t initializer;  // a function pointer: the zygote is a fork of this program, so it means the same
    std::uint32_t keep_stdio;
    std::uint32_t heartbeat;  // 1: the server's workers get heartbeat pages (heartbeat_page.hpp)
};
struct ZygoteReply {
    std::int32_t pid;    // > 0: the fork server
    std::int32_t error;  // errno of the step that failed
};

constexpr int kZygoteFd = 3;

struct ZygoteHandle {
    std::mutex mutex;
    Fd socket;  // guarded by mutex
    pid_t pid = -1;
    pid_t owner = -1;
};
ZygoteHandle& zygote() {
    static ZygoteHandle* handle = new ZygoteHandle;  // never destroyed: pools may outlive static destruction
    return *handle;
}

void fork_one_server(const ZygoteRequest& request) {
    ZygoteReply reply{0, 0};
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
        reply.error = errno;
        send_with_fds(kZygoteFd, &reply, sizeof reply);
        return;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(pair[1], kControlFd);  // over the zygote's own socket, which the server must not hold
        ::syscall(SYS_close_range, kControlFd + 1, ~0u, 0);
        ::fcntl(kControlFd, F_SETFD, FD_CLOEXEC);
        WorkerConfig config;
        config.limits = WireLimits{static_cast<std::size_t>(request.max_frame_bytes),
                                   static_cast<std::size_t>(request.max_depth)};
        config.max_tasks = static_cast<std::size_t>(request.max_tasks);
        config.keep_stdio = request.keep_stdio != 0;
        config.heartbeat = request.heartbeat != 0;
        if (request.initializer) config.initializer = reinterpret_cast<void (*)()>(request.initializer);
        fork_server_main(config);
    }
    ::close(pair[1]);
    int pidfd = pid > 0 ? static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)) : -1;  // not reaped before this
    if (pid < 0 || pidfd < 0) {
        reply.error = errno;
        if (pid > 0) ::kill(pid, SIGKILL);
        send_with_fds(kZygoteFd, &reply, sizeof reply);
    } else {
        reply.pid = pid;
        const int passed[] = {pair[0], pidfd};
        send_with_fds(kZygoteFd, &reply, sizeof reply, passed);
        ::close(pidfd);
    }
    ::close(pair[0]);
}

[[noreturn]] void zygote_main() {
    reset_child_signal();
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, nullptr);  // NOLINT(concurrency-mt-unsafe): the zygote has one thread
    int sigfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    for (;;) {
        pollfd fds[2] = {{kZygoteFd, POLLIN, 0}, {sigfd, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (fds[1].revents & POLLIN) {  // fork servers that ended: their owners watch them by pidfd
            signalfd_siginfo info;
            while (::read(sigfd, &info, sizeof info) > 0) {
            }
            while (::waitpid(-1, nullptr, WNOHANG) > 0) {
            }
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ZygoteRequest request{};
            ssize_t n = receive_with_fds(kZygoteFd, &request, sizeof request);
            if (n != static_cast<ssize_t>(sizeof request)) break;  // the owner is gone
            fork_one_server(request);
        }
    }
    ::_exit(0);
}

}  // namespace

void check_zygote_can_serve(const WorkerConfig& config) {
    if (config.initializer) {
        auto* function = config.initializer.target<void (*)()>();
        if (!function || !*function)
            throw StateError("StartMethod::forkserver needs PoolOptions::initializer to be a plain function pointer "
                             "(the zygote was forked before this closure existed)");
    }
    if (zygote_pid() <= 0)
        throw StateError("StartMethod::forkserver needs sdfutures::init(argc, argv) to be called first in main(), "
                         "while the program is single-threaded");
}

ForkServer fork_server_from_zygote(const WorkerConfig& config) {
    check_zygote_can_serve(config);
    ZygoteHandle& z = zygote();
    ZygoteRequest request{config.limits.max_frame_bytes, config.limits.max_depth, config.max_tasks, 0,
                          config.keep_stdio ? 1u : 0u, config.heartbeat ? 1u : 0u};
    if (config.initializer) request.initializer = reinterpret_cast<std::uint64_t>(*config.initializer.target<void (*)()>());
    std::lock_guard lock(z.mutex);
    if (!send_with_fds(z.socket.get(), &request, sizeof request))
        throw Error("the sdfutures zygote (pid " + std::to_string(z.pid) + ") does not answer: " + errno_text(errno));
    ZygoteReply reply{};
    Fd passed[2];
    bool dropped = false;
    ssize_t n = receive_with_fds(z.socket.get(), &reply, sizeof reply, passed, &dropped);
    if (n != static_cast<ssize_t>(sizeof reply))
        throw Error("the sdfutures zygote (pid " + std::to_string(z.pid) + ") ended");
    if (reply.pid <= 0) throw SystemError("fork", reply.error, "in the sdfutures zygote, of a fork server");
    if (!passed[0] || !passed[1])
        throw Error("the fork server's control socket and pidfd did not reach the pool's owner" +
                    std::string(dropped ? " (the kernel dropped them: Too many open files)" : ""));
    ForkServer server;
    server.pid = reply.pid;
    server.control = std::move(passed[0]);
    server.pidfd = std::move(passed[1]);
    return server;
}

pid_t zygote_pid() noexcept {
    ZygoteHandle& z = zygote();
    return z.owner == ::getpid() ? z.pid : -1;
}

}  // namespace detail

void init(int argc, char** argv) {
    // A process systemd executed for a StartMethod::exec pool serves it from here and never returns.
    if (detail::exec_server_requested(argc, argv)) detail::exec_server_main();
    detail::ZygoteHandle& z = detail::zygote();
    std::lock_guard lock(z.mutex);
    if (z.socket && z.owner == ::getpid()) return;
    z.socket.reset();
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
        throw SystemError("socketpair", errno, "in sdfutures::init, for the zygote");
    pid_t pid = ::fork();
    if (pid < 0) {
        int err = errno;
        ::close(pair[0]);
        ::close(pair[1]);
        throw SystemError("fork", err, "in sdfutures::init, of the zygote");
    }
    if (pid == 0) {
        if (pair[1] != detail::kZygoteFd) ::dup2(pair[1], detail::kZygoteFd);
        ::syscall(SYS_close_range, detail::kZygoteFd + 1, ~0u, 0);
        ::fcntl(detail::kZygoteFd, F_SETFD, FD_CLOEXEC);
        ::__fpurge(stdout);
        ::__fpurge(stderr);
        detail::zygote_main();
    }
    ::close(pair[1]);
    z.socket = detail::Fd(pair[0]);
    z.pid = pid;
    z.owner = ::getpid();
}

bool initialized() noexcept { return detail::zygote_pid() > 0; }

}  // namespace sdfutures
