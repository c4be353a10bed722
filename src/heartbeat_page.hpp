#pragma once
// The page through which a pool worker's sdfutures::this_task::heartbeat() reaches the owner. Private to the
// library.
//
// One page per worker: a memfd of kHeartbeatPageBytes, sealed against growing and shrinking (F_SEAL_GROW,
// F_SEAL_SHRINK, F_SEAL_SEAL), created by the worker's parent (the fork server) before the fork and passed to the
// owner with the worker's `spawned` event (fork_server.hpp). The worker maps it read-write; the owner maps it
// read-only and checks the seals first, so a worker can neither resize it under the owner's mapping (SIGBUS) nor
// reach another worker's page (each page is its own file).
//
// Layout: the first 8 bytes are a std::atomic<std::int64_t>, the steady clock (CLOCK_MONOTONIC, one clock for
// every process of the machine) in nanoseconds at the worker's last heartbeat(); 0 when it never called it. The
// rest of the page is unused. Both sides access it with relaxed atomics only: a value is a hint the owner checks
// against its own clock, never a pointer, size or index.

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "fd_util.hpp"

namespace sdfutures::detail {

inline constexpr std::size_t kHeartbeatPageBytes = 4096;

using HeartbeatStamp = std::atomic<std::int64_t>;
static_assert(HeartbeatStamp::is_always_lock_free);

// The fork server's side: a new sealed page, or an invalid Fd with errno set.
Fd create_heartbeat_page() noexcept;

// The worker's side: maps `page` and makes this process's heartbeat() store into it. False (errno set) when the
// mapping fails. Called once, in the worker, before it runs a task.
bool adopt_heartbeat_page(int page) noexcept;
// Any process forked from a worker that is not itself one: its heartbeat() does nothing again.
void forget_heartbeat_page() noexcept;
// Where heartbeat() stores, or nullptr; for sdfutures_micro_bench, which measures the store by itself.
HeartbeatStamp* heartbeat_target() noexcept;
void set_heartbeat_target(HeartbeatStamp* stamp) noexcept;

// The owner's side: a read-only mapping of one worker's page.
class HeartbeatView {
public:
    HeartbeatView() = default;
    // Maps `page` after checking that it is a sealed page of the right size: a descriptor that is not one (the
    // fork server is the library's, but the owner does not map what could shrink under it) throws Error.
    explicit HeartbeatView(const Fd& page);
    HeartbeatView(HeartbeatView&& other) noexcept;
    HeartbeatView& operator=(HeartbeatView&& other) noexcept;
    HeartbeatView(const HeartbeatView&) = delete;
    HeartbeatView& operator=(const HeartbeatView&) = delete;
    ~HeartbeatView();

    explicit operator bool() const noexcept { return stamp_ != nullptr; }
    // The stamp as the worker left it: whatever 8 bytes it wrote, read atomically.
    std::int64_t last_beat_ns() const noexcept { return stamp_ ? stamp_->load(std::memory_order_relaxed) : 0; }

private:
    void unmap() noexcept;
    void* mapping_ = nullptr;  // what munmap takes back
    const HeartbeatStamp* stamp_ = nullptr;
};

}  // namespace sdfutures::detail
