#include "fd_util.hpp"
#include "sys.hpp"

#include <poll.h>
#include <signal.h>

#include <algorithm>
#include <cstring>

namespace sdfutures::detail {

bool send_with_fds(int socket, const void* data, size_t size, std::span<const int> fds) noexcept {
    if (fds.size() > kMaxPassedFds) {
        errno = EINVAL;
        return false;
    }
    iovec iov{const_cast<void*>(data), size};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)] = {};
    if (!fds.empty()) {
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    for (;;) {
        ssize_t n = sys::sendmsg(socket, &msg, MSG_NOSIGNAL);
        if (n >= 0) return static_cast<size_t>(n) == size;
        if (errno != EINTR) return false;
    }
}

ssize_t receive_with_fds(int socket, void* data, size_t size, std::span<Fd> fds, bool* dropped) noexcept {
    for (auto& fd : fds) fd.reset();
    iovec iov{data, size};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    // Room for more than the sender may send, so that a surplus is received (and closed) rather than
    // truncated away by the kernel.
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * (kMaxPassedFds + 2))] = {};
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do n = sys::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    if (dropped) *dropped = (msg.msg_flags & MSG_CTRUNC) != 0;
    std::size_t next = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int fd = -1;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (next < fds.size()) fds[next++] = Fd(fd);
            else ::close(fd);
        }
    }
    return n;
}

std::optional<std::string> read_to_end(int fd, std::size_t max_bytes) {
    constexpr std::size_t kChunkBytes = 4096;
    std::string out;
    for (;;) {
        // Room for one byte past the bound, so that an input longer than it shows as such.
        const std::size_t room = max_bytes - out.size();
        const std::size_t want = room >= kChunkBytes ? kChunkBytes : room + 1;
        const std::size_t had = out.size();
        out.resize(had + want);
        const ssize_t n = sys::read(fd, out.data() + had, want);
        out.resize(had + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return std::nullopt;
        if (n == 0) return out;
        if (out.size() > max_bytes) {
            errno = EFBIG;
            return std::nullopt;
        }
    }
}

bool write_all(int fd, const void* data, size_t size) noexcept {
    auto p = static_cast<const char*>(data);
    while (size > 0) {
        ssize_t n = sys::write(fd, p, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += n;
        size -= static_cast<size_t>(n);
    }
    return true;
}

bool writev_all(int fd, std::span<iovec> parts) noexcept {
    while (!parts.empty() && parts.front().iov_len == 0) parts = parts.subspan(1);
    while (!parts.empty()) {
        const ssize_t n = sys::writev(fd, parts.data(), static_cast<int>(parts.size()));
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
            pollfd room{fd, POLLOUT, 0};
            if (sys::poll(&room, 1, -1) < 0 && errno != EINTR) return false;
            continue;
        }
        // Past the parts written whole, then into the one written in part.
        auto written = static_cast<size_t>(n);
        while (!parts.empty() && written >= parts.front().iov_len) {
            written -= parts.front().iov_len;
            parts = parts.subspan(1);
        }
        if (!parts.empty()) {
            parts.front().iov_base = static_cast<char*>(parts.front().iov_base) + written;
            parts.front().iov_len -= written;
        }
    }
    return true;
}

// write(2) to a pipe whose reader may be gone, without SIGPIPE killing this process: the signal is blocked
// for this thread during the call and a SIGPIPE it raised is consumed, unless one was pending already.
ssize_t write_without_sigpipe(int fd, const char* data, size_t size) noexcept {
    sigset_t pipe_set, old_mask, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    bool was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
    ssize_t n = sys::write(fd, data, size);
    int saved = errno;
    if (n < 0 && saved == EPIPE && !was_pending) {
        timespec zero{};
        while (sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    errno = saved;
    return n;
}

}  // namespace sdfutures::detail
