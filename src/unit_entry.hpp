#pragma once
// How a forked child takes on the identity of the unit it was attached to. Runs in the child, after the
// parent has attached it to the unit's cgroup and before any user code. Private to the library.

#include <sys/types.h>

#include <string>

#include "entry_plan.hpp"

namespace sdfutures::detail {

struct EntryFailure {
    std::string step;    // which step failed, e.g. "join namespace net"
    int error_number = 0;
    std::string detail;  // what was being done
    int channel_fd = -1;  // where the library's channel is now, to report the failure on
};

struct EntryRequest {
    pid_t parent_pid = 0;     // the process the child must die with
    int keep_fd = -1;         // the library's pipe; becomes fd 3
    bool keep_stdio = false;  // keep the parent's stdout/stderr instead of /dev/null
};

// Applies `plan` (what the owner read from the unit's main process) to the calling process. Returns true when it
// has fully entered the unit; on false, `failure` says why and the caller must exit without running user code. On
// success the library pipe is fd 3.
bool enter_unit(const EntryRequest& request, const EntryPlan& plan, EntryFailure& failure);

// The descriptor enter_unit leaves the library pipe on.
inline constexpr int kEnteredPipeFd = 3;

}  // namespace sdfutures::detail
