// this_task::heartbeat() and PoolOptions::heartbeat_timeout against a real manager, for every start method: a
// silent task stalls and only it, a beating one outlives the timeout, heartbeat() elsewhere does nothing, and a
// worker that scribbles on its heartbeat page misleads the owner about no one but itself.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "sdfutures/this_task.hpp"
#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::SystemdTest;

int square(int x) { return x * x; }

int sleep_silently(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
}

// Runs `total_ms`, beating every `every_ms`.
int run_beating(int total_ms, int every_ms) {
    const auto end = Clock::now() + std::chrono::milliseconds(total_ms);
    int beats = 0;
    while (Clock::now() < end) {
        this_task::heartbeat();
        ++beats;
        std::this_thread::sleep_for(std::chrono::milliseconds(every_ms));
    }
    return beats;
}

int beat_and_return(int x) {
    this_task::heartbeat();
    return x;
}

// The start of this worker's heartbeat mapping, from /proc/self/maps (its memfd's name); 0 when there is none.
std::uintptr_t heartbeat_mapping() {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line))
        if (line.find("memfd:sdfutures-heartbeat") != std::string::npos) return std::stoull(line, nullptr, 16);
    return 0;
}

// What a hostile task does: writes `stamp` over the first 8 bytes of its page and garbage over the rest, tries to
// shrink the page through /proc/self/map_files, then sleeps `ms` without a heartbeat. Returns -1 when it found no
// page, else 1 if it could shrink it (what the seals forbid), 0 if not.
int scribble_then_sleep(std::int64_t stamp, int ms) {
    const std::uintptr_t start = heartbeat_mapping();
    if (start == 0) return -1;
    auto* page = reinterpret_cast<volatile unsigned char*>(start);  // NOLINT(performance-no-int-to-ptr)
    for (std::size_t i = 8; i < 4096; ++i) page[i] = static_cast<unsigned char>(i * 37);
    std::memcpy(const_cast<unsigned char*>(page), &stamp, sizeof stamp);
    int shrunk = 0;
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", static_cast<unsigned long>(start),
                  static_cast<unsigned long>(start + 4096));
    const int fd = ::open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        shrunk = ::ftruncate(fd, 0) == 0 ? 1 : 0;
        ::close(fd);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return shrunk;
}

class HeartbeatTest : public testing::StartMethodTest {};

template <class E>
std::string failure_of(std::future<int>& f) {
    try {
        f.get();
    } catch (const E& e) {
        return e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "expected " << typeid(E).name() << ", got " << typeid(e).name() << ": " << e.what();
        return {};
    }
    ADD_FAILURE() << "expected " << typeid(E).name() << ", the task succeeded";
    return {};
}

// The bound asserted for stall detection: generous for a loaded 2-core machine (measured: 0 to 10 ms over the
// timeout from submission, 33 runs over the three start methods, some beside a parallel compile).
constexpr auto kStallSlack = 1500ms;

TEST_P(HeartbeatTest, ATaskSilentPastTheHeartbeatTimeoutFailsWithTaskStalledAndTheNextTaskSucceeds) {
    constexpr auto timeout = 1000ms;
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1, .heartbeat_timeout = timeout}));
    ASSERT_EQ(pool.submit(&square, 3).get(), 9);  // the worker is up: what follows measures the task alone
    const pid_t worker = pool.worker_pids().at(0);
    const auto start = Clock::now();
    auto silent = pool.submit(&sleep_silently, 20'000);
    const std::string what = failure_of<TaskStalled>(silent);
    const auto took = Clock::now() - start;
    std::printf("stall detected %lld ms after submit (heartbeat_timeout %lld ms)\n",
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()),
                static_cast<long long>(timeout.count()));
    EXPECT_GE(took, timeout);
    EXPECT_LT(took, timeout + kStallSlack);
    EXPECT_NE(what.find("1000 ms"), std::string::npos) << what;
    EXPECT_NE(what.find(pool.unit().name()), std::string::npos) << what;
    EXPECT_EQ(pool.submit(&square, 7).get(), 49) << "the next task runs, on a replacement";
    EXPECT_NE(pool.worker_pids().at(0), worker);
}

TEST_P(HeartbeatTest, ATaskThatBeatsEveryFifthOfTheTimeoutRunsThreeTimesTheTimeout) {
    constexpr int timeout_ms = 600;
    TransientUnitPoolExecutor pool(
        {}, with_method({.max_workers = 1, .heartbeat_timeout = std::chrono::milliseconds(timeout_ms)}));
    auto beating = pool.submit(&run_beating, 3 * timeout_ms, timeout_ms / 5);
    EXPECT_GE(beating.get(), 10);
    EXPECT_EQ(pool.submit(&square, 5).get(), 25);
}

TEST_P(HeartbeatTest, QuickTasksThatNeverBeatAreNotStalled) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2, .heartbeat_timeout = 300ms}));
    std::vector<std::future<int>> results;
    for (int i = 0; i < 200; ++i) results.push_back(pool.submit(&square, i));
    for (int i = 0; i < 200; ++i) EXPECT_EQ(results[i].get(), i * i);
    EXPECT_EQ(pool.submit(&sleep_silently, 100).get(), 100);
    EXPECT_EQ(pool.stats().failed, 0u);
}

// task_timeout still ends a task that beats: heartbeat() is not a way past it.
TEST_P(HeartbeatTest, ATaskThatBeatsIsStillEndedByTheTaskTimeout) {
    TransientUnitPoolExecutor pool(
        {}, with_method({.max_workers = 1, .task_timeout = 1500ms, .heartbeat_timeout = 500ms}));
    auto beating = pool.submit(&run_beating, 20'000, 50);
    failure_of<TaskTimeout>(beating);
    EXPECT_EQ(pool.submit(&square, 4).get(), 16);
}

TEST_P(HeartbeatTest, HeartbeatInAPoolWithoutAHeartbeatTimeoutDoesNothing) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    EXPECT_EQ(pool.submit(&beat_and_return, 6).get(), 6);
    EXPECT_EQ(pool.submit(&sleep_silently, 300).get(), 300);
}

// A worker that writes a stamp later than the owner's clock is taken as beating now, so it keeps only its own
// task alive, until task_timeout; one that writes a stamp from the past stalls. Neither can shrink its page, and
// the other worker's beating task runs to its end meanwhile.
TEST_P(HeartbeatTest, AWorkerThatScribblesOnItsHeartbeatPageAffectsOnlyItself) {
    TransientUnitPoolExecutor pool(
        {}, with_method({.max_workers = 2, .task_timeout = 3000ms, .heartbeat_timeout = 800ms}));
    auto future_stamp = pool.submit(&scribble_then_sleep, std::numeric_limits<std::int64_t>::max(), 20'000);
    auto honest = pool.submit(&run_beating, 2400, 100);
    const auto start = Clock::now();
    const std::string what = failure_of<TaskTimeout>(future_stamp);
    EXPECT_GE(Clock::now() - start, 2000ms) << "a stamp in the future kept the task past heartbeat_timeout";
    EXPECT_GE(honest.get(), 10) << "the other worker's task was not touched";

    auto past_stamp = pool.submit(&scribble_then_sleep, std::int64_t{1}, 20'000);
    failure_of<TaskStalled>(past_stamp);
    auto negative_stamp = pool.submit(&scribble_then_sleep, std::int64_t{-5}, 20'000);
    failure_of<TaskStalled>(negative_stamp);
    EXPECT_EQ(pool.submit(&square, 8).get(), 64);
    // The page is sealed: a worker that shrank it would have the owner's read of it fault (SIGBUS).
    EXPECT_EQ(pool.submit(&scribble_then_sleep, std::int64_t{0}, 0).get(), 0);
    EXPECT_EQ(pool.submit(&square, 9).get(), 81);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, HeartbeatTest,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::exec),
                         testing::start_method_name);

// Outside any pool worker heartbeat() is a no-op: in the owner, and in a TransientUnitProcess child.
class HeartbeatOutsideAPoolTest : public SystemdTest {};

int beat_many_times(int n) {
    for (int i = 0; i < n; ++i) this_task::heartbeat();
    return n;
}

TEST_F(HeartbeatOutsideAPoolTest, HeartbeatOutsideAPoolDoesNothing) {
    for (int i = 0; i < 1000; ++i) this_task::heartbeat();
    EXPECT_EQ(beat_many_times(1000), 1000);
    EXPECT_EQ(run({}, &beat_many_times, 1000), 1000);
}

}  // namespace
}  // namespace sdfutures
