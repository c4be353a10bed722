#include "unit_entry.hpp"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace sdfutures::detail {
namespace {

// The order systemd's own exec_child follows: descriptors are closed first, before anything else is opened; the
// steps that need privileges (namespaces, rlimits, nice) come before credentials are dropped; umask, environment
// and working directory after. Like exec_child, entry opens nothing once the unit's rlimits are applied: a soft
// RLIMIT_NOFILE as low as the unit's may be would refuse it. What to apply comes in the plan the owner read from
// the unit's main process (entry_plan.hpp); the child reads only its own namespaces and the working directory.

bool fail(EntryFailure& failure, std::string step, int err, std::string detail) {
    failure.step = std::move(step);
    failure.error_number = err;
    failure.detail = std::move(detail);
    return false;
}

std::string proc_path(pid_t pid, const char* what) { return "/proc/" + std::to_string(pid) + "/" + what; }

// A descriptor entry opens for itself, closed on every way out.
class OwnFd {
public:
    explicit OwnFd(int fd) : fd_(fd) {}
    ~OwnFd() {
        if (fd_ >= 0) ::close(fd_);
    }
    OwnFd(OwnFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    OwnFd(const OwnFd&) = delete;
    OwnFd& operator=(const OwnFd&) = delete;
    OwnFd& operator=(OwnFd&&) = delete;
    int get() const { return fd_; }

private:
    int fd_;
};

ino_t ns_inode(const char* path) {
    struct stat st {};
    return ::stat(path, &st) == 0 ? st.st_ino : 0;
}

// Built by hand rather than with snprintf: a worker would fault in printf's code just for this (7 µs of a
// 120 µs entry, in a loop timing enter_unit outside bench/), and a fork server's reading may not allocate.
ino_t own_ns_inode(const char* name) {
    static constexpr std::string_view kPrefix = "/proc/self/ns/";
    std::array<char, 32> path{};
    const std::string_view suffix(name);
    if (kPrefix.size() + suffix.size() >= path.size()) return 0;
    std::copy(kPrefix.begin(), kPrefix.end(), path.begin());
    std::copy(suffix.begin(), suffix.end(), path.begin() + static_cast<std::ptrdiff_t>(kPrefix.size()));
    return ns_inode(path.data());
}

// Joins each namespace of the plan this process is not in yet. A child forked by the owner usually shares them all
// with the unit's main process: then it opens nothing here, and with its namespaces known (`inherited`) it does not
// even look at its own.
bool join_namespaces(const EntryPlan& plan, const InheritedState& inherited, EntryFailure& failure) {
    // The flags of kEntryNamespaces, in its order.
    static constexpr std::array<int, kEntryNamespaces.size()> types{CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWNS};
    struct Join {
        OwnFd fd;
        std::size_t kind;
    };
    std::vector<Join> to_join;
    for (std::size_t i = 0; i < kEntryNamespaces.size(); ++i) {
        const char* name = kEntryNamespaces[i];
        ino_t our_ino = inherited.namespace_inodes[i];
        if (our_ino == 0) our_ino = own_ns_inode(name);
        if (our_ino == 0)
            return fail(failure, std::string("inspect namespace ") + name, errno, std::string("/proc/self/ns/") + name);
        if (our_ino == plan.namespace_inodes[i]) continue;
        std::string theirs = proc_path(plan.main_pid, "ns/") + name;
        OwnFd fd(::open(theirs.c_str(), O_RDONLY | O_CLOEXEC));
        if (fd.get() < 0) return fail(failure, std::string("open namespace ") + name, errno, theirs);
        // The namespace the owner read, not one of a process that has taken the pid since.
        struct stat st {};
        if (::fstat(fd.get(), &st) != 0 || st.st_ino != plan.namespace_inodes[i])
            return fail(failure, std::string("open namespace ") + name, errno,
                        theirs + " is not the namespace the owner read");
        to_join.push_back({std::move(fd), i});
    }
    for (const auto& j : to_join) {
        // The type makes the kernel check that the descriptor is that kind of namespace.
        if (::setns(j.fd.get(), types[j.kind]) != 0) {
            int err = errno;
            return fail(failure, std::string("join namespace ") + kEntryNamespaces[j.kind], err,
                        ::geteuid() == 0 ? "setns to the unit's main process's namespace"
                                         : "setns to the unit's main process's namespace, which a non-root process "
                                           "cannot join: the owner must share its user manager's namespaces");
        }
    }
    for (const auto& j : to_join) {
        const char* name = kEntryNamespaces[j.kind];
        if (own_ns_inode(name) != plan.namespace_inodes[j.kind])
            return fail(failure, std::string("verify namespace ") + name, 0, "still not in the unit's namespace");
    }
    return true;
}

bool same_limit(const std::optional<struct rlimit>& ours, const struct rlimit& wanted) {
    return ours && ours->rlim_cur == wanted.rlim_cur && ours->rlim_max == wanted.rlim_max;
}

// The plan lists the limits in RLIMIT_* order. A resource whose limits this process has already is left alone.
bool copy_rlimits(const EntryPlan& plan, const InheritedState& inherited, EntryFailure& failure) {
    for (int resource = 0; resource < static_cast<int>(plan.rlimits.size()); ++resource) {
        struct rlimit wanted = plan.rlimits[static_cast<std::size_t>(resource)];
        if (static_cast<std::size_t>(resource) < inherited.rlimits.size() &&
            same_limit(inherited.rlimits[static_cast<std::size_t>(resource)], wanted))
            continue;
        auto which = static_cast<__rlimit_resource>(resource);
        if (::setrlimit(which, &wanted) == 0) continue;
        if (errno != EPERM) return fail(failure, "apply rlimits", errno, "resource " + std::to_string(resource));
        // Raising a hard limit needs CAP_SYS_RESOURCE. Without it, keep our own lower hard limit: the child
        // then runs under a tighter limit than the unit's, never a looser one.
        struct rlimit current {};
        ::getrlimit(which, &current);
        struct rlimit clamped {std::min(wanted.rlim_cur, current.rlim_max), std::min(wanted.rlim_max, current.rlim_max)};
        if (::setrlimit(which, &clamped) != 0)
            return fail(failure, "apply rlimits", errno, "resource " + std::to_string(resource));
    }
    return true;
}

bool copy_nice(const EntryPlan& plan, const InheritedState& inherited, EntryFailure& failure) {
    const int nice = plan.nice;
    if (inherited.nice == nice) return true;
    errno = 0;
    if (::setpriority(PRIO_PROCESS, 0, nice) != 0) {
        int err = errno;
        // Lowering the nice value needs CAP_SYS_NICE or RLIMIT_NICE, which a non-root owner started at a higher
        // one usually lacks. Keep our own value then: the child runs at a lower priority than the unit's, never a
        // higher one (as with rlimits).
        errno = 0;
        int ours = ::getpriority(PRIO_PROCESS, 0);
        if ((err == EACCES || err == EPERM) && errno == 0 && ours > nice) return true;
        return fail(failure, "apply Nice=", err, "setpriority " + std::to_string(nice));
    }
    return true;
}

// Drops what this process has and the unit's main process lacks. With the bounding set known, `inherited` lists
// every capability this process has, so none other is asked about; else each the unit lacks is.
bool drop_bounding_set(const EntryPlan& plan, const InheritedState& inherited, EntryFailure& failure) {
    const std::uint64_t theirs = plan.bounding_set;
    for (int cap = 0; cap <= 63; ++cap) {
        if (theirs & (1ull << cap)) continue;
        if (inherited.bounding_set ? (*inherited.bounding_set & (1ull << cap)) == 0 : ::prctl(PR_CAPBSET_READ, cap) != 1)
            continue;
        if (::prctl(PR_CAPBSET_DROP, cap) != 0)
            return fail(failure, "apply capability bounding set", errno,
                        "drop capability " + std::to_string(cap) +
                            (::geteuid() == 0 ? "" : " (the unit's main process has a smaller bounding set than the "
                                                     "owner, and a non-root process cannot shrink its own)"));
    }
    return true;
}

bool take_credentials(const EntryPlan& plan, EntryFailure& failure) {
    const uid_t uid = plan.uid;
    const gid_t gid = plan.gid;
    const std::vector<gid_t>& group_list = plan.groups;
    // A call that would change nothing is skipped: a non-root process may not call setgroups() at all, and the
    // child of a non-root owner already has its unit's identity (a user's own manager runs units as that user).
    // Any real change is still attempted, and fails for a non-root owner.
    const bool root = ::geteuid() == 0;
    std::vector<gid_t> current_groups(static_cast<size_t>(std::max(0, ::getgroups(0, nullptr))));
    current_groups.resize(static_cast<size_t>(
        std::max(0, ::getgroups(static_cast<int>(current_groups.size()), current_groups.data()))));
    std::vector<gid_t> wanted_groups = group_list;
    std::sort(current_groups.begin(), current_groups.end());
    std::sort(wanted_groups.begin(), wanted_groups.end());
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    ::getresuid(&ru, &eu, &su);
    ::getresgid(&rg, &eg, &sg);
    // Supplementary groups first, while we still may: they are the target user's, never root's.
    if (current_groups != wanted_groups && ::setgroups(group_list.size(), group_list.data()) != 0)
        return fail(failure, "set supplementary groups", errno,
                    root ? "setgroups"
                         : "setgroups: the unit's main process has other supplementary groups than the owner, "
                           "and a non-root process cannot change its own");
    if ((rg != gid || eg != gid || sg != gid) && ::setresgid(gid, gid, gid) != 0)
        return fail(failure, "set gid", errno,
                    "setresgid " + std::to_string(gid) + (root ? "" : " (a non-root owner cannot take another gid)"));
    if ((ru != uid || eu != uid || su != uid) && ::setresuid(uid, uid, uid) != 0)
        return fail(failure, "set uid", errno,
                    "setresuid " + std::to_string(uid) + (root ? "" : " (a non-root owner cannot take another uid)"));
    ::getresuid(&ru, &eu, &su);
    ::getresgid(&rg, &eg, &sg);
    if (ru != uid || eu != uid || su != uid || rg != gid || eg != gid || sg != gid)
        return fail(failure, "verify credentials", 0, "uid/gid did not change as requested");
    if (uid != 0) {
        // Nothing may remain that lets user code become root again.
        if (::setuid(0) == 0 || ::setgid(0) == 0 || ::seteuid(0) == 0)
            return fail(failure, "verify credentials", 0, "could regain root after dropping it");
        // capget(2), not /proc/self/status: the unit's rlimits apply already, and opening a file could fail.
        __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
        std::array<__user_cap_data_struct, _LINUX_CAPABILITY_U32S_3> caps{};
        if (::syscall(SYS_capget, &header, caps.data()) != 0)
            return fail(failure, "verify credentials", errno, "capget");
        for (const auto& set : caps)
            if (set.effective != 0 || set.permitted != 0)
                return fail(failure, "verify credentials", 0, "capabilities remain after dropping root");
    }
    return true;
}

void copy_environment(const EntryPlan& plan) {
    const std::string& environ_block = plan.environment;
    ::clearenv();  // NOLINT(concurrency-mt-unsafe): the child after fork() has one thread
    size_t start = 0;
    while (start < environ_block.size()) {
        size_t end = environ_block.find('\0', start);
        if (end == std::string::npos) end = environ_block.size();
        std::string entry = environ_block.substr(start, end - start);
        auto eq = entry.find('=');
        if (eq != std::string::npos && eq > 0)
            ::setenv(entry.substr(0, eq).c_str(), entry.substr(eq + 1).c_str(), 1);  // NOLINT(concurrency-mt-unsafe)
        start = end + 1;
    }
}

bool set_death_signal(const EntryRequest& r, EntryFailure& failure) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return fail(failure, "set parent-death signal", errno, "prctl");
    // The parent may have died before the signal was armed.
    if (::getppid() != r.parent_pid) return fail(failure, "set parent-death signal", 0, "the owner is gone");
    return true;
}

// Everything the child inherited from its owner but the library's channel (which becomes fd 3) is closed, and
// stdin, stdout and stderr are replaced by /dev/null (stdout and stderr kept with keep_stdio). First of all, as in
// exec_child: an owner may hold thousands of descriptors, numbered far past the soft RLIMIT_NOFILE of the unit,
// and every open() of entry would fail with EMFILE under that limit while they were still open.
bool close_inherited_fds(const EntryRequest& r, EntryFailure& failure) {
    if (r.keep_fd != kEnteredPipeFd) {
        if (::dup2(r.keep_fd, kEnteredPipeFd) < 0) return fail(failure, "close inherited descriptors", errno, "dup2");
    }
    // Kept across fork, not across exec: a program user code executes does not get the library's pipe.
    ::fcntl(kEnteredPipeFd, F_SETFD, FD_CLOEXEC);
    if (::syscall(SYS_close_range, kEnteredPipeFd + 1, ~0u, 0) != 0)
        return fail(failure, "close inherited descriptors", errno, "close_range");
    int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd < 0) return fail(failure, "close inherited descriptors", errno, "open /dev/null");
    ::dup2(null_fd, 0);
    if (!r.keep_stdio) {
        ::dup2(null_fd, 1);
        ::dup2(null_fd, 2);
    }
    if (null_fd > 2) ::close(null_fd);
    return true;
}

}  // namespace

InheritedState read_inherited_state() noexcept {
    InheritedState own;
    for (std::size_t i = 0; i < kEntryNamespaces.size(); ++i) own.namespace_inodes[i] = own_ns_inode(kEntryNamespaces[i]);
    // Up to the kernel's last capability, past which PR_CAPBSET_READ fails with EINVAL.
    std::uint64_t set = 0;
    for (int cap = 0; cap <= 63; ++cap) {
        const int has = ::prctl(PR_CAPBSET_READ, cap);
        if (has < 0) break;
        if (has == 1) set |= 1ull << cap;
    }
    own.bounding_set = set;
    for (std::size_t resource = 0; resource < own.rlimits.size(); ++resource) {
        struct rlimit limit {};
        if (::getrlimit(static_cast<__rlimit_resource>(resource), &limit) == 0) own.rlimits[resource] = limit;
    }
    // A process whose scheduling policy says SCHED_RESET_ON_FORK has children that start at nice 0 if its own
    // value is negative: then what a child has is not this process's, and entry sets it anyway.
    errno = 0;
    const int nice = ::getpriority(PRIO_PROCESS, 0);
    const int policy = ::sched_getscheduler(0);
    if (errno == 0 && policy >= 0 && (policy & SCHED_RESET_ON_FORK) == 0) own.nice = nice;
    // umask(2) only reads by setting: put back at once. The callers are single-threaded (a fork server, a child
    // just forked), so no other thread creates a file meanwhile.
    const mode_t mask = ::umask(0);
    ::umask(mask);
    own.umask = mask;
    own.no_new_privs = ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;
    return own;
}

bool enter_unit(const EntryRequest& r, const EntryPlan& plan, EntryFailure& failure) {
    // From here on the channel is fd 3 and nothing of the owner's is open: each file entry opens is the lowest
    // free descriptor, 4, and is closed again before the next.
    failure.channel_fd = r.keep_fd;
    if (!close_inherited_fds(r, failure)) return false;
    failure.channel_fd = kEnteredPipeFd;
    const InheritedState nothing_known;
    const InheritedState& inherited = r.inherited ? *r.inherited : nothing_known;
    if (!join_namespaces(plan, inherited, failure)) return false;
    // Nothing is opened from here on: the unit's RLIMIT_NOFILE applies now.
    if (!copy_rlimits(plan, inherited, failure)) return false;
    if (!copy_nice(plan, inherited, failure)) return false;
    copy_environment(plan);
    // Read here rather than by the owner: as a path in the unit's mount namespace, joined above, where the
    // directory is; the owner would see it under its own (a PrivateTmp= /tmp, say, is elsewhere there).
    std::string cwd;
    {
        char buf[4096];
        ssize_t n = ::readlink(proc_path(plan.main_pid, "cwd").c_str(), buf, sizeof buf - 1);
        if (n < 0) return fail(failure, "read WorkingDirectory=", errno, "cwd of the unit's main process");
        cwd.assign(buf, static_cast<size_t>(n));
    }
    if (!drop_bounding_set(plan, inherited, failure)) return false;
    if (!take_credentials(plan, failure)) return false;
    if (plan.no_new_privs && inherited.no_new_privs != true && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail(failure, "apply NoNewPrivileges=", errno, "prctl");
    if (inherited.umask != plan.umask) ::umask(plan.umask);
    // As the target user, as systemd does, so a directory root may enter but the user may not is refused.
    if (::chdir(cwd.c_str()) != 0) return fail(failure, "apply WorkingDirectory=", errno, cwd);
    // Changing credentials cleared the parent-death signal: arm it again.
    return set_death_signal(r, failure);
}

}  // namespace sdfutures::detail
