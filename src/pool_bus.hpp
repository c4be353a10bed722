#pragma once
// The pool's calls to systemd while it runs, made on a thread of their own so that the dispatcher never waits
// on D-Bus: a stalled or lost bus delays only the answers, never a reply from a worker. Private to the library.

#include <sys/types.h>

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sdfutures/bus.hpp"

namespace sdfutures::detail {

class PoolBus {
public:
    struct Answer {
        enum class Kind { attached, attach_failed, unit_state } kind;
        pid_t pid;                 // the worker asked about
        bool unit_gone = false;    // the manager said the unit is not active, or not loaded: never a guess
        std::exception_ptr error;  // attach_failed: why
    };

    // `wake` is called (from the bus thread) after each answer is queued.
    PoolBus(Bus bus, std::string unit, std::function<void()> wake);
    ~PoolBus();
    PoolBus(const PoolBus&) = delete;
    PoolBus& operator=(const PoolBus&) = delete;

    // Attaches a replacement worker to the unit's root cgroup.
    void attach(pid_t pid);
    // Asks whether the unit is still active, for a worker that died as a stopped unit's processes die.
    void ask_unit_state(pid_t pid);
    // The answers that arrived, oldest first. Called by the dispatcher.
    std::vector<Answer> take_answers();

private:
    struct Request {
        Answer::Kind kind;
        pid_t pid;
    };
    void serve();
    bool unit_gone() const;  // only true when the manager says so

    const Bus bus_;
    const std::string unit_;
    const std::function<void()> wake_;
    std::mutex mutex_;
    std::condition_variable requested_;
    std::deque<Request> requests_;  // guarded by mutex_
    std::vector<Answer> answers_;   // guarded by mutex_
    bool stopping_ = false;         // guarded by mutex_
    std::thread thread_;            // last: starts once the rest is built
};

}  // namespace sdfutures::detail
