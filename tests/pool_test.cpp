// TransientUnitPoolExecutor against a real manager: results, limits and identity in workers, faults contained,
// external stops, lifetime.
#include <dirent.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
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

int square(int x) { return x * x; }
int twice(int x) { return 2 * x; }
pid_t own_pid() { return getpid(); }

using testing::burn;

int crash(int how) {
    switch (how) {
        case 0: std::raise(SIGSEGV); break;
        case 1: std::abort();
        case 2: std::_Exit(3);
        case 3: {
            std::vector<std::unique_ptr<char[]>> hog;
            for (;;) {
                hog.emplace_back(new char[1 << 20]);
                std::memset(hog.back().get(), 1, 1 << 20);
            }
        }
    }
    return how;
}

// The whole pool contract, for each start method.
class PoolTest : public testing::StartMethodTest {};

using testing::start_method_name;

TEST_P(PoolTest, TenThousandSmallTasksAllResolveCorrectly) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 10000; ++i) futures.push_back(pool.submit(&square, i));
    for (int i = 0; i < 10000; ++i) ASSERT_EQ(futures[static_cast<size_t>(i)].get(), i * i);
}

TEST_P(PoolTest, MapKeepsInputOrderAndLambdasWithoutCapturesWork) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 3}));
    std::vector<int> inputs(500);
    for (int i = 0; i < 500; ++i) inputs[static_cast<size_t>(i)] = 499 - i;
    auto out = pool.map(&twice, inputs);
    ASSERT_EQ(out.size(), inputs.size());
    for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], 2 * inputs[i]);
    auto strings = pool.map([](const std::string& s) { return s + s; }, std::vector<std::string>{"a", "bc"});
    EXPECT_EQ(strings, (std::vector<std::string>{"aa", "bcbc"}));
    EXPECT_EQ(pool.submit([](int a, std::string b) { return b + std::to_string(a); }, 7, std::string("x")).get(), "x7");
}

TEST_P(PoolTest, ACpuQuotaOfAQuarterHoldsForTwoBusyWorkers) {
    TransientUnitPoolExecutor pool({{"CPUQuota", "25%"}}, with_method({.max_workers = 2}));
    auto a = pool.submit(&burn, 5000);
    auto b = pool.submit(&burn, 5000);
    double share = (a.get() + b.get()) / 5.0;
    EXPECT_NEAR(share, 0.25, 0.03) << "CPU time of both workers over 5 s of wall time";
}

TEST_P(PoolTest, DefaultWorkerCountFollowsTheQuota) {
    TransientUnitPoolExecutor quarter({{"CPUQuota", "25%"}}, with_method({}));
    EXPECT_EQ(quarter.max_workers(), 1u);
    TransientUnitPoolExecutor one_and_a_half({{"CPUQuota", "150%"}}, with_method({}));
    EXPECT_EQ(one_and_a_half.max_workers(), std::min<size_t>(2, std::thread::hardware_concurrency()));
    EXPECT_EQ(one_and_a_half.worker_pids().size(), one_and_a_half.max_workers());
}

struct WorkerIdentity {
    uid_t uid;
    gid_t gid;
    std::vector<gid_t> groups;
    std::vector<int> fds;
    MSGPACK_DEFINE(uid, gid, groups, fds);
};

WorkerIdentity identify() {
    WorkerIdentity id{getuid(), getgid(), {}, {}};
    id.groups.resize(static_cast<size_t>(getgroups(0, nullptr)));
    getgroups(static_cast<int>(id.groups.size()), id.groups.data());
    DIR* d = opendir("/proc/self/fd");
    while (dirent* e = readdir(d))
        if (e->d_name[0] != '.' && std::atoi(e->d_name) != dirfd(d)) id.fds.push_back(std::atoi(e->d_name));
    closedir(d);
    return id;
}

TEST_P(PoolTest, WorkersRunAsNobodyWithNobodysGroupsAndOnlyTheLibrarysDescriptors) {
    passwd* nobody = getpwnam("nobody");
    TransientUnitPoolExecutor pool({{"User", "nobody"}}, with_method({.max_workers = 2}));
    auto ids = pool.map([](int) { return identify(); }, std::vector<int>{1, 2, 3, 4});
    for (auto& id : ids) {
        EXPECT_EQ(id.uid, nobody->pw_uid);
        EXPECT_EQ(id.gid, nobody->pw_gid);
        EXPECT_EQ(id.groups, std::vector<gid_t>{nobody->pw_gid});
        EXPECT_EQ(id.fds, (std::vector<int>{0, 1, 2, 3}));
    }
    for (pid_t pid : pool.worker_pids())
        EXPECT_NE(testing::cgroup_of(pid).find(pool.unit().name()), std::string::npos);
}

// A process's RLIMIT_NOFILE and RLIMIT_CORE (soft, hard each) and its capability bounding set; pid 0: this one.
struct LimitsAndBounds {
    std::vector<std::uint64_t> limits;
    std::uint64_t bounding_set = 0;
    MSGPACK_DEFINE(limits, bounding_set);
    bool operator==(const LimitsAndBounds&) const = default;
};

std::uint64_t bounding_set_of(pid_t pid) {
    std::ifstream in(pid == 0 ? std::string("/proc/self/status") : "/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(in, line);)
        if (line.starts_with("CapBnd:")) return std::strtoull(line.c_str() + 7, nullptr, 16);
    ADD_FAILURE() << "no CapBnd for " << pid;
    return 0;
}

LimitsAndBounds limits_and_bounds_of(pid_t pid) {
    LimitsAndBounds l;
    for (int resource : {RLIMIT_NOFILE, RLIMIT_CORE}) {
        struct rlimit r {};
        EXPECT_EQ(::prlimit(pid, static_cast<__rlimit_resource>(resource), nullptr, &r), 0) << pid;
        l.limits.push_back(r.rlim_cur);
        l.limits.push_back(r.rlim_max);
    }
    l.bounding_set = bounding_set_of(pid);
    return l;
}

LimitsAndBounds own_limits_and_bounds() { return limits_and_bounds_of(0); }

std::string limit_text(std::uint64_t soft, std::uint64_t hard) {
    auto one = [](std::uint64_t v) { return v == RLIM_INFINITY ? std::string("infinity") : std::to_string(v); };
    return one(soft) + ":" + one(hard);
}

// Entry calls setrlimit and drops capabilities only where the unit's main process differs from what a worker
// inherited (unit_entry.hpp): both ways, a worker ends with the unit's. A forked pool refuses
// CapabilityBoundingSet= (systemd applies it only to what it executes), so there the unit's bounding set is the
// manager's; entry_plan_test drops capabilities from a forked child's by a plan.
TEST_P(PoolTest, WorkersHaveTheUnitsRlimitsAndBoundingSetWhetherTheyDifferFromTheOwnersOrNot) {
    auto workers_match_the_main_process = [&](const Properties& properties, const char* which) {
        TransientUnitPoolExecutor pool(properties, with_method({.max_workers = 2}));
        const LimitsAndBounds unit = limits_and_bounds_of(static_cast<pid_t>(pool.unit().main_pid()));
        for (const LimitsAndBounds& worker : pool.map([](int) { return own_limits_and_bounds(); }, std::vector<int>{1, 2}))
            EXPECT_EQ(worker, unit) << which;
        return unit;
    };
    const LimitsAndBounds owner = own_limits_and_bounds();
    const LimitsAndBounds equal = workers_match_the_main_process(
        {{"LimitNOFILE", limit_text(owner.limits[0], owner.limits[1])},
         {"LimitCORE", limit_text(owner.limits[2], owner.limits[3])}},
        "the owner's limits");
    EXPECT_EQ(equal.limits, owner.limits) << "the unit took the owner's limits";
    Properties other{{"LimitNOFILE", owner.limits[1] == 200 ? "100:150" : "100:200"},
                     {"LimitCORE", owner.limits[2] == 12345 ? "23456:67890" : "12345:67890"}};
    if (GetParam() == StartMethod::exec) other.set("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE CAP_KILL");
    const LimitsAndBounds different = workers_match_the_main_process(other, "other limits");
    EXPECT_NE(different.limits, owner.limits);
    if (GetParam() == StartMethod::exec) {
        EXPECT_EQ(different.bounding_set, (1ull << 10) | (1ull << 5));  // CAP_NET_BIND_SERVICE, CAP_KILL
    }
}

TEST_P(PoolTest, EachFaultFailsExactlyItsOwnFutureAndThePoolGoesOn) {
    TransientUnitPoolExecutor pool(testing::memory_max_without_swap("64M"), with_method({.max_workers = 2}));
    const std::pair<int, int> kinds[] = {{0, -SIGSEGV}, {1, -SIGABRT}, {2, 3}, {3, -SIGKILL}};
    for (auto [how, status] : kinds) {
        SCOPED_TRACE(how);
        auto before = pool.submit(&square, 3);
        auto bad = pool.submit(&crash, how);
        auto after = pool.submit(&square, 4);
        EXPECT_EQ(before.get(), 9);
        try {
            bad.get();
            ADD_FAILURE() << "survived";
        } catch (const ProcessDied& e) {
            EXPECT_EQ(e.exit_status(), status) << e.what();
            if (how == 3) {
                EXPECT_NE(std::string(e.what()).find("OOM"), std::string::npos) << e.what();
            }
        }
        EXPECT_EQ(after.get(), 16);
        EXPECT_EQ(pool.submit(&square, 5).get(), 25);
    }
    // The worker the last fault killed is replaced in the background; the other one may have served the tasks since.
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (pool.worker_pids().size() < 2u && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(pool.worker_pids().size(), 2u);
}

TEST_P(PoolTest, TaskTimeoutKillsAHungTaskAndThePoolGoesOn) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1, .task_timeout = 300ms}));
    auto t0 = std::chrono::steady_clock::now();
    auto hung = pool.submit(+[] {
        for (;;) pause();
    });
    EXPECT_THROW(hung.get(), TaskTimeout);
    auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(waited, 300ms);
    EXPECT_LT(waited, 3s);
    EXPECT_EQ(pool.submit(&square, 6).get(), 36);
}

TEST_P(PoolTest, StoppingTheUnitFromOutsideFailsEveryFutureQuickly) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
    std::vector<std::future<double>> futures;
    for (int i = 0; i < 20; ++i) futures.push_back(pool.submit(&burn, 60'000));
    while (pool.worker_pids().size() < 2) std::this_thread::sleep_for(1ms);
    auto t0 = std::chrono::steady_clock::now();
    manager().stop_unit(pool.unit().name());
    for (auto& f : futures) {
        ASSERT_EQ(f.wait_for(2s), std::future_status::ready);
        EXPECT_THROW(f.get(), UnitStopped);
    }
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
    EXPECT_THROW(pool.submit(&square, 1), UnitStopped);
}

TEST_P(PoolTest, NothingRemainsAfterThePoolIsDestroyed) {
    std::string name, cgroup;
    std::vector<pid_t> pids;
    {
        TransientUnitPoolExecutor pool({{"User", "nobody"}}, with_method({.max_workers = 3}));
        EXPECT_EQ(pool.submit(&square, 2).get(), 4);
        name = pool.unit().name();
        cgroup = pool.unit().control_group();
        pids = pool.worker_pids();
        ASSERT_EQ(pids.size(), 3u);
    }
    EXPECT_FALSE(manager().unit_loaded(name));
    for (pid_t pid : pids) EXPECT_NE(kill(pid, 0), 0) << "worker " << pid << " survived";
    struct stat st {};
    EXPECT_NE(stat(("/sys/fs/cgroup/systemd" + cgroup).c_str(), &st), 0) << cgroup;
    EXPECT_NE(stat(("/sys/fs/cgroup/memory" + cgroup).c_str(), &st), 0) << cgroup;
}

TEST_P(PoolTest, MaxTasksPerChildOneGivesANewWorkerPerTask) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2, .max_tasks_per_child = 1}));
    std::vector<std::future<pid_t>> futures;
    for (int i = 0; i < 8; ++i) futures.push_back(pool.submit(&own_pid));
    std::set<pid_t> seen;
    for (auto& f : futures) seen.insert(f.get());
    EXPECT_EQ(seen.size(), 8u);
}

int initialized_marker = 0;
void mark_initialized() { initialized_marker = 42; }

TEST_P(PoolTest, TheInitializerRunsInEachWorkerBeforeItsTasks) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2, .initializer = +[] { mark_initialized(); }}));
    auto seen = pool.map([](int) { return initialized_marker; }, std::vector<int>(10, 0));
    for (int v : seen) EXPECT_EQ(v, 42);
    EXPECT_EQ(initialized_marker, 0) << "it does not run in the owner";
}

TEST_P(PoolTest, AFailingInitializerFailsConstructionClearly) {
    try {
        TransientUnitPoolExecutor pool(
            {}, with_method({.max_workers = 1, .initializer = +[] { throw std::runtime_error("no config"); }}));
        FAIL() << "constructed";
    } catch (const SetupError& e) {
        EXPECT_EQ(e.step(), "initializer");
        EXPECT_NE(std::string(e.what()).find("no config"), std::string::npos);
    }
}

TEST_P(PoolTest, ATaskCanBeCancelledBeforeItStarts) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    auto blocker = pool.submit(&burn, 300);
    std::vector<Task<int>> tasks;
    for (int i = 0; i < 40; ++i) tasks.push_back(pool.schedule(&square, i));
    auto& last = tasks.back();
    EXPECT_TRUE(last.cancel());
    EXPECT_FALSE(last.cancel());
    EXPECT_THROW(last.future().get(), TaskCancelled);
    blocker.get();
    for (int i = 0; i < 39; ++i) EXPECT_EQ(tasks[static_cast<size_t>(i)].future().get(), i * i);
    EXPECT_FALSE(tasks.front().cancel()) << "a finished task cannot be cancelled";
}

TEST_P(PoolTest, ShutdownStopsAcceptingAndCanCancelPending) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    std::vector<std::future<int>> pending;
    for (int i = 0; i < 50; ++i) pending.push_back(pool.submit(&square, i));
    pool.shutdown(true, true);
    // Each either ran (handed to the worker before the shutdown) or was cancelled; none is left hanging.
    int cancelled = 0;
    for (int i = 0; i < 50; ++i) {
        auto& f = pending[static_cast<size_t>(i)];
        ASSERT_EQ(f.wait_for(0s), std::future_status::ready) << "shutdown(wait) returned with task " << i << " unresolved";
        try {
            EXPECT_EQ(f.get(), i * i);
        } catch (const TaskCancelled&) {
            ++cancelled;
        }
    }
    EXPECT_GT(cancelled, 0);
    EXPECT_THROW(pool.submit(&square, 1), StateError);
    EXPECT_TRUE(pool.worker_pids().empty());
}

TEST_P(PoolTest, ExceptionsFromTasksComeBackAsTheirTypes) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    auto f = pool.submit(+[](int x) -> int { throw std::out_of_range("index " + std::to_string(x)); }, 9);
    try {
        f.get();
        FAIL();
    } catch (const std::out_of_range& e) {
        EXPECT_STREQ(e.what(), "index 9");
    }
}

// Constructing a pool takes descriptors for the bus, the anchor pipe, the fork server's control socket, and a
// socket and pidfd per worker (passed from the fork server). Running out at any of them is an sdfutures::Error
// from the constructor, and leaves no unit, worker, fork server or descriptor behind.
TEST_P(PoolTest, RunningOutOfDescriptorsAtAnyStepOfConstructionFailsCleanly) {
    auto sweep = testing::sweep_descriptor_exhaustion(manager(), 32, [this] {
        TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
        EXPECT_EQ(pool.submit(square, 9).get(), 81);
    });
    EXPECT_GE(sweep.failed, 6) << "a pool needs more than six new descriptors; the sweep did not reach its steps";
    EXPECT_GE(sweep.succeeded, 1) << "no pool could be built even with 31 descriptors to spare";
    EXPECT_GE(sweep.system_errors, 1) << "no step's failure came as a SystemError with its error code";
    for (const auto& e : sweep.errors) EXPECT_NE(e.find("Too many open files"), std::string::npos) << e;
}

// A replacement worker forked while the owner has no descriptor to spare: its socket and pidfd cannot reach the
// owner. The tasks waiting for a worker fail with an error that says so, rather than waiting for a worker the
// pool cannot have; the task already running on a worker finishes; and once descriptors are back, so is the pool.
//
// The replacement is forked as soon as the last task of its predecessor (max_tasks_per_child = 1) is handed over.
// That task outlasts it here: were it quick, its worker could exit first and free the very descriptors the
// replacement needs. The two tasks go in as one batch (map), so the second is queued when the replacement fails.
int square_slowly_if_three(int x) {
    if (x == 3) std::this_thread::sleep_for(1500ms);
    return x * x;
}

TEST_P(PoolTest, AReplacementWorkerTheOwnerCannotTakeFailsTheWaitingTasksWithANamedError) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1, .max_tasks_per_child = 1}));
    // The first worker retires after one task and its replacement is forked at once; wait until the owner has
    // taken that one on, so that the worker starved below is the next.
    const pid_t retired = pool.submit(own_pid).get();
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (pool.worker_pids().empty() || pool.worker_pids().front() == retired) {
        ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no replacement for worker " << retired;
        std::this_thread::sleep_for(1ms);
    }
    // map() rethrows the first failing element's error only after the elements before it came back: the error
    // arriving after the slow task's 1.5 s shows that task was let finish, not failed with the rest.
    const auto started = std::chrono::steady_clock::now();
    {
        testing::SoftDescriptorLimit lowered(testing::limit_allowing(0));
        try {
            (void)pool.map(&square_slowly_if_three, std::vector<int>{3, 4});
            ADD_FAILURE() << "a task ran although no worker could be taken on";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("did not reach the pool's owner"), std::string::npos) << e.what();
        }
    }
    EXPECT_GE(std::chrono::steady_clock::now() - started, 1400ms) << "the running task was failed, not let finish";
    // Afterwards a task resolves: with its value once a replacement is taken on, or with the same named error
    // when the replacement forked as the slow task's worker retired met the lowered limit too; never a hang.
    try {
        auto later = pool.submit(square, 6);
        ASSERT_EQ(later.wait_for(30s), std::future_status::ready) << "a task after the episode hangs";
        EXPECT_EQ(later.get(), 36);
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("did not reach the pool's owner"), std::string::npos) << e.what();
    }
}

TEST_P(PoolTest, AKilledOwnerLeavesNoUnitAndNoWorkerAfterTwoSeconds) {
    auto owner = testing::start_owner(SDFUTURES_OWNER_HELPER, ("pool-" + start_method_name({GetParam(), 0})).c_str());
    ASSERT_EQ(owner.workers.size(), 2u) << owner.unit;
    ASSERT_TRUE(manager().unit_loaded(owner.unit));

    testing::kill_owner(owner);
    EXPECT_TRUE(manager().wait_unit_gone(owner.unit, 2s)) << owner.unit;
    auto alive = testing::wait_orphans_gone(owner, 2s);
    EXPECT_TRUE(alive.empty()) << alive.size()
                               << " workers or other orphans of the owner (its fork server) alive 2 s after it was killed";
}

TEST_P(PoolTest, ASoakWithRandomCrashesResolvesEveryFuture) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
    std::mt19937 random(12345);
    std::vector<std::pair<bool, std::future<int>>> futures;
    for (int i = 0; i < 5000; ++i) {
        bool crashes = random() % 100 < 5;
        futures.emplace_back(crashes, crashes ? pool.submit(&crash, static_cast<int>(random() % 3)) : pool.submit(&square, i % 1000));
    }
    int crashed = 0, ok = 0;
    for (size_t i = 0; i < futures.size(); ++i) {
        auto& [crashes, f] = futures[i];
        ASSERT_EQ(f.wait_for(60s), std::future_status::ready) << "task " << i << " hangs";
        try {
            EXPECT_EQ(f.get(), static_cast<int>((i % 1000) * (i % 1000)));
            EXPECT_FALSE(crashes);
            ++ok;
        } catch (const ProcessDied& e) {
            EXPECT_TRUE(crashes) << "task " << i << ": " << e.what();
            ++crashed;
        }
    }
    EXPECT_EQ(ok + crashed, 5000);
    EXPECT_GT(crashed, 150);
    EXPECT_EQ(pool.submit(&square, 12).get(), 144);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, PoolTest,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::exec), start_method_name);

}  // namespace
}  // namespace sdfutures
