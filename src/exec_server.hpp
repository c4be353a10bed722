#pragma once
// StartMethod::exec: systemd itself executes the program as the pool unit's main process, and that process
// (inside sdfutures::init) is the pool's fork server. Nothing is attached and nothing of the owner is copied:
// the unit's whole sandbox applies, because systemd applied it. Private to the library.
//
// How systemd executes the program: ExecStart=/proc/self/fd/0 with StandardInputFileDescriptor= an O_RDONLY
// descriptor of the owner's own /proc/self/exe (so the very file the owner runs, wherever it lies and whatever
// replaced its path), argv {program, kExecServerFlag} and Environment=SDFUTURES_EXEC_SERVER=<identity>;
// StandardOutputFileDescriptor= the server's end of the control socket (SOCK_SEQPACKET).
//
// The handshake on the control socket, one message per send, before the fork server protocol
// (fork_server.hpp) takes over:
//   owner → server  ExecServerConfig        written before the unit is started; the kernel keeps it
//   server → owner  ExecServerHello         + a pidfd of the server itself (SCM_RIGHTS) when error == 0
// ExecServerConfig, native byte order (both ends are the same executable), 56 bytes:
//   u32 version (kExecProtocolVersion)   u32 keep_stdio (0/1)
//   u64 max_frame_bytes   u64 max_depth   u64 max_tasks (0: unlimited)
//   u64 has_initializer (0/1)   u64 initializer_offset (in the executable image)
//   u64 heartbeat (0/1, since version 2): PoolOptions::heartbeat_timeout is set, so the server makes a heartbeat
//       page for each worker it forks and passes it with the worker's `spawned` event (fork_server.hpp,
//       heartbeat_page.hpp). The page is made in the unit by the server, not by the owner: replacements are
//       forked long after the configuration was sent, and a page per worker is what keeps workers apart.
// A server whose executable is not the one the owner named, or that cannot set itself up, sends a hello with
// the errno and a text naming the step, and exits.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "fd_util.hpp"
#include "fork_server.hpp"
#include "program_image.hpp"
#include "sdfutures/manager.hpp"
#include "sdfutures/properties.hpp"

namespace sdfutures::detail {

inline constexpr const char* kExecServerFlag = "--sdfutures-exec-server";
inline constexpr const char* kExecServerEnvironment = "SDFUTURES_EXEC_SERVER";

struct ExecServerConfig {
    std::uint32_t version;
    std::uint32_t keep_stdio;
    std::uint64_t max_frame_bytes;
    std::uint64_t max_depth;
    std::uint64_t max_tasks;
    std::uint64_t has_initializer;
    std::uint64_t initializer_offset;  // in the executable image (program_image.hpp)
    std::uint64_t heartbeat;           // 1: every worker gets a heartbeat page (version 2 on)
};
inline constexpr std::uint32_t kExecProtocolVersion = 2;

static_assert(sizeof(ExecServerConfig) == 56);

struct ExecServerHello {
    std::int32_t pid;
    std::int32_t error;  // 0: serving; else the errno of `detail`'s step (or -1 when there is none)
    char detail[240];
};

// What the owner prepares before it starts the unit.
struct ExecServerLaunch {
    Fd control;     // the owner's end of the control socket
    Fd server_end;  // becomes the server's stdout; the owner closes it once systemd holds its copy
    Fd executable;  // becomes the server's stdin, the file systemd executes
    ImageIdentity identity;
};

// Throws StateError naming what to change: init() not called (then main() cannot be trusted to call it first),
// or an initializer that is not a plain function of the program's executable.
void check_exec_can_serve(const WorkerConfig& config);

// The control socket, the executable's descriptor, and the configuration already queued on the socket.
ExecServerLaunch prepare_exec_server(const WorkerConfig& config);

// The properties sdfutures adds to the user's for an exec'd server (see the top of this file), with the defaults
// every library unit gets (anchored_unit.hpp).
std::vector<DbusProperty> exec_service_properties(const Properties& user, const ExecServerLaunch& launch,
                                                  bool keep_stdio, const std::string& description);

// Waits for the server's hello; the fork server as the pool holds it. Throws SetupError naming the server's
// failure, or Error when it does not answer within `timeout` or is not the unit's main process `main_pid`.
ForkServer await_exec_server(ExecServerLaunch& launch, pid_t main_pid, std::chrono::milliseconds timeout);

// In the process systemd executed: whether init() was asked to serve (argv and environment both say so).
bool exec_server_requested(int argc, char** argv) noexcept;
// Serves as the pool's fork server and never returns.
[[noreturn]] void exec_server_main();

}  // namespace sdfutures::detail
