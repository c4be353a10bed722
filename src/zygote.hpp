#pragma once
// The zygote: a process sdfutures::init() forks at the start of main(), while the program is single-threaded,
// from which StartMethod::forkserver pools get their fork servers. Private to the library.
//
// Protocol on its socket (SOCK_SEQPACKET, one message per send): the owner sends a ZygoteRequest; the zygote
// forks a fork server with that configuration and answers with a ZygoteReply, passing the server's control
// socket and a pidfd of it (SCM_RIGHTS, in that order) when it succeeded. Requests are serialized by the owner.
// The zygote ends when the owner's end of its socket closes.

#include <sys/types.h>

#include "fork_server.hpp"

namespace sdfutures::detail {

// Throws StateError naming what to change when init() was not called or the initializer is a closure.
void check_zygote_can_serve(const WorkerConfig& config);

// Throws as check_zygote_can_serve, and Error when the zygote cannot fork a server.
ForkServer fork_server_from_zygote(const WorkerConfig& config);

// The zygote's pid, or -1 before init().
pid_t zygote_pid() noexcept;

}  // namespace sdfutures::detail
