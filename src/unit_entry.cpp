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
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

namespace sdfutures::detail {
namespace {

// The order systemd's own exec_child follows: descriptors are closed first, before anything else is opened; the
// steps that need privileges (namespaces, rlimits, nice) come before credentials are dropped; umask, environment
// and working directory after. Like exec_child, entry opens nothing once the unit's rlimits are applied: a soft
// RLIMIT_NOFILE as low as the unit's may be would refuse it.

bool fail(EntryFailure& failure, std::string step, int err, std::string detail) {
    failure.step = std::move(step);
    failure.error_number = err;
    failure.detail = std::move(detail);
    return false;
}

std::string proc_path(pid_t pid, const char* what) { return "/proc/" + std::to_string(pid) + "/" + what; }

bool read_whole(const std::string& path, std::string& out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    std::ostringstream ss;
    ss << in.rdbuf();
    out = ss.str();
    return true;
}

// The value of "Field:" in /proc/PID/status.
std::string status_field(const std::string& status, const std::string& field) {
    auto pos = status.find("\n" + field + ":");
    if (pos == std::string::npos) return {};
    pos += field.size() + 2;
    auto end = status.find('\n', pos);
    std::string value = status.substr(pos, end - pos);
    auto first = value.find_first_not_of(" \t");
    return first == std::string::npos ? std::string() : value.substr(first);
}

std::vector<unsigned long> numbers(const std::string& text, int base = 10) {
    std::vector<unsigned long> out;
    std::istringstream in(text);
    std::string word;
    while (in >> word) out.push_back(std::strtoul(word.c_str(), nullptr, base));
    return out;
}

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

// What entry copies from the unit's main process, read in one go while entry may still open files: before the
// namespaces change (the unit's mount namespace may not show the old /proc paths) and before the unit's rlimits
// apply. Only the working directory is read later, in the unit's mount namespace, as a link (no descriptor).
struct MainProcess {
    std::string status;       // /proc/PID/status: seccomp, credentials, capabilities, NoNewPrivs, umask
    std::string limits;       // /proc/PID/limits
    std::string stat;         // /proc/PID/stat: nice
    std::string environment;  // /proc/PID/environ
};

bool read_main_process(const EntryRequest& r, MainProcess& unit_main, EntryFailure& failure) {
    if (!read_whole(proc_path(r.main_pid, "status"), unit_main.status))
        return fail(failure, "read the unit's main process", errno, proc_path(r.main_pid, "status"));
    if (!read_whole(proc_path(r.main_pid, "limits"), unit_main.limits))
        return fail(failure, "read rlimits", errno, "limits");
    if (!read_whole(proc_path(r.main_pid, "stat"), unit_main.stat)) return fail(failure, "read nice", errno, "stat");
    if (!read_whole(proc_path(r.main_pid, "environ"), unit_main.environment))
        return fail(failure, "read Environment=", errno, "environ of the unit's main process");
    return true;
}

ino_t ns_inode(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

bool join_namespaces(const EntryRequest& r, EntryFailure& failure) {
    // mnt last: after it, paths are those of the unit's mount namespace.
    static constexpr std::array<std::pair<const char*, int>, 4> kinds{
        {{"net", CLONE_NEWNET}, {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS}, {"mnt", CLONE_NEWNS}}};
    struct Join {
        OwnFd fd;
        int type;
        const char* name;
    };
    std::vector<Join> to_join;
    for (auto [name, type] : kinds) {
        std::string theirs = proc_path(r.main_pid, "ns/") + name;
        std::string ours = std::string("/proc/self/ns/") + name;
        ino_t their_ino = ns_inode(theirs);
        if (their_ino == 0) return fail(failure, std::string("inspect namespace ") + name, errno, theirs);
        if (their_ino == ns_inode(ours)) continue;
        OwnFd fd(::open(theirs.c_str(), O_RDONLY | O_CLOEXEC));
        if (fd.get() < 0) return fail(failure, std::string("open namespace ") + name, errno, theirs);
        to_join.push_back({std::move(fd), type, name});
    }
    for (const auto& j : to_join) {
        // The type makes the kernel check that the descriptor is that kind of namespace.
        if (::setns(j.fd.get(), j.type) != 0) {
            int err = errno;
            return fail(failure, std::string("join namespace ") + j.name, err,
                        ::geteuid() == 0 ? "setns to the unit's main process's namespace"
                                         : "setns to the unit's main process's namespace, which a non-root process "
                                           "cannot join: the owner must share its user manager's namespaces");
        }
    }
    to_join.clear();
    for (auto [name, type] : kinds) {
        (void)type;
        if (ns_inode(std::string("/proc/self/ns/") + name) != ns_inode(proc_path(r.main_pid, "ns/") + name))
            return fail(failure, std::string("verify namespace ") + name, 0, "still not in the unit's namespace");
    }
    return true;
}

// /proc/PID/limits rather than prlimit(2): reading another user's limits with prlimit needs CAP_SYS_RESOURCE,
// which sandboxes (and this project's CI) may withhold even from root. The file lists RLIMIT_* in order.
bool copy_rlimits(const MainProcess& unit_main, EntryFailure& failure) {
    std::istringstream lines(unit_main.limits);
    std::string line;
    std::getline(lines, line);  // the header
    constexpr size_t kNameWidth = 26;
    for (int resource = 0; resource < RLIMIT_NLIMITS && std::getline(lines, line); ++resource) {
        if (line.size() <= kNameWidth) return fail(failure, "read rlimits", 0, "malformed line: " + line);
        std::istringstream values(line.substr(kNameWidth));
        std::string soft_text, hard_text;
        values >> soft_text >> hard_text;
        auto parse_limit = [](const std::string& v) {
            return v == "unlimited" ? RLIM_INFINITY : static_cast<rlim_t>(std::strtoull(v.c_str(), nullptr, 10));
        };
        struct rlimit wanted {parse_limit(soft_text), parse_limit(hard_text)};
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

bool copy_nice(const MainProcess& unit_main, EntryFailure& failure) {
    // Fields after the command name, which is in parentheses and may contain spaces.
    auto close = unit_main.stat.rfind(')');
    if (close == std::string::npos || close + 2 > unit_main.stat.size())
        return fail(failure, "read nice", 0, "malformed stat: " + unit_main.stat);
    std::istringstream in(unit_main.stat.substr(close + 2));
    std::string field;
    long nice = 0;
    for (int i = 3; i <= 19 && in >> field; ++i)
        if (i == 19) nice = std::strtol(field.c_str(), nullptr, 10);
    errno = 0;
    if (::setpriority(PRIO_PROCESS, 0, static_cast<int>(nice)) != 0) {
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

bool drop_bounding_set(const std::string& status, EntryFailure& failure) {
    unsigned long long theirs = std::strtoull(status_field(status, "CapBnd").c_str(), nullptr, 16);
    for (int cap = 0; cap <= 63; ++cap) {
        if (theirs & (1ull << cap)) continue;
        if (::prctl(PR_CAPBSET_READ, cap) != 1) continue;
        if (::prctl(PR_CAPBSET_DROP, cap) != 0)
            return fail(failure, "apply capability bounding set", errno,
                        "drop capability " + std::to_string(cap) +
                            (::geteuid() == 0 ? "" : " (the unit's main process has a smaller bounding set than the "
                                                     "owner, and a non-root process cannot shrink its own)"));
    }
    return true;
}

bool take_credentials(const std::string& status, EntryFailure& failure) {
    auto uids = numbers(status_field(status, "Uid"));
    auto gids = numbers(status_field(status, "Gid"));
    auto groups = numbers(status_field(status, "Groups"));
    if (uids.size() < 3 || gids.size() < 3) return fail(failure, "read credentials", 0, "malformed /proc status");
    uid_t uid = static_cast<uid_t>(uids[0]);
    gid_t gid = static_cast<gid_t>(gids[0]);
    std::vector<gid_t> group_list(groups.begin(), groups.end());
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

void copy_environment(const MainProcess& unit_main) {
    const std::string& environ_block = unit_main.environment;
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

bool enter_unit(const EntryRequest& r, EntryFailure& failure) {
    // From here on the channel is fd 3 and nothing of the owner's is open: each file entry opens is the lowest
    // free descriptor, 4, and is closed again before the next.
    failure.channel_fd = r.keep_fd;
    if (!close_inherited_fds(r, failure)) return false;
    failure.channel_fd = kEnteredPipeFd;
    MainProcess unit_main;
    if (!read_main_process(r, unit_main, failure)) return false;
    if (std::strtol(status_field(unit_main.status, "Seccomp").c_str(), nullptr, 10) != 0)
        return fail(failure, "check seccomp", 0,
                    "the unit's main process runs under a seccomp filter, which cannot be copied to a forked "
                    "process (a property such as SystemCallFilter= or one that implies it); use Command");
    if (!join_namespaces(r, failure)) return false;
    // Nothing is opened from here on: the unit's RLIMIT_NOFILE applies now.
    if (!copy_rlimits(unit_main, failure)) return false;
    if (!copy_nice(unit_main, failure)) return false;
    copy_environment(unit_main);
    std::string cwd;
    {
        char buf[4096];
        ssize_t n = ::readlink(proc_path(r.main_pid, "cwd").c_str(), buf, sizeof buf - 1);
        if (n < 0) return fail(failure, "read WorkingDirectory=", errno, "cwd of the unit's main process");
        cwd.assign(buf, static_cast<size_t>(n));
    }
    if (!drop_bounding_set(unit_main.status, failure)) return false;
    if (!take_credentials(unit_main.status, failure)) return false;
    if (status_field(unit_main.status, "NoNewPrivs") == "1" && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail(failure, "apply NoNewPrivileges=", errno, "prctl");
    ::umask(static_cast<mode_t>(std::strtoul(status_field(unit_main.status, "Umask").c_str(), nullptr, 8)));
    // As the target user, as systemd does, so a directory root may enter but the user may not is refused.
    if (::chdir(cwd.c_str()) != 0) return fail(failure, "apply WorkingDirectory=", errno, cwd);
    // Changing credentials cleared the parent-death signal: arm it again.
    return set_death_signal(r, failure);
}

}  // namespace sdfutures::detail
