// The entry plan (src/entry_plan.hpp): what the owner reads from a unit's main process and sends as the release.
// Read from a cat of this test's own, it is what that cat has; encoded and decoded, it is the same plan; and a
// release that is short, long, or out of range decodes to nothing (the child then exits 127, bootstrap.hpp). And a
// child entering by a plan (unit_entry.hpp) ends with the plan's limits, bounding set, nice and umask whether they
// equal what it inherited (entry skips those calls) or not, and whether its parent read its state for it or not.
// No manager.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/capability.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "entry_plan.hpp"
#include "fd_util.hpp"
#include "unit_entry.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures::testing {
namespace {

using detail::decode_entry_plan;
using detail::encode_entry_plan;
using detail::EntryPlan;
using detail::Fd;
using detail::kEntryNamespaces;
using detail::read_entry_plan;
using detail::EntryFailure;
using detail::EntryRequest;
using detail::InheritedState;
using detail::read_inherited_state;

// /bin/cat reading a pipe of ours, as a unit's anchor does; ended (EOF, then waited for) when it goes.
class Cat {
public:
    explicit Cat(bool under_seccomp = false) {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
        Fd read_end(fds[0]);
        input_ = Fd(fds[1]);
        pid_ = ::fork();
        if (pid_ < 0) throw std::runtime_error("fork");
        if (pid_ == 0) {
            ::dup2(read_end.get(), 0);
            if (under_seccomp) {
                // A filter that allows everything: still a filter, which no forked process can copy.
                sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
                sock_fprog program{1, &allow};
                if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
                    ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0)
                    ::_exit(126);
            }
            ::execl("/bin/cat", "cat", static_cast<char*>(nullptr));
            ::_exit(127);
        }
        // Until it is cat: before execve the child is still a copy of this test.
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        for (;;) {
            char exe[4096] = {};
            ssize_t n = ::readlink(("/proc/" + std::to_string(pid_) + "/exe").c_str(), exe, sizeof exe - 1);
            if (n > 0 && std::string(exe, static_cast<std::size_t>(n)).ends_with("/cat")) break;
            if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("cat did not start");
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }
    ~Cat() { end(); }
    Cat(const Cat&) = delete;
    Cat& operator=(const Cat&) = delete;
    pid_t pid() const { return pid_; }
    void end() {
        if (pid_ <= 0) return;
        input_.reset();
        ::waitpid(pid_, nullptr, 0);
        pid_ = 0;
    }

private:
    Fd input_;
    pid_t pid_ = 0;
};

std::uint64_t own_namespace(const char* name) {
    struct stat st {};
    EXPECT_EQ(::stat((std::string("/proc/self/ns/") + name).c_str(), &st), 0);
    return st.st_ino;
}

EntryPlan example_plan() {
    EntryPlan plan;
    plan.main_pid = 4242;
    plan.namespace_inodes = {4026531992, 4026531839, 4026531838, 4026531841};
    plan.uid = 1000;
    plan.gid = 1001;
    plan.groups = {1001, 27, 100};
    plan.bounding_set = 0x1ffffffffff;
    plan.no_new_privs = true;
    plan.umask = 027;
    plan.nice = -5;
    plan.rlimits = {{RLIM_INFINITY, RLIM_INFINITY}, {1024, 4096}, {8 << 20, RLIM_INFINITY}};
    plan.environment = std::string("LANG=C\0PATH=/usr/bin\0", 22);
    return plan;
}

void expect_same(const EntryPlan& a, const EntryPlan& b) {
    EXPECT_EQ(a.main_pid, b.main_pid);
    EXPECT_EQ(a.namespace_inodes, b.namespace_inodes);
    EXPECT_EQ(a.uid, b.uid);
    EXPECT_EQ(a.gid, b.gid);
    EXPECT_EQ(a.groups, b.groups);
    EXPECT_EQ(a.bounding_set, b.bounding_set);
    EXPECT_EQ(a.no_new_privs, b.no_new_privs);
    EXPECT_EQ(a.umask, b.umask);
    EXPECT_EQ(a.nice, b.nice);
    ASSERT_EQ(a.rlimits.size(), b.rlimits.size());
    for (std::size_t i = 0; i < a.rlimits.size(); ++i) {
        EXPECT_EQ(a.rlimits[i].rlim_cur, b.rlimits[i].rlim_cur) << "resource " << i;
        EXPECT_EQ(a.rlimits[i].rlim_max, b.rlimits[i].rlim_max) << "resource " << i;
    }
    EXPECT_EQ(a.environment, b.environment);
}

TEST(EntryPlanTest, ReadFromAProcessIsWhatThatProcessHas) {
    const mode_t old_umask = ::umask(027);
    ::setenv("SDFUTURES_ENTRY_PLAN_TEST", "a value with spaces", 1);  // NOLINT(concurrency-mt-unsafe): one thread
    Cat cat;
    ::umask(old_umask);
    EntryPlan plan = read_entry_plan(cat.pid());
    EXPECT_EQ(plan.main_pid, cat.pid());
    EXPECT_EQ(plan.uid, ::getuid());
    EXPECT_EQ(plan.gid, ::getgid());
    std::vector<gid_t> groups(static_cast<std::size_t>(::getgroups(0, nullptr)));
    groups.resize(static_cast<std::size_t>(::getgroups(static_cast<int>(groups.size()), groups.data())));
    EXPECT_EQ(plan.groups, groups);
    EXPECT_EQ(plan.umask, 027u);
    EXPECT_EQ(plan.nice, ::getpriority(PRIO_PROCESS, 0));
    EXPECT_EQ(plan.no_new_privs, ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1);
    for (int cap = 0; cap <= 63; ++cap) {
        int ours = ::prctl(PR_CAPBSET_READ, cap);
        if (ours < 0) break;  // beyond the kernel's last capability
        EXPECT_EQ((plan.bounding_set >> cap) & 1, static_cast<std::uint64_t>(ours)) << "capability " << cap;
    }
    ASSERT_EQ(plan.rlimits.size(), static_cast<std::size_t>(RLIMIT_NLIMITS));
    for (int resource = 0; resource < RLIMIT_NLIMITS; ++resource) {
        struct rlimit ours {};
        ::getrlimit(static_cast<__rlimit_resource>(resource), &ours);
        EXPECT_EQ(plan.rlimits[static_cast<std::size_t>(resource)].rlim_cur, ours.rlim_cur) << "resource " << resource;
        EXPECT_EQ(plan.rlimits[static_cast<std::size_t>(resource)].rlim_max, ours.rlim_max) << "resource " << resource;
    }
    EXPECT_NE(plan.environment.find(std::string("\0SDFUTURES_ENTRY_PLAN_TEST=a value with spaces\0", 47)),
              std::string::npos);
    for (std::size_t i = 0; i < kEntryNamespaces.size(); ++i)
        EXPECT_EQ(plan.namespace_inodes[i], own_namespace(kEntryNamespaces[i])) << kEntryNamespaces[i];
}

TEST(EntryPlanTest, OnlyTheAnchorProgramIsRead) {
    // This test's own process is no cat: a pid that is not the exec'd anchor program (a just-forked child, a pid
    // reused) is refused, not read.
    try {
        read_entry_plan(::getpid());
        ADD_FAILURE() << "read";
    } catch (const SetupError& e) {
        EXPECT_EQ(e.step(), "read the unit's main process");
    }
    Cat cat;
    const pid_t gone = cat.pid();
    cat.end();
    try {
        read_entry_plan(gone);
        ADD_FAILURE() << "read";
    } catch (const SetupError& e) {
        EXPECT_EQ(e.step(), "read the unit's main process");
        EXPECT_NE(e.error_number(), 0);
    }
}

TEST(EntryPlanTest, AMainProcessUnderASeccompFilterIsRefused) {
    Cat cat(true);
    try {
        read_entry_plan(cat.pid());
        ADD_FAILURE() << "read";
    } catch (const SetupError& e) {
        EXPECT_EQ(e.step(), "check seccomp");
    }
}

TEST(EntryPlanTest, EncodedAndDecodedItIsTheSamePlan) {
    EntryPlan plan = example_plan();
    auto back = decode_entry_plan(encode_entry_plan(plan));
    ASSERT_TRUE(back.has_value());
    expect_same(plan, *back);
    EntryPlan empty_lists = plan;
    empty_lists.groups.clear();
    empty_lists.rlimits.clear();
    empty_lists.environment.clear();
    back = decode_entry_plan(encode_entry_plan(empty_lists));
    ASSERT_TRUE(back.has_value());
    expect_same(empty_lists, *back);
}

TEST(EntryPlanTest, AnythingButAWholePlanDecodesToNothing) {
    const std::string whole = encode_entry_plan(example_plan());
    for (std::size_t size = 0; size < whole.size(); ++size)
        EXPECT_FALSE(decode_entry_plan(std::string_view(whole).substr(0, size))) << size << " bytes";
    EXPECT_FALSE(decode_entry_plan(whole + '\0'));
    pid_t bare_pid = 4242;  // the release before plans
    EXPECT_FALSE(decode_entry_plan(std::string(reinterpret_cast<const char*>(&bare_pid), sizeof bare_pid)));
    auto refused = [](auto change) {
        EntryPlan plan = example_plan();
        change(plan);
        return !decode_entry_plan(encode_entry_plan(plan)).has_value();
    };
    EXPECT_TRUE(refused([](EntryPlan& p) { p.main_pid = 0; }));
    EXPECT_TRUE(refused([](EntryPlan& p) { p.main_pid = -1; }));
    EXPECT_TRUE(refused([](EntryPlan& p) { p.nice = 20; }));
    EXPECT_TRUE(refused([](EntryPlan& p) { p.nice = -21; }));
    EXPECT_TRUE(refused([](EntryPlan& p) { p.umask = 01000; }));
    EXPECT_TRUE(refused([](EntryPlan& p) { p.rlimits.resize(RLIM_NLIMITS + 1); }));
    std::string corrupt_tag = whole;
    corrupt_tag[0] ^= 1;
    EXPECT_FALSE(decode_entry_plan(corrupt_tag));
    // A length that claims more than there is.
    std::string long_environment = whole;
    long_environment[whole.size() - example_plan().environment.size() - 1] = '\x7f';
    EXPECT_FALSE(decode_entry_plan(long_environment));
}

// What a child that entered by a plan has, as it reports it on its pipe.
struct Entered {
    bool ok = false;
    std::array<struct rlimit, RLIM_NLIMITS> rlimits{};
    std::uint64_t bounding_set = 0;
    int nice = 0;
    mode_t umask = 0;
    char failed_step[128] = {};
};

// Forks a child that enters by `plan` (with `inherited` as its parent's reading of what it has, or knowing nothing)
// and reports what it then has.
Entered enter_in_child(const EntryPlan& plan, const InheritedState* inherited) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    Fd read_end(fds[0]), write_end(fds[1]);
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) throw std::runtime_error("fork");
    if (child == 0) {
        read_end.reset();
        Entered e;
        EntryFailure failure;
        e.ok = detail::enter_unit(
            EntryRequest{.parent_pid = parent, .keep_fd = write_end.get(), .keep_stdio = true, .inherited = inherited},
            plan, failure);
        if (!e.ok) std::snprintf(e.failed_step, sizeof e.failed_step, "%s", failure.step.c_str());
        for (std::size_t r = 0; r < e.rlimits.size(); ++r) ::getrlimit(static_cast<__rlimit_resource>(r), &e.rlimits[r]);
        for (int cap = 0; cap <= 63 && ::prctl(PR_CAPBSET_READ, cap) >= 0; ++cap)
            if (::prctl(PR_CAPBSET_READ, cap) == 1) e.bounding_set |= 1ull << cap;
        e.nice = ::getpriority(PRIO_PROCESS, 0);
        e.umask = ::umask(0);
        (void)!::write(failure.channel_fd, &e, sizeof e);
        ::_exit(0);
    }
    write_end.reset();
    Entered e;
    const ssize_t n = ::read(read_end.get(), &e, sizeof e);
    ::waitpid(child, nullptr, 0);
    if (n != static_cast<ssize_t>(sizeof e)) throw std::runtime_error("the child reported nothing");
    return e;
}

void expect_entered_by(const Entered& e, const EntryPlan& plan, const char* which) {
    ASSERT_TRUE(e.ok) << which << ": " << e.failed_step;
    for (std::size_t r = 0; r < plan.rlimits.size(); ++r) {
        EXPECT_EQ(e.rlimits[r].rlim_cur, plan.rlimits[r].rlim_cur) << which << ", resource " << r;
        EXPECT_EQ(e.rlimits[r].rlim_max, plan.rlimits[r].rlim_max) << which << ", resource " << r;
    }
    EXPECT_EQ(e.bounding_set, plan.bounding_set) << which;
    EXPECT_EQ(e.nice, plan.nice) << which;
    EXPECT_EQ(e.umask, plan.umask) << which;
}

TEST(EntryPlanTest, TheInheritedStateIsWhatTheProcessHas) {
    const InheritedState own = read_inherited_state();
    for (std::size_t r = 0; r < own.rlimits.size(); ++r) {
        struct rlimit ours {};
        ASSERT_EQ(::getrlimit(static_cast<__rlimit_resource>(r), &ours), 0);
        ASSERT_TRUE(own.rlimits[r].has_value()) << "resource " << r;
        EXPECT_EQ(own.rlimits[r]->rlim_cur, ours.rlim_cur) << "resource " << r;
        EXPECT_EQ(own.rlimits[r]->rlim_max, ours.rlim_max) << "resource " << r;
    }
    ASSERT_TRUE(own.bounding_set.has_value());
    for (int cap = 0; cap <= 63; ++cap) {
        const int ours = ::prctl(PR_CAPBSET_READ, cap);
        EXPECT_EQ((*own.bounding_set >> cap) & 1, ours == 1 ? 1u : 0u) << "capability " << cap;
    }
    EXPECT_EQ(own.nice, ::getpriority(PRIO_PROCESS, 0));
    const mode_t ours = ::umask(022);
    ::umask(ours);
    EXPECT_EQ(own.umask, ours);
    EXPECT_EQ(own.no_new_privs, ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1);
    for (std::size_t i = 0; i < kEntryNamespaces.size(); ++i)
        EXPECT_EQ(own.namespace_inodes[i], own_namespace(kEntryNamespaces[i])) << kEntryNamespaces[i];
}

TEST(EntryPlanTest, AChildEntersWithThePlansValuesWhetherTheyEqualWhatItInheritedOrNot) {
    Cat cat;
    const EntryPlan same = read_entry_plan(cat.pid());  // what this process has: entry skips every call
    // Lower limits, a higher nice value, another umask and (as root, who may) a smaller bounding set: what any
    // process may take on, so the child must end with exactly these.
    EntryPlan different = same;
    for (int resource : {RLIMIT_NOFILE, RLIMIT_CORE}) {
        struct rlimit& limit = different.rlimits.at(static_cast<std::size_t>(resource));
        limit.rlim_max = limit.rlim_max == RLIM_INFINITY ? 1u << 20 : limit.rlim_max / 2;
        limit.rlim_cur = std::min<rlim_t>(limit.rlim_cur == RLIM_INFINITY ? 1u << 19 : limit.rlim_cur / 2, limit.rlim_max);
    }
    different.nice = std::min(same.nice + 3, 19);
    different.umask = same.umask == 077 ? 027 : 077;
    if (::geteuid() == 0) different.bounding_set &= ~((1ull << CAP_NET_RAW) | (1ull << CAP_SYS_ADMIN));
    const InheritedState read_by_parent = read_inherited_state();
    expect_entered_by(enter_in_child(same, &read_by_parent), same, "equal, read by the parent");
    expect_entered_by(enter_in_child(same, nullptr), same, "equal, nothing known");
    expect_entered_by(enter_in_child(different, &read_by_parent), different, "different, read by the parent");
    expect_entered_by(enter_in_child(different, nullptr), different, "different, nothing known");
}

}  // namespace
}  // namespace sdfutures::testing
