#pragma once
// The pool's record of one task: where it is in its life, what to run, how to settle its future, and who wants
// to know when it is settled (on_done callbacks, as_completed()/wait_any() queues).

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "sdfutures/pool.hpp"

namespace sdfutures::detail {

// A task's life: queued → sent (to a worker's window) → started (the head of that window: its worker runs it)
// → resolved, or cancelled while queued or sent. A task sent or started goes back to `queued` when its worker is
// lost through no fault of the task. Whoever moves it to `resolved` (the dispatcher, or a thread cancelling it)
// alone fulfils its future, runs its completion and counts it finished.
//
// The status is written here and nowhere else: each move below is one atomic step that fails when another thread
// moved the task first (a cancel() claiming it races every move the dispatcher makes).
//
// Threads: id, the code addresses and pool are set by the submitting thread before the task is queued (under the
// pool's mutex), read-only afterwards. The status is atomic, moved by any thread. The submission's complete and
// fail are called, then cleared, only by the thread that resolved the task; its arguments are read and then
// dropped by the dispatcher alone.
struct TaskState {
    enum Status : int { queued, sent, started, resolved };
    std::uint64_t id = 0;  // unguessable: a worker's reply must name the task it answers
    PoolCore::Submission submission;
    // What the worker is told to run: the invoker's and the function's addresses, or (exec) their offsets in the
    // program's image.
    std::uintptr_t invoker_code = 0;
    std::uintptr_t function_code = 0;
    PoolCore::Impl* pool = nullptr;

    int status() const noexcept { return status_.load(); }

    // queued → started when it is the head of its worker's window (`runs_now`), else queued → sent. False when
    // the task was no longer queued (cancelled): it must not be sent.
    bool hand_out(bool runs_now) noexcept {
        int expected = queued;
        return status_.compare_exchange_strong(expected, runs_now ? started : sent);
    }
    // sent → started: the task became the head of its worker's window. False when it was not `sent`.
    bool start() noexcept {
        int expected = sent;
        return status_.compare_exchange_strong(expected, started);
    }
    // sent or started → queued, when its worker is lost through no fault of the task: the status it had, or
    // `resolved` when someone resolved it first (then it stays resolved and must not be queued again).
    int take_back() noexcept {
        int s = status_.load();
        while (s == sent || s == started)
            if (status_.compare_exchange_weak(s, queued)) return s;
        return resolved;
    }
    // Claims the right to resolve the task: the status it had, or `resolved` when someone else already did.
    int claim_from() noexcept {
        int s = status_.load();
        while (s != resolved)
            if (status_.compare_exchange_weak(s, resolved)) return s;
        return resolved;
    }
    bool claim() noexcept { return claim_from() != resolved; }
    // Claims it only while it is still queued: a task a worker has (sent or started) is left to run.
    bool claim_if_queued() noexcept {
        int expected = queued;
        return status_.compare_exchange_strong(expected, resolved);
    }

    // Completion. Called once, by the thread that resolved the task, right after it fulfilled the future (with a
    // value, or not): marks the task done and runs its callbacks and watches. Never throws.
    void complete(bool with_value) noexcept;
    bool done() const noexcept { return done_.load(std::memory_order_acquire); }
    // Once done: whether its future holds a value (false: an exception, its own or the pool's).
    bool settled_with_value() const noexcept { return with_value_.load(std::memory_order_acquire); }
    void add_callback(std::function<void()> callback);
    void watch(const std::shared_ptr<CompletionQueue>& queue, std::size_t index);
    void unwatch(const CompletionQueue& queue) noexcept;

private:
    std::atomic<int> status_{queued};
    struct Watch {
        std::shared_ptr<CompletionQueue> queue;
        std::size_t index;
    };
    std::mutex completion_mutex_;  // guards what follows, and orders `done_` with adding a callback or watch
    std::atomic<bool> done_{false};
    std::atomic<bool> with_value_{false};
    std::uint64_t completion_order_ = 0;  // set with done_: the how-manieth task this process settled
    std::vector<std::function<void()>> callbacks_;
    std::vector<Watch> watches_;
};

}  // namespace sdfutures::detail
