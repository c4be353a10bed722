// The per-test leak audit itself: each kind of leak, made on purpose, is found and named; once cleaned up,
// nothing is reported. Every other test's "no leak" verdict is only as good as this.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include <gtest/gtest.h>

#include "support/manager_environment.hpp"
#include "support/workloads.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::Leak;
using testing::SystemdTest;

std::string describe(const std::vector<Leak>& leaks) {
    std::string all;
    for (const auto& leak : leaks) all += "\n  " + leak.message;
    return all.empty() ? " (none)" : all;
}

// The finding of `kind` about `subject`, or nullptr.
const Leak* finding(const std::vector<Leak>& leaks, Leak::Kind kind, const std::string& subject) {
    auto it = std::find_if(leaks.begin(), leaks.end(),
                           [&](const Leak& l) { return l.kind == kind && l.subject == subject; });
    return it == leaks.end() ? nullptr : &*it;
}

using testing::PausedChild;
using testing::sleeping_service;

class LeakAuditTest : public SystemdTest {};

TEST_F(LeakAuditTest, AUnitLeftRunningIsNamedWithItsProcessAndCgroupDirectories) {
    auto before = testing::ProcessSnapshot::take(manager());
    std::string name = testing::unique_unit_name();
    Unit unit = manager().start_transient_unit(name, sleeping_service().set("Delegate", "yes"));
    auto main_pid = std::to_string(unit.main_pid());
    std::string cgroup = unit.control_group();

    auto leaks = testing::find_leaks(manager(), before);
    const Leak* unit_leak = finding(leaks, Leak::Kind::unit, name);
    ASSERT_NE(unit_leak, nullptr) << describe(leaks);
    EXPECT_NE(unit_leak->message.find(name), std::string::npos) << unit_leak->message;
    const Leak* process_leak = finding(leaks, Leak::Kind::process, main_pid);
    ASSERT_NE(process_leak, nullptr) << describe(leaks);
    EXPECT_NE(process_leak->message.find("sleep infinity"), std::string::npos) << process_leak->message;
    EXPECT_NE(process_leak->message.find(cgroup), std::string::npos) << process_leak->message;
    std::string tracked_dir = testing::tracking_hierarchy() + cgroup;
    EXPECT_NE(finding(leaks, Leak::Kind::cgroup_dir, tracked_dir), nullptr) << tracked_dir << describe(leaks);

    manager().stop_unit(name);
    ASSERT_TRUE(manager().wait_unit_gone(name, 10s));
    EXPECT_TRUE(testing::find_leaks(manager(), before).empty()) << describe(testing::find_leaks(manager(), before));
}

TEST_F(LeakAuditTest, AProcessAttachedToAUnitIsNamedAsOneOfTheManagersAndAsOurRunningChild) {
    auto before = testing::ProcessSnapshot::take(manager());
    std::string name = testing::unique_unit_name();
    manager().start_transient_unit(name, sleeping_service().set("Delegate", "yes"));
    PausedChild child;
    ASSERT_GT(child.pid(), 0);
    manager().attach_processes_to_unit(name, "/", {child.upid()});

    auto leaks = testing::find_leaks(manager(), before);
    const Leak* process_leak = finding(leaks, Leak::Kind::process, std::to_string(child.pid()));
    ASSERT_NE(process_leak, nullptr) << describe(leaks);
    EXPECT_NE(process_leak->message.find(name), std::string::npos) << process_leak->message;
    EXPECT_NE(finding(leaks, Leak::Kind::child, std::to_string(child.pid())), nullptr) << describe(leaks);

    child.kill_and_reap();
    manager().stop_unit(name);
    ASSERT_TRUE(manager().wait_unit_gone(name, 10s));
    EXPECT_TRUE(testing::find_leaks(manager(), before).empty()) << describe(testing::find_leaks(manager(), before));
}

TEST_F(LeakAuditTest, AnUnreapedChildIsNamedAsAZombie) {
    auto before = testing::ProcessSnapshot::take(manager());
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    ASSERT_GT(pid, 0);
    // It is a zombie once it has exited; WNOWAIT looks without reaping.
    siginfo_t info{};
    ASSERT_EQ(::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT), 0);

    auto leaks = testing::find_leaks(manager(), before);
    const Leak* zombie = finding(leaks, Leak::Kind::zombie, std::to_string(pid));
    ASSERT_NE(zombie, nullptr) << describe(leaks);
    EXPECT_NE(zombie->message.find(std::to_string(pid)), std::string::npos) << zombie->message;

    ASSERT_EQ(::waitpid(pid, nullptr, 0), pid);
    EXPECT_TRUE(testing::find_leaks(manager(), before).empty()) << describe(testing::find_leaks(manager(), before));
}

TEST_F(LeakAuditTest, AnOpenDescriptorIsNamedWithWhatItRefersTo) {
    auto before = testing::ProcessSnapshot::take(manager());
    int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);

    auto leaks = testing::find_leaks(manager(), before);
    const Leak* fd_leak = finding(leaks, Leak::Kind::fd, std::to_string(fd));
    ASSERT_NE(fd_leak, nullptr) << describe(leaks);
    EXPECT_NE(fd_leak->message.find("/dev/null"), std::string::npos) << fd_leak->message;
    EXPECT_EQ(leaks.size(), 1u) << "the audit's own reading of /proc must not count" << describe(leaks);

    ::close(fd);
    EXPECT_TRUE(testing::find_leaks(manager(), before).empty()) << describe(testing::find_leaks(manager(), before));
}

TEST_F(LeakAuditTest, ACgroupDirectoryLeftBehindWithoutItsUnitIsNamed) {
    auto before = testing::ProcessSnapshot::take(manager());
    // What a unit whose cgroup systemd could not remove leaves: a directory no unit owns.
    std::string root = testing::manager_cgroup_root(manager());
    std::string dir = testing::tracking_hierarchy() + (root == "/" ? "" : root) + "/sdfutures-audit-" +
                      std::to_string(getpid());
    ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << dir << ": " << errno_text(errno);

    auto leaks = testing::find_leaks(manager(), before);
    bool named = finding(leaks, Leak::Kind::cgroup_dir, dir) != nullptr;
    ::rmdir(dir.c_str());
    EXPECT_TRUE(named) << dir << describe(leaks);
    EXPECT_TRUE(testing::find_leaks(manager(), before).empty()) << describe(testing::find_leaks(manager(), before));
}

}  // namespace
}  // namespace sdfutures
