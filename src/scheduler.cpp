#include "scheduler.hpp"

#include <algorithm>
#include <utility>

namespace sdfutures::detail {

DispatchLimits::DispatchLimits(std::size_t max_window, std::size_t max_tasks_per_child) noexcept
    : max_window(std::max<std::size_t>(max_window, 1)), max_tasks_per_child(max_tasks_per_child) {}

void TaskQueue::append(std::span<const TaskPtr> tasks) { queue_.insert(queue_.end(), tasks.begin(), tasks.end()); }

std::vector<TaskPtr> TaskQueue::snapshot() const { return {queue_.begin(), queue_.end()}; }

std::deque<TaskPtr> TaskQueue::take_all() noexcept { return std::exchange(queue_, {}); }

TaskQueue::Round TaskQueue::assign(std::span<TaskWindow* const> ready) {
    Round round;
    if (ready.empty() || queue_.empty()) return round;
    const std::size_t window =
        std::clamp<std::size_t>((queue_.size() + ready.size() - 1) / ready.size(), 1, limits_.max_window);
    for (std::size_t depth = 1; depth <= window && !queue_.empty(); ++depth) {
        for (TaskWindow* w : ready) {
            if (queue_.empty()) break;
            if (w->in_flight.size() >= depth || limits_.quota_reached(*w)) continue;
            // The head of an empty window is the task the worker runs next: it starts now.
            const bool head = w->in_flight.empty();
            TaskPtr task;
            while (!queue_.empty() && !task) {
                task = std::move(queue_.front());
                queue_.pop_front();
                if (!task->hand_out(head)) task.reset();  // cancelled
            }
            if (!task) break;
            if (head) ++round.started;
            w->in_flight.push_back(task);
            ++w->assigned;
            // Its replacement starts while it finishes its last task.
            if (limits_.max_tasks_per_child != 0 && w->assigned == limits_.max_tasks_per_child) ++round.spawns_needed;
            round.handouts.push_back({w, std::move(task), head});
        }
    }
    return round;
}

std::size_t TaskQueue::requeue(TaskWindow& window) {
    std::size_t started = 0;
    for (auto it = window.in_flight.rbegin(); it != window.in_flight.rend(); ++it) {
        const int before = (*it)->take_back();
        if (before == TaskState::resolved) continue;
        if (before == TaskState::started) ++started;
        queue_.push_front(std::move(*it));
    }
    window.in_flight.clear();
    return started;
}

std::size_t replacements_to_spawn(const Workforce& workforce) noexcept {
    const bool replace = !workforce.broken && workforce.server_alive && (!workforce.retiring || workforce.work_left);
    const std::size_t live = workforce.live + workforce.spawning;
    return replace && live < workforce.target ? workforce.target - live : 0;
}

}  // namespace sdfutures::detail
