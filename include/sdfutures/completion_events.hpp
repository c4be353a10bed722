#pragma once
// CompletionEvents: a file descriptor that becomes readable when a watched task is done, for event loops
// (poll/epoll, sd-event, asio's posix::stream_descriptor, a GUI's main loop) that cannot block in
// as_completed().
//
//     sdfutures::CompletionEvents events;
//     auto key = events.watch(task);                 // any Task<R>; tasks of different R in one set
//     pollfd p{events.fd(), POLLIN, 0};              // or register events.fd() with the loop
//     ... when it is readable:
//     for (std::size_t done : events.take()) ...     // keys of the tasks done since the last take()
//
// The descriptor is an eventfd (close-on-exec, non-blocking) the set owns: do not read or close it; take()
// resets it. It is readable while a watched task is done and not yet taken; it may be readable with nothing to
// take (a task done between take()'s reset and its look at the queue is reported then, and again on the next
// wake-up of nothing), so an empty take() is normal. Nothing polls: the thread that settles a task (the pool's
// dispatcher) writes to the eventfd. watch() and take() belong to one thread, the loop's.

#include <cstddef>
#include <memory>
#include <vector>

#include "sdfutures/task.hpp"

namespace sdfutures {

namespace detail {
struct CompletionQueue;
}

class CompletionEvents {
public:
    // Throws SystemError when no eventfd can be had (EMFILE, ...).
    CompletionEvents();
    // Stops watching the tasks not yet taken (they go on) and closes the descriptor.
    ~CompletionEvents();
    CompletionEvents(const CompletionEvents&) = delete;
    CompletionEvents& operator=(const CompletionEvents&) = delete;

    // Watches `task`; its key (0, 1, 2, ... in the order of the calls) is what take() returns once it is done.
    // A task done already makes the descriptor readable at once.
    template <class R>
    std::size_t watch(const Task<R>& task) {
        return watch_state(detail::TaskAccess::shared_state(task));
    }

    int fd() const noexcept;
    // The keys of the watched tasks done since the last call, in the order they were done; resets the descriptor.
    std::vector<std::size_t> take();
    // Watched tasks not yet taken.
    std::size_t pending() const noexcept;

private:
    std::size_t watch_state(std::shared_ptr<detail::TaskState> task);

    // All of it belongs to the thread that owns the set; the queue is shared with the settling threads.
    std::shared_ptr<detail::CompletionQueue> queue_;
    std::vector<std::shared_ptr<detail::TaskState>> watched_;  // by key; reset once taken
    std::size_t pending_ = 0;
};

}  // namespace sdfutures
