// The systemd client against a real manager: transient units, jobs, attaching processes, errors.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "support/manager_environment.hpp"
#include "support/workloads.hpp"

namespace sdfutures {
namespace {

using testing::SystemdTest;
using testing::unique_unit_name;

Properties long_running(const std::string& description) {
    Properties p = testing::sleeping_service();
    p.set("Description", "sdfutures test " + description);
    return p;
}

using Sleeper = testing::PausedChild;

TEST(UnitPaths, EncodeAndDecodeAsSystemdDoes) {
    EXPECT_EQ(unit_object_path("run-u7.service"), "/org/freedesktop/systemd1/unit/run_2du7_2eservice");
    EXPECT_EQ(unit_object_path("1abc.scope"), "/org/freedesktop/systemd1/unit/_31abc_2escope");
    EXPECT_EQ(unit_object_path("a\\x2db@x:y.service"),
              "/org/freedesktop/systemd1/unit/a_5cx2db_40x_3ay_2eservice");
    EXPECT_EQ(unit_object_path(""), "/org/freedesktop/systemd1/unit/_");
    for (std::string name : {"run-u7.service", "1abc.scope", "a\\x2db@x:y.service", "init.scope", ""})
        EXPECT_EQ(unit_name_from_object_path(unit_object_path(name)), name);
    EXPECT_THROW(unit_name_from_object_path("/org/freedesktop/systemd1/unit/bad_zz"), std::invalid_argument);
    EXPECT_THROW(unit_name_from_object_path("/org/other/unit/x"), std::invalid_argument);
}

TEST(BusErrors, AnAddressWithNothingBehindItNamesTheAddress) {
    try {
        Bus::address("unix:path=/nonexistent/sdfutures/bus");
        FAIL() << "connected";
    } catch (const BusError& e) {
        EXPECT_EQ(e.address(), "unix:path=/nonexistent/sdfutures/bus");
        EXPECT_NE(std::string(e.what()).find("/nonexistent/sdfutures/bus"), std::string::npos) << e.what();
    }
}

class ManagerTest : public SystemdTest {};

TEST_F(ManagerTest, ReportsItsVersion) {
    EXPECT_GE(manager().version_major(), 230u) << manager().version();
}

TEST_F(ManagerTest, StartsATransientServiceWhosePropertiesReadBack) {
    auto name = unique_unit_name();
    auto props = long_running("readback");
    props.set("CPUQuota", "25%").set("MemoryMax", "256M").set("TasksMax", "42").set("Delegate", "yes");
    Unit unit = manager().start_transient_unit(name, props);
    EXPECT_EQ(unit.id(), name);
    EXPECT_EQ(unit.active_state(), "active");
    EXPECT_EQ(unit.sub_state(), "running");
    EXPECT_EQ(unit.property_as<uint64_t>(unit.type_interface(), "CPUQuotaPerSecUSec"), 250000u);
    EXPECT_EQ(unit.property_as<uint64_t>(unit.type_interface(), "MemoryMax"), 256u << 20);
    EXPECT_EQ(unit.property_as<uint64_t>(unit.type_interface(), "TasksMax"), 42u);
    EXPECT_TRUE(unit.property_as<bool>(unit.type_interface(), "Delegate"));
    EXPECT_EQ(unit.property_as<std::string>("org.freedesktop.systemd1.Unit", "Description"), "sdfutures test readback");
    uint32_t main_pid = unit.main_pid();
    ASSERT_GT(main_pid, 0u);
    EXPECT_EQ(manager().get_unit_by_pid(main_pid).name(), name);
    auto processes = unit.processes();
    ASSERT_EQ(processes.size(), 1u);
    EXPECT_EQ(processes[0].pid, main_pid);
    EXPECT_NE(processes[0].command_line.find("sleep"), std::string::npos);
    EXPECT_FALSE(unit.control_group().empty());
    EXPECT_NE(unit.control_group().find(name), std::string::npos);
    bool listed = false;
    for (auto& u : manager().list_units()) listed |= (u.name == name && u.active_state == "active");
    EXPECT_TRUE(listed);
    manager().stop_unit(name);
    EXPECT_TRUE(manager().wait_unit_gone(name, std::chrono::seconds(5)));
    EXPECT_FALSE(manager().unit_loaded(name));
}

TEST_F(ManagerTest, AttachProcessesMovesAForkedChildAndStopKillsIt) {
    auto name = unique_unit_name();
    auto props = long_running("attach");
    props.set("Delegate", "yes");
    Unit unit = manager().start_transient_unit(name, props);
    Sleeper child;
    ASSERT_GT(child.pid(), 0);
    EXPECT_EQ(testing::cgroup_of(child.pid()).find(name), std::string::npos);
    manager().attach_processes_to_unit(name, "/", {child.upid()});
    std::string cgroup = testing::cgroup_of(child.pid());
    EXPECT_NE(cgroup.find("/" + name), std::string::npos) << cgroup;
    EXPECT_EQ(manager().get_unit_by_pid(child.upid()).name(), name);
    EXPECT_EQ(unit.processes().size(), 2u);

    manager().stop_unit(name);
    int status = child.wait();
    EXPECT_TRUE(WIFSIGNALED(status));
    EXPECT_EQ(WTERMSIG(status), SIGTERM);
    EXPECT_TRUE(manager().wait_unit_gone(name, std::chrono::seconds(5)));
}

TEST_F(ManagerTest, KillUnitSignalsEveryProcess) {
    auto name = unique_unit_name();
    auto props = long_running("kill");
    props.set("Delegate", "yes");
    manager().start_transient_unit(name, props);
    Sleeper child;
    manager().attach_processes_to_unit(name, "/", {child.upid()});
    manager().kill_unit(name, SIGKILL);
    int status = child.wait();
    EXPECT_TRUE(WIFSIGNALED(status));
    EXPECT_EQ(WTERMSIG(status), SIGKILL);
    // Its main process was killed too: the unit fails and, with CollectMode=inactive-or-failed, goes away.
    EXPECT_TRUE(manager().wait_unit_gone(name, std::chrono::seconds(5)));
}

TEST_F(ManagerTest, AttachingToAUnitWithoutDelegationIsRefusedClearly) {
    auto name = unique_unit_name();
    manager().start_transient_unit(name, long_running("no delegation"));
    Sleeper child;
    try {
        manager().attach_processes_to_unit(name, "/", {child.upid()});
        ADD_FAILURE() << "attached";
    } catch (const SystemdError& e) {
        EXPECT_NE(std::string(e.what()).find("AttachProcessesToUnit " + name), std::string::npos) << e.what();
        EXPECT_FALSE(e.name().empty());
    }
    manager().stop_unit(name);
    EXPECT_TRUE(manager().wait_unit_gone(name, std::chrono::seconds(5)));
}

TEST_F(ManagerTest, ADuplicateNameIsRefusedWithUnitExists) {
    auto name = unique_unit_name();
    manager().start_transient_unit(name, long_running("first"));
    try {
        manager().start_transient_unit(name, long_running("second"));
        ADD_FAILURE() << "a second unit of the same name was started";
    } catch (const SystemdError& e) {
        EXPECT_EQ(e.name(), "org.freedesktop.systemd1.UnitExists") << e.what();
        EXPECT_NE(std::string(e.what()).find("StartTransientUnit " + name), std::string::npos) << e.what();
    }
    manager().stop_unit(name);
    manager().wait_unit_gone(name, std::chrono::seconds(5));
}

TEST_F(ManagerTest, AFailingOneshotEndsItsJobWithFailed) {
    auto name = unique_unit_name();
    Properties props{{"Type", "oneshot"}, {"ExecStart", "/bin/false"}, {"CollectMode", "inactive-or-failed"}};
    try {
        manager().start_transient_unit(name, props);
        ADD_FAILURE() << "the job succeeded";
    } catch (const JobFailed& e) {
        EXPECT_EQ(e.unit(), name);
        EXPECT_EQ(e.job_type(), "start");
        EXPECT_EQ(e.result(), "failed");
    }
    EXPECT_TRUE(manager().wait_unit_gone(name, std::chrono::seconds(5)));
}

TEST_F(ManagerTest, ABadPropertyIsRejectedBeforeSystemdSeesIt) {
    auto name = unique_unit_name();
    Properties props = long_running("bad");
    props.set_typed("MemoryMax", sdbus::Variant(std::string("not a number")));  // systemd's own check
    EXPECT_THROW(manager().start_transient_unit(name, props), SystemdError);
    EXPECT_THROW(Properties({{"MemoryMax", "a lot"}}), PropertyError);
    EXPECT_FALSE(manager().unit_loaded(name));
}

TEST_F(ManagerTest, LoadUnitAndGetUnitOfUnknownNames) {
    try {
        manager().get_unit("sdfutures-test-no-such-unit.service");
        FAIL();
    } catch (const SystemdError& e) {
        EXPECT_EQ(e.name(), "org.freedesktop.systemd1.NoSuchUnit");
    }
    Unit loaded = manager().load_unit("sdfutures-test-no-such-unit.service");
    EXPECT_EQ(loaded.load_state(), "not-found");
}

TEST_F(ManagerTest, AsyncStartOverlapsWithWork) {
    auto name = unique_unit_name();
    auto props = long_running("async");
    props.set("Delegate", "yes");
    auto job = manager().start_transient_unit_async(name, props);
    Sleeper child;  // the work a caller overlaps with systemd's
    job.wait(std::chrono::seconds(10));
    manager().attach_processes_to_unit(name, "/", {child.upid()});
    manager().stop_unit(name);
    int status = child.wait();
    EXPECT_TRUE(WIFSIGNALED(status));
    EXPECT_TRUE(manager().wait_unit_gone(name, std::chrono::seconds(5)));
}

}  // namespace
}  // namespace sdfutures
