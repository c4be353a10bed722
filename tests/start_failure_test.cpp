// Named start failures: what the owner can tell before anything starts is refused then (a user, a group or a
// working directory that does not exist), and a start systemd fails anyway is decoded from what it recorded
// for the unit (ExecMainStatus= in its own words: 217/USER, 200/CHDIR, ...) with the property behind it.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "anchored_unit.hpp"
#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using detail::check_identity_and_paths;
using testing::SystemdTest;
using testing::unique_unit_name;

constexpr const char* kNoSuchUser = "sdfutures-no-such-user";
constexpr const char* kNoSuchGroup = "sdfutures-no-such-group";

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---- the status table and the error, without a manager

TEST(ExitStatusNames, AreSystemdsOwnWordsForItsStatuses) {
    EXPECT_EQ(exit_status_name(200), "CHDIR");
    EXPECT_EQ(exit_status_name(203), "EXEC");
    EXPECT_EQ(exit_status_name(214), "SETSCHEDULER");
    EXPECT_EQ(exit_status_name(216), "GROUP");
    EXPECT_EQ(exit_status_name(217), "USER");
    EXPECT_EQ(exit_status_name(218), "CAPABILITIES");
    EXPECT_EQ(exit_status_name(226), "NAMESPACE");
    EXPECT_EQ(exit_status_name(231), "APPARMOR");
    EXPECT_EQ(exit_status_name(242), "NUMA_POLICY");
    EXPECT_EQ(exit_status_name(243), "CREDENTIALS");
    EXPECT_EQ(exit_status_name(244), "BPF");
    EXPECT_EQ(exit_status_name(255), "EXCEPTION");
    EXPECT_EQ(exit_status_name(0), "SUCCESS");
    EXPECT_EQ(exit_status_name(1), "FAILURE");
    EXPECT_EQ(exit_status_name(2), "INVALIDARGUMENT");
    EXPECT_EQ(exit_status_name(78), "CONFIG");
    for (int unnamed : {-1, 8, 100, 223, 234, 254, 256}) EXPECT_EQ(exit_status_name(unnamed), "") << unnamed;
    EXPECT_EQ(exit_status_text(217), "217/USER");
    EXPECT_EQ(exit_status_text(100), "100");
}

TEST(ExitStatusNames, OnlySystemdsSetupStatusesHaveAMeaning) {
    for (int status = 200; status <= 246; ++status) {
        if (!exit_status_name(status).empty()) {
            EXPECT_NE(exit_status_meaning(status), "") << status;
        }
    }
    for (int status : {0, 1, 2, 78, 199, 255}) EXPECT_EQ(exit_status_meaning(status), "") << status;
    EXPECT_TRUE(contains(std::string(exit_status_meaning(217)), "user"));
    EXPECT_TRUE(contains(std::string(exit_status_meaning(200)), "working directory"));
}

TEST(StartFailedErrors, KeepTheStatusItsNameAndThePropertyAsMembers) {
    StartFailed e("sdfutures-x.service", "failed", "exit-code", 1, 217, "User=alice");
    EXPECT_EQ(e.exit_status(), 217);
    EXPECT_EQ(e.status_name(), "USER");
    EXPECT_EQ(e.property(), "User=alice");
    EXPECT_EQ(e.unit_result(), "exit-code");
    EXPECT_EQ(e.unit(), "sdfutures-x.service");
    EXPECT_EQ(e.job_type(), "start");
    EXPECT_EQ(e.result(), "failed");
    std::string what = e.what();
    for (const char* part : {"sdfutures-x.service", "217/USER", "User=alice", "Result=exit-code"})
        EXPECT_TRUE(contains(what, part)) << what;
    // Existing catch sites for JobFailed keep working.
    EXPECT_THROW(throw StartFailed("u.service", "failed", "exit-code", 1, 200, ""), JobFailed);
}

TEST(StartFailedErrors, SayHowTheProcessEndedWhenItWasNotOneOfSystemdsStatuses) {
    StartFailed killed("u.service", "failed", "signal", 2, 9, "");
    EXPECT_EQ(killed.exit_status(), -9);
    EXPECT_EQ(killed.status_name(), "");
    EXPECT_TRUE(contains(killed.what(), "killed by SIGKILL")) << killed.what();
    StartFailed exited("u.service", "failed", "exit-code", 1, 1, "");
    EXPECT_EQ(exited.status_name(), "FAILURE");
    EXPECT_TRUE(contains(exited.what(), "exited with status 1/FAILURE")) << exited.what();
    StartFailed no_process("u.service", "timeout", "timeout", 0, 0, "", "a note");
    EXPECT_EQ(no_process.exit_status(), std::nullopt);
    EXPECT_EQ(no_process.status_name(), "");
    for (const char* part : {"ended with result 'timeout'", "Result=timeout", "a note"})
        EXPECT_TRUE(contains(no_process.what(), part)) << no_process.what();
}

// ---- the pre-check, without a manager and with one

void expect_refused(const Properties& props, const std::string& property, const std::string& value,
                    const std::string& why) {
    try {
        check_identity_and_paths(props);
        ADD_FAILURE() << property << "=" << value << " was accepted";
    } catch (const PropertyError& e) {
        EXPECT_EQ(e.property(), property);
        EXPECT_EQ(e.value(), value);
        EXPECT_TRUE(contains(e.what(), why)) << e.what();
    }
}

TEST(PreChecks, RefuseAUserOrGroupThisMachineDoesNotKnow) {
    expect_refused({{"User", kNoSuchUser}}, "User", kNoSuchUser, "knows no user 'sdfutures-no-such-user'");
    expect_refused({{"Group", kNoSuchGroup}}, "Group", kNoSuchGroup, "knows no group");
    expect_refused({{"SupplementaryGroups", "root"}, {"SupplementaryGroups", kNoSuchGroup}}, "SupplementaryGroups",
                   std::string("root ") + kNoSuchGroup, "knows no group 'sdfutures-no-such-group'");
}

TEST(PreChecks, LeaveNumericIdsSystemdsOwnNamesAndDynamicUsersToSystemd) {
    EXPECT_NO_THROW(check_identity_and_paths({{"User", "4711"}, {"Group", "4711"}, {"SupplementaryGroups", "4712"}}));
    EXPECT_NO_THROW(check_identity_and_paths({{"User", "nobody"}, {"Group", "nogroup"}, {"SupplementaryGroups", "root"}}));
    EXPECT_NO_THROW(check_identity_and_paths({{"User", kNoSuchUser}, {"Group", kNoSuchGroup}, {"DynamicUser", "yes"}}));
    // A later empty assignment resets the list, as in unit files.
    EXPECT_NO_THROW(check_identity_and_paths({{"SupplementaryGroups", kNoSuchGroup}, {"SupplementaryGroups", ""}}));
}

TEST(PreChecks, RefuseAWorkingDirectoryThatIsMissingOrNotADirectory) {
    expect_refused({{"WorkingDirectory", "/nonexistent/sdfutures"}}, "WorkingDirectory", "/nonexistent/sdfutures",
                   "an existing directory");
    char file[] = "/tmp/sdfutures-start-file-XXXXXX";
    int fd = mkstemp(file);
    ASSERT_GE(fd, 0);
    close(fd);
    expect_refused({{"WorkingDirectory", file}}, "WorkingDirectory", file, "a directory, not a file");
    expect_refused({{"WorkingDirectory", std::string(file) + "/below"}}, "WorkingDirectory",
                   std::string(file) + "/below", "ENOTDIR");
    unlink(file);
    EXPECT_NO_THROW(check_identity_and_paths({{"WorkingDirectory", "/tmp"}}));
}

TEST(PreChecks, LeaveWhatOnlyTheUnitsOwnFileSystemViewCanTellToSystemd) {
    // systemd's "ignore if missing" and the user's home.
    EXPECT_NO_THROW(check_identity_and_paths({{"WorkingDirectory", "-/nonexistent/sdfutures"}}));
    EXPECT_NO_THROW(check_identity_and_paths({{"WorkingDirectory", "~"}}));
    // Another root, a bind mount, a tmpfs or a directory systemd creates itself may make it exist there.
    for (const char* name : {"RootDirectory", "BindPaths", "TemporaryFileSystem", "StateDirectory"}) {
        Properties props{{"WorkingDirectory", "/nonexistent/sdfutures"}};
        props.set_typed(name, sdbus::Variant(std::string("/somewhere")));
        EXPECT_NO_THROW(check_identity_and_paths(props)) << name;
    }
}

class PreCheckTest : public SystemdTest {};

// Nothing that cannot work is created: no unit, no fork server, no child.
void expect_refused_before_anything_starts(Manager& manager, const std::string& name, const std::string& value) {
    SCOPED_TRACE(name + "=" + value);
    auto refused = [&](auto&& construct_and_start) {
        try {
            construct_and_start();
            ADD_FAILURE() << "accepted";
        } catch (const PropertyError& e) {
            EXPECT_EQ(e.property(), name);
            EXPECT_TRUE(contains(e.what(), "property " + name + "=")) << e.what();
        }
    };
    Properties props{{"CPUQuota", "50%"}, {name, value}};
    std::string unit = unique_unit_name();
    refused([&] {
        TransientUnitProcess p(props, ProcessOptions{.unit_name = unit}, [] { return 1; });
        p.start();
    });
    refused([&] { run(props, [] { return 1; }); });
    refused([&] { TransientUnitPoolExecutor pool(props, {.max_workers = 1, .unit_name = unit}); });
    EXPECT_FALSE(manager.unit_loaded(unit));
    siginfo_t info{};
    int found = waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT);
    int err = errno;
    EXPECT_EQ(found, -1) << "a child process exists";
    EXPECT_EQ(err, ECHILD);
}

TEST_F(PreCheckTest, AMissingUserGroupOrWorkingDirectoryIsRefusedBeforeAnythingStarts) {
    if (geteuid() != 0) GTEST_SKIP() << "User= and Group= need root (the unprivileged refusal comes first)";
    expect_refused_before_anything_starts(manager(), "User", kNoSuchUser);
    expect_refused_before_anything_starts(manager(), "Group", kNoSuchGroup);
    expect_refused_before_anything_starts(manager(), "SupplementaryGroups", kNoSuchGroup);
    expect_refused_before_anything_starts(manager(), "WorkingDirectory", "/nonexistent/sdfutures");
}

}  // namespace
}  // namespace sdfutures
