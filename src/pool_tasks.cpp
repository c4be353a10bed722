#include <algorithm>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <utility>

#include "pool_impl.hpp"
#include "scheduler.hpp"
#include "task_state.hpp"
#include "sdfutures/error.hpp"

// A pool's tasks as they leave it: settling one (its future, its callbacks, the counts), failing the queued ones,
// and taking a lost worker's window back. Called by the dispatcher and, for a task it claims, by a thread that
// cancels it; whoever moves a task to `resolved` (task_state.hpp) settles it, once.

namespace sdfutures::detail {

namespace {

PoolCore::Impl::Outcome outcome_of(const std::exception_ptr& error) {
    try {
        std::rethrow_exception(error);
    } catch (const TaskCancelled&) {
        return PoolCore::Impl::Outcome::cancelled;
    } catch (...) {
        return PoolCore::Impl::Outcome::failed;
    }
}

}  // namespace

// After the task's future was fulfilled by the thread that resolved it: its callbacks and watches, then the count.
// Callbacks run first, so that shutdown(true) and the destructor, which wait for the count, return after them.
void PoolCore::Impl::settle(TaskState& task, int status_before, Outcome outcome) {
    // The promise goes at once, not when the last holder of the task lets go of it: the result's memory is not
    // kept for a Task the user holds on to, and the future's shared state (and a task's exception in it) is
    // released by this thread before the waiting side can be long done with it (see scripts/sanitize-tsan).
    task.submission.complete = nullptr;
    task.submission.fail = nullptr;
    task.complete(outcome == Outcome::completed);
    task_finished(status_before, outcome);
}

void PoolCore::Impl::task_finished(int status_before, Outcome outcome) {
    std::lock_guard lock(mutex);
    --unfinished;
    if (status_before == TaskState::started) --counts.running;
    switch (outcome) {
    case Outcome::completed: ++counts.completed; break;
    case Outcome::failed: ++counts.failed; break;
    case Outcome::cancelled: ++counts.cancelled; break;
    }
    changed.notify_all();
    // A retiring dispatcher sleeps in poll() until this count reaches zero, which a task cancelled by another
    // thread brings about without any event of its own. Under the lock: the pool may be gone right after.
    if (retire && unfinished == 0) wake_up();
}

void PoolCore::Impl::fail_task(const std::shared_ptr<TaskState>& task, std::exception_ptr error) {
    const int before = task->claim_from();
    if (before == TaskState::resolved) return;
    const Outcome outcome = outcome_of(error);
    try {
        task->submission.fail(std::move(error));
    } catch (...) {
    }
    settle(*task, before, outcome);
}

// The task at the head of a worker's window is the one it runs (as far as the owner knows).
void PoolCore::Impl::start_head(Worker& w) {
    if (w.in_flight.empty()) return;
    // Under the lock with the count: a cancel() claiming it meanwhile takes the count back only after this.
    std::lock_guard lock(mutex);
    if (w.in_flight.front()->start()) ++counts.running;
}

// The pool can take on no more workers: tasks not started fail with `error` and submit() throws it, while those
// running finish on the workers there are.
void PoolCore::Impl::fail_queued_tasks(const std::exception_ptr& error) {
    std::deque<std::shared_ptr<TaskState>> queued;
    {
        std::lock_guard lock(mutex);
        if (!broken) broken = error;
        accepting = false;
        queued = queue.take_all();
    }
    for (auto& task : queued) fail_task(task, error);
}

// A lost worker's window goes back to the front of the queue (scheduler.hpp); a broken pool takes no task back:
// nothing would run it.
void PoolCore::Impl::requeue_window(Worker& w) {
    std::exception_ptr error;
    {
        std::lock_guard lock(mutex);
        error = broken;
        if (!error) counts.running -= queue.requeue(w);
    }
    if (error)
        for (auto& task : w.in_flight) fail_task(task, error);
    w.in_flight.clear();
}

}  // namespace sdfutures::detail
