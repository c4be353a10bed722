// StartMethod::exec and ::forkserver against a real manager: what systemd applies to exec'd work (its whole
// sandbox), what each method inherits from the owner (memory, locks), and the errors that name what is wrong.
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;

class StartMethodsTest : public SystemdTest {};

PoolOptions exec_options(std::size_t workers = 1) {
    return {.max_workers = workers, .start_method = StartMethod::exec};
}

int square(int x) { return x * x; }

struct WriteProbe {
    uid_t uid = 0;
    int etc_errno = 0;       // creating a file in /etc
    int var_lib_errno = 0;   // creating a file in /var/lib
    int tmp_errno = 0;       // creating a file in /tmp (its own, with DynamicUser=)
    MSGPACK_DEFINE(uid, etc_errno, var_lib_errno, tmp_errno);
};

int create_errno(const char* path) {
    int fd = ::open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) return errno;
    ::close(fd);
    ::unlink(path);
    return 0;
}

WriteProbe probe_writes() {
    return {::getuid(), create_errno("/etc/sdfutures-exec-probe"), create_errno("/var/lib/sdfutures-exec-probe"),
            create_errno("/tmp/sdfutures-exec-probe")};
}

TEST_F(StartMethodsTest, ExecWithDynamicUserRunsAsADynamicUidThatCannotWriteOutsideItsOwnDirectories) {
    TransientUnitPoolExecutor pool({{"DynamicUser", "yes"}}, exec_options());
    WriteProbe p = pool.submit(&probe_writes).get();
    EXPECT_GE(p.uid, 61184u);
    EXPECT_LE(p.uid, 65519u);
    EXPECT_NE(p.etc_errno, 0) << "wrote to /etc";
    EXPECT_NE(p.var_lib_errno, 0) << "wrote to /var/lib";
    EXPECT_EQ(p.tmp_errno, 0) << "its private /tmp: " << std::strerror(p.tmp_errno);
}

TEST_F(StartMethodsTest, RunWithExecRunsTheFunctionOnceInAFreshExecutionUnderTheWholeSandbox) {
    WriteProbe p = run(exec, {{"DynamicUser", "yes"}, {"SystemCallFilter", "@system-service"}}, &probe_writes);
    EXPECT_GE(p.uid, 61184u);
    EXPECT_LE(p.uid, 65519u);
    EXPECT_NE(p.etc_errno, 0);
    EXPECT_EQ(run(exec, {}, [](int x) { return x * 3; }, 14), 42) << "a captureless lambda";
    EXPECT_THROW(run(exec, {}, [] { return std::abort(), 0; }), ProcessDied);
}

int try_mount() {
    return ::mount("none", "/mnt", "tmpfs", 0, nullptr) == 0 ? 0 : errno;
}

TEST_F(StartMethodsTest, ExecWithASystemCallFilterDeniesMountByKillingTheTaskWithSigsys) {
    TransientUnitPoolExecutor pool({{"SystemCallFilter", "~@mount"}}, exec_options());
    try {
        int error = pool.submit(&try_mount).get();
        EXPECT_EQ(error, EPERM) << "mount() went through the filter";
    } catch (const ProcessDied& e) {
        EXPECT_NE(std::string(e.what()).find("SIGSYS"), std::string::npos) << e.what();
    }
    EXPECT_EQ(pool.submit(&square, 5).get(), 25) << "the killed worker was replaced";
}

int inet_socket_errno() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return errno;
    ::close(fd);
    return 0;
}

TEST_F(StartMethodsTest, ExecWithRestrictAddressFamiliesRefusesAnInetSocket) {
    TransientUnitPoolExecutor pool({{"RestrictAddressFamilies", "AF_UNIX"}}, exec_options());
    EXPECT_EQ(pool.submit(&inet_socket_errno).get(), EAFNOSUPPORT);
}

bool device_visible(std::string path) { return ::access(path.c_str(), F_OK) == 0; }

// /dev/mem where the machine has it (this VM has not); else another device PrivateDevices= does not keep.
std::string a_hidden_device() {
    for (const char* path : {"/dev/mem", "/dev/kmsg", "/dev/loop0", "/dev/kvm", "/dev/fuse"})
        if (device_visible(path)) return path;
    return "";
}

TEST_F(StartMethodsTest, ExecWithPrivateDevicesHidesDevMemAndOtherDevices) {
    const std::string device = a_hidden_device();
    ASSERT_FALSE(device.empty()) << "this machine has no device PrivateDevices= would hide";
    TransientUnitPoolExecutor pool({{"PrivateDevices", "yes"}}, exec_options());
    EXPECT_FALSE(pool.submit(&device_visible, device).get()) << device;
    EXPECT_TRUE(pool.submit(&device_visible, std::string("/dev/null")).get());
}

// TransientUnitProcess(exec, ...): one function in a fresh execution of this program under the whole sandbox, with
// the calls and exit statuses of a forked one.
TEST_F(StartMethodsTest, AnExecProcessRunsUnderDynamicUserAndPrivateDevicesAndItsUnitIsGoneAfterJoin) {
    const std::string device = a_hidden_device();
    ASSERT_FALSE(device.empty()) << "this machine has no device PrivateDevices= would hide";
    TransientUnitProcess writes(exec, {{"DynamicUser", "yes"}, {"PrivateDevices", "yes"}}, &probe_writes);
    writes.start();
    WriteProbe p = writes.result();
    EXPECT_GE(p.uid, 61184u);
    EXPECT_LE(p.uid, 65519u);
    EXPECT_NE(p.etc_errno, 0) << "wrote to /etc";
    EXPECT_EQ(writes.exit_status(), 0);
    EXPECT_FALSE(manager().unit_loaded(writes.unit().name())) << "join() stops and unloads the unit";

    TransientUnitProcess sees(exec, {{"PrivateDevices", "yes"}}, &device_visible, device);
    sees.start();
    EXPECT_FALSE(sees.result()) << device;
}

TEST_F(StartMethodsTest, AnExecProcessFollowsMultiprocessingsExitStatuses) {
    TransientUnitProcess exits(exec, {}, [] { std::_Exit(3); });
    exits.start();
    exits.join();
    EXPECT_EQ(exits.exit_status(), 3);
    EXPECT_THROW(exits.result(), ProcessDied);

    TransientUnitProcess aborts(exec, {{"LimitCORE", "0"}}, [] { std::abort(); });
    aborts.start();
    aborts.join();
    EXPECT_EQ(aborts.exit_status(), -SIGABRT);

    TransientUnitProcess sleeps(exec, {}, [] { ::pause(); });
    sleeps.start();
    EXPECT_TRUE(sleeps.is_alive());
    EXPECT_GT(sleeps.pid(), 0);
    EXPECT_FALSE(sleeps.join(200ms));
    EXPECT_FALSE(sleeps.exit_status());
    sleeps.kill();
    EXPECT_TRUE(sleeps.join(5s));
    EXPECT_FALSE(sleeps.is_alive());
    EXPECT_EQ(sleeps.exit_status(), -SIGKILL);
    EXPECT_THROW(sleeps.result(), ProcessDied);

    TransientUnitProcess throws(exec, {}, [](int x) { return x > 0 ? throw std::invalid_argument("positive"), 0 : x; },
                                5);
    throws.start();
    EXPECT_THROW(throws.result(), std::invalid_argument);
    EXPECT_EQ(throws.exit_status(), 0) << "the function threw; its process ended well";

    TransientUnitProcess fine(exec, {}, [](int x) { return x * 2; }, 21);
    EXPECT_THROW(fine.join(), StateError) << "join before start";
    fine.start();
    EXPECT_EQ(fine.result(), 42);
    EXPECT_EQ(fine.exit_status(), 0);
    EXPECT_THROW(fine.start(), StateError);
}

int writable_executable_mapping_errno() {
    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return errno;
    ::munmap(p, 4096);
    return 0;
}

TEST_F(StartMethodsTest, ExecWithMemoryDenyWriteExecuteRefusesAWritableExecutableMapping) {
    TransientUnitPoolExecutor pool({{"MemoryDenyWriteExecute", "yes"}}, exec_options());
    EXPECT_EQ(pool.submit(&writable_executable_mapping_errno).get(), EPERM);
}

std::string status_line(const std::string& key) {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.starts_with(key + ":")) return line.substr(key.size() + 1);
    return "";
}
std::string bounding_set() { return status_line("CapBnd"); }

TEST_F(StartMethodsTest, ExecWithACapabilityBoundingSetShowsItInProcStatus) {
    TransientUnitPoolExecutor pool({{"CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"}}, exec_options());
    std::string set = pool.submit(&bounding_set).get();
    EXPECT_EQ(std::strtoull(set.c_str(), nullptr, 16), 1ull << 10) << set;  // CAP_NET_BIND_SERVICE is 10
}

TEST_F(StartMethodsTest, ExecRefusesWhatTheLibraryOwnsByNameBeforeAnythingStarts) {
    for (const char* name : {"ExecStart", "Type", "StandardOutput", "Restart"}) {
        try {
            TransientUnitPoolExecutor pool({{name, name == std::string("ExecStart") ? "/bin/true" : "simple"}},
                                           exec_options());
            ADD_FAILURE() << name << " was accepted";
        } catch (const UnsupportedProperty& e) {
            EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
        } catch (const PropertyError& e) {
            EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
        }
    }
}

// Measured with systemd 252 as a private `systemd --user` run as root: ProtectHome=yes fails every program's
// start with 226/NAMESPACE. Whatever the manager, the failure names the property rather than hiding it.
TEST_F(StartMethodsTest, ExecUnderANamespaceThisManagerCannotSetUpFailsNamingTheProperty) {
    try {
        TransientUnitPoolExecutor pool({{"ProtectHome", "yes"}}, exec_options());
        EXPECT_EQ(pool.submit(&square, 3).get(), 9) << "this manager set up ProtectHome=yes after all";
    } catch (const StartFailed& e) {
        EXPECT_NE(std::string(e.what()).find("226/NAMESPACE"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("ProtectHome"), std::string::npos) << e.what();
    }
}

TEST_F(StartMethodsTest, ExecRefusesAFunctionOfASharedLibraryNamingIt) {
    TransientUnitPoolExecutor pool({}, exec_options());
    try {
        pool.submit(&::getppid);
        FAIL() << "a function of libc was accepted";
    } catch (const StateError& e) {
        EXPECT_NE(std::string(e.what()).find("libc"), std::string::npos) << e.what();
    }
    EXPECT_EQ(pool.submit(&square, 4).get(), 16) << "the refusal left the pool as it was";
}

int kill_own_server() {
    ::kill(::getppid(), SIGKILL);
    ::pause();
    return 0;
}
int nap(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
}

// What exec does not prevent (README, "Start methods"): workers share the unit's uid with their fork server, the
// unit's main process. A task that kills it ends the unit, and the pool says so at once rather than hang.
TEST_F(StartMethodsTest, AnExecTaskThatKillsItsForkServerEndsThePoolWithUnitStoppedAndNothingHangs) {
    TransientUnitPoolExecutor pool({}, exec_options(2));
    auto sleeper = pool.submit(&nap, 60'000);
    auto killer = pool.submit(&kill_own_server);
    for (auto* f : {&sleeper, &killer}) {
        ASSERT_EQ(f->wait_for(10s), std::future_status::ready);
        EXPECT_THROW(f->get(), UnitStopped);
    }
    EXPECT_THROW(pool.submit(&square, 2), UnitStopped);
}

// ---- what a worker holds of its owner --------------------------------------------------------------------------

// Scans this process's readable memory for `masked` ^ 0x5a without ever holding the plain secret itself.
bool memory_holds(std::string masked) {
    std::ifstream maps("/proc/self/maps");
    int mem = ::open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    if (mem < 0) return false;
    std::vector<unsigned char> buffer(1 << 20);
    bool found = false;
    for (std::string line; !found && std::getline(maps, line);) {
        std::istringstream in(line);
        std::string range, perms;
        in >> range >> perms;
        if (perms.empty() || perms[0] != 'r') continue;
        auto dash = range.find('-');
        uint64_t begin = std::stoull(range.substr(0, dash), nullptr, 16), end = std::stoull(range.substr(dash + 1), nullptr, 16);
        if (end - begin > (uint64_t{1} << 30)) continue;  // a sanitizer's shadow, not the heap
        for (uint64_t at = begin; !found && at < end; at += buffer.size() - masked.size()) {
            ssize_t n = ::pread(mem, buffer.data(), std::min<uint64_t>(buffer.size(), end - at), static_cast<off_t>(at));
            if (n <= 0) break;
            for (ssize_t i = 0; !found && i + static_cast<ssize_t>(masked.size()) <= n; ++i) {
                std::size_t j = 0;
                while (j < masked.size() && (buffer[static_cast<std::size_t>(i) + j] ^ 0x5a) == static_cast<unsigned char>(masked[j])) ++j;
                found = j == masked.size();
            }
            if (static_cast<uint64_t>(n) < buffer.size()) break;
        }
    }
    ::close(mem);
    return found;
}

std::string masked(const std::string& secret) {
    std::string out = secret;
    for (char& c : out) c = static_cast<char>(c ^ 0x5a);
    return out;
}

TEST_F(StartMethodsTest, ASecretTheOwnerAllocatedLaterIsInAForkedWorkerAndNotInAForkserverOrExecOne) {
    // Allocated after sdfutures::init() ran (test_main), before the pools are built.
    std::mt19937_64 random(std::random_device{}());
    auto secret = std::make_unique<std::string>();
    for (int i = 0; i < 4; ++i) *secret += std::to_string(random());
    const std::string hidden = masked(*secret);
    for (StartMethod method : {StartMethod::fork, StartMethod::forkserver, StartMethod::exec}) {
        TransientUnitPoolExecutor pool({}, {.max_workers = 1, .start_method = method});
        const bool found = pool.submit(&memory_holds, hidden).get();
        EXPECT_EQ(found, method == StartMethod::fork) << "method " << static_cast<int>(method);
    }
}

// A worker's RLIMIT_CORE (soft, hard) and umask.
std::vector<std::uint64_t> core_limit_and_umask() {
    struct rlimit core {};
    ::getrlimit(RLIMIT_CORE, &core);
    const mode_t mask = ::umask(0);
    ::umask(mask);
    return {core.rlim_cur, core.rlim_max, mask};
}

TEST_F(StartMethodsTest, AWorkerHasTheUnitsRlimitsAndUmaskEvenWhereTheOwnersChangedSinceInitAndEqualTheUnits) {
    // The zygote a forkserver pool's workers come from was forked at sdfutures::init() (test_main), with the
    // owner's values then; the owner changes its own after. A worker that judged "nothing to change" by the owner's
    // values instead of its own would keep the zygote's.
    struct rlimit before {};
    ASSERT_EQ(::getrlimit(RLIMIT_CORE, &before), 0);
    const mode_t umask_before = ::umask(0);
    ::umask(umask_before);
    struct rlimit changed = before;
    changed.rlim_cur = before.rlim_cur == 4096 ? 8192 : 4096;
    if (changed.rlim_max != RLIM_INFINITY && changed.rlim_max < changed.rlim_cur) changed.rlim_max = changed.rlim_cur;
    ASSERT_EQ(::setrlimit(RLIMIT_CORE, &changed), 0);
    const mode_t changed_umask = umask_before == 027 ? 077 : 027;
    ::umask(changed_umask);
    const std::string hard = changed.rlim_max == RLIM_INFINITY ? "infinity" : std::to_string(changed.rlim_max);
    const Properties properties{{"LimitCORE", std::to_string(changed.rlim_cur) + ":" + hard},
                                {"UMask", "0" + std::to_string(changed_umask == 027 ? 27 : 77)}};
    const std::vector<std::uint64_t> expected{changed.rlim_cur, changed.rlim_max, changed_umask};
    for (StartMethod method : {StartMethod::fork, StartMethod::forkserver}) {
        TransientUnitPoolExecutor pool(properties, {.max_workers = 2, .start_method = method});
        for (const auto& got : pool.map([](int) { return core_limit_and_umask(); }, std::vector<int>{1, 2}))
            EXPECT_EQ(got, expected) << "method " << static_cast<int>(method);
    }
    ::setrlimit(RLIMIT_CORE, &before);
    ::umask(umask_before);
}

std::mutex& held_lock() {
    static std::mutex m;
    return m;
}
bool take_held_lock() {
    std::lock_guard lock(held_lock());
    return true;
}

TEST_F(StartMethodsTest, AMutexAThreadHoldsForeverBlocksAForkedTaskButNotAForkserverOrExecOne) {
    std::promise<void> locked, release;
    std::thread holder([&] {
        std::lock_guard lock(held_lock());
        locked.set_value();
        release.get_future().wait();
    });
    locked.get_future().wait();
    for (StartMethod method : {StartMethod::forkserver, StartMethod::exec}) {
        TransientUnitPoolExecutor pool({}, {.max_workers = 1, .task_timeout = 10s, .start_method = method});
        EXPECT_TRUE(pool.submit(&take_held_lock).get()) << "method " << static_cast<int>(method);
    }
    {
        // The documented caveat of fork: the worker's copy of the mutex is locked by a thread it does not have.
        TransientUnitPoolExecutor pool({}, {.max_workers = 1, .task_timeout = 1s, .start_method = StartMethod::fork});
        EXPECT_THROW(pool.submit(&take_held_lock).get(), TaskTimeout);
    }
    release.set_value();
    holder.join();
}

// ---- programs of their own -------------------------------------------------------------------------------------

// Runs `program args...`, returns its stdout and exit status.
std::pair<std::string, int> run_program(const std::vector<std::string>& argv) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(out[1], 1);
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    ::close(out[1]);
    std::string text;
    char buffer[512];
    for (ssize_t n; (n = ::read(out[0], buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<std::size_t>(n));
    ::close(out[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return {text, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

TEST_F(StartMethodsTest, AProgramWithoutInitGetsAnErrorNamingTheCallToAdd) {
    auto [text, status] = run_program({SDFUTURES_EXEC_HELPER, "no-init"});
    EXPECT_EQ(status, 1) << text;
    EXPECT_NE(text.find("sdfutures::init(argc, argv)"), std::string::npos) << text;
}

// The owner hands systemd a descriptor of the file it runs, not its path: a binary renamed over the program's
// path does not run in its place, and the exec'd server checks it runs the owner's own file.
TEST_F(StartMethodsTest, ABinaryReplacedOnDiskAfterStartDoesNotRunInThePool) {
    auto dir = std::filesystem::temp_directory_path() / ("sdfutures-exec-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all);  // 0700: reachable by descriptor only
    const auto copy = dir / "exec_helper";
    std::filesystem::copy_file(SDFUTURES_EXEC_HELPER, copy, std::filesystem::copy_options::overwrite_existing);
    auto [text, status] = run_program({copy.string(), "replaced", copy.string()});
    std::filesystem::remove_all(dir);
    EXPECT_EQ(status, 0) << text;
    EXPECT_EQ(text, "49\n");
}

}  // namespace
}  // namespace sdfutures
