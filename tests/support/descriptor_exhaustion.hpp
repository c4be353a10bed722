#pragma once
// Running out of file descriptors at each step of an operation in turn: the operation must either work or
// throw an sdfutures::Error, and leave nothing behind either way.

#include <sys/resource.h>

#include <functional>
#include <string>
#include <vector>

#include "sdfutures/manager.hpp"

namespace sdfutures::testing {

// The soft RLIMIT_NOFILE at which exactly `allowed` more descriptors can be opened.
rlim_t limit_allowing(int allowed);

// Lowers the soft RLIMIT_NOFILE for its lifetime.
class SoftDescriptorLimit {
public:
    explicit SoftDescriptorLimit(rlim_t soft);
    ~SoftDescriptorLimit();
    SoftDescriptorLimit(const SoftDescriptorLimit&) = delete;
    SoftDescriptorLimit& operator=(const SoftDescriptorLimit&) = delete;

private:
    rlimit saved_{};
};

struct ExhaustionSweep {
    int failed = 0;     // attempts that threw sdfutures::Error
    int succeeded = 0;  // attempts that worked
    int system_errors = 0;  // of the failed ones, those that threw SystemError (each checked to be EMFILE)
    std::vector<std::string> errors;  // "limit N: what()", one per failed attempt
};

// Runs `attempt` `steps` times, the n-th time (from 0) with the soft RLIMIT_NOFILE set so that only n more
// descriptors can be opened (the first time, the very first descriptor the attempt asks for fails with EMFILE),
// and restores the limit after each. After each attempt it adds a test failure naming the limit for anything the
// attempt left behind (the leak audit), for any exception that is not an sdfutures::Error, and for a failure
// after an attempt with fewer descriptors to spare had worked.
ExhaustionSweep sweep_descriptor_exhaustion(Manager& manager, int steps, const std::function<void()>& attempt);

}  // namespace sdfutures::testing
