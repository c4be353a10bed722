// Command's service settings against the real manager: Type= (exec, notify, oneshot; notify-reload where the
// manager is too old), start failures named with the property behind them, NotifyAccess=/WatchdogSec= for a
// program that speaks sd_notify (tests/helpers/notify_helper), Restart= and RemainAfterExit=.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <stdexcept>
#include <string>

#include <gtest/gtest.h>

#include "sdfutures/command.hpp"
#include "sdfutures/system_info.hpp"
#include "sdfutures/unit.hpp"
#include "support/manager_environment.hpp"
#include "support/notify_fifos.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;
using testing::unique_unit_name;

constexpr const char* kHelper = SDFUTURES_NOTIFY_HELPER;

using testing::Fifos;
using testing::TempDir;

class CommandServiceTest : public SystemdTest {
protected:
    void expect_gone(const std::string& unit) { EXPECT_FALSE(manager().unit_loaded(unit)) << unit; }
    std::string active_state(const std::string& unit) { return manager().get_unit(unit).active_state(); }

    // A start systemd fails: CommandStartFailed from start(), its text naming `status` and `cause`.
    void expect_start_failure(Command command, int status, const std::string& status_text, const std::string& cause) {
        auto name = unique_unit_name();
        try {
            command.unit_name(name).start();
            ADD_FAILURE() << "started";
        } catch (const CommandStartFailed& e) {
            EXPECT_EQ(e.exec_status(), status) << e.what();
            EXPECT_EQ(e.unit(), name);
            EXPECT_NE(std::string(e.what()).find(status_text), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("caused by " + cause), std::string::npos) << e.what();
        }
        expect_gone(name);
    }
};

// ---- Type=

TEST_F(CommandServiceTest, NotifyIsActivatingUntilTheProgramSaysReadyThenStartReturns) {
    Fifos fifos;
    auto name = unique_unit_name();
    auto starting = std::async(std::launch::async, [&] {
        return Command({kHelper, "ready-when-told", fifos.dir()})
            .property("Type", "notify")
            .property("NotifyAccess", "main")
            .unit_name(name)
            .start();
    });
    ASSERT_TRUE(fifos.wait_started()) << "the helper did not run";
    // It runs and has not sent READY=1: the unit is starting, and so is start().
    EXPECT_EQ(active_state(name), "activating");
    EXPECT_EQ(starting.wait_for(300ms), std::future_status::timeout);
    fifos.go();
    ASSERT_EQ(starting.wait_for(60s), std::future_status::ready);
    CommandProcess process = starting.get();
    EXPECT_EQ(active_state(name), "active");
    process.stop();
    CommandResult r = process.wait();
    EXPECT_TRUE(r.stopped);
    EXPECT_EQ(r.signal, SIGTERM) << r.status_text();
    expect_gone(name);
}

TEST_F(CommandServiceTest, OneshotStartReturnsAfterTheProgramExitedWithItsStatus) {
    TempDir dir;
    const std::string mark = dir.path() + "/ran";
    auto process = Command({"/bin/sh", "-c", "sleep 0.3; echo out; touch " + mark + "; exit 4"})
                       .property("Type", "oneshot")
                       .capture_stdout()
                       .start();
    // Returned only after the program's last step.
    EXPECT_TRUE(std::filesystem::exists(mark));
    CommandResult r = process.wait();
    EXPECT_EQ(r.exit_code, 4) << r.status_text();
    EXPECT_EQ(r.unit_result, "exit-code");
    EXPECT_EQ(r.captured_stdout, "out\n");
    expect_gone(r.unit);

    auto ok = Command({"/bin/sh", "-c", "sleep 0.3; touch " + mark + "-ok"}).property("Type", "oneshot").start();
    EXPECT_TRUE(std::filesystem::exists(mark + "-ok"));
    CommandResult done = ok.wait();
    EXPECT_TRUE(done.success()) << done.status_text();
    expect_gone(done.unit);
}

TEST_F(CommandServiceTest, ExecAndSimpleStartReturnWhileTheProgramRuns) {
    for (const char* type : {"exec", "simple"}) {
        auto name = unique_unit_name();
        auto process = Command({"/bin/sleep", "1000"}).property("Type", type).unit_name(name).start();
        EXPECT_EQ(active_state(name), "active") << type;
        process.kill(SIGKILL);
        CommandResult r = process.wait();
        EXPECT_EQ(r.signal, SIGKILL) << type << ": " << r.status_text();
        expect_gone(name);
    }
    // Type=exec: a program systemd cannot execute fails start() itself.
    expect_start_failure(Command({"/bin/true"}).property("Type", "exec").working_directory("/nonexistent/sdfutures-dir"),
                         200, "200/CHDIR", "WorkingDirectory=/nonexistent/sdfutures-dir");
}

TEST_F(CommandServiceTest, NotifyReloadIsRefusedBeforeAnythingStartsWhereTheManagerIsOlderThan253) {
    const unsigned version = system_info(manager().bus()).systemd_version;
    auto name = unique_unit_name();
    Command command({kHelper, "report"});
    command.property("Type", "notify-reload").property("NotifyAccess", "main").unit_name(name);
    if (version < 253) {
        try {
            command.start();
            ADD_FAILURE() << "started under systemd " << version;
        } catch (const Unsupported& e) {
            EXPECT_NE(std::string(e.what()).find("Type=notify-reload needs systemd >= 253; the manager is " +
                                                 std::to_string(version)),
                      std::string::npos)
                << e.what();
        }
    } else {
        auto process = command.start();  // READY=1 from the helper
        EXPECT_EQ(active_state(name), "active");
        process.stop();
        EXPECT_TRUE(process.wait().stopped);
    }
    expect_gone(name);
}

TEST_F(CommandServiceTest, TypesWhoseMainProcessIsNotTheProgramAreRefused) {
    try {
        Command({"/bin/true"}).property("Type", "forking");
        ADD_FAILURE() << "accepted";
    } catch (const UnsupportedProperty& e) {
        EXPECT_EQ(e.property(), "Type");
        EXPECT_NE(std::string(e.what()).find("forking"), std::string::npos) << e.what();
    }
}

// ---- start failures, named with the property behind them

TEST_F(CommandServiceTest, AnUnknownUserNames217AndTheUserProperty) {
    expect_start_failure(Command({"/bin/true"}).property("User", "no-such-user"), 217, "217/USER", "User=no-such-user");
}

// This manager fails ProtectHome= and ProtectKernelTunables= with 226/NAMESPACE for any program.
TEST_F(CommandServiceTest, ANamespaceThisManagerCannotSetUpNames226AndTheProperty) {
    expect_start_failure(Command({"/bin/true"}).property("ProtectHome", "yes"), 226, "226/NAMESPACE", "ProtectHome=yes");
    expect_start_failure(Command({"/bin/true"}).property("ProtectKernelTunables", "yes"), 226, "226/NAMESPACE",
                         "ProtectKernelTunables=yes");
}

// ---- NotifyAccess=, WatchdogSec=

TEST_F(CommandServiceTest, AProgramThatStopsPingingTheWatchdogEndsWithResultWatchdog) {
    CommandResult r = Command({kHelper, "stall"})
                          .property("Type", "notify")
                          .property("NotifyAccess", "main")
                          .property("WatchdogSec", "1")
                          .property("LimitCORE", "0")
                          .run(60s);
    EXPECT_EQ(r.unit_result, "watchdog") << r.status_text();
    EXPECT_EQ(r.signal, SIGABRT) << r.status_text();
    EXPECT_FALSE(r.timed_out);
    expect_gone(r.unit);
}

TEST_F(CommandServiceTest, AProgramThatKeepsPingingOutlivesItsWatchdog) {
    // Pinged every second (half the interval) for twice the interval: generous for a loaded machine.
    CommandResult r = Command({kHelper, "keep-pinging"})
                          .property("Type", "notify")
                          .property("NotifyAccess", "main")
                          .property("WatchdogSec", "2")
                          .property("LimitCORE", "0")
                          .run(4s);
    EXPECT_TRUE(r.timed_out) << r.unit_result << ", " << r.status_text();
    EXPECT_NE(r.unit_result, "watchdog");
    expect_gone(r.unit);
}

// ---- Restart=, RemainAfterExit=

TEST_F(CommandServiceTest, RestartOnFailureCountsTheRestartsAndReportsTheLastRun) {
    TempDir dir;
    const std::string mark = dir.path() + "/failed-once";
    // The first run fails with 3, the second succeeds and leaves a file. The streams are not descriptors, so that
    // the manager keeps them for every run (see the next test).
    CommandResult r = Command({"/bin/sh", "-c", "if [ -e " + mark + " ]; then touch " + mark + "-second; exit 0; fi; touch " +
                                                    mark + "; exit 3"})
                          .property("Restart", "on-failure")
                          .property("RestartSec", "100ms")
                          .stdout_to_null()
                          .stderr_to_journal()
                          .run(60s);
    EXPECT_EQ(r.restarts, 1U);
    EXPECT_TRUE(std::filesystem::exists(mark + "-second"));
    EXPECT_EQ(r.exit_code, 0) << r.status_text();  // the last run's
    EXPECT_EQ(r.unit_result, "success");
    expect_gone(r.unit);
}

// Measured under systemd 252: a captured stdout received the first run's output only; so did a file given with
// stdout_to_fd. Before 254 a run's end is a real failed/dead state, in which the service closes its stdio descriptors.
TEST_F(CommandServiceTest, RestartWithStreamsAsDescriptorsNeedsSystemd254) {
    const unsigned version = system_info(manager().bus()).systemd_version;
    auto name = unique_unit_name();
    Command command({"/bin/sh", "-c", "echo run; exit 3"});
    command.property("Restart", "on-failure").property("RestartSec", "100ms").capture_stdout().stderr_to_null().unit_name(name);
    if (version < 254) {
        try {
            command.run(60s);
            ADD_FAILURE() << "ran under systemd " << version;
        } catch (const Unsupported& e) {
            EXPECT_NE(std::string(e.what()).find("Restart=on-failure with stdout as descriptors needs systemd >= 254; "
                                                 "the manager is " + std::to_string(version)),
                      std::string::npos)
                << e.what();
        }
    } else {
        CommandResult r = command.run(60s);  // restarted until the start limit, every run's output captured
        EXPECT_GE(r.restarts, 1U);
        EXPECT_EQ(r.captured_stdout, [&] {
            std::string all;
            for (unsigned i = 0; i <= r.restarts; ++i) all += "run\n";
            return all;
        }());
    }
    expect_gone(name);
}

TEST_F(CommandServiceTest, RemainAfterExitReportsTheUnitActiveAndDestructionStopsIt) {
    auto name = unique_unit_name();
    {
        auto process = Command({"/bin/sh", "-c", "echo hi"})
                           .property("RemainAfterExit", "yes")
                           .capture_stdout()
                           .unit_name(name)
                           .start();
        CommandResult r = process.wait();
        EXPECT_TRUE(r.remains_active);
        EXPECT_EQ(r.exit_code, 0) << r.status_text();
        EXPECT_EQ(r.captured_stdout, "hi\n");
        EXPECT_EQ(r.unit, name);
        EXPECT_EQ(active_state(name), "active");
    }
    expect_gone(name);

    // run() destroys its handle: the result says it remained active, and nothing is left.
    CommandResult r = Command({"/bin/true"}).property("RemainAfterExit", "yes").run(30s);
    EXPECT_TRUE(r.remains_active);
    expect_gone(r.unit);

    // Without it, nothing remains.
    CommandResult plain = Command({"/bin/true"}).run(30s);
    EXPECT_FALSE(plain.remains_active);
    EXPECT_EQ(plain.restarts, 0U);
}

// ---- peak memory where systemd records none

// systemd 252 has no MemoryPeak=, and the v1 memory cgroup of a service is gone when its end is reported; the
// privileged ExecStopPost= Command adds reads it first. dd touches every byte of its 64 MiB buffer.
TEST_F(CommandServiceTest, PeakMemoryIsReportedWhereTheManagerRecordsNone) {
    constexpr uint64_t kMiB = 1024 * 1024;
    CommandResult big = Command({"/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}).stderr_to_null().run(60s);
    ASSERT_TRUE(big.success()) << big.status_text();
    ASSERT_TRUE(big.memory_peak.has_value());
    EXPECT_GE(*big.memory_peak, 64 * kMiB);
    EXPECT_LT(*big.memory_peak, 1024 * kMiB);
    CommandResult small = Command({"/bin/true"}).run(60s);
    ASSERT_TRUE(small.memory_peak.has_value());
    EXPECT_LT(*small.memory_peak, 32 * kMiB);
    // A sandbox the program runs in does not keep the privileged reader from the cgroup.
    CommandResult sandboxed = Command({"/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"})
                                  .property("PrivateTmp", "yes")
                                  .property("ProtectSystem", "strict")
                                  .stderr_to_null()
                                  .run(60s);
    ASSERT_TRUE(sandboxed.memory_peak.has_value()) << sandboxed.status_text();
    EXPECT_GE(*sandboxed.memory_peak, 64 * kMiB);
}

// ---- IO bytes where systemd records none

// Whether a byte counter of the unit's cgroups counts here: on cgroup v2 systemd records IOReadBytes=; on v1 the
// root blkio cgroup's counters list a device only when they count on it (blk-throttle once a throttle limit was set
// on the device since boot, bfq on a bfq-scheduled one).
bool io_is_counted(CgroupLayout layout) {
    if (layout == CgroupLayout::unified) return true;
    for (const char* f : {"/sys/fs/cgroup/blkio/blkio.throttle.io_service_bytes_recursive",
                          "/sys/fs/cgroup/blkio/blkio.bfq.io_service_bytes_recursive"}) {
        std::ifstream in(f);
        std::string device;
        while (in >> device)
            if (device.find(':') != std::string::npos) return true;
    }
    return false;
}

// 8 MiB written and read back with O_DIRECT, so that every byte reaches the block device in the program's own
// cgroup (buffered writes are written back later, by whoever; cached reads reach no device).
TEST_F(CommandServiceTest, IoBytesAreReportedWhereCountedAndEmptyWhereNot) {
    constexpr uint64_t kMiB = 1024 * 1024;
    TempDir dir;  // on a block device, or this test has nothing to measure
    struct stat st {};
    ASSERT_EQ(::stat(dir.path().c_str(), &st), 0);
    std::string device = std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
    if (!std::filesystem::exists("/sys/dev/block/" + device)) GTEST_SKIP() << dir.path() << " is not on a block device";
    const CgroupLayout layout = system_info(Bus::automatic()).cgroup_layout;
    const bool counted = io_is_counted(layout);

    const std::string file = dir.path() + "/data";
    CommandResult w = Command({"/bin/dd", "if=/dev/zero", "of=" + file, "bs=1M", "count=8", "oflag=direct"})
                          .stderr_to_null()
                          .run(60s);
    ASSERT_TRUE(w.success()) << w.status_text();
    CommandResult r = Command({"/bin/dd", "if=" + file, "of=/dev/null", "bs=1M", "iflag=direct"}).stderr_to_null().run(60s);
    ASSERT_TRUE(r.success()) << r.status_text();
    CommandResult idle = Command({"/bin/true"}).run(60s);
    CommandResult unaccounted = Command({"/bin/dd", "if=/dev/zero", "of=" + file, "bs=1M", "count=8", "oflag=direct"})
                                    .typed_property("IOAccounting", sdbus::Variant(false))
                                    .stderr_to_null()
                                    .run(60s);
    ASSERT_TRUE(unaccounted.success()) << unaccounted.status_text();

    if (counted) {
        ASSERT_TRUE(w.io_write_bytes.has_value());
        ASSERT_TRUE(w.io_read_bytes.has_value());
        EXPECT_GE(*w.io_write_bytes, 8 * kMiB);
        EXPECT_LT(*w.io_write_bytes, 12 * kMiB);  // the data, and at most a little of the file system's own
        ASSERT_TRUE(r.io_read_bytes.has_value());
        EXPECT_GE(*r.io_read_bytes, 8 * kMiB);
        EXPECT_LT(*r.io_read_bytes, 12 * kMiB);
        EXPECT_LT(*r.io_write_bytes, 1 * kMiB);
        ASSERT_TRUE(idle.io_write_bytes.has_value());
        EXPECT_LT(*idle.io_write_bytes, 1 * kMiB);
    } else if (!io_is_counted(layout)) {  // still not: a limit set meanwhile would have started the counting
        EXPECT_FALSE(w.io_write_bytes.has_value()) << *w.io_write_bytes;
        EXPECT_FALSE(w.io_read_bytes.has_value());
        EXPECT_FALSE(r.io_read_bytes.has_value());
    }
    // Without IOAccounting= the unit may stay in its slice's blkio cgroup, whose figures (the earlier runs' 8 MiB
    // too) are not the program's: none then. systemd still gives it a cgroup of its own when a sibling needs the
    // controller, and then the figure is the program's.
    if (unaccounted.io_write_bytes) {
        EXPECT_TRUE(counted);
        EXPECT_GE(*unaccounted.io_write_bytes, 8 * kMiB);
        EXPECT_LT(*unaccounted.io_write_bytes, 12 * kMiB);
    }
    // Memory is still recorded alongside.
    EXPECT_TRUE(w.memory_peak.has_value() || layout == CgroupLayout::unified);
}

}  // namespace
}  // namespace sdfutures
