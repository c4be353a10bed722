#include "exec_server.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "anchored_unit.hpp"
#include "bus_state.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/init.hpp"

namespace sdfutures::detail {
namespace {

using Exec = sdbus::Struct<std::string, std::vector<std::string>, bool>;

// The server's end of the control socket as systemd hands it over (its stdout), and where it is moved to.
constexpr int kHandedOverFd = 1;

[[noreturn]] void refuse_to_serve(int error, const std::string& detail) {
    ExecServerHello hello{static_cast<std::int32_t>(::getpid()), error == 0 ? -1 : error, {}};
    std::strncpy(hello.detail, detail.c_str(), sizeof hello.detail - 1);
    send_with_fds(kControlFd, &hello, sizeof hello);
    ::_exit(125);
}

// stdout becomes a copy of stderr (systemd made that /dev/null or the owner's stderr, as keep_stdio asked),
// the control socket fd 3, stdin /dev/null; nothing else stays open.
bool arrange_descriptors() {
    if (::dup2(kHandedOverFd, kControlFd) < 0) return false;
    ::fcntl(kControlFd, F_SETFD, FD_CLOEXEC);
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) return false;
    ::dup2(null_fd, 0);
    ::dup2(2, 1);
    ::syscall(SYS_close_range, kControlFd + 1, ~0u, 0);
    return true;
}

// The executable this process runs is the one the owner named: the owner passed its own inode, so only a
// manager that executed something else (or a stray kExecServerFlag) fails this.
void check_identity(const std::string& expected_text) {
    ImageIdentity expected;
    try {
        expected = identity_from_text(expected_text);
    } catch (const Error& e) {
        refuse_to_serve(0, e.what());
    }
    struct stat st {};
    if (::stat("/proc/self/exe", &st) != 0) refuse_to_serve(errno, "stat /proc/self/exe");
    const bool same = static_cast<std::uint64_t>(st.st_dev) == expected.device &&
                      static_cast<std::uint64_t>(st.st_ino) == expected.inode &&
                      static_cast<std::uint64_t>(st.st_size) == expected.size;
    if (!same)
        refuse_to_serve(0, "the program systemd executed (inode " + std::to_string(st.st_ino) +
                               ") is not the owner's executable (" + expected_text +
                               "): it was replaced, or ExecStart= was not the library's");
}

}  // namespace

void check_exec_can_serve(const WorkerConfig& config) {
    if (!initialized())
        throw StateError("StartMethod::exec needs sdfutures::init(argc, argv) to be the first statement of main(): "
                         "the program systemd executes serves the pool from inside that call");
    if (config.initializer) {
        auto* function = config.initializer.target<void (*)()>();
        if (!function || !*function)
            throw StateError("StartMethod::exec needs PoolOptions::initializer to be a plain function pointer "
                             "(a closure's state does not exist in a process systemd executed)");
        image_offset(reinterpret_cast<std::uintptr_t>(*function), "PoolOptions::initializer");
    }
}

ExecServerLaunch prepare_exec_server(const WorkerConfig& config) {
    check_exec_can_serve(config);
    ExecServerLaunch launch;
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
        throw SystemError("socketpair", errno, "for the exec'd fork server");
    launch.control = Fd(pair[0]);
    launch.server_end = Fd(pair[1]);
    launch.executable = Fd(::open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
    if (!launch.executable) throw SystemError("open", errno, "of this program's executable (/proc/self/exe)");
    launch.identity = identity_of(launch.executable.get(), "this program's executable");
    ExecServerConfig message{kExecProtocolVersion,
                             config.keep_stdio ? 1u : 0u,
                             config.limits.max_frame_bytes,
                             config.limits.max_depth,
                             config.max_tasks,
                             0,
                             0,
                             config.heartbeat ? 1u : 0u};
    if (config.initializer) {
        message.has_initializer = 1;
        message.initializer_offset =
            image_offset(reinterpret_cast<std::uintptr_t>(*config.initializer.target<void (*)()>()), "initializer");
    }
    if (!send_with_fds(launch.control.get(), &message, sizeof message))
        throw SystemError("write", errno, "to queue the exec'd fork server's configuration");
    return launch;
}

std::vector<DbusProperty> exec_service_properties(const Properties& user, const ExecServerLaunch& launch,
                                                  bool keep_stdio, const std::string& description) {
    std::vector<DbusProperty> extra;
    // Type=exec: the start job ends once the program was executed, so a sandbox systemd cannot set up fails the
    // start (226/NAMESPACE, 203/EXEC, ...) and read_start_failure names the property.
    extra.emplace_back("Type", sdbus::Variant(std::string("exec")));
    const std::string argv0 = std::string(program_invocation_short_name) + " (sdfutures pool server)";
    extra.emplace_back("ExecStart",
                       sdbus::Variant(std::vector<Exec>{Exec{"/proc/self/fd/0", {argv0, kExecServerFlag}, false}}));
    extra.emplace_back("StandardInputFileDescriptor",
                       fd_variant(launch.executable.get(), "this program's executable"));
    extra.emplace_back("StandardOutputFileDescriptor",
                       fd_variant(launch.server_end.get(), "the exec'd fork server's control socket"));
    if (keep_stdio) extra.emplace_back("StandardErrorFileDescriptor", fd_variant(2, "this process's stderr"));
    else extra.emplace_back("StandardError", sdbus::Variant(std::string("null")));
    extra.emplace_back("Environment", sdbus::Variant(std::vector<std::string>{
                                          std::string(kExecServerEnvironment) + "=" + to_text(launch.identity)}));
    add_library_defaults(extra, user, description);
    return extra;
}

ForkServer await_exec_server(ExecServerLaunch& launch, pid_t main_pid, std::chrono::milliseconds timeout) {
    pollfd ready{launch.control.get(), POLLIN, 0};
    int r;
    do r = ::poll(&ready, 1, static_cast<int>(timeout.count()));
    while (r < 0 && errno == EINTR);
    if (r == 0)
        throw Error("the program systemd executed for the pool (pid " + std::to_string(main_pid) +
                    ") did not start serving within " + std::to_string(timeout.count()) +
                    " ms: sdfutures::init(argc, argv) must be the first statement of main()");
    ExecServerHello hello{};
    Fd passed[1];
    bool dropped = false;
    ssize_t n = receive_with_fds(launch.control.get(), &hello, sizeof hello, passed, &dropped);
    if (n != static_cast<ssize_t>(sizeof hello))
        throw Error("the program systemd executed for the pool (pid " + std::to_string(main_pid) +
                    ") ended without serving: sdfutures::init(argc, argv) must be the first statement of main()");
    hello.detail[sizeof hello.detail - 1] = '\0';
    if (hello.error != 0)
        throw SetupError("start the exec'd fork server", hello.error > 0 ? hello.error : 0, hello.detail);
    if (hello.pid != main_pid)
        throw Error("the pool's exec'd fork server is pid " + std::to_string(hello.pid) +
                    ", not the unit's main process " + std::to_string(main_pid));
    if (!passed[0])
        throw Error("the exec'd fork server's pidfd did not reach the pool's owner" +
                    std::string(dropped ? " (the kernel dropped it: Too many open files)" : ""));
    ForkServer server;
    server.pid = hello.pid;
    server.control = std::move(launch.control);
    server.pidfd = std::move(passed[0]);
    return server;
}

bool exec_server_requested(int argc, char** argv) noexcept {
    return argc >= 2 && argv && argv[1] && std::strcmp(argv[1], kExecServerFlag) == 0 &&
           ::getenv(kExecServerEnvironment) != nullptr;  // NOLINT(concurrency-mt-unsafe): init() runs first in main
}

[[noreturn]] void exec_server_main() {
    if (!arrange_descriptors()) ::_exit(125);  // no channel to report on: the owner sees the end of its socket
    std::string expected = ::getenv(kExecServerEnvironment);  // NOLINT(concurrency-mt-unsafe): single-threaded
    ::unsetenv(kExecServerEnvironment);                        // NOLINT(concurrency-mt-unsafe): not for workers
    check_identity(expected);

    ExecServerConfig message{};
    ssize_t n = receive_with_fds(kControlFd, &message, sizeof message);
    if (n != static_cast<ssize_t>(sizeof message) || message.version != kExecProtocolVersion)
        refuse_to_serve(0, "the owner's configuration message is missing or of another protocol version");
    WorkerConfig config;
    config.limits = WireLimits{static_cast<std::size_t>(message.max_frame_bytes),
                               static_cast<std::size_t>(message.max_depth)};
    config.max_tasks = static_cast<std::size_t>(message.max_tasks);
    config.keep_stdio = message.keep_stdio != 0;
    config.heartbeat = message.heartbeat != 0;
    config.born_in_unit = true;
    config.code_base = image_address(0);
    if (message.has_initializer)
        config.initializer = reinterpret_cast<void (*)()>(image_address(static_cast<std::uintptr_t>(message.initializer_offset)));

    int self = static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0));
    if (self < 0) refuse_to_serve(errno, "pidfd_open of the exec'd fork server");
    ExecServerHello hello{static_cast<std::int32_t>(::getpid()), 0, {}};
    const int passed[] = {self};
    if (!send_with_fds(kControlFd, &hello, sizeof hello, passed)) ::_exit(125);
    ::close(self);
    fork_server_main(config);
}

}  // namespace sdfutures::detail
