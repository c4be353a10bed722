#pragma once
// How a forked child takes on the identity of the unit it was attached to. Runs in the child, after the
// parent has attached it to the unit's cgroup and before any user code. Private to the library.

#include <sys/resource.h>
#include <sys/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "entry_plan.hpp"

namespace sdfutures::detail {

struct EntryFailure {
    std::string step;    // which step failed, e.g. "join namespace net"
    int error_number = 0;
    std::string detail;  // what was being done
    int channel_fd = -1;  // where the library's channel is now, to report the failure on
};

// What a child has before it enters, of what entry may change: the values fork(2) copied from the process that
// forked it. Entry calls only what changes one of them (setrlimit for a differing resource, PR_CAPBSET_DROP for a
// capability the child has and the unit lacks, ...): eight workers entering at once on two cores otherwise spend
// their time in some hundred system calls each that change nothing. A value not known (nullopt, a namespace inode
// 0) is applied or inspected anyway, as entry did before it knew any.
struct InheritedState {
    std::array<std::uint64_t, kEntryNamespaces.size()> namespace_inodes{};  // of /proc/self/ns/<kEntryNamespaces[i]>
    std::optional<std::uint64_t> bounding_set;  // the capabilities PR_CAPBSET_READ reports, up to the kernel's last
    std::array<std::optional<struct rlimit>, RLIM_NLIMITS> rlimits{};
    std::optional<int> nice;
    std::optional<mode_t> umask;
    std::optional<bool> no_new_privs;
};

// The calling process's own values, read with system calls only (nothing opened: the caller may be at its
// descriptor limit). A process forked afterwards has the same, as long as the caller changes none of them first.
// Some hundred calls: worth it for a fork server, which reads them once for all its workers; a child that enters
// alone would spend as much reading them as applying everything.
InheritedState read_inherited_state() noexcept;

struct EntryRequest {
    pid_t parent_pid = 0;     // the process the child must die with
    int keep_fd = -1;         // the library's pipe; becomes fd 3
    bool keep_stdio = false;  // keep the parent's stdout/stderr instead of /dev/null
    // What the child inherited, read by its parent before forking it (a pool's fork server reads it once for all
    // its workers); null: nothing is known, and the child applies every step (a TransientUnitProcess's child, the
    // only one its parent forks).
    const InheritedState* inherited = nullptr;
};

// Applies `plan` (what the owner read from the unit's main process) to the calling process. Returns true when it
// has fully entered the unit; on false, `failure` says why and the caller must exit without running user code. On
// success the library pipe is fd 3.
bool enter_unit(const EntryRequest& request, const EntryPlan& plan, EntryFailure& failure);

// The descriptor enter_unit leaves the library pipe on.
inline constexpr int kEnteredPipeFd = 3;

}  // namespace sdfutures::detail
