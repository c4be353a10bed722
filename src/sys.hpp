#pragma once
// The seam in front of the system calls that move the pool's and Command's data: every read, write, writev,
// sendmsg, recvmsg, sendmmsg, recvmmsg and poll of the channel, the dispatcher, a process's reply pipe and the
// descriptor helpers, and the madvise of large receive buffers, goes through sys::read, sys::write, ... here, which
// call what `calls()` holds: the C library's functions, unless a test installed others. Private to the library.
//
// Why: EINTR, EAGAIN and short transfers are the paths a loop gets wrong, and a real kernel produces them only
// now and then. With the seam a test makes them happen on every call it chooses (tests/syscall_seam_test.cpp;
// the idea of fmt's posix-mock, done with a table rather than link-time replacement so that one binary tests both).
//
// Each entry is an atomic pointer, loaded relaxed: a test may install a function while the dispatcher thread runs
// (a plain pointer would be a data race), and the load costs nothing next to the call. Forked children inherit
// what the owner installed: a worker of a forked pool sees the same injected failures as its owner.

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>

namespace sdfutures::detail::sys {

using ReadCall = ssize_t (*)(int fd, void* data, std::size_t size);
using WriteCall = ssize_t (*)(int fd, const void* data, std::size_t size);
using WritevCall = ssize_t (*)(int fd, const iovec* parts, int count);
using SendmsgCall = ssize_t (*)(int fd, const msghdr* message, int flags);
using RecvmsgCall = ssize_t (*)(int fd, msghdr* message, int flags);
// sendmmsg(2), recvmmsg(2) (without a timeout): several records in one call.
using SendmmsgCall = int (*)(int fd, mmsghdr* messages, unsigned count, int flags);
using RecvmmsgCall = int (*)(int fd, mmsghdr* messages, unsigned count, int flags);
using PollCall = int (*)(pollfd* fds, nfds_t count, int timeout_ms);
using MadviseCall = int (*)(void* address, std::size_t size, int advice);

struct Calls {
    std::atomic<ReadCall> read;
    std::atomic<WriteCall> write;
    std::atomic<WritevCall> writev;
    std::atomic<SendmsgCall> sendmsg;
    std::atomic<RecvmsgCall> recvmsg;
    std::atomic<SendmmsgCall> sendmmsg;
    std::atomic<RecvmmsgCall> recvmmsg;
    std::atomic<PollCall> poll;
    std::atomic<MadviseCall> madvise;
};

// The table in use. restore_default_calls() puts the C library's functions back.
Calls& calls() noexcept;
void restore_default_calls() noexcept;

inline ssize_t read(int fd, void* data, std::size_t size) {
    return calls().read.load(std::memory_order_relaxed)(fd, data, size);
}
inline ssize_t write(int fd, const void* data, std::size_t size) {
    return calls().write.load(std::memory_order_relaxed)(fd, data, size);
}
inline ssize_t writev(int fd, const iovec* parts, int count) {
    return calls().writev.load(std::memory_order_relaxed)(fd, parts, count);
}
inline ssize_t sendmsg(int fd, const msghdr* message, int flags) {
    return calls().sendmsg.load(std::memory_order_relaxed)(fd, message, flags);
}
inline ssize_t recvmsg(int fd, msghdr* message, int flags) {
    return calls().recvmsg.load(std::memory_order_relaxed)(fd, message, flags);
}
inline int sendmmsg(int fd, mmsghdr* messages, unsigned count, int flags) {
    return calls().sendmmsg.load(std::memory_order_relaxed)(fd, messages, count, flags);
}
inline int recvmmsg(int fd, mmsghdr* messages, unsigned count, int flags) {
    return calls().recvmmsg.load(std::memory_order_relaxed)(fd, messages, count, flags);
}
inline int poll(pollfd* fds, nfds_t count, int timeout_ms) {
    return calls().poll.load(std::memory_order_relaxed)(fds, count, timeout_ms);
}

inline int madvise(void* address, std::size_t size, int advice) {
    return calls().madvise.load(std::memory_order_relaxed)(address, size, advice);
}

// poll(2) of one descriptor without waiting: its revents, or 0. An interruption is not an answer, so it asks again
// (an interrupted "has the peer hung up?" must not read as "no").
short poll_now(int fd, short events);

}  // namespace sdfutures::detail::sys
