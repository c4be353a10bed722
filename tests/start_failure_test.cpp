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
using detail::exit_status_cause;
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
    const auto children_before = testing::own_children();  // the forkserver zygote, started in main()
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
    EXPECT_EQ(testing::own_children(), children_before) << "a child process was started";
}

TEST_F(PreCheckTest, AMissingUserGroupOrWorkingDirectoryIsRefusedBeforeAnythingStarts) {
    if (geteuid() != 0) GTEST_SKIP() << "User= and Group= need root (the unprivileged refusal comes first)";
    expect_refused_before_anything_starts(manager(), "User", kNoSuchUser);
    expect_refused_before_anything_starts(manager(), "Group", kNoSuchGroup);
    expect_refused_before_anything_starts(manager(), "SupplementaryGroups", kNoSuchGroup);
    expect_refused_before_anything_starts(manager(), "WorkingDirectory", "/nonexistent/sdfutures");
}

// ---- what a status points at, without a manager

TEST(ExitStatusCauses, NameTheIdentityPropertyTheStatusPointsAt) {
    EXPECT_EQ(exit_status_cause(217, {{"User", "alice"}, {"CPUQuota", "50%"}}).property, "User=alice");
    EXPECT_EQ(exit_status_cause(217, {{"User", "alice"}, {"DynamicUser", "yes"}}).property, "DynamicUser=yes, User=alice");
    Properties groups{{"Group", "staff"}, {"SupplementaryGroups", "adm"}, {"SupplementaryGroups", "users"}};
    EXPECT_EQ(exit_status_cause(216, groups).property, "Group=staff, SupplementaryGroups=adm users");
    // No group given: the groups that failed are the user's own.
    auto own_groups = exit_status_cause(216, {{"User", "alice"}});
    EXPECT_EQ(own_groups.property, "User=alice");
    EXPECT_TRUE(contains(own_groups.note, "groups of User=alice")) << own_groups.note;
    EXPECT_EQ(exit_status_cause(217, {{"Group", "staff"}}).property, "");
}

TEST(ExitStatusCauses, NameTheWorkingDirectoryAndWhoMustEnterIt) {
    auto as_user = exit_status_cause(200, {{"WorkingDirectory", "/srv/data"}, {"User", "nobody"}});
    EXPECT_EQ(as_user.property, "WorkingDirectory=/srv/data");
    EXPECT_TRUE(contains(as_user.note, "searchable by User=nobody")) << as_user.note;
    auto unset = exit_status_cause(200, {{"User", "nobody"}});
    EXPECT_EQ(unset.property, "");
    EXPECT_TRUE(contains(unset.note, "WorkingDirectory= is not set")) << unset.note;
}

TEST(ExitStatusCauses, NameTheNamespacePropertiesThatAreOn) {
    Properties props{{"PrivateTmp", "yes"}, {"ProtectSystem", "strict"}, {"ProtectHome", "no"},
                     {"PrivateNetwork", "yes"}, {"CPUQuota", "50%"}};
    props.set_typed("ReadOnlyPaths", sdbus::Variant(std::vector<std::string>{"/srv", "/opt"}));
    auto cause = exit_status_cause(226, props);
    // PrivateNetwork= is the network namespace (225/NETWORK); ProtectHome=no asks for nothing.
    EXPECT_EQ(cause.property, "PrivateTmp=yes, ProtectSystem=strict, ReadOnlyPaths=/srv /opt");
    EXPECT_EQ(cause.note, "");
    EXPECT_EQ(exit_status_cause(225, props).property, "PrivateNetwork=yes");
    auto home = exit_status_cause(226, {{"ProtectHome", "yes"}});
    EXPECT_EQ(home.property, "ProtectHome=yes");
    EXPECT_TRUE(contains(home.note, "ProtectHome= and ProtectKernelTunables=")) << home.note;
    EXPECT_EQ(exit_status_cause(226, {{"PrivateTmp", "no"}}).property, "");
}

TEST(ExitStatusCauses, NameOtherSetupPropertiesAndNothingForOtherStatuses) {
    EXPECT_EQ(exit_status_cause(205, {{"LimitNOFILE", "100"}, {"Nice", "5"}, {"LimitCORE", "0"}}).property,
              "LimitNOFILE=100, LimitCORE=0");
    EXPECT_EQ(exit_status_cause(201, {{"Nice", "5"}}).property, "Nice=5");
    Properties scheduling;
    scheduling.set_typed("CPUSchedulingPolicy", sdbus::Variant(int32_t{2}));
    EXPECT_EQ(exit_status_cause(214, scheduling).property, "CPUSchedulingPolicy=2");
    EXPECT_EQ(exit_status_cause(203, {{"ExecStart", "/bin/prog --flag"}}).property, "ExecStart=/bin/prog --flag");
    EXPECT_EQ(exit_status_cause(218, {{"User", "nobody"}}).property, "");
    for (int status : {0, 1, 3, 127, 255}) {
        auto cause = exit_status_cause(status, {{"User", "nobody"}, {"WorkingDirectory", "/tmp"}});
        EXPECT_EQ(cause.property, "") << status;
        EXPECT_EQ(cause.note, "") << status;
    }
}

// ---- the decode of a failed start, against the real manager

class StartFailureTest : public SystemdTest {
protected:
    // Starts `name` as processes and pools start theirs: the anchored service, with `props` as the caller's.
    PendingJob start_anchored(const std::string& name, const Properties& props) {
        int fds[2];
        EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
        if (anchor_ >= 0) close(anchor_);  // the unit started before, if any, ends with it
        anchor_ = fds[1];
        try {
            PendingJob job = manager().start_transient_unit_async(
                name, props, detail::anchored_service_properties(props, fds[0], "sdfutures test " + name));
            close(fds[0]);
            return job;
        } catch (...) {
            close(fds[0]);
            throw;
        }
    }

    // Expects the start of `name` to fail, decoded: the StartFailed's members and what() checked by the caller.
    StartFailed expect_start_failed(const std::string& name, const Properties& props) {
        PendingJob job = start_anchored(name, props);
        try {
            detail::wait_anchored_start(bus(), job, props, 30s);
        } catch (const StartFailed& e) {
            EXPECT_EQ(e.unit(), name);
            EXPECT_EQ(e.result(), "failed");
            // The decode dropped the reference: with CollectMode=inactive-or-failed the unit goes by itself.
            EXPECT_TRUE(manager().wait_unit_gone(name, 5s)) << name << " is still loaded";
            return e;
        }
        ADD_FAILURE() << name << " started";
        detail::stop_and_wait_gone(bus(), name);
        return StartFailed(name, "done", "", 0, 0, "");
    }

    void TearDown() override {
        if (anchor_ >= 0) close(anchor_);
        SystemdTest::TearDown();
    }

private:
    int anchor_ = -1;
};

// The pre-check cannot tell that nobody may not enter a directory only root can: systemd fails the start with
// 200/CHDIR, and the decode says so, naming WorkingDirectory= and the user.
TEST_F(StartFailureTest, ADirectoryTheUserCannotEnterIsDecodedAs200ChdirNamingWorkingDirectory) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to start a unit as nobody";
    char dir[] = "/tmp/sdfutures-start-dir-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);  // 0700, root's
    Properties props{{"User", "nobody"}, {"WorkingDirectory", dir}};
    EXPECT_NO_THROW(check_identity_and_paths(props));
    StartFailed e = expect_start_failed(unique_unit_name(), props);
    rmdir(dir);
    EXPECT_EQ(e.exit_status(), 200) << e.what();
    EXPECT_EQ(e.status_name(), "CHDIR");
    EXPECT_EQ(e.property(), std::string("WorkingDirectory=") + dir);
    EXPECT_EQ(e.unit_result(), "exit-code");
    std::string what = e.what();
    for (const std::string& part : {std::string("200/CHDIR"), std::string("WorkingDirectory=") + dir,
                                    std::string("User=nobody")})
        EXPECT_TRUE(contains(what, part)) << what;
}

// The same through the library's own entry points: the unit is started before anything is forked, so the
// failure is named and no process was ever started.
TEST_F(StartFailureTest, AProcessAndAPoolWhoseUnitCannotStartThrowStartFailedAndForkNothing) {
    char dir[] = "/tmp/sdfutures-start-dir-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);  // 0700, root's
    Properties props{{"User", "nobody"}, {"WorkingDirectory", dir}};
    const auto children_before = testing::own_children();
    auto expect_chdir = [&](auto&& construct) {
        try {
            construct();
            ADD_FAILURE() << "started";
        } catch (const StartFailed& e) {
            EXPECT_EQ(e.exit_status(), 200) << e.what();
            EXPECT_EQ(e.property(), std::string("WorkingDirectory=") + dir) << e.what();
        }
        EXPECT_EQ(testing::own_children(), children_before) << "a process was forked for a unit that never started";
    };
    expect_chdir([&] { run(props, [] { return 1; }); });
    expect_chdir([&] { TransientUnitPoolExecutor pool(props, {.max_workers = 2}); });
    expect_chdir([&] {
        TransientUnitPoolExecutor pool(props, {.max_workers = 2, .start_method = StartMethod::forkserver});
    });
    rmdir(dir);
}

// With the pre-check left out (the Manager API has none), systemd's own verdict on an unknown user and group.
TEST_F(StartFailureTest, AUserOrGroupSystemdCannotResolveIsDecodedAs217UserOr216Group) {
    if (geteuid() != 0) GTEST_SKIP() << "User= and Group= need root";
    StartFailed user = expect_start_failed(unique_unit_name(), {{"User", kNoSuchUser}});
    EXPECT_EQ(user.exit_status(), 217) << user.what();
    EXPECT_EQ(user.status_name(), "USER");
    EXPECT_EQ(user.property(), std::string("User=") + kNoSuchUser);
    EXPECT_TRUE(contains(user.what(), "217/USER")) << user.what();

    StartFailed group = expect_start_failed(unique_unit_name(), {{"Group", kNoSuchGroup}, {"CPUQuota", "50%"}});
    EXPECT_EQ(group.exit_status(), 216) << group.what();
    EXPECT_EQ(group.status_name(), "GROUP");
    EXPECT_EQ(group.property(), std::string("Group=") + kNoSuchGroup);
    EXPECT_TRUE(contains(group.what(), "216/GROUP")) << group.what();
}

TEST_F(StartFailureTest, AProgramThatCannotBeExecutedIsDecodedAs203ExecNamingExecStart) {
    char path[] = "/tmp/sdfutures-start-notexec-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, "\x01\x02garbage", 9), 9);  // executable bits, but no format the kernel knows
    close(fd);
    chmod(path, 0755);
    std::string name = unique_unit_name();
    Properties props{{"Type", "exec"}, {"ExecStart", path}, {"CollectMode", "inactive-or-failed"}};
    props.set_typed("AddRef", sdbus::Variant(true));
    PendingJob job = manager().start_transient_unit_async(name, props);
    try {
        detail::wait_anchored_start(bus(), job, props, 30s);
        ADD_FAILURE() << "started";
    } catch (const StartFailed& e) {
        EXPECT_EQ(e.exit_status(), 203) << e.what();
        EXPECT_EQ(e.status_name(), "EXEC");
        EXPECT_EQ(e.property(), std::string("ExecStart=") + path);
        EXPECT_TRUE(contains(e.what(), "203/EXEC")) << e.what();
    }
    unlink(path);
    EXPECT_TRUE(manager().wait_unit_gone(name, 5s));
}

// Some managers cannot set up ProtectHome= at all (226/NAMESPACE for any program); where one can, the unit
// simply starts.
TEST_F(StartFailureTest, ANamespaceFailureNamesTheNamespacePropertiesGiven) {
    if (geteuid() != 0) GTEST_SKIP() << "namespaces need root";
    std::string name = unique_unit_name();
    Properties props{{"ProtectHome", "yes"}, {"PrivateTmp", "yes"}, {"CPUQuota", "50%"}};
    PendingJob job = start_anchored(name, props);
    try {
        detail::wait_anchored_start(bus(), job, props, 30s);
        detail::stop_and_wait_gone(bus(), name);
        GTEST_SKIP() << "this manager sets up ProtectHome=yes and PrivateTmp=yes";
    } catch (const StartFailed& e) {
        EXPECT_EQ(e.exit_status(), 226) << e.what();
        EXPECT_EQ(e.status_name(), "NAMESPACE");
        EXPECT_EQ(e.property(), "PrivateTmp=yes, ProtectHome=yes");
        EXPECT_TRUE(contains(e.what(), "226/NAMESPACE")) << e.what();
        EXPECT_TRUE(contains(e.what(), "fail ProtectHome= and ProtectKernelTunables=")) << e.what();
        EXPECT_TRUE(manager().wait_unit_gone(name, 5s));
    }
}

// The success path is unchanged: the reference AddRef= took is dropped once the job is done, so a stopped unit
// is collected as before, without the owner's teardown.
TEST_F(StartFailureTest, AStartThatSucceedsDropsItsReferenceSoTheStoppedUnitIsCollected) {
    std::string name = unique_unit_name();
    Properties props{{"CPUQuota", "50%"}};
    PendingJob job = start_anchored(name, props);
    detail::wait_anchored_start(bus(), job, props, 30s);
    EXPECT_EQ(Unit(bus(), name).active_state(), "active");
    manager().stop_unit(name);
    EXPECT_TRUE(manager().wait_unit_gone(name, 5s));
}

// Without wait_anchored_start (a start given up before its job ended) the reference keeps the stopped unit
// loaded, and stop_and_wait_gone drops it.
TEST_F(StartFailureTest, TheReferenceKeepsAStoppedUnitUntilStopAndWaitGoneDropsIt) {
    std::string name = unique_unit_name();
    Properties props{{"CPUQuota", "50%"}};
    PendingJob job = start_anchored(name, props);
    job.wait(30s);
    manager().stop_unit(name);
    EXPECT_FALSE(manager().wait_unit_gone(name, 300ms)) << "collected although referenced";
    EXPECT_TRUE(manager().unit_loaded(name));
    detail::stop_and_wait_gone(bus(), name);
    EXPECT_FALSE(manager().unit_loaded(name));
}

}  // namespace
}  // namespace sdfutures
