#pragma once
// Task<R>: a task submitted to a TransientUnitPoolExecutor (schedule()), with its future, its state and the
// means to cancel it or to be told when it is done.
//
//     sdfutures::Task<int> task = pool.schedule(&work, 7);
//     task.on_done([] { std::puts("work(7) is done"); });
//     if (!task.done()) task.cancel();
//
// A task is done once its future is ready, whatever it holds: the value, the exception the function threw, or
// the pool's own error (ProcessDied, TaskTimeout, UnitStopped, ProtocolError, TaskCancelled).

#include <functional>
#include <future>
#include <memory>
#include <type_traits>
#include <utility>

namespace sdfutures {

template <class R>
class Task;

namespace detail {

struct TaskState;  // src/task_state.hpp

bool cancel_task(const std::shared_ptr<TaskState>& task);
bool task_done(const TaskState& task) noexcept;
bool task_running(const TaskState& task) noexcept;
void add_done_callback(TaskState& task, std::function<void()> callback);

// For the completion functions (<sdfutures/completion.hpp>), which watch tasks through their state.
struct TaskAccess {
    template <class R>
    static TaskState& state(const Task<R>& task) noexcept {
        return *task.state_;
    }
    template <class R>
    static const std::shared_ptr<TaskState>& shared_state(const Task<R>& task) noexcept {
        return task.state_;
    }
};

}  // namespace detail

template <class R>
class Task {
public:
    Task(std::future<R> future, std::shared_ptr<detail::TaskState> state)
        : future_(std::move(future)), state_(std::move(state)) {}

    std::future<R>& future() noexcept { return future_; }
    std::future<R> take_future() noexcept { return std::move(future_); }

    // True once the task is settled (even after take_future()): set right after its future became ready, before its
    // on_done callbacks run, so a thread woken by the future may see it false for a moment. Never undone.
    bool done() const noexcept { return detail::task_done(*state_); }

    // True while the task is the one its worker runs: from when the pool has it at the head of a worker's window
    // (the worker runs it, or starts it as soon as it has sent the answer before it) until it is done. False
    // while it waits in the pool's queue or behind another task in a worker's window, and once it is done.
    bool running() const noexcept { return detail::task_running(*state_); }

    // Calls `callback` (no arguments) once, when the task is done — with a value, an exception, cancelled or
    // timed out — right after its future became ready; at once, in the calling thread, if it is done already.
    // It runs in the thread that settles the task: the pool's dispatcher thread (a worker's answer, a crash, a
    // timeout, kill_workers()), or the thread that called cancel() or shutdown(cancel_pending). Keep it short and non-blocking: while it runs the
    // dispatcher serves no other task, and a callback that waits for the pool (map(), shutdown(true), the
    // destructor) deadlocks it. It may submit(), cancel() and stats(). An exception it throws is caught and
    // reported on stderr; the pool goes on. Callbacks of one task run in the order they were added.
    template <class F>
    void on_done(F&& callback) {
        static_assert(std::is_invocable_v<std::decay_t<F>&>, "sdfutures: on_done() takes a callable with no arguments");
        detail::add_done_callback(*state_, std::function<void()>(std::forward<F>(callback)));
    }

    // True when the task had not finished: its future throws TaskCancelled. A queued task never runs; a running
    // one has its worker killed and replaced, and no other task is affected; one sent ahead to a worker's window
    // may still run there, and its answer is dropped. False when it had already finished.
    bool cancel() { return detail::cancel_task(state_); }

private:
    friend struct detail::TaskAccess;
    std::future<R> future_;
    std::shared_ptr<detail::TaskState> state_;
};

}  // namespace sdfutures
