#pragma once
// The pool's fork server: a single-threaded process, forked from the owner when a pool is constructed, that
// forks the pool's workers on request and reports their exits. Workers are thus never forked from a process
// running the library's threads. Private to the library.

#include <sys/types.h>

#include <cstdint>
#include <functional>

#include "sdfutures/detail/wire.hpp"
#include "fd_util.hpp"

namespace sdfutures::detail {

// Messages on the control socket (SOCK_SEQPACKET: one message per send).
struct ForkServerRequest {
    uint32_t spawn_count;
};
struct ForkServerEvent {
    enum Kind : uint32_t { spawned = 1, exited = 2, spawn_failed = 3 } kind;
    int32_t pid;
    int32_t value;  // exited: the wait status; spawn_failed: errno
};

struct WorkerConfig {
    WireLimits limits;
    std::size_t max_tasks = 0;  // 0: unlimited
    bool keep_stdio = false;
    std::function<void()> initializer;
};

// Forks the fork server. Returns its pid and sets `control` to the owner's end of the control socket. The
// worker's socket and a pidfd of the worker (opened by its parent, so never of a reused pid) arrive with each
// `spawned` event as SCM_RIGHTS descriptors, in that order.
pid_t start_fork_server(const WorkerConfig& config, Fd& control);

// A worker's task message: [invoker, function, arguments].
std::string encode_task(std::uintptr_t invoker, std::uintptr_t function, std::string_view arguments);

}  // namespace sdfutures::detail
