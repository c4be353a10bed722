// The service side (<sdfutures/daemon.hpp>) inside real units of the private manager: tests/helpers/notify_helper
// is started as a transient Type=notify service with NotifyAccess=main through the library's own Manager, and what
// it does with daemon.hpp is checked in what systemd says of its unit (ActiveState, StatusText, Result, ...).
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <signal.h>
#include <sys/wait.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>

#include "sdfutures/daemon.hpp"
#include "support/manager_environment.hpp"
#include "support/notify_fifos.hpp"
#include "support/unit_cleanup.hpp"

using namespace std::chrono_literals;

namespace sdfutures::testing {
namespace {

constexpr const char* kServiceInterface = "org.freedesktop.systemd1.Service";

using testing::Fifos;
using testing::TempDir;

// Type=notify with NotifyAccess=main, running notify_helper with `args`; no core file for a watchdog's SIGABRT.
Properties notify_service(const std::string& args, const std::optional<std::string>& watchdog_sec = std::nullopt) {
    Properties p{{"Type", "notify"},
                 {"NotifyAccess", "main"},
                 {"ExecStart", std::string(SDFUTURES_NOTIFY_HELPER) + " " + args},
                 {"LimitCORE", "0"}};
    if (watchdog_sec) p.set("WatchdogSec", *watchdog_sec);
    return p;
}

std::string status_text(const Unit& unit) { return unit.property_as<std::string>(kServiceInterface, "StatusText"); }

uint64_t watchdog_timestamp(const Unit& unit) {
    return unit.property_as<uint64_t>(kServiceInterface, "WatchdogTimestampMonotonic");
}

// Nothing tells this client when a unit's state changes (systemd's PropertiesChanged is not what sdfutures
// waits on), so it is read until it is `wanted`, within a bound that only keeps a broken run from hanging.
std::string wait_for_active_state(const Unit& unit, const std::string& wanted) {
    auto deadline = std::chrono::steady_clock::now() + 60s;
    std::string state = unit.active_state();
    while (state != wanted && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(20ms);
        state = unit.active_state();
    }
    return state;
}

// Sets an environment variable for one scope, and puts back what was there.
class ScopedEnv {
public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        if (value) ::setenv(name, value, 1);
        else ::unsetenv(name);
    }
    ~ScopedEnv() {
        if (old_) ::setenv(name_, old_->c_str(), 1);
        else ::unsetenv(name_);
    }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

private:
    const char* name_;
    std::optional<std::string> old_;
};

class DaemonTest : public SystemdTest {};

TEST_F(DaemonTest, ANotifyUnitIsActivatingUntilTheProgramSaysReady) {
    Fifos fifos;
    auto name = unique_unit_name();
    PendingJob start = manager().start_transient_unit_async(name, notify_service("ready-when-told " + fifos.dir()));
    UnitCleanup cleanup(manager(), name);
    ASSERT_TRUE(fifos.wait_started()) << "the helper did not run";
    Unit unit(bus(), name);
    // The helper runs and has not said READY=1: systemd still considers the unit starting.
    EXPECT_EQ(unit.active_state(), "activating");
    EXPECT_EQ(unit.sub_state(), "start");
    fifos.go();
    start.wait(60s);  // the start job ends with READY=1, not before
    EXPECT_EQ(unit.active_state(), "active");
    EXPECT_EQ(unit.sub_state(), "running");
}

TEST_F(DaemonTest, StatusTextShowsInTheUnitsStatusText) {
    Fifos fifos;
    auto name = unique_unit_name();
    PendingJob start = manager().start_transient_unit_async(name, notify_service("ready-when-told " + fifos.dir()));
    UnitCleanup cleanup(manager(), name);
    ASSERT_TRUE(fifos.wait_started());
    Unit unit(bus(), name);
    EXPECT_EQ(status_text(unit), "waiting");  // sent before READY=1, and seen by the manager (notify_barrier)
    fifos.go();
    start.wait(60s);
    EXPECT_EQ(status_text(unit), "serving");  // sent with READY=1, in the same datagram
}

TEST_F(DaemonTest, WatchdogEnabledIsWatchdogSecInsideAUnitAndNothingOutside) {
    EXPECT_FALSE(daemon::watchdog_enabled().has_value());  // the test itself is no unit's main process

    auto watched = unique_unit_name();
    UnitCleanup cleanup(manager(), watched);
    Unit unit = manager().start_transient_unit(watched, notify_service("report", "7s"));
    EXPECT_EQ(status_text(unit).substr(0, 17), "watchdog=7000000 ") << status_text(unit);

    auto unwatched = unique_unit_name();
    UnitCleanup cleanup_unwatched(manager(), unwatched);
    Unit plain = manager().start_transient_unit(unwatched, notify_service("report"));
    EXPECT_EQ(status_text(plain).substr(0, 14), "watchdog=none ") << status_text(plain);
}

TEST_F(DaemonTest, WatchdogEnabledReadsTheVariablesForThisProcessOnly) {
    std::string own = std::to_string(::getpid());
    {
        ScopedEnv usec("WATCHDOG_USEC", "1500000");
        ScopedEnv pid("WATCHDOG_PID", own.c_str());
        EXPECT_EQ(daemon::watchdog_enabled(), std::chrono::microseconds(1500000));
        daemon::Watchdog watchdog;  // no $NOTIFY_SOCKET: its pings go nowhere, but it runs and stops
        EXPECT_TRUE(watchdog.active());
        EXPECT_EQ(watchdog.interval(), std::chrono::microseconds(1500000));
        watchdog.stall();
        EXPECT_TRUE(watchdog.stalled());
        watchdog.resume();
        EXPECT_FALSE(watchdog.stalled());
    }
    {
        ScopedEnv usec("WATCHDOG_USEC", "1500000");
        ScopedEnv pid("WATCHDOG_PID", "1");  // meant for another process
        EXPECT_FALSE(daemon::watchdog_enabled().has_value());
        EXPECT_FALSE(daemon::Watchdog().active());
    }
    {
        ScopedEnv usec("WATCHDOG_USEC", "soon");
        ScopedEnv pid("WATCHDOG_PID", own.c_str());
        try {
            daemon::watchdog_enabled();
            ADD_FAILURE() << "a malformed WATCHDOG_USEC was accepted";
        } catch (const SystemError& e) {
            EXPECT_EQ(e.error_number(), EINVAL);
            EXPECT_EQ(e.call(), "sd_watchdog_enabled");
        }
    }
    EXPECT_THROW(daemon::Watchdog(0us), Error);
}

TEST_F(DaemonTest, AWatchdogThatKeepsPingingSurvivesThreeWatchdogIntervals) {
    auto name = unique_unit_name();
    UnitCleanup cleanup(manager(), name);
    Unit unit = manager().start_transient_unit(name, notify_service("keep-pinging", "1s"));
    uint32_t pid = unit.main_pid();
    uint64_t pinged = watchdog_timestamp(unit);
    // Three times WatchdogSec= without a word from the test: only the Watchdog's own pings keep the unit alive.
    std::this_thread::sleep_for(3s);
    EXPECT_EQ(unit.active_state(), "active");
    EXPECT_EQ(unit.main_pid(), pid) << "the service was restarted";
    EXPECT_EQ(unit.property_as<std::string>(kServiceInterface, "Result"), "success");
    EXPECT_GT(watchdog_timestamp(unit), pinged) << "no ping reached the manager";
}

TEST_F(DaemonTest, AStalledWatchdogIsKilledWithSigabrtAndTheResultIsWatchdog) {
    auto name = unique_unit_name();
    UnitCleanup cleanup(manager(), name);
    Unit unit = manager().start_transient_unit(name, notify_service("stall", "1s"));
    ASSERT_EQ(wait_for_active_state(unit, "failed"), "failed");
    EXPECT_EQ(unit.property_as<std::string>(kServiceInterface, "Result"), "watchdog");
    // Killed (CLD_KILLED, 2) by SIGABRT, systemd's default WatchdogSignal=; LimitCORE=0 keeps it from dumping core
    // (CLD_DUMPED, 3), which a machine's own core limits could otherwise allow.
    int32_t code = unit.property_as<int32_t>(kServiceInterface, "ExecMainCode");
    EXPECT_TRUE(code == CLD_KILLED || code == CLD_DUMPED) << code;
    EXPECT_EQ(unit.property_as<int32_t>(kServiceInterface, "ExecMainStatus"), SIGABRT);
}

TEST_F(DaemonTest, ResumePingsAtOnce) {
    Fifos fifos;
    auto name = unique_unit_name();
    UnitCleanup cleanup(manager(), name);
    // A minute of WatchdogSec=: long enough that the stall does not end the unit while the test looks.
    Unit unit = manager().start_transient_unit(name, notify_service("stall-resume " + fifos.dir(), "60s"));
    ASSERT_TRUE(fifos.wait_started());
    uint64_t stalled_at = watchdog_timestamp(unit);  // the last ping before stall(), as the manager recorded it
    fifos.go();
    ASSERT_TRUE(fifos.wait_started());
    EXPECT_GT(watchdog_timestamp(unit), stalled_at);
    EXPECT_EQ(unit.active_state(), "active");
}

TEST_F(DaemonTest, ListenFdsReceivesASocketUnitsSocketByItsName) {
    // A transient .socket with its service as StartTransientUnit's auxiliary unit, as `systemd-run --socket-property`
    // does: the first connection starts the service, which gets the listening socket as descriptor 3, named by the
    // socket's FileDescriptorName=.
    TempDir dir;
    std::string path = dir.path() + "/greeting.sock";
    std::string stem = unique_unit_name("");
    // The service first: while its socket is loaded, the socket's reference keeps it loaded too.
    UnitCleanup cleanup(manager(), {stem + ".service", stem + ".socket"});
    manager().start_transient_unit(stem + ".socket", Properties{{"ListenStream", path}, {"FileDescriptorName", "greeting"}},
                                   {}, "fail",
                                   {{stem + ".service", Properties{{"ExecStart", std::string(SDFUTURES_NOTIFY_HELPER) + " serve"}}}});
    EXPECT_EQ(Unit(bus(), stem + ".socket").active_state(), "active");

    int client = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(client, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    ASSERT_LT(path.size(), sizeof address.sun_path);
    std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
    ASSERT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&address), sizeof address), 0) << std::strerror(errno);
    std::string answer;
    char buf[256];
    pollfd p{client, POLLIN, 0};
    while (::poll(&p, 1, 60'000) == 1) {
        ssize_t n = ::read(client, buf, sizeof buf);
        if (n <= 0) break;
        answer.append(buf, static_cast<size_t>(n));
    }
    ::close(client);
    EXPECT_EQ(answer, "greeting:3\n");
    EXPECT_EQ(Unit(bus(), stem + ".service").active_state(), "active");  // started by the connection
    EXPECT_TRUE(daemon::listen_fds().empty());                           // nothing was passed to the test
}

TEST_F(DaemonTest, BootedIsFalseHereButTrueInsideAUnit) {
    // A unit runs in its manager's mount namespace. scripts/with-systemd gives the private manager one of its own
    // with /run/systemd/system made there (systemd needs it to run), so sd_booted(), which only asks whether that
    // directory exists, says yes inside the unit, as it does under any systemd that runs services.
    auto name = unique_unit_name();
    UnitCleanup cleanup(manager(), name);
    Unit unit = manager().start_transient_unit(name, notify_service("report"));
    std::string status = status_text(unit);
    EXPECT_NE(status.find("booted=yes"), std::string::npos) << status;

    // Outside, it tells whether the directory exists where the test runs. On this machine PID 1 is not systemd and
    // the directory exists only in the manager's own namespace, which the test does not share (unless it runs as
    // with-systemd --as-user runs it): false.
    EXPECT_EQ(daemon::booted(), std::filesystem::is_directory("/run/systemd/system"));
    auto namespace_of = [](const std::string& pid) { return std::filesystem::read_symlink("/proc/" + pid + "/ns/mnt"); };
    bool own_namespace = namespace_of("self") != namespace_of(std::to_string(unit.main_pid()));
    if (read_file("/proc/1/comm") != "systemd\n" && own_namespace) {
        EXPECT_FALSE(daemon::booted());
    }
}

TEST(DaemonNotification, AssignmentsAreOneLineEach) {
    using daemon::Notification;
    EXPECT_EQ(Notification().ready().status("serving 3 clients").text(), "READY=1\nSTATUS=serving 3 clients\n");
    EXPECT_EQ(Notification().reloading().text(), "RELOADING=1\n");
    EXPECT_EQ(Notification().stopping().text(), "STOPPING=1\n");
    EXPECT_EQ(Notification().watchdog_ping().watchdog_interval(2s).text(), "WATCHDOG=1\nWATCHDOG_USEC=2000000\n");
    EXPECT_EQ(Notification().extend_timeout(1500ms).main_pid(42).text(), "EXTEND_TIMEOUT_USEC=1500000\nMAINPID=42\n");
    EXPECT_THROW(Notification().status("two\nlines"), Error);
    EXPECT_THROW(Notification().status(std::string_view("nul\0byte", 8)), Error);
    EXPECT_THROW(Notification().extend_timeout(-1s), Error);
    EXPECT_THROW(Notification().main_pid(0), Error);
    EXPECT_THROW(daemon::notify(Notification()), Error);
}

TEST(DaemonNotification, WithoutAManagerNothingIsSent) {
    ScopedEnv socket("NOTIFY_SOCKET", nullptr);
    EXPECT_FALSE(daemon::notify_ready("ready"));
    EXPECT_FALSE(daemon::notify_watchdog());
    EXPECT_FALSE(daemon::notify_barrier());
}

TEST(DaemonNotification, AnUnreachableSocketIsASystemErrorWithTheErrno) {
    ScopedEnv socket("NOTIFY_SOCKET", "/nonexistent/sdfutures/notify");
    try {
        daemon::notify_status("x");
        ADD_FAILURE() << "sent to a socket that does not exist";
    } catch (const SystemError& e) {
        EXPECT_EQ(e.error_number(), ENOENT);
        EXPECT_NE(std::string(e.what()).find("STATUS=x"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace sdfutures::testing
