#pragma once
// What code running as a pool task can tell its pool about itself.

namespace sdfutures::this_task {

// Tells the pool that the task running in this worker is alive and making progress. A pool with
// PoolOptions::heartbeat_timeout kills a task that goes longer than that without calling heartbeat() (counted
// from the task's start, then from each call) and fails its future with TaskStalled; calling it keeps a long task
// alive past heartbeat_timeout (task_timeout, if set, still ends it). Any thread of the task may call it.
//
// It costs a clock read and a store into memory the owner reads (a few tens of nanoseconds; nothing is sent),
// so it can sit in an inner loop. Outside a pool's worker (in the owner, in a TransientUnitProcess child, in a
// worker of a pool without heartbeat_timeout) it does nothing, as cheaply.
void heartbeat() noexcept;

}  // namespace sdfutures::this_task
