// TransientUnitProcess and run() against a real manager: results and exceptions, the unit's identity and
// sandbox reaching the child, lifetime, and faults.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "support/descriptor_exhaustion.hpp"
#include "support/manager_environment.hpp"
#include "support/workloads.hpp"
#include "support/owner.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;

enum class Colour { red, green };
struct Point {
    int x = 0;
    std::string label;
    std::vector<double> weights;
    MSGPACK_DEFINE(x, label, weights);
    bool operator==(const Point&) const = default;
};
struct CustomError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class ProcessTest : public SystemdTest {};

// Values travel through a real child and its unit, not only through the codec.
template <class T>
void expect_round_trip(const T& value) {
    T back = run({}, [value] { return value; });
    EXPECT_TRUE(back == value);
}

TEST_F(ProcessTest, EveryListedTypeRoundTrips) {
    expect_round_trip(42);
    expect_round_trip(std::numeric_limits<int64_t>::min());
    expect_round_trip(std::numeric_limits<uint64_t>::max());
    expect_round_trip(3.25);
    expect_round_trip(true);
    expect_round_trip(Colour::green);
    expect_round_trip(std::string("with\0nul", 8));
    expect_round_trip(std::vector<int>{1, 2, 3});
    expect_round_trip(std::array<int, 3>{4, 5, 6});
    expect_round_trip(std::map<std::string, int>{{"a", 1}, {"b", 2}});
    expect_round_trip(std::unordered_map<int, std::string>{{1, "x"}, {2, "y"}});
    expect_round_trip(std::set<std::string>{"p", "q"});
    expect_round_trip(std::optional<int>{});
    expect_round_trip(std::optional<int>{7});
    expect_round_trip(std::pair<int, std::string>{1, "one"});
    expect_round_trip(std::tuple<int, double, std::string>{1, 2.5, "three"});
    expect_round_trip(std::variant<int, std::string>{std::string("alt")});
    expect_round_trip(std::chrono::milliseconds(1500));
    expect_round_trip(std::chrono::hours(3));
    expect_round_trip(Point{3, "p", {0.5, 1.5}});
    expect_round_trip(std::vector<std::map<std::string, std::optional<Point>>>{{{"k", Point{1, "n", {}}}}, {{"z", std::nullopt}}});
}

TEST_F(ProcessTest, ArgumentsAndClosuresReachTheChild) {
    std::string captured = "captured";
    EXPECT_EQ(run({}, [&](int a, const std::string& b) { return captured + b + std::to_string(a); }, 5, std::string("!")),
              "captured!5");
    run({}, [] {});  // void results work
}

TEST_F(ProcessTest, ExceptionsComeBackAsTheirOwnTypes) {
    EXPECT_THROW(run({}, [] { throw std::invalid_argument("ia"); }), std::invalid_argument);
    EXPECT_THROW(run({}, [] { throw std::out_of_range("oor"); }), std::out_of_range);
    EXPECT_THROW(run({}, [] { throw std::logic_error("le"); }), std::logic_error);
    EXPECT_THROW(run({}, [] { throw std::bad_alloc(); }), std::bad_alloc);
    try {
        run({}, [] { throw std::runtime_error("the message"); });
        FAIL();
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "the message");
        EXPECT_EQ(dynamic_cast<const Error*>(&e), nullptr) << "rethrown as itself, not wrapped";
    }
    try {
        run({}, [] { throw CustomError("custom"); });
        FAIL();
    } catch (const RemoteError& e) {
        EXPECT_NE(e.type_name().find("CustomError"), std::string::npos) << e.type_name();
        EXPECT_EQ(e.remote_what(), "custom");
    }
}

TEST_F(ProcessTest, ALargeResultArrivesIntact) {
    std::string big = run({}, [] {
        std::string s(64u << 20, '\0');
        for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 131 % 251);
        return s;
    });
    ASSERT_EQ(big.size(), 64u << 20);
    for (size_t i = 0; i < big.size(); i += 4093) ASSERT_EQ(big[i], static_cast<char>(i * 131 % 251)) << i;
}

TEST_F(ProcessTest, AResultAboveTheConfiguredMaximumIsAProtocolErrorNotAnAllocation) {
    ProcessOptions options;
    options.max_result_bytes = 1024;
    TransientUnitProcess p({}, options, [] { return std::string(4096, 'x'); });
    p.start();
    // The child refuses to send what the parent would reject, and says so.
    EXPECT_THROW(p.result(), std::length_error);
}

struct Identity {
    uid_t uid, euid;
    gid_t gid;
    std::vector<gid_t> groups;
    bool setuid_root_failed;
    MSGPACK_DEFINE(uid, euid, gid, groups, setuid_root_failed);
};

TEST_F(ProcessTest, UserNobodyGivesNobodysOwnIdentityWithNoWayBack) {
    passwd* nobody = getpwnam("nobody");
    ASSERT_NE(nobody, nullptr);
    Identity id = run({{"User", "nobody"}}, [] {
        Identity i{getuid(), geteuid(), getgid(), {}, setuid(0) != 0 && setresuid(0, 0, 0) != 0};
        i.groups.resize(static_cast<size_t>(getgroups(0, nullptr)));
        getgroups(static_cast<int>(i.groups.size()), i.groups.data());
        return i;
    });
    EXPECT_EQ(id.uid, nobody->pw_uid);
    EXPECT_EQ(id.euid, nobody->pw_uid);
    EXPECT_EQ(id.gid, nobody->pw_gid);
    // nobody's own groups, as initgroups would give them: never root's.
    int count = 64;
    std::vector<gid_t> expected(64);
    getgrouplist("nobody", nobody->pw_gid, expected.data(), &count);
    expected.resize(static_cast<size_t>(count));
    EXPECT_EQ(std::set<gid_t>(id.groups.begin(), id.groups.end()), std::set<gid_t>(expected.begin(), expected.end()));
    EXPECT_TRUE(id.setuid_root_failed);
}

TEST_F(ProcessTest, ARootOnlyFileIsUnreadableEvenThroughADescriptorTheParentHad) {
    std::string path = "/tmp/sdfutures-secret-" + std::to_string(getpid());
    {
        std::ofstream(path) << "secret";
        chmod(path.c_str(), 0600);
    }
    int parent_fd = open(path.c_str(), O_RDONLY);  // deliberately not O_CLOEXEC
    ASSERT_GE(parent_fd, 0);
    auto [by_path, by_fd] = run({{"User", "nobody"}}, [&] {
        int fd = open(path.c_str(), O_RDONLY);
        char buf[16];
        bool fd_readable = read(parent_fd, buf, sizeof buf) > 0;
        return std::pair<bool, bool>{fd >= 0, fd_readable};
    });
    close(parent_fd);
    unlink(path.c_str());
    EXPECT_FALSE(by_path);
    EXPECT_FALSE(by_fd);
}

TEST_F(ProcessTest, TheChildHoldsOnlyTheLibrarysDescriptors) {
    int parent_socket = socket(AF_INET, SOCK_STREAM, 0);
    auto fds = run({}, [] {
        std::map<int, std::string> out;
        DIR* d = opendir("/proc/self/fd");
        while (dirent* e = readdir(d)) {
            if (e->d_name[0] == '.') continue;
            int fd = std::atoi(e->d_name);
            if (fd == dirfd(d)) continue;
            char target[256] = {};
            readlink(("/proc/self/fd/" + std::string(e->d_name)).c_str(), target, sizeof target - 1);
            out[fd] = target;
        }
        closedir(d);
        return out;
    });
    close(parent_socket);
    ASSERT_EQ(fds.size(), 4u);
    EXPECT_EQ(fds[0], "/dev/null");
    EXPECT_EQ(fds[1], "/dev/null");
    EXPECT_EQ(fds[2], "/dev/null");
    EXPECT_EQ(fds[3].rfind("pipe:", 0), 0u) << fds[3];
}

TEST_F(ProcessTest, PrivateNetworkCutsTheChildOffTheParentsLoopback) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(listen(listener, 4), 0);
    socklen_t len = sizeof addr;
    getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
    auto try_connect = [addr] {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        bool ok = connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
        close(s);
        return ok;
    };
    EXPECT_TRUE(run({}, try_connect)) << "without PrivateNetwork the port is reachable";
    EXPECT_FALSE(run({{"PrivateNetwork", "yes"}}, try_connect));
    close(listener);
}

TEST_F(ProcessTest, NiceEnvironmentUmaskAndWorkingDirectoryReachTheChild) {
    auto [nice, foo, mask, cwd] = run(
        {{"Nice", "10"}, {"Environment", "FOO=bar"}, {"UMask", "0027"}, {"WorkingDirectory", "/tmp"}}, [] {
            errno = 0;
            int n = getpriority(PRIO_PROCESS, 0);
            const char* f = std::getenv("FOO");
            mode_t m = umask(0);
            char dir[256] = {};
            getcwd(dir, sizeof dir);
            return std::tuple<int, std::string, unsigned, std::string>{n, f ? f : "", m, dir};
        });
    EXPECT_EQ(nice, 10);
    EXPECT_EQ(foo, "bar");
    EXPECT_EQ(mask, 027u);
    EXPECT_EQ(cwd, "/tmp");
}

TEST_F(ProcessTest, RlimitsReachTheChild) {
    auto limit = run({{"LimitNOFILE", "100:200"}}, [] {
        rlimit r{};
        getrlimit(RLIMIT_NOFILE, &r);
        return std::pair<uint64_t, uint64_t>{r.rlim_cur, r.rlim_max};
    });
    EXPECT_EQ(limit.first, 100u);
    EXPECT_EQ(limit.second, 200u);
}

TEST_F(ProcessTest, NoNewPrivilegesReachesTheChild) {
    EXPECT_EQ(run({{"NoNewPrivileges", "yes"}}, [] { return prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); }), 1);
    EXPECT_EQ(run({}, [] { return prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); }), 0);
}

TEST_F(ProcessTest, AllocatingPastMemoryMaxKillsTheChildAndSaysSo) {
    TransientUnitProcess p(testing::memory_max_without_swap("64M"), [] { return testing::hog_memory(1024); });
    testing::expect_killed_by_oom(p);
}

TEST_F(ProcessTest, JoinWithATimeoutReturnsFalseInTimeAndTrueAfterKill) {
    TransientUnitProcess p({}, [] {
        for (;;) pause();
    });
    p.start();
    EXPECT_TRUE(p.is_alive());
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_FALSE(p.join(200ms));
    auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(waited, 200ms);
    EXPECT_LT(waited, 1500ms);
    EXPECT_FALSE(p.exit_status());
    p.kill();
    EXPECT_TRUE(p.join(5s));
    EXPECT_FALSE(p.is_alive());
    EXPECT_EQ(p.exit_status(), -SIGKILL);
    EXPECT_FALSE(manager().unit_loaded(p.unit().name())) << "join() stops and unloads the unit";
}

TEST_F(ProcessTest, ExitStatusFollowsMultiprocessing) {
    TransientUnitProcess exits({}, [] { std::_Exit(3); });
    exits.start();
    exits.join();
    EXPECT_EQ(exits.exit_status(), 3);
    EXPECT_THROW(exits.result(), ProcessDied);

    TransientUnitProcess aborts({}, [] { std::abort(); });
    aborts.start();
    aborts.join();
    EXPECT_EQ(aborts.exit_status(), -SIGABRT);

    TransientUnitProcess sleeps({}, [] { pause(); });
    sleeps.start();
    sleeps.terminate();
    sleeps.join();
    EXPECT_EQ(sleeps.exit_status(), -SIGTERM);

    TransientUnitProcess fine({}, [] { return 1; });
    fine.start();
    EXPECT_EQ(fine.result(), 1);
    EXPECT_EQ(fine.exit_status(), 0);
}

TEST_F(ProcessTest, StoppingTheUnitFromOutsideIsReportedAsUnitStopped) {
    TransientUnitProcess p({}, [] {
        for (;;) pause();
    });
    p.start();
    manager().stop_unit(p.unit().name());
    EXPECT_THROW(p.result(), UnitStopped);
    EXPECT_EQ(p.exit_status(), -SIGTERM);
}

TEST_F(ProcessTest, PropertiesThatCannotReachAForkedChildAreRejectedBeforeAnythingStarts) {
    for (auto [name, value] : std::initializer_list<std::pair<const char*, const char*>>{
             {"SystemCallFilter", "@system-service"}, {"DynamicUser", "yes"}, {"PrivateDevices", "yes"},
             {"ExecStart", "/bin/true"}, {"Delegate", "no"}}) {
        try {
            TransientUnitProcess p({{name, value}}, [] { return 0; });
            ADD_FAILURE() << name << " accepted";
        } catch (const UnsupportedProperty& e) {
            EXPECT_EQ(e.property(), name);
            EXPECT_NE(std::string(e.what()).find(name), std::string::npos);
        }
    }
    Properties typed;
    typed.set_typed("CPUQuotaPeriodUSec", sdbus::Variant(uint64_t{10000}));
    EXPECT_THROW(TransientUnitProcess(typed, [] { return 0; }), UnsupportedProperty);
}

TEST_F(ProcessTest, AStartThatSystemdRefusesLeavesNothingBehind) {
    ProcessOptions options;
    options.unit_name = testing::unique_unit_name();
    manager().start_transient_unit(options.unit_name, Properties{{"ExecStart", "/bin/sleep infinity"}, {"CollectMode", "inactive-or-failed"}});
    TransientUnitProcess p({}, options, [] { return 0; });
    EXPECT_THROW(p.start(), SystemdError);  // UnitExists
    manager().stop_unit(options.unit_name);
    manager().wait_unit_gone(options.unit_name, 5s);
}

TEST_F(ProcessTest, TwoHundredStartsNeverRunUserCodeAsRootOrOnTheHostNetwork) {
    struct stat host_net {};
    stat("/proc/self/ns/net", &host_net);
    int bad = 0;
    for (int i = 0; i < 200; ++i) {
        // The very first thing user code sees.
        auto [uid, net] = run({{"User", "nobody"}, {"PrivateNetwork", "yes"}}, [] {
            struct stat st {};
            stat("/proc/self/ns/net", &st);
            return std::pair<uid_t, ino_t>{getuid(), st.st_ino};
        });
        if (uid == 0 || net == host_net.st_ino) ++bad;
    }
    EXPECT_EQ(bad, 0);
}

TEST_F(ProcessTest, AKilledOwnerLeavesNoUnitAndNoProcessAfterTwoSeconds) {
    auto owner = testing::start_owner(SDFUTURES_OWNER_HELPER, "process");
    ASSERT_EQ(owner.workers.size(), 1u) << owner.unit;
    ASSERT_TRUE(manager().unit_loaded(owner.unit));
    ASSERT_EQ(kill(owner.workers[0], 0), 0);

    testing::kill_owner(owner);
    bool unit_gone = manager().wait_unit_gone(owner.unit, 2s);
    auto alive = testing::wait_orphans_gone(owner, 2s);
    EXPECT_TRUE(unit_gone) << owner.unit << " still loaded 2 s after its owner was killed";
    EXPECT_TRUE(alive.empty()) << "the child is still alive 2 s after its owner was killed";
}

TEST_F(ProcessTest, DestroyingARunningProcessKillsItAndStopsItsUnit) {
    std::string name;
    pid_t pid;
    {
        TransientUnitProcess p({}, [] {
            for (;;) pause();
        });
        p.start();
        name = p.unit().name();
        pid = p.pid();
    }
    EXPECT_FALSE(manager().unit_loaded(name));
    EXPECT_NE(kill(pid, 0), 0);
}

// Every descriptor run() takes (the bus connection, the unit's anchor pipe, the child's pipes, its pidfd) can be
// the one that fails: each such failure is an sdfutures::Error, never a child started()'s caller cannot watch,
// and it leaves no unit, process, child or descriptor behind.
TEST_F(ProcessTest, RunningOutOfDescriptorsAtAnyStepFailsCleanly) {
    auto sweep = testing::sweep_descriptor_exhaustion(manager(), 24, [] { EXPECT_EQ(run({}, [] { return 7; }), 7); });
    EXPECT_GE(sweep.failed, 4) << "run() needs more than four new descriptors; the sweep did not reach its steps";
    EXPECT_GE(sweep.succeeded, 1) << "run() never worked, even with 23 descriptors to spare";
    for (const auto& e : sweep.errors) EXPECT_NE(e.find("Too many open files"), std::string::npos) << e;

    // The same with a bus opened beforehand, so that the sweep lands on the process's own descriptors.
    ProcessOptions options;
    options.bus = bus();
    sweep = testing::sweep_descriptor_exhaustion(manager(), 16, [&] {
        TransientUnitProcess p({}, options, [] { return 8; });
        p.start();
        EXPECT_EQ(p.result(), 8);
    });
    EXPECT_GE(sweep.failed, 3);
    EXPECT_GE(sweep.succeeded, 1);
}

TEST_F(ProcessTest, CallsOutOfOrderAreStateErrors) {
    TransientUnitProcess p({}, [] { return 0; });
    EXPECT_THROW(p.join(), StateError);
    EXPECT_THROW(p.kill(), StateError);
    p.start();
    EXPECT_THROW(p.start(), StateError);
    EXPECT_EQ(p.result(), 0);
}

}  // namespace
}  // namespace sdfutures
