#pragma once
// The pool's dispatch policy: which queued task goes to which worker, how many tasks a worker holds at once (its
// window), what becomes of a lost worker's window, and how many workers to ask the fork server for. Plain code:
// no descriptors, no threads, no systemd. Private to the library; tests/scheduler_test.cpp drives it directly.
//
// The pool keeps one TaskQueue under its mutex (submitting threads append to it, cancelling threads read it, the
// dispatcher hands it out), and one TaskWindow per worker, which only the dispatcher thread touches.

#include <cstddef>
#include <deque>
#include <memory>
#include <span>
#include <vector>

#include "task_state.hpp"

namespace sdfutures::detail {

using TaskPtr = std::shared_ptr<TaskState>;

// A worker as the policy sees it: the tasks sent to it, in order (the head is the one it runs, as far as the owner
// knows), and how many it was given in its life.
struct TaskWindow {
    std::deque<TaskPtr> in_flight;
    std::size_t assigned = 0;
};

// PoolOptions::max_window and max_tasks_per_child, as the policy applies them.
struct DispatchLimits {
    DispatchLimits(std::size_t max_window, std::size_t max_tasks_per_child) noexcept;
    std::size_t max_window;           // at least 1
    std::size_t max_tasks_per_child;  // 0: no limit

    // A worker done with its quota gets no more tasks and no longer counts towards max_workers.
    bool quota_reached(const TaskWindow& w) const noexcept {
        return max_tasks_per_child != 0 && w.assigned >= max_tasks_per_child;
    }
};

class TaskQueue {
public:
    explicit TaskQueue(DispatchLimits limits) noexcept : limits_(limits) {}

    // Counts the tasks still in the queue, cancelled ones included until their turn comes.
    bool empty() const noexcept { return queue_.empty(); }
    std::size_t size() const noexcept { return queue_.size(); }
    void append(std::span<const TaskPtr> tasks);
    // What is queued, for cancelling it outside the pool's lock: a task claimed meanwhile is dropped on its turn.
    std::vector<TaskPtr> snapshot() const;
    std::deque<TaskPtr> take_all() noexcept;

    // One task handed to a worker: the pool sends it to `window`'s worker, in the order of the round's handouts.
    struct Handout {
        TaskWindow* window;
        TaskPtr task;
        bool runs_now;  // it heads the window: it started
    };
    struct Round {
        std::vector<Handout> handouts;
        std::size_t started = 0;        // handouts that started (the pool's running count grows by it)
        std::size_t spawns_needed = 0;  // workers that reached their quota: their replacements start now
    };
    // Hands queued tasks to the workers in `ready` (in that order), each task moving to started or sent. Tasks go
    // round-robin, idle workers first; only when there are more tasks than workers does a worker get several at
    // once (up to max_window), so it finds its next task waiting and batches its replies. Tasks cancelled while
    // queued are dropped.
    Round assign(std::span<TaskWindow* const> ready);

    // A lost worker's window goes back to the front of the queue, in its order, each task `queued` again; those
    // resolved meanwhile (cancelled) are dropped. Empties the window; returns how many of its tasks had started.
    std::size_t requeue(TaskWindow& window);

private:
    DispatchLimits limits_;
    std::deque<TaskPtr> queue_;
};

// What decides whether the pool asks its fork server for workers after it lost some.
struct Workforce {
    std::size_t target = 0;    // max_workers, as it stands
    std::size_t live = 0;      // workers that count towards it (alive, trusted, within their quota)
    std::size_t spawning = 0;  // asked for, not arrived
    bool broken = false;       // the pool cannot go on
    bool server_alive = true;  // the fork server is there to ask
    bool retiring = false;     // shutdown(wait) or the destructor: no new tasks come
    bool work_left = false;    // tasks queued or unfinished
};
// How many workers to ask for. A retiring pool still finishes what it was given: a worker lost on the way is
// replaced while tasks remain.
std::size_t replacements_to_spawn(const Workforce& workforce) noexcept;

}  // namespace sdfutures::detail
