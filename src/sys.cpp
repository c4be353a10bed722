#include "sys.hpp"

#include <cerrno>

namespace sdfutures::detail::sys {
namespace {

// The C library's functions by their own types (::read's parameters are not spelled as ours, but convert).
ssize_t libc_read(int fd, void* data, std::size_t size) { return ::read(fd, data, size); }
ssize_t libc_write(int fd, const void* data, std::size_t size) { return ::write(fd, data, size); }
ssize_t libc_writev(int fd, const iovec* parts, int count) { return ::writev(fd, parts, count); }
ssize_t libc_sendmsg(int fd, const msghdr* message, int flags) { return ::sendmsg(fd, message, flags); }
ssize_t libc_recvmsg(int fd, msghdr* message, int flags) { return ::recvmsg(fd, message, flags); }
int libc_sendmmsg(int fd, mmsghdr* messages, unsigned count, int flags) { return ::sendmmsg(fd, messages, count, flags); }
int libc_recvmmsg(int fd, mmsghdr* messages, unsigned count, int flags) {
    return ::recvmmsg(fd, messages, count, flags, nullptr);
}
int libc_poll(pollfd* fds, nfds_t count, int timeout_ms) { return ::poll(fds, count, timeout_ms); }
int libc_madvise(void* address, std::size_t size, int advice) { return ::madvise(address, size, advice); }

// Constant-initialized (no constructor runs), so a call made before main, or by a forked child, finds it filled.
constinit Calls the_calls{libc_read, libc_write, libc_writev, libc_sendmsg, libc_recvmsg, libc_sendmmsg, libc_recvmmsg,
                         libc_poll,  libc_madvise};

}  // namespace

Calls& calls() noexcept { return the_calls; }

void restore_default_calls() noexcept {
    the_calls.read.store(libc_read);
    the_calls.write.store(libc_write);
    the_calls.writev.store(libc_writev);
    the_calls.sendmsg.store(libc_sendmsg);
    the_calls.recvmsg.store(libc_recvmsg);
    the_calls.sendmmsg.store(libc_sendmmsg);
    the_calls.recvmmsg.store(libc_recvmmsg);
    the_calls.poll.store(libc_poll);
    the_calls.madvise.store(libc_madvise);
}

short poll_now(int fd, short events) {
    pollfd p{fd, events, 0};
    int r;
    do r = sys::poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    return r == 1 ? p.revents : short{0};
}

}  // namespace sdfutures::detail::sys
