// The future side of the pool against a real manager: Task::done()/running()/on_done(), as_completed(),
// wait_any() and the pool's counters (stats()).
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "support/gates.hpp"
#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;

class FuturesTest : public SystemdTest {};

int square(int x) { return x * x; }

std::int64_t monotonic_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Where a task ran and when it ended, by CLOCK_MONOTONIC (one clock for the whole machine).
struct Ended {
    pid_t pid = 0;
    std::int64_t at_ns = 0;
    MSGPACK_DEFINE(pid, at_ns);
};

Ended sleep_then_tell(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return {getpid(), monotonic_ns()};
}

void hang() {
    for (;;) ::pause();
}

int throw_runtime_error(int x) { throw std::runtime_error("no " + std::to_string(x)); }

int crash_abort(int) { std::abort(); }

template <class R>
std::vector<std::size_t> running_indices(const std::vector<Task<R>>& tasks) {
    std::vector<std::size_t> out;
    for (std::size_t i = 0; i < tasks.size(); ++i)
        if (tasks[i].running()) out.push_back(i);
    return out;
}

// Waits (a bounded while) until `pred`, for what only the dispatcher's progress brings about.
template <class P>
bool eventually(P pred, std::chrono::milliseconds limit = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

TEST_F(FuturesTest, AsCompletedYieldsEachOfAHundredTasksOnceInTheOrderTheyFinished) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 4});
    std::mt19937 random(4321);
    std::vector<Task<Ended>> tasks;
    tasks.reserve(100);
    std::mutex mutex;
    std::vector<std::size_t> settled;  // the order the dispatcher settled them in, as on_done sees it
    for (std::size_t i = 0; i < 100; ++i) {
        tasks.push_back(pool.schedule(&sleep_then_tell, static_cast<int>(random() % 40)));
        tasks.back().on_done([&, i] {
            std::lock_guard lock(mutex);
            settled.push_back(i);
        });
    }
    std::vector<std::size_t> yielded;
    std::vector<Ended> ends;
    for (Task<Ended>& task : as_completed(tasks)) {
        const std::int64_t now = monotonic_ns();
        ASSERT_TRUE(task.done());
        yielded.push_back(static_cast<std::size_t>(&task - tasks.data()));
        ends.push_back(task.future().get());
        EXPECT_LE(ends.back().at_ns, now) << "yielded before it ended";
    }
    ASSERT_EQ(yielded.size(), 100u);
    EXPECT_EQ(std::set<std::size_t>(yielded.begin(), yielded.end()).size(), 100u) << "a task yielded twice";
    pool.shutdown();  // every callback has run
    EXPECT_EQ(yielded, settled);
    // A worker answers its tasks in the order it ran them, so the tasks of one worker come in the order they ended.
    // Across workers two answers ready at once are read in the order the dispatcher polls them: ties.
    std::map<pid_t, std::int64_t> last_end;
    for (const Ended& e : ends) {
        EXPECT_GT(e.at_ns, last_end[e.pid]) << "worker " << e.pid << "'s tasks yielded out of the order they ended";
        last_end[e.pid] = e.at_ns;
    }
    EXPECT_GE(last_end.size(), 2u);
}

TEST_F(FuturesTest, AsCompletedFollowsTheOrderTheTasksAreLetEnd) {
    constexpr std::size_t kTasks = 24;
    TransientUnitPoolExecutor pool({}, {.max_workers = 3});
    testing::Gates gates(kTasks);
    std::vector<Task<int>> tasks;
    for (std::size_t i = 0; i < kTasks; ++i)
        tasks.push_back(pool.schedule(&testing::wait_for_gate, gates.path(i), static_cast<int>(i)));
    std::mt19937 random(99);
    std::set<std::size_t> let_end;
    // Lets one running task end, chosen at random among those running.
    auto release_one = [&]() -> std::size_t {
        std::vector<std::size_t> running;
        EXPECT_TRUE(eventually([&] {
            running = running_indices(tasks);
            std::erase_if(running, [&](std::size_t i) { return let_end.count(i) != 0; });
            return !running.empty();
        }));
        if (running.empty()) return kTasks;
        const std::size_t chosen = running[random() % running.size()];
        let_end.insert(chosen);
        gates.open(chosen);
        return chosen;
    };
    std::size_t expected = release_one();
    auto range = as_completed(tasks, 60s);
    std::size_t seen = 0;
    for (auto it = range.begin(); it != range.end(); ++it) {
        Task<int>& task = *it;
        EXPECT_EQ(static_cast<std::size_t>(&task - tasks.data()), expected);
        EXPECT_EQ(task.future().get(), static_cast<int>(expected));
        EXPECT_FALSE(task.running());
        if (++seen < kTasks) expected = release_one();
    }
    EXPECT_EQ(seen, kTasks);
}

// Counts the calls of each task's callback, and whether the task was done when it ran.
class CallbackLog {
public:
    template <class R>
    void watch(Task<R>& task, std::size_t i) {
        task.on_done([this, &task, i] {
            done_inside_[i] = task.done();
            ++calls_[i];
        });
    }
    void expect_each_once(std::size_t n) const {
        for (std::size_t i = 0; i < n; ++i) {
            EXPECT_EQ(calls_[i].load(), 1) << "task " << i;
            EXPECT_TRUE(done_inside_[i].load()) << "task " << i << " was not done when its callback ran";
        }
    }

private:
    std::array<std::atomic<int>, 16> calls_{};
    std::array<std::atomic<bool>, 16> done_inside_{};
};

TEST_F(FuturesTest, OnDoneRunsOnceForEveryWayATaskEnds) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    testing::Gates gates(1);
    CallbackLog log;
    std::vector<Task<int>> tasks;
    tasks.reserve(8);  // the callbacks hold references to the tasks
    auto add = [&](Task<int> task) -> Task<int>& {
        tasks.push_back(std::move(task));
        log.watch(tasks.back(), tasks.size() - 1);
        return tasks.back();
    };
    EXPECT_EQ(add(pool.schedule(&square, 3)).future().get(), 9);                         // a value
    EXPECT_THROW(add(pool.schedule(&throw_runtime_error, 4)).future().get(), std::runtime_error);  // it throws
    EXPECT_THROW(add(pool.schedule(&crash_abort, 5)).future().get(), ProcessDied);      // its worker crashes
    Task<int>& hung = add(pool.schedule(+[] { hang(); return 0; }));                    // cancelled running
    ASSERT_TRUE(eventually([&] { return hung.running(); }));
    EXPECT_TRUE(hung.cancel());
    EXPECT_THROW(hung.future().get(), TaskCancelled);
    Task<int>& gated = add(pool.schedule(&testing::wait_for_gate, gates.path(0), 6));             // holds the worker
    Task<int>& queued = add(pool.schedule(&square, 7));                                 // cancelled queued
    ASSERT_TRUE(eventually([&] { return gated.running(); }));
    EXPECT_TRUE(queued.cancel());
    EXPECT_THROW(queued.future().get(), TaskCancelled);
    gates.open(0);
    EXPECT_EQ(gated.future().get(), 6);
    pool.shutdown();  // every callback has run
    log.expect_each_once(tasks.size());

    TransientUnitPoolExecutor timing_out({}, {.max_workers = 1, .task_timeout = 300ms});
    CallbackLog timeout_log;
    Task<int> over = timing_out.schedule(+[] { hang(); return 0; });                     // over task_timeout
    timeout_log.watch(over, 0);
    EXPECT_THROW(over.future().get(), TaskTimeout);
    timing_out.shutdown();
    timeout_log.expect_each_once(1);
}

TEST_F(FuturesTest, OnDoneOfATaskDoneAlreadyRunsAtOnceInTheCaller) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    Task<int> task = pool.schedule(&square, 5);
    EXPECT_EQ(task.future().get(), 25);
    ASSERT_TRUE(eventually([&] { return task.done(); }));
    EXPECT_FALSE(task.running());
    std::thread::id ran_in;
    int calls = 0;
    task.on_done([&] {
        ran_in = std::this_thread::get_id();
        ++calls;
    });
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(ran_in, std::this_thread::get_id());
}

TEST_F(FuturesTest, AThrowingOnDoneIsReportedAndThePoolGoesOn) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    ::testing::internal::CaptureStderr();
    Task<int> first = pool.schedule(&square, 2);
    first.on_done([] { throw std::logic_error("callback bug"); });
    first.on_done([] { throw 42; });
    std::atomic<bool> third_ran{false};
    first.on_done([&] { third_ran = true; });
    EXPECT_EQ(first.future().get(), 4);
    EXPECT_EQ(pool.submit(&square, 3).get(), 9);
    pool.shutdown();
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_TRUE(third_ran) << "a throwing callback kept the next one from running";
    EXPECT_NE(err.find("on_done callback threw"), std::string::npos) << err;
    EXPECT_NE(err.find("callback bug"), std::string::npos) << err;
    EXPECT_NE(err.find("no std::exception"), std::string::npos) << err;
}

TEST_F(FuturesTest, WaitAnyReturnsNothingWhenNoneFinishesInTime) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    std::vector<Task<int>> hung;
    hung.push_back(pool.schedule(+[] { hang(); return 0; }));
    hung.push_back(pool.schedule(+[] { hang(); return 0; }));
    EXPECT_EQ(wait_any(hung, 200ms), std::nullopt);
    EXPECT_FALSE(hung[0].done());
    EXPECT_FALSE(hung[1].done());
    hung[1].cancel();
    EXPECT_EQ(wait_any(hung, 0ms), std::optional<std::size_t>(1));
    EXPECT_EQ(wait_any(hung), std::optional<std::size_t>(1)) << "a done task is returned at once";
    hung[0].cancel();
    std::vector<Task<int>> none;
    EXPECT_EQ(wait_any(none, 10ms), std::nullopt);
}

TEST_F(FuturesTest, WaitAnyReturnsTheTaskThatFinishes) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    testing::Gates gates(2);
    std::vector<Task<int>> tasks;
    tasks.push_back(pool.schedule(&testing::wait_for_gate, gates.path(0), 0));
    tasks.push_back(pool.schedule(&testing::wait_for_gate, gates.path(1), 1));
    ASSERT_TRUE(eventually([&] { return tasks[0].running() && tasks[1].running(); }));
    std::thread opener([&] { gates.open(1); });
    EXPECT_EQ(wait_any(tasks), std::optional<std::size_t>(1));
    opener.join();
    gates.open(0);
    EXPECT_EQ(tasks[0].future().get(), 0);
}

TEST_F(FuturesTest, AsCompletedThrowsWaitTimeoutAfterItsTimeoutAndTheRestGoOn) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    testing::Gates gates(1);
    std::vector<Task<int>> tasks;
    tasks.push_back(pool.schedule(&testing::wait_for_gate, gates.path(0), 0));
    tasks.push_back(pool.schedule(&square, 4));
    std::vector<int> got;
    try {
        for (Task<int>& task : as_completed(tasks, 300ms)) got.push_back(task.future().get());
        ADD_FAILURE() << "as_completed() waited past its timeout";
    } catch (const WaitTimeout& e) {
        EXPECT_NE(std::string(e.what()).find("1 of 2 tasks"), std::string::npos) << e.what();
    }
    EXPECT_EQ(got, std::vector<int>{16});
    EXPECT_FALSE(tasks[0].done()) << "the task not yielded goes on";
    gates.open(0);
    EXPECT_EQ(tasks[0].future().get(), 0);
}

TEST_F(FuturesTest, StatsCountAKnownWorkload) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    EXPECT_EQ(pool.stats().worker_restarts, 0u);
    testing::Gates gates(1);
    Task<int> blocker = pool.schedule(&testing::wait_for_gate, gates.path(0), 1);
    std::vector<Task<int>> squares;
    for (int i = 0; i < 5; ++i) squares.push_back(pool.schedule(&square, i));
    ASSERT_TRUE(eventually([&] { return pool.stats().running == 1; }));
    PoolStats s = pool.stats();
    EXPECT_EQ(s.queued, 5u);
    EXPECT_TRUE(blocker.running());
    EXPECT_TRUE(squares.back().cancel());
    s = pool.stats();
    EXPECT_EQ(s.queued, 4u);
    EXPECT_EQ(s.cancelled, 1u);
    gates.open(0);
    EXPECT_EQ(blocker.future().get(), 1);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(squares[static_cast<std::size_t>(i)].future().get(), i * i);
    EXPECT_THROW(pool.submit(&throw_runtime_error, 1).get(), std::runtime_error);
    EXPECT_THROW(pool.submit(&crash_abort, 1).get(), ProcessDied);
    EXPECT_EQ(pool.submit(&square, 9).get(), 81);  // on the replacement
    pool.shutdown();
    s = pool.stats();
    EXPECT_EQ(s.queued, 0u);
    EXPECT_EQ(s.running, 0u);
    EXPECT_EQ(s.completed, 6u);  // the blocker, four squares, the last square
    EXPECT_EQ(s.failed, 2u);     // the throw, the crash
    EXPECT_EQ(s.cancelled, 1u);
    EXPECT_EQ(s.worker_restarts, 1u);
}

TEST_F(FuturesTest, StatsCountTimeoutsAsFailedAndKilledWorkersTasksAsCancelled) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2, .task_timeout = 500ms});
    auto timed_out = pool.submit(+[] { hang(); });
    EXPECT_THROW(timed_out.get(), TaskTimeout);
    ASSERT_TRUE(eventually([&] { return pool.stats().worker_restarts == 1; }));
    EXPECT_EQ(pool.stats().failed, 1u);
    std::vector<std::future<void>> ended;
    for (int i = 0; i < 3; ++i) ended.push_back(pool.submit(+[] { ::sleep(10); }));
    ASSERT_TRUE(eventually([&] { return pool.stats().running == 2; }));
    pool.kill_workers();
    for (auto& f : ended) EXPECT_THROW(f.get(), TaskCancelled);
    PoolStats s = pool.stats();
    EXPECT_EQ(s.cancelled, 3u);
    EXPECT_EQ(s.failed, 1u);
    EXPECT_EQ(s.queued + s.running, 0u);
}

int odd_of(int x) { return 2 * x + 1; }

int fussy(int x) {
    if (x == 33) throw std::out_of_range("element " + std::to_string(x));
    if (x == 35) throw std::invalid_argument("element " + std::to_string(x));
    if (x == 77) std::abort();
    return x;
}

TEST_F(FuturesTest, MapInChunksOfAThousandIsCorrectOverAMillionInts) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    std::vector<int> inputs(1'000'000);
    for (std::size_t i = 0; i < inputs.size(); ++i) inputs[i] = static_cast<int>(i);
    std::vector<int> out = pool.map(&odd_of, inputs, {.chunksize = 1000});
    ASSERT_EQ(out.size(), inputs.size());
    for (std::size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], 2 * inputs[i] + 1) << i;
    // Counted a moment after the future is ready (pool_stats.hpp): the last chunk's count may trail its result.
    EXPECT_TRUE(eventually([&] { return pool.stats().completed >= 1000u; }));
    EXPECT_EQ(pool.stats().completed, 1000u) << "one task per chunk";
    // A last chunk shorter than the others, and a chunk larger than the input.
    EXPECT_EQ(pool.map(&odd_of, std::vector<int>{1, 2, 3, 4, 5}, {.chunksize = 2}), (std::vector<int>{3, 5, 7, 9, 11}));
    EXPECT_EQ(pool.map(&odd_of, std::vector<int>{1, 2}, {.chunksize = 100}), (std::vector<int>{3, 5}));
    EXPECT_TRUE(pool.map(&odd_of, std::vector<int>{}, {.chunksize = 100}).empty());
}

TEST_F(FuturesTest, MapInChunksKeepsEachElementsOwnException) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    std::vector<int> inputs(70);
    for (std::size_t i = 0; i < inputs.size(); ++i) inputs[i] = static_cast<int>(i);
    // 33 and 35 throw in the same chunk of ten (30..39): the first in input order is what map() throws, as itself.
    try {
        pool.map(&fussy, inputs, {.chunksize = 10});
        FAIL() << "no exception";
    } catch (const std::out_of_range& e) {
        EXPECT_STREQ(e.what(), "element 33");
    }
    // The chunk's other elements have their values: 30..32 and 34 come back with 35's exception after them.
    std::vector<int> around{30, 31, 32, 34, 35};
    try {
        pool.map(&fussy, around, {.chunksize = 5});
        FAIL() << "no exception";
    } catch (const std::invalid_argument& e) {
        EXPECT_STREQ(e.what(), "element 35");
    }
    EXPECT_EQ(pool.map(&fussy, std::vector<int>{30, 31, 32, 34}, {.chunksize = 5}), (std::vector<int>{30, 31, 32, 34}));
    // A worker that crashes fails its whole chunk, and only it.
    std::vector<int> with_crash(100);
    for (std::size_t i = 0; i < with_crash.size(); ++i) with_crash[i] = static_cast<int>(i) + 40;  // 77 is in 70..79
    EXPECT_THROW(pool.map(&fussy, with_crash, {.chunksize = 10}), ProcessDied);
    EXPECT_EQ(pool.map(&odd_of, std::vector<int>{1, 2, 3}, {.chunksize = 2}), (std::vector<int>{3, 5, 7}));
}

// map() sleeps once for all its tasks (wait_settled), but a failure wakes it: the exception comes as soon as it is
// known, while the other elements still hang, and they are cancelled (their workers killed), not waited for.
TEST_F(FuturesTest, MapRethrowsAFailureAtOnceWhileTheOtherElementsStillRun) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    const auto started = std::chrono::steady_clock::now();
    try {
        pool.map(+[](int x) {
            if (x == 0) throw std::runtime_error("element 0");
            hang();
            return x;
        },
                 std::vector<int>{0, 1, 2, 3}, {.timeout = 20s});
        FAIL() << "no exception";
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "element 0");  // not WaitTimeout: the failure ended the wait
    }
    EXPECT_LT(std::chrono::steady_clock::now() - started, 15s);
    EXPECT_TRUE(eventually([&] {
        const PoolStats s = pool.stats();
        return s.failed == 1 && s.cancelled == 3 && s.queued + s.running == 0;
    }));
    EXPECT_EQ(pool.map(&odd_of, std::vector<int>{1, 2, 3}), (std::vector<int>{3, 5, 7}));
}

TEST_F(FuturesTest, MapTimeoutThrowsWaitTimeoutAndCancelsWhatIsLeft) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    std::vector<int> inputs(10, 0);
    EXPECT_THROW(pool.map(+[](int) {
                     hang();
                     return 0;
                 },
                          inputs, {.chunksize = 2, .timeout = 300ms}),
                 WaitTimeout);
    PoolStats s = pool.stats();
    EXPECT_EQ(s.cancelled, 5u);
    EXPECT_EQ(s.queued + s.running, 0u);
    EXPECT_THROW(pool.map(+[](int) {
                     hang();
                     return 0;
                 },
                          inputs, {.timeout = 300ms}),
                 WaitTimeout);
    EXPECT_EQ(pool.stats().cancelled, 15u);
    EXPECT_EQ(pool.map(&odd_of, std::vector<int>{1, 2, 3}, {.timeout = 30s}), (std::vector<int>{3, 5, 7}));
}

}  // namespace
}  // namespace sdfutures
