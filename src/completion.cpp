// A task's completion: on_done callbacks, and the queues as_completed() and wait_any() sleep on. The thread that
// settles a task (the pool's dispatcher, or one that cancels it) runs TaskState::complete() right after it
// fulfilled the future; nothing here polls.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <queue>
#include <typeinfo>
#include <utility>

#include "task_state.hpp"
#include "sdfutures/completion.hpp"
#include "sdfutures/completion_events.hpp"
#include "sdfutures/error.hpp"

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

    // CompletionEvents: an eventfd written after each push, so that an event loop wakes (-1: none). Owned by the
    // queue, not the CompletionEvents: a settling thread may push after the last unwatch (it took the watch
    // before), and the queue lives as long as any such thread holds it.
    int signal_fd = -1;

    CompletionQueue() = default;
    CompletionQueue(const CompletionQueue&) = delete;
    CompletionQueue& operator=(const CompletionQueue&) = delete;
    ~CompletionQueue() {
        if (signal_fd >= 0) ::close(signal_fd);
    }

    void push(std::uint64_t order, std::size_t index) {
        {
            std::lock_guard lock(mutex);
            entries.push({order, index});
        }
        settled.notify_one();
        if (signal_fd >= 0) {
            const std::uint64_t one = 1;
            // Cannot fail but by the counter's overflow at 2^64-1 writes without a read, which leaves it readable.
            [[maybe_unused]] auto written = ::write(signal_fd, &one, sizeof one);
        }
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

void TaskState::complete(bool with_value) noexcept {
    with_value_.store(with_value, std::memory_order_release);
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

bool task_running(const TaskState& task) noexcept { return task.status() == TaskState::started; }

void add_done_callback(TaskState& task, std::function<void()> callback) { task.add_callback(std::move(callback)); }

std::shared_ptr<CompletionQueue> make_completion_queue() { return std::make_shared<CompletionQueue>(); }

namespace {

// What wait_settled() sleeps on: woken once, by the last task settled or the first settled without a value.
struct SettledCountdown {
    explicit SettledCountdown(std::size_t tasks) : remaining(tasks) {}
    std::atomic<std::size_t> remaining;
    std::mutex mutex;
    std::condition_variable reached;
    bool done = false;  // guarded by mutex

    void signal() noexcept {
        {
            std::lock_guard lock(mutex);
            done = true;
        }
        reached.notify_one();
    }
};

}  // namespace

bool wait_settled(std::span<const std::shared_ptr<TaskState>> tasks,
                  std::optional<std::chrono::steady_clock::time_point> deadline) {
    if (tasks.empty()) return true;
    auto countdown = std::make_shared<SettledCountdown>(tasks.size());
    for (const auto& task : tasks) {
        TaskState* settled = task.get();
        settled->add_callback([countdown, settled] {
            const bool last = countdown->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1;
            if (last || !settled->settled_with_value()) countdown->signal();
        });
    }
    std::unique_lock lock(countdown->mutex);
    const auto reached = [&] { return countdown->done; };
    if (!deadline) {
        countdown->reached.wait(lock, reached);
        return true;
    }
    return countdown->reached.wait_until(lock, *deadline, reached);
}

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

namespace sdfutures {

CompletionEvents::CompletionEvents() : queue_(detail::make_completion_queue()) {
    queue_->signal_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (queue_->signal_fd < 0) throw SystemError("eventfd", errno, "making the descriptor of a CompletionEvents");
}

CompletionEvents::~CompletionEvents() {
    for (auto& task : watched_)
        if (task) task->unwatch(*queue_);
    // The descriptor closes with the queue, when the last settling thread that may still push lets go of it.
}

int CompletionEvents::fd() const noexcept { return queue_->signal_fd; }

std::size_t CompletionEvents::pending() const noexcept { return pending_; }

std::size_t CompletionEvents::watch_state(std::shared_ptr<detail::TaskState> task) {
    const std::size_t key = watched_.size();
    watched_.push_back(std::move(task));
    ++pending_;
    watched_.back()->watch(queue_, key);
    return key;
}

std::vector<std::size_t> CompletionEvents::take() {
    // Reset first: whatever is pushed after this is either taken below or leaves the descriptor readable.
    std::uint64_t count = 0;
    [[maybe_unused]] auto got = ::read(queue_->signal_fd, &count, sizeof count);
    std::vector<std::size_t> keys;
    {
        std::lock_guard lock(queue_->mutex);
        keys.reserve(queue_->entries.size());
        while (!queue_->entries.empty()) {
            keys.push_back(queue_->entries.top().index);
            queue_->entries.pop();
        }
    }
    for (std::size_t key : keys) watched_[key].reset();
    pending_ -= keys.size();
    return keys;
}

}  // namespace sdfutures
