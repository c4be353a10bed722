#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "anchored_unit.hpp"
#include "bootstrap.hpp"
#include "channel.hpp"
#include "exec_server.hpp"
#include "fd_util.hpp"
#include "fork_server.hpp"
#include "pool_impl.hpp"
#include "sys.hpp"
#include "sdfutures/detail/wire.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/manager.hpp"

// How a pool's first workers come to be and get into its unit, for the constructor (pool.cpp): the unit started,
// the workers forked (or, exec, born in it), attached and released (bootstrap.hpp), and each one's report awaited.

namespace sdfutures::detail {

// fork, forkserver: the unit's main process is cat reading the owner's anchor pipe; the workers are forked
// outside, attached, released, and enter the unit themselves (bootstrap.hpp). Returns once they are released.
void PoolCore::Impl::start_attached(Manager& manager, const WorkerConfig& config) {
    // The workers are forked first, outside the unit, so that the forks overlap the StartTransientUnit call and its
    // job (with 8 workers 0.7 ms less until ready); they only wait for their release. Before the anchor pipe
    // exists, so the fork server holds neither of its ends. A unit that cannot start leaves the fork server and
    // its workers to teardown(), which ends them.
    server = start_fork_server(config, options.start_method);
    request_spawn(target_workers.load());
    int anchor_pipe[2];
    if (::pipe2(anchor_pipe, O_CLOEXEC) != 0) throw SystemError("pipe2", errno, "to create the unit's anchor pipe");
    anchor = Fd(anchor_pipe[1]);
    Fd anchor_read(anchor_pipe[0]);
    PendingJob job = manager.start_transient_unit_async(
        options.unit_name, properties,
        anchored_service_properties(properties, anchor_read.get(), "sdfutures pool of pid " + std::to_string(getpid())));
    anchor_read.reset();  // systemd holds its own copy
    wait_anchored_start(*bus, job, properties);
    control_group = unit->control_group();
    oom_kills_seen = oom_kill_count(control_group);
    spawn_initial_workers();
    std::vector<pid_t> children;
    for (auto& w : workers) children.push_back(w->pid);
    auto send_release = [&](std::size_t i, const std::string& message) {
        Worker& w = *workers[i];
        if (!send_message(w.socket.get(), 0, message))
            throw SystemError("sendmsg", errno, "to release worker " + std::to_string(w.pid));
        w.phase = Worker::Phase::entering;
    };
    Release sent = attach_and_release(manager, *unit, children, send_release);
    main_pid = static_cast<uint32_t>(sent.main_pid);
    release = std::move(sent.message);
}

// exec: systemd executes this program as the unit's main process, which serves as the fork server from inside
// sdfutures::init() (exec_server.hpp); its workers are born in the unit and report "entered" on their own.
// Returns once they are forked.
void PoolCore::Impl::start_exec(Manager& manager, const WorkerConfig& config) {
    ExecServerLaunch launch = prepare_exec_server(config);
    PendingJob job = manager.start_transient_unit_async(
        options.unit_name, properties,
        exec_service_properties(properties, launch, options.keep_stdio,
                                "sdfutures pool of pid " + std::to_string(getpid()) + " (exec)"));
    launch.server_end.reset();  // systemd holds its own copies
    launch.executable.reset();
    wait_anchored_start(*bus, job, properties);
    main_pid = unit->main_pid();
    control_group = unit->control_group();
    oom_kills_seen = oom_kill_count(control_group);
    server = await_exec_server(launch, static_cast<pid_t>(main_pid), kSpawnTimeout);
    request_spawn(target_workers.load());
    spawn_initial_workers();
}

void PoolCore::Impl::spawn_initial_workers() {
    while (spawning > 0) {
        pollfd ready{server.control.get(), POLLIN, 0};
        int r;
        do r = sys::poll(&ready, 1, static_cast<int>(kSpawnTimeout.count()));
        while (r < 0 && errno == EINTR);
        if (r == 0)
            throw Error("the pool's fork server (pid " + std::to_string(server.pid) + ") forked no worker within " +
                        std::to_string(kSpawnTimeout.count()) + " ms");
        ForkServerEvent event{};
        Fd passed[3];
        bool dropped = false;
        ssize_t n = receive_with_fds(server.control.get(), &event, sizeof event, passed, &dropped);
        if (n <= 0) throw Error("the pool's fork server ended while forking workers");
        if (event.kind == ForkServerEvent::spawned) {
            --spawning;
            workers.push_back(new_worker(event.pid, passed, dropped));
        } else if (event.kind == ForkServerEvent::spawn_failed) {
            throw SystemError("fork", event.value, "in the pool's fork server, of a worker");
        }
    }
}

void PoolCore::Impl::wait_until_entered(Worker& w) {
    const auto deadline = Clock::now() + kEntryTimeout;
    for (;;) {
        auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now()).count();
        pollfd ready{w.socket.get(), POLLIN, 0};
        int r = sys::poll(&ready, 1, static_cast<int>(std::max<long long>(left, 0)));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0)
            throw SetupError("enter the unit", 0, "worker " + std::to_string(w.pid) + " did not report within " +
                                                      std::to_string(kEntryTimeout.count()) + " ms");
        MessageReader::Got got = w.reader.read_record(w.socket.get(), false);  // ProtocolError for garbage
        if (got == MessageReader::Got::end)
            throw SetupError("enter the unit", 0, "worker " + std::to_string(w.pid) + " ended before it entered the unit");
        if (got != MessageReader::Got::message) continue;
        Message m = w.reader.take();
        if (m.id != 0) throw ProtocolError("worker " + std::to_string(w.pid) + " answered a task before it entered");
        decode_reply<void>(m.body.view(), limits);  // SetupError for the step that failed
        w.phase = Worker::Phase::ready;
        ::fcntl(w.socket.get(), F_SETFL, O_NONBLOCK);
        return;
    }
}

}  // namespace sdfutures::detail
