#pragma once
// What a child forked outside a unit copies from the unit's main process to enter it (unit_entry.hpp): read once
// by the owner, from the verified main process, and sent to every child as its release (bootstrap.hpp), so that
// eight workers do not each read and parse the same /proc files. Private to the library.

#include <sys/resource.h>
#include <sys/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sdfutures::detail {

// The namespaces entry joins, in the order it joins them: mnt last, after it paths are those of the unit's mount
// namespace.
inline constexpr std::array<const char*, 4> kEntryNamespaces{"net", "ipc", "uts", "mnt"};

struct EntryPlan {
    pid_t main_pid = 0;  // for what only the child can read: the working directory, in the unit's mount namespace
    std::array<std::uint64_t, kEntryNamespaces.size()> namespace_inodes{};  // of /proc/PID/ns/<kEntryNamespaces[i]>
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;           // supplementary groups
    std::uint64_t bounding_set = 0;      // CapBnd
    bool no_new_privs = false;
    mode_t umask = 0;
    int nice = 0;
    std::vector<struct rlimit> rlimits;  // RLIMIT_* in order, as many as /proc/PID/limits lists
    std::string environment;             // /proc/PID/environ: NUL-terminated NAME=value entries
};

// Owner: reads the plan from the unit's main process, checking through one /proc/PID descriptor that the process
// read is still the exec'd anchor program (a pid reused since could belong to anyone). Throws SetupError naming
// the step (e.g. "read rlimits"), as the child's entry did when it read them itself, and for a main process under
// a seccomp filter, which a forked process cannot copy.
EntryPlan read_entry_plan(pid_t main_pid);

// The release message's body, and reading it back: nullopt for anything short, long or out of range.
std::string encode_entry_plan(const EntryPlan& plan);
std::optional<EntryPlan> decode_entry_plan(std::string_view body);

}  // namespace sdfutures::detail
