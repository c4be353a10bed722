#include "support/syscall_injection.hpp"

#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cerrno>

#include "sys.hpp"

namespace sdfutures::testing {
namespace {

// One plan per kind of call. The wrappers installed in the seam are plain functions, so the plans are globals;
// atomics, because the pool's dispatcher thread makes the calls while the test thread reads the counts.
struct Plan {
    std::atomic<int> error_number{0};
    std::atomic<bool> short_transfer{false};
    std::atomic<bool> only_nonblocking{false};
    std::atomic<int> every{1};
    std::atomic<int> times{0};
    std::atomic<std::int64_t> calls{0};
    std::atomic<std::int64_t> injected{0};
};
std::array<Plan, 6> plans;

Plan& plan_of(Call call) { return plans.at(static_cast<std::size_t>(call)); }

// True when this call is the one to spoil (and counts it).
bool this_one(Call call, bool nonblocking = true) {
    Plan& p = plan_of(call);
    if (p.only_nonblocking && !nonblocking) return false;
    const int every = std::max(p.every.load(), 1);
    if (++p.calls % every != 0) return false;
    if (const int times = p.times; times > 0 && p.injected >= times) return false;
    ++p.injected;
    return true;
}

int planned_errno(Call call) { return plan_of(call).error_number.load(); }
bool planned_short(Call call) { return plan_of(call).short_transfer.load(); }

ssize_t injected_read(int fd, void* data, std::size_t size) {
    if (this_one(Call::read)) {
        errno = planned_errno(Call::read);
        return -1;
    }
    return ::read(fd, data, size);
}

ssize_t injected_write(int fd, const void* data, std::size_t size) {
    if (this_one(Call::write)) {
        if (planned_short(Call::write)) return ::write(fd, data, std::max<std::size_t>(size / 2, 1));
        errno = planned_errno(Call::write);
        return -1;
    }
    return ::write(fd, data, size);
}

// The same iovecs with only the first `keep` bytes of them (the last ones dropped or shortened).
std::size_t first_bytes(const iovec* parts, std::size_t count, std::size_t keep, std::array<iovec, 8>& out) {
    std::size_t kept = 0;
    for (std::size_t i = 0; i < count && keep > 0 && kept < out.size(); ++i) {
        out[kept] = parts[i];
        out[kept].iov_len = std::min(out[kept].iov_len, keep);
        keep -= out[kept].iov_len;
        ++kept;
    }
    return kept;
}

ssize_t injected_writev(int fd, const iovec* parts, int count) {
    if (this_one(Call::writev)) {
        if (!planned_short(Call::writev)) {
            errno = planned_errno(Call::writev);
            return -1;
        }
        std::size_t total = 0;
        for (int i = 0; i < count; ++i) total += parts[i].iov_len;
        std::array<iovec, 8> shorter{};
        const std::size_t kept = first_bytes(parts, static_cast<std::size_t>(count), std::max<std::size_t>(total / 2, 1), shorter);
        return ::writev(fd, shorter.data(), static_cast<int>(kept));
    }
    return ::writev(fd, parts, count);
}

ssize_t injected_sendmsg(int fd, const msghdr* message, int flags) {
    if (this_one(Call::sendmsg, (flags & MSG_DONTWAIT) != 0)) {
        if (!planned_short(Call::sendmsg)) {
            errno = planned_errno(Call::sendmsg);
            return -1;
        }
        // The record cut to half its length.
        std::size_t total = 0;
        for (std::size_t i = 0; i < message->msg_iovlen; ++i) total += message->msg_iov[i].iov_len;
        std::array<iovec, 8> parts{};
        msghdr shorter = *message;
        shorter.msg_iov = parts.data();
        shorter.msg_iovlen = first_bytes(message->msg_iov, message->msg_iovlen, total / 2, parts);
        return ::sendmsg(fd, &shorter, flags);
    }
    return ::sendmsg(fd, message, flags);
}

ssize_t injected_recvmsg(int fd, msghdr* message, int flags) {
    if (this_one(Call::recvmsg, (flags & MSG_DONTWAIT) != 0)) {
        errno = planned_errno(Call::recvmsg);
        return -1;
    }
    return ::recvmsg(fd, message, flags);
}

// sendmmsg: an injected failure is the call's (as the kernel fails it when its first record cannot go); a short
// transfer sends only the first record, cut to half its length, and says so in its msg_len.
int injected_sendmmsg(int fd, mmsghdr* messages, unsigned count, int flags) {
    if (count > 0 && this_one(Call::sendmsg, (flags & MSG_DONTWAIT) != 0)) {
        if (!planned_short(Call::sendmsg)) {
            errno = planned_errno(Call::sendmsg);
            return -1;
        }
        const msghdr& first = messages[0].msg_hdr;
        std::size_t total = 0;
        for (std::size_t i = 0; i < first.msg_iovlen; ++i) total += first.msg_iov[i].iov_len;
        std::array<iovec, 8> parts{};
        msghdr shorter = first;
        shorter.msg_iov = parts.data();
        shorter.msg_iovlen = first_bytes(first.msg_iov, first.msg_iovlen, total / 2, parts);
        const ssize_t n = ::sendmsg(fd, &shorter, flags);
        if (n < 0) return -1;
        messages[0].msg_len = static_cast<unsigned>(n);
        return 1;
    }
    return ::sendmmsg(fd, messages, count, flags);
}

int injected_recvmmsg(int fd, mmsghdr* messages, unsigned count, int flags) {
    if (this_one(Call::recvmsg, (flags & MSG_DONTWAIT) != 0)) {
        errno = planned_errno(Call::recvmsg);
        return -1;
    }
    return ::recvmmsg(fd, messages, count, flags, nullptr);
}

int injected_poll(pollfd* fds, nfds_t count, int timeout_ms) {
    if (this_one(Call::poll)) {
        errno = planned_errno(Call::poll);
        return -1;
    }
    return ::poll(fds, count, timeout_ms);
}

}  // namespace

SyscallInjection::~SyscallInjection() {
    detail::sys::restore_default_calls();
    for (auto& p : plans) {
        p.error_number = 0, p.short_transfer = false, p.only_nonblocking = false, p.every = 1, p.times = 0;
        p.calls = 0, p.injected = 0;
    }
}

void SyscallInjection::inject(Call call, Injected how) {
    Plan& p = plan_of(call);
    p.error_number = how.error_number;
    p.short_transfer = how.short_transfer;
    p.only_nonblocking = how.only_nonblocking;
    p.every = how.every;
    p.times = how.times;
    p.injected = 0;
    auto& calls = detail::sys::calls();
    switch (call) {
        case Call::read: calls.read = injected_read; break;
        case Call::write: calls.write = injected_write; break;
        case Call::sendmsg:
            calls.sendmsg = injected_sendmsg;
            calls.sendmmsg = injected_sendmmsg;
            break;
        case Call::recvmsg:
            calls.recvmsg = injected_recvmsg;
            calls.recvmmsg = injected_recvmmsg;
            break;
        case Call::poll: calls.poll = injected_poll; break;
        case Call::writev: calls.writev = injected_writev; break;
    }
}

std::int64_t SyscallInjection::injected(Call call) const { return plan_of(call).injected.load(); }

}  // namespace sdfutures::testing
