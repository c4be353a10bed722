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
struct TaskState {
    enum Status : int { queued, sent, started, resolved };
    std::atomic<int> status{queued};
    std::uint64_t id = 0;  // unguessable: a worker's reply must name the task it answers
    PoolCore::Submission submission;
    // What the worker is told to run: the invoker's and the function's addresses, or (exec) their offsets in the
    // program's image.
    std::uintptr_t invoker_code = 0;
    std::uintptr_t function_code = 0;
    PoolCore::Impl* pool = nullptr;

    // Claims the right to resolve the task: the status it had, or `resolved` when someone else already did.
    int claim_from() noexcept {
        int s = status.load();
        while (s != resolved)
            if (status.compare_exchange_weak(s, resolved)) return s;
        return resolved;
    }
    bool claim() noexcept { return claim_from() != resolved; }

    // Completion. Called once, by the thread that resolved the task, right after it fulfilled the future: marks
    // the task done and runs its callbacks and watches. Never throws.
    void complete() noexcept;
    bool done() const noexcept { return done_.load(std::memory_order_acquire); }
    void add_callback(std::function<void()> callback);
    void watch(const std::shared_ptr<CompletionQueue>& queue, std::size_t index);
    void unwatch(const CompletionQueue& queue) noexcept;

private:
    struct Watch {
        std::shared_ptr<CompletionQueue> queue;
        std::size_t index;
    };
    std::mutex completion_mutex_;  // guards what follows, and orders `done_` with adding a callback or watch
    std::atomic<bool> done_{false};
    std::uint64_t completion_order_ = 0;  // set with done_: the how-manieth task this process settled
    std::vector<std::function<void()>> callbacks_;
    std::vector<Watch> watches_;
};

}  // namespace sdfutures::detail
