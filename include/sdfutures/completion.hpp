#pragma once
// Waiting for several tasks at once, like Python's concurrent.futures.as_completed() and wait(FIRST_COMPLETED).
//
//     std::vector<sdfutures::Task<int>> tasks;
//     for (int i = 0; i < 100; ++i) tasks.push_back(pool.schedule(&work, i));
//     for (sdfutures::Task<int>& task : sdfutures::as_completed(tasks, 10s))
//         use(task.future().get());  // in the order they finished; WaitTimeout after 10 s
//
//     if (auto i = sdfutures::wait_any(tasks, 100ms)) use(tasks[*i]);
//
// Nothing polls: the pool's dispatcher, as it settles a task, puts it on the waiting side's completion queue
// (a mutex and a condition variable), which the waiting thread sleeps on. Tasks are only watched, never
// cancelled, by these functions: a task not yet yielded when a timeout passes goes on running.

#include <chrono>
#include <cstddef>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sdfutures/error.hpp"
#include "sdfutures/task.hpp"

namespace sdfutures {

namespace detail {

// Indices of watched tasks, handed out in the order the tasks were settled (src/completion.cpp).
struct CompletionQueue;
std::shared_ptr<CompletionQueue> make_completion_queue();
// The index of the next settled task; nullopt once `deadline` passed.
std::optional<std::size_t> next_completed(CompletionQueue& queue,
                                          std::optional<std::chrono::steady_clock::time_point> deadline);
// Sleeps until every task of `tasks` is settled or one of them is settled without a value (its future holds an
// exception): map() waits with one wake-up for all its tasks instead of one per future. False once `deadline` passed.
bool wait_settled(std::span<const std::shared_ptr<TaskState>> tasks,
                  std::optional<std::chrono::steady_clock::time_point> deadline);
// Puts `index` on `queue` when `task` is settled (at once when it is already).
void watch_task(TaskState& task, const std::shared_ptr<CompletionQueue>& queue, std::size_t index);
// Forgets the watches `queue` holds on `task`. A push already under way (the task was being settled) may still
// reach the queue, which stays alive for it: nothing is put on it for `task` that was not under way.
void unwatch_task(TaskState& task, const CompletionQueue& queue) noexcept;

inline std::optional<std::chrono::steady_clock::time_point> deadline_after(
    std::optional<std::chrono::milliseconds> timeout) {
    if (!timeout) return std::nullopt;
    return std::chrono::steady_clock::now() + *timeout;
}

}  // namespace detail

// The tasks of `tasks`, each once, in the order they finished (those finished already first, in the order they
// finished). With `timeout`, advancing past the last task finished within it (counted from the call) throws
// WaitTimeout; the tasks not yielded go on. The vector must outlive the range and not change while it is used.
template <class R>
class AsCompleted {
public:
    AsCompleted(std::vector<Task<R>>& tasks, std::optional<std::chrono::milliseconds> timeout)
        : tasks_(tasks), queue_(detail::make_completion_queue()), deadline_(detail::deadline_after(timeout)),
          timeout_(timeout), yielded_(tasks.size(), false) {
        for (std::size_t i = 0; i < tasks_.size(); ++i)
            detail::watch_task(detail::TaskAccess::state(tasks_[i]), queue_, i);
    }
    ~AsCompleted() {
        for (std::size_t i = 0; i < tasks_.size(); ++i)
            if (!yielded_[i]) detail::unwatch_task(detail::TaskAccess::state(tasks_[i]), *queue_);
    }
    AsCompleted(const AsCompleted&) = delete;
    AsCompleted& operator=(const AsCompleted&) = delete;
    AsCompleted(AsCompleted&&) = delete;
    AsCompleted& operator=(AsCompleted&&) = delete;

    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = Task<R>;
        using difference_type = std::ptrdiff_t;
        using reference = Task<R>&;
        using pointer = Task<R>*;

        iterator() = default;
        explicit iterator(AsCompleted* range) : range_(range) { advance(); }
        Task<R>& operator*() const { return range_->tasks_[current_]; }
        Task<R>* operator->() const { return &range_->tasks_[current_]; }
        iterator& operator++() {
            advance();
            return *this;
        }
        void operator++(int) { advance(); }
        friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept { return it.range_ == nullptr; }

    private:
        void advance() {
            if (range_->count_ == range_->tasks_.size()) {
                range_ = nullptr;
                return;
            }
            current_ = range_->next();
        }
        AsCompleted* range_ = nullptr;
        std::size_t current_ = 0;
    };

    // Blocks until the first task is done (or throws WaitTimeout). Call it once.
    iterator begin() { return iterator(this); }
    std::default_sentinel_t end() const noexcept { return {}; }

private:
    std::size_t next() {
        auto index = detail::next_completed(*queue_, deadline_);
        if (!index)
            throw WaitTimeout("as_completed(): " + std::to_string(tasks_.size() - count_) + " of " +
                              std::to_string(tasks_.size()) + " tasks were not done within " +
                              std::to_string(timeout_->count()) + " ms; they go on");
        yielded_[*index] = true;
        ++count_;
        return *index;
    }

    std::vector<Task<R>>& tasks_;
    std::shared_ptr<detail::CompletionQueue> queue_;
    std::optional<std::chrono::steady_clock::time_point> deadline_;
    std::optional<std::chrono::milliseconds> timeout_;
    std::vector<bool> yielded_;
    std::size_t count_ = 0;
};

template <class R>
AsCompleted<R> as_completed(std::vector<Task<R>>& tasks,
                            std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
    return AsCompleted<R>(tasks, timeout);
}

// The index of a task of `tasks` that is done — the first to have finished when several have — waiting at most
// `timeout` (none: as long as it takes) for one to finish. nullopt when none finished in time, or `tasks` is
// empty. Returns at once when one is done already.
template <class R>
std::optional<std::size_t> wait_any(std::vector<Task<R>>& tasks,
                                    std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
    if (tasks.empty()) return std::nullopt;
    auto queue = detail::make_completion_queue();
    const auto deadline = detail::deadline_after(timeout);
    for (std::size_t i = 0; i < tasks.size(); ++i) detail::watch_task(detail::TaskAccess::state(tasks[i]), queue, i);
    auto index = detail::next_completed(*queue, deadline);
    for (auto& task : tasks) detail::unwatch_task(detail::TaskAccess::state(task), *queue);
    return index;
}

}  // namespace sdfutures
