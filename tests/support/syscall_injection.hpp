#pragma once
// Failure injection through the library's syscall seam (src/sys.hpp): while a SyscallInjection lives, the calls it
// was told about fail with the errno it was told, or transfer less than asked, on every n-th call. Whatever the
// process forks meanwhile (a pool's fork server and workers) inherits the injection.

#include <atomic>
#include <cstdint>

namespace sdfutures::testing {

// sendmsg and recvmsg stand for the channel's record calls: their plans apply to sendmmsg and recvmmsg too.
enum class Call { read, write, sendmsg, recvmsg, poll, writev };

struct Injected {
    int error_number = 0;  // the errno of an injected failure; 0 with `short_transfer`
    bool short_transfer = false;  // write, writev: half the bytes; sendmsg: the record cut to half its length
    bool only_nonblocking = false;  // sendmsg/recvmsg: only calls with MSG_DONTWAIT (EAGAIN is only theirs)
    int every = 1;  // the n-th, 2n-th, ... call of this kind is the one that fails
    int times = 0;  // at most this many failures (0: no limit)
};

class SyscallInjection {
public:
    SyscallInjection() = default;
    SyscallInjection(const SyscallInjection&) = delete;
    SyscallInjection& operator=(const SyscallInjection&) = delete;
    // Restores the C library's functions.
    ~SyscallInjection();

    // From now on, `call` fails as `how` says.
    void inject(Call call, Injected how);
    // How many calls of that kind were made to fail (or cut short) so far, in this process.
    std::int64_t injected(Call call) const;
};

}  // namespace sdfutures::testing
