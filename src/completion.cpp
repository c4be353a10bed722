// A task's completion: on_done callbacks, and the queues as_completed() and wait_any() sleep on. The thread that
// settles a task (the pool's dispatcher, or one that cancels it) runs TaskState::complete() right after it
// fulfilled the future; nothing here polls.
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <queue>
#include <typeinfo>

#include "task_state.hpp"
#include "sdfutures/completion.hpp"

namespace sdfutures::detail {

struct CompletionQueue {
    struct Entry {
        std::uint64_t order;
        std::size_t index;
        bool operator>(const Entry& other) const noexcept { return order > other.order; }
    };
    std::mutex mutex;
    std::condition_variable settled;
    // Earliest settled first: tasks settled before they were watched arrive in the order they were watched, not
    // settled, and are put right by their completion order.
    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> entries;

    void push(std::uint64_t order, std::size_t index) {
        {
            std::lock_guard lock(mutex);
            entries.push({order, index});
        }
        settled.notify_one();
    }
};

namespace {

// The order tasks of this process are settled in, across pools.
std::atomic<std::uint64_t> settled_tasks{0};

void run_callback(const std::function<void()>& callback) noexcept {
    try {
        callback();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sdfutures: a task's on_done callback threw %s: %s (ignored; the pool goes on)\n",
                     typeid(e).name(), e.what());
    } catch (...) {
        std::fputs("sdfutures: a task's on_done callback threw an exception that is no std::exception (ignored; the "
                   "pool goes on)\n",
                   stderr);
    }
}

}  // namespace

void TaskState::complete() noexcept {
    std::vector<std::function<void()>> callbacks;
    std::vector<Watch> watches;
    std::uint64_t order = 0;
    {
        std::lock_guard lock(completion_mutex_);
        order = completion_order_ = ++settled_tasks;
        done_.store(true, std::memory_order_release);
        callbacks.swap(callbacks_);
        watches.swap(watches_);
    }
    for (auto& watch : watches) {
        try {
            watch.queue->push(order, watch.index);
        } catch (...) {
            // Only memory running out gets here; the waiting side then misses this task, as it would be told.
            std::fputs("sdfutures: out of memory telling as_completed()/wait_any() that a task is done\n", stderr);
        }
    }
    for (auto& callback : callbacks) run_callback(callback);
}

void TaskState::add_callback(std::function<void()> callback) {
    {
        std::lock_guard lock(completion_mutex_);
        if (!done_.load(std::memory_order_relaxed)) {
            callbacks_.push_back(std::move(callback));
            return;
        }
    }
    run_callback(callback);
}

void TaskState::watch(const std::shared_ptr<CompletionQueue>& queue, std::size_t index) {
    std::uint64_t order = 0;
    {
        std::lock_guard lock(completion_mutex_);
        if (!done_.load(std::memory_order_relaxed)) {
            watches_.push_back({queue, index});
            return;
        }
        order = completion_order_;
    }
    queue->push(order, index);
}

void TaskState::unwatch(const CompletionQueue& queue) noexcept {
    std::lock_guard lock(completion_mutex_);
    std::erase_if(watches_, [&](const Watch& w) { return w.queue.get() == &queue; });
}

bool task_done(const TaskState& task) noexcept { return task.done(); }

bool task_running(const TaskState& task) noexcept { return task.status.load() == TaskState::started; }

void add_done_callback(TaskState& task, std::function<void()> callback) { task.add_callback(std::move(callback)); }

std::shared_ptr<CompletionQueue> make_completion_queue() { return std::make_shared<CompletionQueue>(); }

std::optional<std::size_t> next_completed(CompletionQueue& queue,
                                          std::optional<std::chrono::steady_clock::time_point> deadline) {
    std::unique_lock lock(queue.mutex);
    auto ready = [&] { return !queue.entries.empty(); };
    if (deadline) {
        if (!queue.settled.wait_until(lock, *deadline, ready)) return std::nullopt;
    } else {
        queue.settled.wait(lock, ready);
    }
    const std::size_t index = queue.entries.top().index;
    queue.entries.pop();
    return index;
}

void watch_task(TaskState& task, const std::shared_ptr<CompletionQueue>& queue, std::size_t index) {
    task.watch(queue, index);
}

void unwatch_task(TaskState& task, const CompletionQueue& queue) noexcept { task.unwatch(queue); }

}  // namespace sdfutures::detail
