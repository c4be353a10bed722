#pragma once
// The pool's fork server: a single-threaded process that forks the pool's workers on request and reports their
// exits, so that workers are never forked from a process running the library's (or the user's) threads. It is
// forked from the owner when the pool is constructed (StartMethod::fork), or from the process-wide zygote that
// sdfutures::init() forked while the program was still single-threaded (StartMethod::forkserver; zygote.hpp).
// Private to the library.

#include <sys/types.h>

#include <cstdint>
#include <functional>

#include "fd_util.hpp"
#include "sdfutures/detail/wire.hpp"
#include "sdfutures/start_method.hpp"

namespace sdfutures::detail {

// Messages on the control socket (SOCK_SEQPACKET: one message per send).
struct ForkServerRequest {
    uint32_t spawn_count;
};
struct ForkServerEvent {
    enum Kind : uint32_t { spawned = 1, exited = 2, spawn_failed = 3, stopped = 4, continued = 5 } kind;
    int32_t pid;
    int32_t value;  // exited, stopped: the wait status; spawn_failed: errno
};

struct WorkerConfig {
    WireLimits limits;
    std::size_t max_tasks = 0;  // 0: unlimited
    bool keep_stdio = false;
    std::function<void()> initializer;
    // PoolOptions::heartbeat_timeout is set: each worker gets a heartbeat page (heartbeat_page.hpp).
    bool heartbeat = false;
    // StartMethod::exec: the fork server is the unit's main process, so its workers are born inside the unit
    // (nothing to attach, release or enter), and a task names its code by offset from this process's image.
    bool born_in_unit = false;
    std::uintptr_t code_base = 0;  // added to a task's invoker and function (0: they are addresses already)
};

// The fork server of one pool, as its owner holds it.
struct ForkServer {
    pid_t pid = -1;
    Fd control;  // the owner's end of the control socket; closing it ends the server and its workers
    Fd pidfd;    // the server process, to wait for its end (it is not always the owner's child)
};

// Starts a fork server by `method`. Each `spawned` event carries the worker's socket (SOCK_SEQPACKET, see
// channel.hpp), a pidfd of the worker opened by its parent (so never of a reused pid), and, when the config asks
// for heartbeats, the worker's heartbeat page (a sealed memfd, heartbeat_page.hpp), as SCM_RIGHTS descriptors in
// that order. A worker whose page cannot be made is not forked: the event is spawn_failed with the errno. Throws Error naming what failed, or StateError when `forkserver` is asked for and
// sdfutures::init() was not called.
ForkServer start_fork_server(const WorkerConfig& config, StartMethod method);

// Closes the control socket and waits (up to 5 s, then SIGKILL) until the server has ended. Never throws.
void stop_fork_server(ForkServer& server) noexcept;

// The body of a fork server, in the process that will be it: the control socket is kControlFd, nothing else is
// open. Never returns.
inline constexpr int kControlFd = 3;
[[noreturn]] void fork_server_main(const WorkerConfig& config);

// A worker's task message body: [invoker, function, arguments].
std::string encode_task(std::uintptr_t invoker, std::uintptr_t function, std::string_view arguments);

// The worker's reading of it. The arguments stay where they arrived (a view into `body`): a 64 MiB argument is
// decoded once, by the invoker, not copied into a string of its own first. Throws ProtocolError.
struct TaskMessage {
    std::uint64_t invoker;
    std::uint64_t function;
    std::string_view arguments;
};
TaskMessage decode_task(std::string_view body, const WireLimits& limits);

}  // namespace sdfutures::detail
