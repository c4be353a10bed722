#include "fork_server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <set>
#include <tuple>

#include "sdfutures/pool.hpp"
#include "unit_entry.hpp"

namespace sdfutures::detail {
namespace {

constexpr int kControlFd = 3;

std::string read_frame_blocking(int fd, FrameReader& reader, bool& eof) {
    for (;;) {
        if (auto frame = reader.next()) return std::move(*frame);
        auto area = reader.write_area(1u << 20);
        ssize_t n = ::read(fd, area.data(), area.size());
        if (n < 0 && errno == EINTR) {
            reader.commit(0);
            continue;
        }
        reader.commit(n > 0 ? static_cast<size_t>(n) : 0);
        if (n <= 0) {
            eof = true;
            return {};
        }
    }
}

bool write_all_vectored(int fd, iovec (&parts)[2]) {
    std::size_t part = 0;
    while (part < 2) {
        ssize_t n = ::writev(fd, parts + part, static_cast<int>(2 - part));
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        auto written = static_cast<std::size_t>(n);
        while (part < 2 && written >= parts[part].iov_len) written -= parts[part++].iov_len;
        if (part < 2) {
            parts[part].iov_base = static_cast<char*>(parts[part].iov_base) + written;
            parts[part].iov_len -= written;
        }
    }
    return true;
}

// A worker: waits to be released (the owner attached it to the unit), enters the unit, then runs tasks until
// its socket closes or its task quota is used up. Each reply is written as soon as its task returns, never held
// back to batch with the next: if the next task crashes the worker, the finished one's result must already be
// on its way, or the owner would blame the wrong task. Batching still happens on the owner's side, which reads
// every reply that has arrived in one go.
[[noreturn]] void worker_main(int socket, pid_t server, const WorkerConfig& config) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != server) ::_exit(127);
    pid_t main_pid = 0;
    ssize_t n;
    do n = ::read(socket, &main_pid, sizeof main_pid);
    while (n < 0 && errno == EINTR);
    if (n != sizeof main_pid) ::_exit(127);

    EntryFailure failure;
    if (!enter_unit(EntryRequest{main_pid, server, socket, config.keep_stdio}, failure)) {
        int fd = ::fcntl(socket, F_GETFD) >= 0 ? socket : kEnteredPipeFd;
        auto reply = encode_setup_failure(failure.step, failure.error_number, failure.detail);
        auto header = frame_header(reply.size());
        write_all(fd, header.data(), header.size());
        write_all(fd, reply.data(), reply.size());
        ::_exit(125);
    }
    int fd = kEnteredPipeFd;
    std::string out;
    auto append_frame = [&out](const std::string& payload) {
        auto header = frame_header(payload.size());
        out.append(header.data(), header.size());
        out.append(payload);
    };
    if (config.initializer) {
        try {
            config.initializer();
        } catch (const std::exception& e) {
            append_frame(encode_setup_failure("initializer", 0, e.what()));
            write_all(fd, out.data(), out.size());
            ::_exit(125);
        } catch (...) {
            append_frame(encode_setup_failure("initializer", 0, "threw a non-standard exception"));
            write_all(fd, out.data(), out.size());
            ::_exit(125);
        }
    }
    append_frame(encode_void_reply());  // entered and initialized
    write_all(fd, out.data(), out.size());
    out.clear();

    WireLimits task_limits = config.limits;
    task_limits.max_frame_bytes = std::max<std::size_t>(task_limits.max_frame_bytes, 1u << 30);
    FrameReader reader(task_limits);
    std::size_t done = 0;
    for (;;) {
        bool eof = false;
        std::string frame = read_frame_blocking(fd, reader, eof);
        if (eof) break;
        std::string reply;
        try {
            auto [invoker, function, arguments] =
                unpack_value<std::tuple<std::uint64_t, std::uint64_t, std::string>>(frame, task_limits);
            reply = reinterpret_cast<TaskInvoker>(static_cast<std::uintptr_t>(invoker))(
                static_cast<std::uintptr_t>(function), arguments, config.limits);
        } catch (...) {
            reply = encode_exception_reply(std::current_exception());
        }
        auto header = frame_header(reply.size());
        iovec parts[2] = {{header.data(), header.size()}, {reply.data(), reply.size()}};
        if (!write_all_vectored(fd, parts)) break;
        if (config.max_tasks && ++done >= config.max_tasks) break;
    }
    std::fflush(nullptr);
    std::cout.flush();
    std::cerr.flush();
    ::_exit(0);
}

[[noreturn]] void fork_server_main(const WorkerConfig& config) {
    // Exits when the owner's end of the control socket closes (the owner ended), killing its workers.
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, nullptr);  // NOLINT(concurrency-mt-unsafe): the fork server has one thread
    int sigfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    std::set<pid_t> workers;
    const pid_t self = ::getpid();
    auto report_exits = [&] {
        for (;;) {
            int status = 0;
            pid_t pid = ::waitpid(-1, &status, WNOHANG);
            if (pid <= 0) return;
            workers.erase(pid);
            ForkServerEvent e{ForkServerEvent::exited, pid, status};
            send_with_fds(kControlFd, &e, sizeof e);
        }
    };
    for (;;) {
        pollfd fds[2] = {{kControlFd, POLLIN, 0}, {sigfd, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (fds[1].revents & POLLIN) {
            signalfd_siginfo info;
            while (::read(sigfd, &info, sizeof info) > 0) {
            }
            report_exits();
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ForkServerRequest request{};
            ssize_t n = receive_with_fds(kControlFd, &request, sizeof request);
            if (n <= 0) break;
            for (uint32_t i = 0; i < request.spawn_count; ++i) {
                int pair[2];
                if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
                    ForkServerEvent e{ForkServerEvent::spawn_failed, 0, errno};
                    send_with_fds(kControlFd, &e, sizeof e);
                    continue;
                }
                pid_t pid = ::fork();
                if (pid == 0) {
                    ::close(pair[0]);
                    ::close(sigfd);
                    ::sigprocmask(SIG_UNBLOCK, &chld, nullptr);  // NOLINT(concurrency-mt-unsafe): a new worker, one thread
                    worker_main(pair[1], self, config);
                }
                ::close(pair[1]);
                // The pidfd is opened here, by the worker's parent, before this loop can reap it: the pid cannot
                // have been reused yet. The owner, not the worker's parent, could not promise that.
                int pidfd = -1;
                if (pid > 0) {
                    pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
                    if (pidfd < 0) {
                        int err = errno;
                        ::kill(pid, SIGKILL);  // its own child, not reaped yet: the pid is still the worker's
                        workers.insert(pid);   // reaped (and reported as exited) like any other
                        errno = err;
                    }
                }
                if (pid < 0 || pidfd < 0) {
                    ForkServerEvent e{ForkServerEvent::spawn_failed, 0, errno};
                    send_with_fds(kControlFd, &e, sizeof e);
                } else {
                    workers.insert(pid);
                    ForkServerEvent e{ForkServerEvent::spawned, pid, 0};
                    const int passed[] = {pair[0], pidfd};
                    send_with_fds(kControlFd, &e, sizeof e, passed);
                    ::close(pidfd);
                }
                ::close(pair[0]);
            }
        }
    }
    for (pid_t pid : workers) ::kill(pid, SIGKILL);
    while (::waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
    }
    ::_exit(0);
}

}  // namespace

pid_t start_fork_server(const WorkerConfig& config, Fd& control) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
        throw Error("socketpair for the fork server: " + errno_text(errno));
    pid_t pid = ::fork();
    if (pid < 0) {
        int err = errno;
        ::close(pair[0]);
        ::close(pair[1]);
        throw Error("fork of the fork server: " + errno_text(err));
    }
    if (pid == 0) {
        // Holds nothing of the owner's but the control socket: not the bus, not the unit's lifeline.
        if (pair[1] != kControlFd) ::dup2(pair[1], kControlFd);
        ::syscall(SYS_close_range, kControlFd + 1, ~0u, 0);
        ::fcntl(kControlFd, F_SETFD, FD_CLOEXEC);
        fork_server_main(config);
    }
    ::close(pair[1]);
    control = Fd(pair[0]);
    return pid;
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

}  // namespace sdfutures::detail
