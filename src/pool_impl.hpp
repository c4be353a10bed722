#pragma once
// The pool's state (PoolCore::Impl) and its workers, shared by its parts. Private to the library.
//
//   pool.cpp          facade and lifetime: construction (the unit, the fork server, the first workers), the
//                     workers' arrival, PoolCore's calls, teardown
//   dispatcher.cpp    the dispatcher thread: its loop and the steps it is made of
//   pool_tasks.cpp    settling tasks, failing the queued ones, taking a lost worker's window back
//   scheduler.hpp     the dispatch policy (which task goes where, windows, requeueing, spawns): plain code
//   worker_death.hpp  what a worker's death means for its task: plain code
//
// Threads: the submitting threads (submit, cancel, shutdown, stats, any number of them), the dispatcher thread
// (the only one that talks to workers and the fork server), the PoolBus thread (D-Bus calls, see pool_bus.hpp),
// and the destructor's. Each member below says which of them may touch it.

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "adaptive_spin.hpp"
#include "channel.hpp"
#include "fd_util.hpp"
#include "fork_server.hpp"
#include "heartbeat_page.hpp"
#include "pool_bus.hpp"
#include "scheduler.hpp"
#include "task_state.hpp"
#include "worker_death.hpp"
#include "sdfutures/bus.hpp"
#include "sdfutures/pool.hpp"
#include "sdfutures/manager.hpp"
#include "sdfutures/unit.hpp"

namespace sdfutures::detail {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Bounds on what the dispatcher waits for from a worker or the fork server before it gives up on them; far
// above what they take (a worker enters a unit in about a millisecond), so they only end real hangs.
inline constexpr milliseconds kEntryTimeout{30'000};
inline constexpr milliseconds kSpawnTimeout{30'000};

// One worker process. The dispatcher thread's alone (the constructing thread's until the dispatcher starts); its
// window (TaskWindow: in_flight, assigned) is what the dispatch policy sees of it.
struct Worker : TaskWindow {
    pid_t pid = -1;
    Fd socket;
    Fd pidfd;
    // attaching: the owner asked systemd to attach it; entering: released, not yet reported "entered".
    enum class Phase { attaching, entering, ready } phase = Phase::attaching;
    Clock::time_point phase_since = Clock::now();
    MessageReader reader;
    MessageWriter writer;
    Clock::time_point head_since;  // when the head task started, as far as the owner knows
    // heartbeat_timeout: the worker's page (heartbeat_page.hpp; the worker writes it, any time), and the latest
    // heartbeat seen on it, which may be one of an earlier task (then head_since counts).
    HeartbeatView heartbeat;
    Clock::time_point last_beat_seen;
    std::uint64_t last_answered = 0;  // id of the last task it answered
    bool eof = false;                 // nothing more is read from it
    bool write_closed = false;
    bool condemned = false;  // killed by the pool, its tasks already settled
    bool stopped = false;    // stopped by a signal: takes no tasks until it continues
    bool awaiting_verdict = false;
    std::optional<bool> unit_gone_verdict;
    std::exception_ptr entry_error;  // a replacement's failure to enter, until the manager says whether the unit stopped
    std::optional<Clock::time_point> idle_done_since;  // done with its quota and idle, yet still alive
    std::optional<int> exit_status;

    explicit Worker(std::size_t max_reply_bytes) : reader(max_reply_bytes) {}
    void signal(int signo) const {
        if (pidfd) ::syscall(SYS_pidfd_send_signal, pidfd.get(), signo, nullptr, 0);
    }
    void kill() const { signal(SIGKILL); }
    bool alive() const { return !exit_status; }
    bool takes_tasks(const DispatchLimits& dispatch) const {
        return phase == Phase::ready && !eof && !condemned && !stopped && alive() && !dispatch.quota_reached(*this);
    }
};

// What the dispatcher sleeps on: three fixed slots, then one per worker it still reads from.
struct PollSet {
    enum Slot : std::size_t {
        wake_slot,          // the eventfd: new tasks, cancellations, bus answers, shutdown
        fork_server_slot,   // the fork server's control socket: workers forked, stopped, exited
        main_process_slot,  // the unit's main process (anchor pipe or exec'd server's pidfd): gone on POLLERR/POLLIN
        first_worker_slot,
    };
    std::vector<pollfd> fds;
    std::vector<Worker*> workers;  // workers[i] is polled in fds[first_worker_slot + i]

    short revents(Slot slot) const { return fds[slot].revents; }
    short worker_revents(std::size_t i) const { return fds[first_worker_slot + i].revents; }
};

struct PoolCore::Impl {
    // Set at construction, read-only afterwards: any thread.
    Properties properties;
    PoolOptions options;
    WireLimits limits;
    DispatchLimits dispatch{options.max_window, options.max_tasks_per_child};
    std::optional<Bus> bus;
    std::optional<Unit> unit;
    std::string control_group;
    uint32_t main_pid = 0;
    std::string release;  // fork, forkserver: the release sent to every worker (bootstrap.hpp), kept for replacements
    bool exec = false;  // StartMethod::exec: the fork server is the unit's main process, its workers born inside
    Fd anchor;  // fork, forkserver: write end of the unit main process's stdin, the owner's lifeline (polled by the dispatcher)
    Fd wake;    // eventfd, written by any thread (wake_up()), read by the dispatcher
    std::uint64_t id_key = 0;

    // Shared by the submitting threads, the dispatcher and the destructor: guarded by `mutex`.
    std::mutex mutex;
    std::condition_variable changed;  // waited on by shutdown(wait), end_workers() and the destructor
    TaskQueue queue{dispatch};
    std::vector<std::shared_ptr<TaskState>> cancelled_running;  // resolved by cancel(); their workers must go
    std::size_t unfinished = 0;
    PoolStats counts;  // all but `queued`, which is unfinished - counts.running
    std::uint64_t next_id = 0;
    bool accepting = true;
    bool retire = false;
    std::optional<std::optional<milliseconds>> end_workers_request;  // grace; set by end_workers()
    bool dispatcher_done = false;
    std::exception_ptr broken;

    // The dispatcher thread's alone (the constructing thread's until it starts, the destructor's once it ended).
    ForkServer server;
    std::vector<std::unique_ptr<Worker>> workers;
    std::size_t spawning = 0;
    Clock::time_point spawn_requested;
    bool server_alive = true;
    uint64_t oom_kills_seen = 0;
    std::optional<Clock::time_point> sigkill_at;  // terminate_workers: when SIGKILL follows SIGTERM
    AdaptiveSpin spin{options.dispatcher_spin};    // whether it polls a while before it sleeps
    // Made by the constructor, then the dispatcher's; its own thread calls wake_up() after each answer.
    std::unique_ptr<PoolBus> pool_bus;

    // Written by the dispatcher, read by any thread (max_workers()): atomic.
    std::atomic<std::size_t> target_workers{1};

    // Written by the dispatcher (update_pids()), read by any thread (worker_pids()): guarded by pids_mutex.
    mutable std::mutex pids_mutex;
    std::vector<pid_t> pids;

    // Started by the constructor, joined by the destructor.
    std::thread dispatcher;

    Impl(Properties p, PoolOptions o);
    ~Impl();
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    // construction (pool.cpp)
    void start_attached(Manager& manager, const WorkerConfig& config);
    void start_exec(Manager& manager, const WorkerConfig& config);
    void spawn_initial_workers();
    void wait_until_entered(Worker& w);
    void teardown() noexcept;

    // workers arriving, stopping, leaving: the fork server's events and the bus's answers (pool.cpp)
    std::unique_ptr<Worker> new_worker(pid_t pid, std::span<Fd, 3> passed, bool dropped);
    void handle_server_events();
    void take_bus_answers();
    void worker_stopped(Worker& w, bool stopped);
    void request_spawn(std::size_t n);
    void update_pids();
    void wake_up();
    std::size_t live_workers() const;

    // dispatcher thread: the loop, then its steps (dispatcher.cpp)
    void run_dispatcher();
    void take_requests();
    void end_all_workers(std::optional<milliseconds> grace);
    void assign_tasks();
    bool retired();
    void build_poll_set(PollSet& poll_set) const;
    void wait_for_events(PollSet& poll_set);
    bool spin_for_events(PollSet& poll_set, Clock::time_point began);
    void sleep_for_events(PollSet& poll_set);
    void handle_events(const PollSet& poll_set);
    std::optional<Clock::time_point> next_deadline() const;
    void enforce_deadlines();
    void end_lingering_workers(Clock::time_point now);
    void read_worker(Worker& w);
    void handle_message(Worker& w, Message message);
    void handle_entry_report(Worker& w, const Message& message);
    void flush_worker(Worker& w);
    void finalize_dead_workers();
    void fail_dead_workers_task(Worker& w);
    WorkerDeath death_of(const Worker& w) const;
    void replace_workers();

    // what the steps share (dispatcher.cpp)
    Clock::time_point heartbeat_deadline(const Worker& w) const;
    bool stalled(Worker& w, Clock::time_point now);
    void condemn(Worker& w, const std::exception_ptr& error_for_head);
    void violation(Worker& w, const std::string& what, std::uint64_t offending_id);
    void break_pool(const std::exception_ptr& error, int signo = SIGKILL);
    bool main_process_gone() const;

    // tasks: settled by the dispatcher or by a cancelling thread, whichever claims them (pool_tasks.cpp)
    enum class Outcome { completed, failed, cancelled };
    void settle(TaskState& task, int status_before, Outcome outcome);
    void task_finished(int status_before, Outcome outcome);
    void start_head(Worker& w);
    void fail_task(const std::shared_ptr<TaskState>& task, std::exception_ptr error);
    void fail_queued_tasks(const std::exception_ptr& error);
    void requeue_window(Worker& w);
};

}  // namespace sdfutures::detail
