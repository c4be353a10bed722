// examples/watchoutput under the private manager: a Type=notify, NotifyAccess=main service with WatchdogSec=1 whose
// main process is the wrapper. A wrapped program that falls silent is restarted by Restart=on-watchdog; one that
// keeps writing is not; and the wrapper ends as the program did, with its output passed on.
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "sdfutures/command.hpp"
#include "sdfutures/unit.hpp"
#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;
using testing::unique_unit_name;

constexpr std::chrono::seconds kWatchdogSec{1};

// The wrapper running `sh -c script` in a watched service; no core file for the watchdog's SIGABRT.
Command watched(const std::string& script) {
    return Command({SDFUTURES_WATCHOUTPUT, "--", "/bin/sh", "-c", script})
        .property("Type", "notify")
        .property("NotifyAccess", "main")
        .property("WatchdogSec", std::to_string(kWatchdogSec.count()))
        .property("LimitCORE", "0");
}

// Restart= on this manager (252) needs streams that are not descriptors (see Command): the journal's.
Command watched_with_restart(const std::string& script) {
    return watched(script).property("Restart", "on-watchdog").stdout_to_journal().stderr_to_journal();
}

class WatchOutputTest : public SystemdTest {
protected:
    uint32_t restarts(const std::string& unit) {
        return manager().get_unit(unit).property_as<uint32_t>("org.freedesktop.systemd1.Service", "NRestarts");
    }
};

TEST_F(WatchOutputTest, AProgramThatFallsSilentIsRestartedByTheWatchdog) {
    auto name = unique_unit_name();
    CommandProcess process = watched_with_restart("echo hi; sleep 100").unit_name(name).start();
    // start() returned at READY=1: the watchdog counts from about here. Its first expiry kills the wrapper and the
    // restart follows RestartSec= (100 ms) later; one more second is the margin for that stop and start.
    const auto ready = std::chrono::steady_clock::now();
    const auto deadline = ready + 2 * kWatchdogSec + 1s;
    uint32_t n = 0;
    while ((n = restarts(name)) == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(50ms);
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - ready);
    EXPECT_GE(n, 1U) << "no restart " << waited.count() << " ms after READY=1 with WatchdogSec=1";
    // Restart=on-watchdog restarts on nothing else, so a restart was the watchdog's.
    process.stop();
    CommandResult r = process.wait();
    EXPECT_GE(r.restarts, 1U) << r.status_text();
    EXPECT_FALSE(manager().unit_loaded(name));
}

TEST_F(WatchOutputTest, AProgramThatKeepsWritingOutlivesItsWatchdogAndEndsWithItsStatus) {
    // Three seconds, three times WatchdogSec=, with a line every 200 ms: only the wrapper's pings keep it alive.
    CommandResult r = watched_with_restart("i=0; while [ $i -lt 15 ]; do echo tick $i; sleep 0.2; i=$((i + 1)); done; exit 5")
                          .run(60s);
    EXPECT_EQ(r.restarts, 0U) << r.unit_result;
    EXPECT_NE(r.unit_result, "watchdog");
    EXPECT_EQ(r.exit_code, 5) << r.status_text();
    EXPECT_FALSE(r.timed_out);
}

TEST_F(WatchOutputTest, TheWrapperEndsWithTheProgramsExitCodeAndPassesItsOutputOn) {
    CommandResult r = watched("echo x; echo y >&2; exit 3").capture_stdout().capture_stderr().run(60s);
    EXPECT_EQ(r.exit_code, 3) << r.status_text();
    EXPECT_EQ(r.unit_result, "exit-code");
    EXPECT_EQ(r.captured_stdout, "x\n");
    EXPECT_EQ(r.captured_stderr, "y\n");
}

TEST_F(WatchOutputTest, TheWrapperDiesOfTheSignalThatKilledTheProgram) {
    CommandResult r = watched("kill -KILL $$").run(60s);
    EXPECT_EQ(r.signal, SIGKILL) << r.status_text();
    EXPECT_EQ(r.unit_result, "signal");
}

}  // namespace
}  // namespace sdfutures
