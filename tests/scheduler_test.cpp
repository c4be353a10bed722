// The pool's dispatch policy (src/scheduler.hpp) and a task's status moves (src/task_state.hpp), without a pool:
// which queued task goes to which worker, how deep a worker's window gets, what becomes of a lost worker's
// window, and how many workers the pool asks for. No manager, no processes: plain objects.

#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <vector>

#include "adaptive_spin.hpp"
#include "scheduler.hpp"
#include "task_state.hpp"

namespace sdfutures::testing {
namespace {

using detail::AdaptiveSpin;
using detail::DispatchLimits;
using detail::TaskPtr;
using detail::TaskQueue;
using detail::TaskState;
using detail::TaskWindow;

std::vector<TaskPtr> make_tasks(std::size_t n) {
    std::vector<TaskPtr> tasks;
    for (std::size_t i = 0; i < n; ++i) {
        auto task = std::make_shared<TaskState>();
        task->id = i + 1;
        tasks.push_back(std::move(task));
    }
    return tasks;
}

std::vector<std::uint64_t> ids(const std::deque<TaskPtr>& tasks) {
    std::vector<std::uint64_t> out;
    for (auto& t : tasks) out.push_back(t->id);
    return out;
}

std::vector<std::uint64_t> ids(const std::vector<TaskPtr>& tasks) { return ids(std::deque<TaskPtr>(tasks.begin(), tasks.end())); }

struct Workers {
    std::vector<TaskWindow> windows;
    explicit Workers(std::size_t n) : windows(n) {}
    std::vector<TaskWindow*> ready() {
        std::vector<TaskWindow*> out;
        for (auto& w : windows) out.push_back(&w);
        return out;
    }
};

TEST(TaskStatus, MovesOnlyAlongItsLife) {
    TaskState task;
    EXPECT_EQ(task.status(), TaskState::queued);
    EXPECT_FALSE(task.start()) << "a queued task cannot start without being sent";
    EXPECT_TRUE(task.hand_out(/*runs_now=*/false));
    EXPECT_EQ(task.status(), TaskState::sent);
    EXPECT_FALSE(task.hand_out(false)) << "a sent task is not queued any more";
    EXPECT_TRUE(task.start());
    EXPECT_EQ(task.status(), TaskState::started);
    EXPECT_EQ(task.take_back(), TaskState::started);
    EXPECT_EQ(task.status(), TaskState::queued);
    EXPECT_TRUE(task.claim_if_queued());
    EXPECT_EQ(task.status(), TaskState::resolved);
    EXPECT_EQ(task.claim_from(), TaskState::resolved) << "only one claim wins";
    EXPECT_EQ(task.take_back(), TaskState::resolved) << "a resolved task never goes back to the queue";
    EXPECT_FALSE(task.hand_out(true));
}

TEST(TaskStatus, ClaimIfQueuedLeavesASentTaskToRun) {
    TaskState task;
    ASSERT_TRUE(task.hand_out(false));
    EXPECT_FALSE(task.claim_if_queued());
    EXPECT_EQ(task.status(), TaskState::sent);
    EXPECT_EQ(task.claim_from(), TaskState::sent);
}

TEST(DispatchLimits, AWindowHoldsAtLeastOneTask) {
    EXPECT_EQ(DispatchLimits(0, 0).max_window, 1u);
    EXPECT_EQ(DispatchLimits(5, 0).max_window, 5u);
}

TEST(Scheduler, AsManyTasksAsWorkersGoOneToEachAndAllStart) {
    TaskQueue queue({4, 0});
    auto tasks = make_tasks(3);
    queue.append(tasks);
    Workers workers(3);
    auto round = queue.assign(workers.ready());
    EXPECT_TRUE(queue.empty());
    EXPECT_EQ(round.started, 3u);
    EXPECT_EQ(round.spawns_needed, 0u);
    ASSERT_EQ(round.handouts.size(), 3u);
    for (std::size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(round.handouts[i].window, &workers.windows[i]);
        EXPECT_EQ(round.handouts[i].task->id, i + 1);
        EXPECT_TRUE(round.handouts[i].runs_now);
        EXPECT_EQ(ids(workers.windows[i].in_flight), std::vector<std::uint64_t>{i + 1});
        EXPECT_EQ(workers.windows[i].assigned, 1u);
        EXPECT_EQ(tasks[i]->status(), TaskState::started);
    }
}

TEST(Scheduler, MoreTasksThanWorkersFillWindowsRoundRobinUpToTheirShare) {
    TaskQueue queue({4, 0});
    auto tasks = make_tasks(5);
    queue.append(tasks);
    Workers workers(2);
    auto round = queue.assign(workers.ready());
    // 5 tasks for 2 workers: a window of 3 at most, dealt one depth at a time.
    EXPECT_EQ(ids(workers.windows[0].in_flight), (std::vector<std::uint64_t>{1, 3, 5}));
    EXPECT_EQ(ids(workers.windows[1].in_flight), (std::vector<std::uint64_t>{2, 4}));
    EXPECT_EQ(round.started, 2u);
    EXPECT_EQ(tasks[0]->status(), TaskState::started);
    EXPECT_EQ(tasks[1]->status(), TaskState::started);
    for (std::size_t i = 2; i < 5; ++i) EXPECT_EQ(tasks[i]->status(), TaskState::sent) << "task " << i + 1;
    std::vector<std::uint64_t> handed;
    for (auto& h : round.handouts) handed.push_back(h.task->id);
    EXPECT_EQ(handed, (std::vector<std::uint64_t>{1, 2, 3, 4, 5})) << "sent in the queue's order";
}

TEST(Scheduler, AWindowNeverExceedsMaxWindow) {
    TaskQueue queue({2, 0});
    queue.append(make_tasks(10));
    Workers workers(2);
    queue.assign(workers.ready());
    EXPECT_EQ(workers.windows[0].in_flight.size(), 2u);
    EXPECT_EQ(workers.windows[1].in_flight.size(), 2u);
    EXPECT_EQ(queue.size(), 6u);
}

TEST(Scheduler, IdleWorkersGetTasksBeforeBusyOnes) {
    TaskQueue queue({4, 0});
    auto first = make_tasks(1);
    queue.append(first);
    Workers workers(2);
    std::vector<TaskWindow*> busy_only{&workers.windows[0]};
    queue.assign(busy_only);
    ASSERT_EQ(workers.windows[0].in_flight.size(), 1u);
    auto second = make_tasks(1);
    queue.append(second);
    auto round = queue.assign(workers.ready());
    ASSERT_EQ(round.handouts.size(), 1u);
    EXPECT_EQ(round.handouts[0].window, &workers.windows[1]) << "the idle worker takes it";
    EXPECT_TRUE(round.handouts[0].runs_now);
}

TEST(Scheduler, ATaskSentBehindAnotherDoesNotStart) {
    TaskQueue queue({4, 0});
    auto tasks = make_tasks(2);
    queue.append(tasks);
    Workers workers(1);
    auto round = queue.assign(workers.ready());
    ASSERT_EQ(round.handouts.size(), 2u);
    EXPECT_TRUE(round.handouts[0].runs_now);
    EXPECT_FALSE(round.handouts[1].runs_now);
    EXPECT_EQ(round.started, 1u);
    EXPECT_EQ(tasks[1]->status(), TaskState::sent);
}

TEST(Scheduler, TasksCancelledWhileQueuedAreDroppedNotSent) {
    TaskQueue queue({4, 0});
    auto tasks = make_tasks(3);
    queue.append(tasks);
    ASSERT_TRUE(tasks[0]->claim_if_queued());
    ASSERT_TRUE(tasks[1]->claim_if_queued());
    Workers workers(2);
    auto round = queue.assign(workers.ready());
    ASSERT_EQ(round.handouts.size(), 1u);
    EXPECT_EQ(round.handouts[0].task->id, 3u);
    EXPECT_EQ(round.handouts[0].window, &workers.windows[0]);
    EXPECT_TRUE(queue.empty());
    EXPECT_EQ(workers.windows[1].assigned, 0u);
}

TEST(Scheduler, AWorkerAtItsQuotaGetsNoMoreAndItsReplacementIsAskedFor) {
    TaskQueue queue({4, 2});
    queue.append(make_tasks(6));
    Workers workers(2);
    auto round = queue.assign(workers.ready());
    EXPECT_EQ(workers.windows[0].assigned, 2u);
    EXPECT_EQ(workers.windows[1].assigned, 2u);
    EXPECT_EQ(round.spawns_needed, 2u) << "one replacement for each worker that reached max_tasks_per_child";
    EXPECT_EQ(queue.size(), 2u);
    DispatchLimits limits(4, 2);
    EXPECT_TRUE(limits.quota_reached(workers.windows[0]));
    auto again = queue.assign(workers.ready());
    EXPECT_TRUE(again.handouts.empty());
    EXPECT_EQ(again.spawns_needed, 0u) << "asked for once, when the quota was reached";
}

TEST(Scheduler, NoReadyWorkerOrNoTaskHandsOutNothing) {
    TaskQueue queue({4, 0});
    Workers workers(2);
    EXPECT_TRUE(queue.assign(workers.ready()).handouts.empty());
    queue.append(make_tasks(1));
    EXPECT_TRUE(queue.assign({}).handouts.empty());
    EXPECT_EQ(queue.size(), 1u);
}

TEST(Scheduler, ALostWorkersWindowGoesBackToTheFrontInOrder) {
    TaskQueue queue({3, 0});
    auto tasks = make_tasks(5);
    queue.append(tasks);
    Workers workers(1);
    queue.assign(workers.ready());
    ASSERT_EQ(ids(workers.windows[0].in_flight), (std::vector<std::uint64_t>{1, 2, 3}));
    EXPECT_EQ(queue.requeue(workers.windows[0]), 1u) << "one of them had started";
    EXPECT_TRUE(workers.windows[0].in_flight.empty());
    for (auto& t : tasks) EXPECT_EQ(t->status(), TaskState::queued);
    EXPECT_EQ(ids(queue.take_all()), (std::vector<std::uint64_t>{1, 2, 3, 4, 5}));
}

TEST(Scheduler, ARequeuedWindowDropsTasksResolvedMeanwhile) {
    TaskQueue queue({3, 0});
    auto tasks = make_tasks(3);
    queue.append(tasks);
    Workers workers(1);
    queue.assign(workers.ready());
    ASSERT_EQ(tasks[0]->claim_from(), TaskState::started);  // cancelled while it ran
    ASSERT_EQ(tasks[2]->claim_from(), TaskState::sent);     // cancelled while it waited
    EXPECT_EQ(queue.requeue(workers.windows[0]), 0u);
    EXPECT_EQ(ids(queue.snapshot()), std::vector<std::uint64_t>{2});
    EXPECT_EQ(tasks[1]->status(), TaskState::queued);
}

TEST(Scheduler, RequeuedTasksAreHandedOutAgainFirst) {
    TaskQueue queue({1, 0});
    auto tasks = make_tasks(3);
    queue.append(tasks);
    Workers lost(1);
    queue.assign(lost.ready());
    queue.requeue(lost.windows[0]);
    Workers fresh(1);
    auto round = queue.assign(fresh.ready());
    ASSERT_EQ(round.handouts.size(), 1u);
    EXPECT_EQ(round.handouts[0].task->id, 1u);
    EXPECT_EQ(tasks[0]->status(), TaskState::started);
}

TEST(Scheduler, ASnapshotLeavesTheQueueAsItIs) {
    TaskQueue queue({1, 0});
    queue.append(make_tasks(2));
    EXPECT_EQ(ids(queue.snapshot()), (std::vector<std::uint64_t>{1, 2}));
    EXPECT_EQ(queue.size(), 2u);
    EXPECT_EQ(queue.take_all().size(), 2u);
    EXPECT_TRUE(queue.empty());
}

TEST(Replacements, LostWorkersAreReplacedUpToTheTarget) {
    EXPECT_EQ(detail::replacements_to_spawn({.target = 4, .live = 1, .spawning = 1}), 2u);
    EXPECT_EQ(detail::replacements_to_spawn({.target = 4, .live = 3, .spawning = 1}), 0u);
    EXPECT_EQ(detail::replacements_to_spawn({.target = 2, .live = 3}), 0u) << "more than the target is not a debt";
}

TEST(Replacements, NoneForABrokenPoolOrWithoutAForkServer) {
    EXPECT_EQ(detail::replacements_to_spawn({.target = 4, .broken = true}), 0u);
    EXPECT_EQ(detail::replacements_to_spawn({.target = 4, .server_alive = false}), 0u);
}

TEST(Replacements, ARetiringPoolReplacesOnlyWhileWorkIsLeft) {
    EXPECT_EQ(detail::replacements_to_spawn({.target = 2, .retiring = true}), 0u);
    EXPECT_EQ(detail::replacements_to_spawn({.target = 2, .retiring = true, .work_left = true}), 2u);
}

// The dispatcher's spin before sleeping (src/adaptive_spin.hpp): it pays only while events come within the budget.
TEST(AdaptiveSpin, ANewPoolSpinsAndANoSpinBudgetNeverDoes) {
    EXPECT_TRUE(AdaptiveSpin(std::chrono::microseconds(50)).worth_it());
    AdaptiveSpin off(std::chrono::nanoseconds(0));
    off.observe(std::chrono::nanoseconds(1));
    EXPECT_FALSE(off.worth_it());
}

TEST(AdaptiveSpin, TasksLongerThanTheBudgetStopTheSpinAndFastOnesBringItBack) {
    using std::chrono::microseconds;
    AdaptiveSpin spin(microseconds(50));
    for (int i = 0; i < 20; ++i) spin.observe(microseconds(10));
    EXPECT_TRUE(spin.worth_it());
    // Tasks of 2 ms: a spin would burn its whole budget every time, so it stops after a single long wait.
    spin.observe(microseconds(2'000));
    EXPECT_FALSE(spin.worth_it());
    for (int i = 0; i < 20; ++i) spin.observe(microseconds(2'000));
    EXPECT_FALSE(spin.worth_it());
    // An idle spell counts as one capped wait: a burst of fast round trips spins again within a few of them.
    int fast_waits = 0;
    while (!spin.worth_it() && fast_waits < 100) {
        spin.observe(microseconds(5));
        ++fast_waits;
    }
    EXPECT_TRUE(spin.worth_it());
    EXPECT_LE(fast_waits, 12);
}

}  // namespace
}  // namespace sdfutures::testing
