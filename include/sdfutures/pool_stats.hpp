#pragma once
// PoolStats: what TransientUnitPoolExecutor::stats() counts, a snapshot taken under the pool's lock.

#include <cstddef>
#include <cstdint>

namespace sdfutures {

struct PoolStats {
    // Unfinished tasks, now: queued + running is every task submitted and not yet finished.
    std::size_t queued = 0;   // not started: in the pool's queue, or sent ahead to a worker behind the task it runs
    std::size_t running = 0;  // started: at the head of a worker's window (see Task::running())

    // Finished tasks, since construction; each finished task is counted once, by what its future holds.
    std::uint64_t completed = 0;  // the value its function returned
    std::uint64_t failed = 0;     // an exception other than TaskCancelled: one its function threw, or the pool's
                                  // own (ProcessDied, TaskTimeout, UnitStopped, ProtocolError, a broken pool's error)
    std::uint64_t cancelled = 0;  // TaskCancelled: Task::cancel(), shutdown(cancel_pending), terminate_workers(),
                                  // kill_workers() or the destructor's shutdown_timeout

    // Workers started after construction that entered the unit, each taking over from one that ended: crashed,
    // killed for a task_timeout, a cancelled running task or a protocol violation, or retired by
    // max_tasks_per_child. Those the constructor starts are not counted.
    std::uint64_t worker_restarts = 0;
};

// A task counts as finished here a moment after its future is ready and its on_done callbacks ran (the
// dispatcher counts it right after them); after shutdown(true) every count is final.

}  // namespace sdfutures
