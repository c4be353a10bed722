// CompletionEvents against a real manager: a descriptor an event loop polls, readable when a watched task is
// done, with take() saying which.
#include <fcntl.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "sdfutures/completion_events.hpp"
#include "sdfutures/pool.hpp"
#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;

int sleep_then_return(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
}

std::string sleep_then_name(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return "slept " + std::to_string(ms);
}

int fail(int) { throw std::runtime_error("fails"); }

int square(int x) { return x * x; }

bool readable(int fd, std::chrono::milliseconds wait) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(wait.count())) == 1 && (p.revents & POLLIN);
}

// The keys of the next `count` tasks to be done, as an event loop collects them: wait for readability, take().
std::vector<std::size_t> take_count(CompletionEvents& events, std::size_t count) {
    std::vector<std::size_t> keys;
    while (keys.size() < count) {
        if (!readable(events.fd(), 10s)) break;
        for (std::size_t key : events.take()) keys.push_back(key);
    }
    return keys;
}

class CompletionEventsTest : public SystemdTest {};

TEST_F(CompletionEventsTest, ReadableWhenAWatchedTaskIsDoneAndTakeNamesItInCompletionOrder) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    CompletionEvents events;
    Task<std::string> slow = pool.schedule(&sleep_then_name, 800);
    Task<int> fast = pool.schedule(&sleep_then_return, 50);
    const std::size_t slow_key = events.watch(slow);
    const std::size_t fast_key = events.watch(fast);
    EXPECT_EQ(events.pending(), 2u);
    EXPECT_FALSE(readable(events.fd(), 0ms)) << "nothing is done yet";

    ASSERT_TRUE(readable(events.fd(), 10s));
    std::vector<std::size_t> first = events.take();
    ASSERT_FALSE(first.empty());
    EXPECT_EQ(first.front(), fast_key);
    EXPECT_TRUE(fast.done());
    EXPECT_EQ(fast.future().get(), 50);

    std::vector<std::size_t> all = first;
    while (all.size() < 2) {
        ASSERT_TRUE(readable(events.fd(), 10s));
        for (std::size_t key : events.take()) all.push_back(key);
    }
    EXPECT_EQ(all, (std::vector<std::size_t>{fast_key, slow_key}));
    EXPECT_EQ(slow.future().get(), "slept 800");
    EXPECT_EQ(events.pending(), 0u);
    EXPECT_FALSE(readable(events.fd(), 0ms)) << "take() reset it";
}

TEST_F(CompletionEventsTest, ATaskDoneAlreadyFailedOrCancelledCountsAsDone) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    Task<int> done = pool.schedule(&square, 3);
    done.future().wait();
    Task<int> failing = pool.schedule(&fail, 0);
    failing.future().wait();
    Task<int> blocker = pool.schedule(&sleep_then_return, 600'000);
    Task<int> queued = pool.schedule(&square, 4);  // behind the blocker, then cancelled

    CompletionEvents events;
    EXPECT_EQ(events.watch(done), 0u);
    // (A future is ready a moment before its task is marked done, so "at once" is within a second here.)
    EXPECT_TRUE(readable(events.fd(), 1s)) << "a task done before it was watched wakes the loop by itself";
    EXPECT_EQ(events.watch(failing), 1u);
    EXPECT_EQ(events.watch(queued), 2u);
    EXPECT_EQ(events.watch(blocker), 3u);
    EXPECT_EQ(take_count(events, 2), (std::vector<std::size_t>{0, 1}));
    EXPECT_FALSE(readable(events.fd(), 0ms));

    EXPECT_TRUE(queued.cancel());
    EXPECT_TRUE(readable(events.fd(), 0ms)) << "the cancelling thread settles it";
    EXPECT_TRUE(blocker.cancel());
    EXPECT_EQ(take_count(events, 2), (std::vector<std::size_t>{2, 3}));
    EXPECT_THROW(queued.future().get(), TaskCancelled);
    EXPECT_THROW(blocker.future().get(), TaskCancelled);
}

TEST_F(CompletionEventsTest, TheDescriptorIsNonBlockingAndCloseOnExec) {
    CompletionEvents events;
    EXPECT_TRUE(::fcntl(events.fd(), F_GETFL) & O_NONBLOCK);
    EXPECT_TRUE(::fcntl(events.fd(), F_GETFD) & FD_CLOEXEC);
}

TEST_F(CompletionEventsTest, DestroyingTheSetWhileTasksFinishLeavesThemAndThePoolWhole) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    for (int round = 0; round < 20; ++round) {
        std::vector<Task<int>> tasks;
        for (int i = 0; i < 50; ++i) tasks.push_back(pool.schedule(&square, i));
        {
            CompletionEvents events;
            for (auto& task : tasks) events.watch(task);
        }  // gone while the dispatcher is settling them
        for (int i = 0; i < 50; ++i) ASSERT_EQ(tasks[i].future().get(), i * i);
    }
}

}  // namespace
}  // namespace sdfutures
