#include "sdfutures/pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <span>
#include <thread>

#include "anchored_unit.hpp"
#include "channel.hpp"
#include "fd_util.hpp"
#include "exec_server.hpp"
#include "fork_server.hpp"
#include "heartbeat_page.hpp"
#include "program_image.hpp"
#include "property_reach.hpp"
#include "pool_bus.hpp"
#include "scheduler.hpp"
#include "sys.hpp"
#include "task_state.hpp"
#include "worker_death.hpp"
#include "zygote.hpp"
#include "sdfutures/manager.hpp"

namespace sdfutures {
namespace detail {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// Bounds on what the dispatcher waits for from a worker or the fork server before it gives up on them; far
// above what they take (a worker enters a unit in about a millisecond), so they only end real hangs.
constexpr milliseconds kEntryTimeout{30'000};
constexpr milliseconds kSpawnTimeout{30'000};
constexpr milliseconds kLingerTimeout{5'000};
// Records read from one worker before the dispatcher looks at the others again.
constexpr int kRecordsPerTurn = 256;

// The CPUs the unit may use: AllowedCPUs= and CPUQuota= (rounded up) bound the machine's.
std::size_t default_worker_count(const Properties& properties) {
    cpu_set_t set;
    std::size_t cpus = ::sched_getaffinity(0, sizeof set, &set) == 0 ? static_cast<std::size_t>(CPU_COUNT(&set))
                                                                     : std::thread::hardware_concurrency();
    if (auto allowed = properties.text_of("AllowedCPUs")) {
        auto mask = parse_property("AllowedCPUs", *allowed).at(0).get<1>().get<std::vector<uint8_t>>();
        std::size_t n = 0;
        for (uint8_t byte : mask) n += static_cast<std::size_t>(std::popcount(byte));
        cpus = std::min(cpus, n);
    }
    if (auto quota = properties.text_of("CPUQuota")) {
        auto usec = parse_property("CPUQuota", *quota).at(0).get<1>().get<uint64_t>();
        cpus = std::min<std::size_t>(cpus, (usec + 999'999) / 1'000'000);
    }
    return std::max<std::size_t>(cpus, 1);
}

bool pipe_reader_gone(int write_fd) { return sys::poll_now(write_fd, 0) & POLLERR; }

std::string release_message(uint32_t main_pid) {
    auto pid = static_cast<pid_t>(main_pid);
    return {reinterpret_cast<const char*>(&pid), sizeof pid};
}

}  // namespace

struct Worker : TaskWindow {
    pid_t pid = -1;
    Fd socket;
    Fd pidfd;
    // attaching: the owner asked systemd to attach it; entering: released, not yet reported "entered".
    enum class Phase { attaching, entering, ready } phase = Phase::attaching;
    Clock::time_point phase_since = Clock::now();
    MessageReader reader;
    MessageWriter writer;
    Clock::time_point head_since;                      // when the head task started, as far as the owner knows
    // heartbeat_timeout: the worker's page (heartbeat_page.hpp), and the latest heartbeat seen on it, which may be
    // one of an earlier task (then head_since counts). Both the dispatcher's.
    HeartbeatView heartbeat;
    Clock::time_point last_beat_seen;
    std::uint64_t last_answered = 0;                   // id of the last task it answered
    bool eof = false;          // nothing more is read from it
    bool write_closed = false;
    bool condemned = false;    // killed by the pool, its tasks already settled
    bool stopped = false;      // stopped by a signal: takes no tasks until it continues
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

struct PoolCore::Impl {
    // Set at construction, read-only afterwards (any thread).
    Properties properties;
    PoolOptions options;
    WireLimits limits;
    std::optional<Bus> bus;
    std::optional<Unit> unit;
    std::string control_group;
    uint32_t main_pid = 0;
    bool exec = false;  // StartMethod::exec: the fork server is the unit's main process, its workers born inside
    Fd anchor;  // fork, forkserver: write end of the unit main process's stdin, the owner's lifeline
    Fd wake;    // eventfd: new tasks, cancellations, bus answers, shutdown
    std::uint64_t id_key = 0;
    DispatchLimits dispatch{options.max_window, options.max_tasks_per_child};

    // Shared between the submitting threads and the dispatcher: guarded by `mutex`.
    std::mutex mutex;
    std::condition_variable changed;
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

    // The dispatcher thread's own (the constructing thread's until it starts).
    ForkServer server;
    std::atomic<std::size_t> target_workers{1};  // written by the dispatcher, read by max_workers()
    std::vector<std::unique_ptr<Worker>> workers;
    std::size_t spawning = 0;
    Clock::time_point spawn_requested;
    bool server_alive = true;
    uint64_t oom_kills_seen = 0;
    std::optional<Clock::time_point> sigkill_at;  // terminate_workers: when SIGKILL follows SIGTERM
    std::unique_ptr<PoolBus> pool_bus;
    std::thread dispatcher;

    // Read by any thread.
    mutable std::mutex pids_mutex;
    std::vector<pid_t> pids;  // guarded by pids_mutex

    Impl(Properties p, PoolOptions o);
    ~Impl();

    // construction
    void start_attached(Manager& manager, const WorkerConfig& config);
    void start_exec(Manager& manager, const WorkerConfig& config);
    void spawn_initial_workers();
    void wait_until_entered(Worker& w);
    void teardown() noexcept;

    // dispatcher thread: the loop, then its steps
    void run_dispatcher();
    bool retired();
    void take_requests();
    void take_bus_answers();
    void assign_tasks();
    void poll_events(std::vector<pollfd>& fds, std::vector<Worker*>& polled);
    void enforce_deadlines();
    void read_worker(Worker& w);
    void handle_message(Worker& w, Message message);
    void flush_worker(Worker& w);
    void handle_server_events();
    void finalize_dead_workers();
    void worker_stopped(Worker& w, bool stopped);

    // what the steps share
    std::unique_ptr<Worker> new_worker(pid_t pid, std::span<Fd, 3> passed, bool dropped);
    Clock::time_point heartbeat_deadline(const Worker& w) const;
    bool stalled(Worker& w, Clock::time_point now);
    void condemn(Worker& w, const std::exception_ptr& error_for_head);
    void violation(Worker& w, const std::string& what, std::uint64_t offending_id);
    void requeue_window(Worker& w);
    void fail_dead_workers_task(Worker& w);
    WorkerDeath death_of(const Worker& w) const;
    void break_pool(const std::exception_ptr& error, int signo = SIGKILL);
    void fail_queued_tasks(const std::exception_ptr& error);
    void request_spawn(std::size_t n);
    void replace_workers();
    void update_pids();
    void wake_up();
    std::size_t live_workers() const;
    bool main_process_gone() const;

    // tasks
    enum class Outcome { completed, failed, cancelled };
    void settle(TaskState& task, int status_before, Outcome outcome);
    void task_finished(int status_before, Outcome outcome);
    void start_head(Worker& w);
    void fail_task(const std::shared_ptr<TaskState>& task, std::exception_ptr error);
};

PoolCore::Impl::Impl(Properties p, PoolOptions o)
    : properties(std::move(p)), options(std::move(o)), limits{options.max_result_bytes, WireLimits{}.max_depth} {
    exec = options.start_method == StartMethod::exec;
    check_properties_for_start_method(properties, options.start_method);
    target_workers = options.max_workers ? options.max_workers : default_worker_count(properties);
    options.max_window = std::max<std::size_t>(options.max_window, 1);
    if (options.unit_name.empty()) options.unit_name = default_unit_name("pool");
    bus = options.bus ? *options.bus : Bus::automatic();
    unit.emplace(*bus, options.unit_name);
    // Also for exec: a property the cgroup layout cannot honour is refused, not silently ignored by systemd.
    require_support(*bus, properties, /*attaches=*/!exec);
    const WorkerConfig config{limits, options.max_tasks_per_child, options.keep_stdio, options.initializer,
                              options.heartbeat_timeout.has_value()};
    if (options.start_method == StartMethod::forkserver) check_zygote_can_serve(config);
    id_key = (std::uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
    wake = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake) throw SystemError("eventfd", errno, "to create the dispatcher's wake-up descriptor");

    Manager manager(*bus);
    try {
        if (exec) start_exec(manager, config);
        else start_attached(manager, config);
        for (auto& w : workers) wait_until_entered(*w);
        update_pids();
        pool_bus = std::make_unique<PoolBus>(*bus, options.unit_name, [this] { wake_up(); });
        dispatcher = std::thread([this] { run_dispatcher(); });
    } catch (...) {
        pool_bus.reset();
        teardown();  // whatever of the unit, the fork server and the workers exists by now
        throw;
    }
}

// fork, forkserver: the unit's main process is cat reading the owner's anchor pipe; the workers are forked
// outside, attached, released, and enter the unit themselves (unit_entry.hpp). Returns once they are released.
void PoolCore::Impl::start_attached(Manager& manager, const WorkerConfig& config) {
    int anchor_pipe[2];
    if (::pipe2(anchor_pipe, O_CLOEXEC) != 0) throw SystemError("pipe2", errno, "to create the unit's anchor pipe");
    anchor = Fd(anchor_pipe[1]);
    Fd anchor_read(anchor_pipe[0]);
    PendingJob job = manager.start_transient_unit_async(
        options.unit_name, properties,
        anchored_service_properties(properties, anchor_read.get(), "sdfutures pool of pid " + std::to_string(getpid())));
    anchor_read.reset();  // systemd holds its own copy
    // The unit is started before anything is forked: a unit that cannot start leaves nothing to tear down.
    wait_anchored_start(*bus, job, properties);
    main_pid = verified_main_pid(*unit);
    control_group = unit->control_group();
    oom_kills_seen = oom_kill_count(control_group);
    server = start_fork_server(config, options.start_method);
    request_spawn(target_workers.load());
    spawn_initial_workers();
    std::vector<uint32_t> to_attach;
    for (auto& w : workers) to_attach.push_back(static_cast<uint32_t>(w->pid));
    manager.attach_processes_to_unit(options.unit_name, "/", to_attach);  // one call for all of them
    for (auto& w : workers) {
        if (!send_message(w->socket.get(), 0, release_message(main_pid)))
            throw SystemError("sendmsg", errno, "to release worker " + std::to_string(w->pid));
        w->phase = Worker::Phase::entering;
    }
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

void PoolCore::Impl::request_spawn(std::size_t n) {
    if (n == 0) return;
    ForkServerRequest request{static_cast<uint32_t>(n)};
    if (!send_with_fds(server.control.get(), &request, sizeof request))
        throw SystemError("sendmsg", errno, "to ask the pool's fork server for workers");
    if (spawning == 0) spawn_requested = Clock::now();
    spawning += n;
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

void PoolCore::Impl::teardown() noexcept {
    // Closing the control socket ends the fork server, which kills and reaps its workers.
    stop_fork_server(server);
    workers.clear();
    anchor.reset();
    if (bus) stop_and_wait_gone(*bus, options.unit_name);
}

PoolCore::Impl::~Impl() {
    try {
        std::unique_lock lock(mutex);
        accepting = false;
        retire = true;
        lock.unlock();
        wake_up();
        lock.lock();
        auto done = [&] { return dispatcher_done; };
        if (options.shutdown_timeout) {
            if (!changed.wait_for(lock, *options.shutdown_timeout, done)) {
                if (!end_workers_request) end_workers_request.emplace(std::nullopt);
                lock.unlock();
                wake_up();
                lock.lock();
            }
        }
        changed.wait(lock, done);
    } catch (...) {
    }
    if (dispatcher.joinable()) dispatcher.join();
    pool_bus.reset();
    teardown();
}

void PoolCore::Impl::wake_up() {
    uint64_t one = 1;
    // A lost wake-up would leave the dispatcher asleep until its next deadline, or forever: retry interruptions.
    // (Nothing else can fail: the counter is read on every wake-up and cannot reach its limit.)
    while (sys::write(wake.get(), &one, sizeof one) < 0 && errno == EINTR) {
    }
}

void PoolCore::Impl::update_pids() {
    std::lock_guard lock(pids_mutex);
    pids.clear();
    for (auto& w : workers)
        if (w->alive() && !w->condemned) pids.push_back(w->pid);
}

// Workers that count towards max_workers: alive, trusted, and not done with their quota of tasks.
std::size_t PoolCore::Impl::live_workers() const {
    return static_cast<std::size_t>(std::count_if(workers.begin(), workers.end(), [this](auto& w) {
        return w->alive() && !w->condemned && !dispatch.quota_reached(*w);
    }));
}

namespace {

PoolCore::Impl::Outcome outcome_of(const std::exception_ptr& error) {
    try {
        std::rethrow_exception(error);
    } catch (const TaskCancelled&) {
        return PoolCore::Impl::Outcome::cancelled;
    } catch (...) {
        return PoolCore::Impl::Outcome::failed;
    }
}

}  // namespace

// After the task's future was fulfilled by the thread that resolved it: its callbacks and watches, then the count.
// Callbacks run first, so that shutdown(true) and the destructor, which wait for the count, return after them.
void PoolCore::Impl::settle(TaskState& task, int status_before, Outcome outcome) {
    // The promise goes at once, not when the last holder of the task lets go of it: the result's memory is not
    // kept for a Task the user holds on to, and the future's shared state (and a task's exception in it) is
    // released by this thread before the waiting side can be long done with it (see scripts/sanitize-tsan).
    task.submission.complete = nullptr;
    task.submission.fail = nullptr;
    task.complete();
    task_finished(status_before, outcome);
}

void PoolCore::Impl::task_finished(int status_before, Outcome outcome) {
    std::lock_guard lock(mutex);
    --unfinished;
    if (status_before == TaskState::started) --counts.running;
    switch (outcome) {
    case Outcome::completed: ++counts.completed; break;
    case Outcome::failed: ++counts.failed; break;
    case Outcome::cancelled: ++counts.cancelled; break;
    }
    changed.notify_all();
    // A retiring dispatcher sleeps in poll() until this count reaches zero, which a task cancelled by another
    // thread brings about without any event of its own. Under the lock: the pool may be gone right after.
    if (retire && unfinished == 0) wake_up();
}

void PoolCore::Impl::fail_task(const std::shared_ptr<TaskState>& task, std::exception_ptr error) {
    const int before = task->claim_from();
    if (before == TaskState::resolved) return;
    const Outcome outcome = outcome_of(error);
    try {
        task->submission.fail(std::move(error));
    } catch (...) {
    }
    settle(*task, before, outcome);
}

// The task at the head of a worker's window is the one it runs (as far as the owner knows).
void PoolCore::Impl::start_head(Worker& w) {
    if (w.in_flight.empty()) return;
    // Under the lock with the count: a cancel() claiming it meanwhile takes the count back only after this.
    std::lock_guard lock(mutex);
    if (w.in_flight.front()->start()) ++counts.running;
}

// The pool can take on no more workers: tasks not started fail with `error` and submit() throws it, while those
// running finish on the workers there are.
void PoolCore::Impl::fail_queued_tasks(const std::exception_ptr& error) {
    std::deque<std::shared_ptr<TaskState>> queued;
    {
        std::lock_guard lock(mutex);
        if (!broken) broken = error;
        accepting = false;
        queued = queue.take_all();
    }
    for (auto& task : queued) fail_task(task, error);
}

// The pool cannot go on (its unit stopped, its fork server died, ...): every unfinished task fails with `error`,
// every worker is ended with `signo`, and submit() throws `error` from now on.
void PoolCore::Impl::break_pool(const std::exception_ptr& error, int signo) {
    fail_queued_tasks(error);
    for (auto& w : workers) {
        for (auto& task : w->in_flight) fail_task(task, error);
        w->in_flight.clear();
        w->condemned = true;
        w->eof = true;
        w->signal(signo);
    }
}

// The pool kills a worker it can no longer trust with tasks (it broke the protocol, ran over its time, or runs a
// cancelled task). With `error_for_head`, its running task fails with it; every other task it holds (sent ahead,
// never started, or innocent of what the worker did) goes back to the front of the queue.
void PoolCore::Impl::condemn(Worker& w, const std::exception_ptr& error_for_head) {
    if (w.condemned) return;
    w.condemned = true;
    w.eof = true;  // whatever else it sent cannot be trusted
    w.kill();
    if (error_for_head && !w.in_flight.empty()) {
        auto head = std::move(w.in_flight.front());
        w.in_flight.pop_front();
        fail_task(head, error_for_head);
    }
    requeue_window(w);  // a head already settled (cancelled) is dropped there
    update_pids();
}

// A lost worker's window goes back to the front of the queue (scheduler.hpp); a broken pool takes no task back:
// nothing would run it.
void PoolCore::Impl::requeue_window(Worker& w) {
    std::exception_ptr error;
    {
        std::lock_guard lock(mutex);
        error = broken;
        if (!error) counts.running -= queue.requeue(w);
    }
    if (error)
        for (auto& task : w.in_flight) fail_task(task, error);
    w.in_flight.clear();
}

void PoolCore::Impl::violation(Worker& w, const std::string& what, std::uint64_t offending_id) {
    auto error = std::make_exception_ptr(ProtocolError(
        "worker " + std::to_string(w.pid) + " broke the channel protocol (" + what +
        "): whatever ran in it wrote to the library's channel; the worker was killed and replaced"));
    // A second answer to the task it answered last is that task's doing: it is settled already, and the task now
    // at the head (which may never have started) is innocent.
    if (offending_id != 0 && offending_id == w.last_answered) {
        condemn(w, nullptr);
        return;
    }
    condemn(w, error);
}

std::unique_ptr<Worker> PoolCore::Impl::new_worker(pid_t pid, std::span<Fd, 3> passed, bool dropped) {
    if (!passed[0] || !passed[1] || (options.heartbeat_timeout && !passed[2])) {
        // The worker itself ends: its socket's other end is gone with the message.
        rlimit limit{};
        ::getrlimit(RLIMIT_NOFILE, &limit);
        throw Error("worker " + std::to_string(pid) + "'s socket, pidfd or heartbeat page did not reach the pool's owner" +
                    (dropped ? " (the kernel dropped them, as it does for a receiver at its descriptor limit: "
                               "Too many open files, RLIMIT_NOFILE " + std::to_string(limit.rlim_cur) + ")"
                             : ""));
    }
    auto w = std::make_unique<Worker>(limits.max_frame_bytes);
    if (exec) w->phase = Worker::Phase::entering;  // born in the unit: nothing to attach or release
    w->pid = pid;
    w->socket = std::move(passed[0]);
    w->pidfd = std::move(passed[1]);
    if (options.heartbeat_timeout) w->heartbeat = HeartbeatView(passed[2]);  // throws Error for what is no page
    return w;
}

void PoolCore::Impl::handle_server_events() {
    for (;;) {
        ForkServerEvent event{};
        Fd passed[3];
        bool dropped = false;
        ssize_t n = ::recv(server.control.get(), nullptr, 0, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        n = receive_with_fds(server.control.get(), &event, sizeof event, passed, &dropped);
        if (n <= 0) {
            server_alive = false;
            spawning = 0;
            for (auto& w : workers)
                if (w->alive()) w->exit_status = -SIGKILL, w->eof = true;
            // exec: the server is the unit's main process, and the unit stops with it (systemctl stop, or a task
            // that killed its own server: both end the unit).
            break_pool(exec ? std::make_exception_ptr(UnitStopped(options.unit_name))
                            : std::make_exception_ptr(Error("the pool's fork server ended; the pool cannot go on")));
            return;
        }
        if (event.kind == ForkServerEvent::spawned) {
            if (spawning > 0 && --spawning > 0) spawn_requested = Clock::now();
            std::unique_ptr<Worker> worker;
            try {
                worker = new_worker(event.pid, passed, dropped);
            } catch (const Error&) {
                fail_queued_tasks(std::current_exception());
                continue;
            }
            workers.push_back(std::move(worker));
            Worker& w = *workers.back();
            bool is_broken;
            {
                std::lock_guard lock(mutex);
                is_broken = broken != nullptr || (retire && queue.empty() && unfinished == 0);
            }
            if (is_broken) {
                w.condemned = true;
                w.kill();
            } else {
                ::fcntl(w.socket.get(), F_SETFL, O_NONBLOCK);
                w.phase_since = Clock::now();
                if (!exec) pool_bus->attach(w.pid);  // answered in take_bus_answers()
            }
        } else if (event.kind == ForkServerEvent::spawn_failed) {
            if (spawning > 0) --spawning;
            fail_queued_tasks(
                std::make_exception_ptr(SystemError("fork", event.value, "in the pool's fork server, of a worker")));
        } else if (event.kind == ForkServerEvent::stopped || event.kind == ForkServerEvent::continued) {
            for (auto& w : workers)
                if (w->pid == event.pid) worker_stopped(*w, event.kind == ForkServerEvent::stopped);
        } else if (event.kind == ForkServerEvent::exited) {
            for (auto& w : workers) {
                if (w->pid != event.pid) continue;
                w->exit_status = exit_status_from_wait_status(event.value);
                // Everything it wrote before it died is in the socket already.
                if (!w->eof) read_worker(*w);
                w->eof = true;
            }
        }
    }
}

// A stopped worker (SIGSTOP, SIGTSTP, ...) gets no more tasks: an idle one is ended and replaced; a busy one keeps
// only the task it runs, until it continues, its task_timeout, or kill_workers(); the tasks sent ahead to it go
// back to the queue (should it continue and answer them anyway, that is a reply for no task, and it goes).
void PoolCore::Impl::worker_stopped(Worker& w, bool stopped) {
    w.stopped = stopped;
    if (!stopped || w.condemned) return;
    if (w.in_flight.empty()) {
        condemn(w, nullptr);
        return;
    }
    auto head = std::move(w.in_flight.front());
    w.in_flight.pop_front();
    requeue_window(w);
    w.in_flight.push_back(std::move(head));
}

void PoolCore::Impl::take_bus_answers() {
    for (auto& answer : pool_bus->take_answers()) {
        auto it = std::find_if(workers.begin(), workers.end(), [&](auto& w) { return w->pid == answer.pid; });
        if (it == workers.end()) continue;
        Worker& w = **it;
        switch (answer.kind) {
        case PoolBus::Answer::Kind::attached:
            if (w.condemned || !w.alive()) break;
            w.writer.queue(0, release_message(main_pid));
            w.phase = Worker::Phase::entering;
            w.phase_since = Clock::now();
            flush_worker(w);
            break;
        case PoolBus::Answer::Kind::attach_failed:
            w.condemned = true;
            w.kill();
            if (answer.unit_gone || main_process_gone()) {
                break_pool(std::make_exception_ptr(UnitStopped(options.unit_name)));
            } else if (live_workers() == 0 || target_workers.load() <= 1) {
                break_pool(answer.error);  // nothing left to run tasks, and no way to add a worker
            } else {
                --target_workers;  // carry on with the workers there are rather than fail their tasks
            }
            break;
        case PoolBus::Answer::Kind::unit_state:
            w.unit_gone_verdict = answer.unit_gone;
            w.awaiting_verdict = false;
            if (w.entry_error)  // a replacement that could not start: nothing will
                break_pool(failed_entry_error(answer.unit_gone, options.unit_name, w.entry_error));
            break;
        }
    }
}

void PoolCore::Impl::read_worker(Worker& w) {
    for (int turn = 0; turn < kRecordsPerTurn && !w.eof; ++turn) {
        MessageReader::Got got;
        try {
            got = w.reader.read_record(w.socket.get(), true);
        } catch (const ProtocolError& e) {
            violation(w, e.what(), 0);
            return;
        } catch (const std::bad_alloc&) {
            violation(w, "a message the owner could not allocate memory for", 0);
            return;
        } catch (...) {
            got = MessageReader::Got::end;  // recvmsg failed: nothing more can be read from it
        }
        if (got == MessageReader::Got::nothing) return;
        if (got == MessageReader::Got::end) {
            w.eof = true;
            if (w.reader.mid_message()) {
                violation(w, "its channel ended in the middle of a message", 0);
            } else if (w.alive()) {
                w.kill();  // it closed its socket but lives on: it cannot be talked to
            }
            return;
        }
        if (got == MessageReader::Got::message) handle_message(w, w.reader.take());
    }
}

void PoolCore::Impl::handle_message(Worker& w, Message message) {
    if (w.phase == Worker::Phase::entering) {
        if (message.id != 0) return violation(w, "a reply before it entered the unit", message.id);
        try {
            decode_reply<void>(message.body.view(), limits);
            w.phase = Worker::Phase::ready;
            update_pids();
            std::lock_guard lock(mutex);
            ++counts.worker_restarts;  // the dispatcher only sees replacements enter
        } catch (...) {
            w.condemned = true;
            w.kill();
            // A replacement that cannot enter a unit being stopped (its main process gone) is the stop's doing, and
            // the anchor pipe cannot tell yet (systemd holds its own copy of the read end until the unit is inactive):
            // the manager says which, and the pool breaks with that.
            w.entry_error = std::current_exception();
            if (main_process_gone()) {
                break_pool(std::make_exception_ptr(UnitStopped(options.unit_name)));
            } else {
                w.awaiting_verdict = true;
                pool_bus->ask_unit_state(w.pid);
            }
        }
        return;
    }
    if (w.phase != Worker::Phase::ready) return violation(w, "a message before it was released", message.id);
    if (w.in_flight.empty())
        return violation(w, "a reply (id " + std::to_string(message.id) + ") with no task outstanding", message.id);
    if (message.id != w.in_flight.front()->id)
        return violation(w, "a reply for task id " + std::to_string(message.id) + " while task id " +
                                std::to_string(w.in_flight.front()->id) + " was running",
                         message.id);
    auto task = std::move(w.in_flight.front());
    w.in_flight.pop_front();
    w.head_since = Clock::now();
    w.last_answered = task->id;
    start_head(w);
    const int before = task->claim_from();
    if (before == TaskState::resolved) return;  // cancelled while it ran: the answer is no longer wanted
    Reply reply = Reply::value;
    std::string().swap(task->submission.arguments);
    try {
        reply = task->submission.complete(message.body.view());
    } catch (...) {
        reply = Reply::exception;  // only the promise itself can throw here: it was satisfied already
    }
    settle(*task, before, reply == Reply::value ? Outcome::completed : Outcome::failed);
    if (reply == Reply::malformed) {
        // The task's future holds the ProtocolError already: only its worker goes.
        condemn(w, nullptr);
    }
}

void PoolCore::Impl::flush_worker(Worker& w) {
    if (w.writer.flush(w.socket.get()) != MessageWriter::Sent::broken) return;
    // Nothing more can be sent to it: dropping what is queued keeps POLLOUT from waking the loop again and again
    // until its exit is reported (its tasks are still in in_flight and settle with that report).
    w.writer.clear();
    if (w.alive()) w.kill();  // its end is closed, or it was sent a record cut short: it is dying
}

void PoolCore::Impl::take_requests() {
    std::vector<std::shared_ptr<TaskState>> cancelled;
    std::optional<std::optional<milliseconds>> end_request;
    {
        std::lock_guard lock(mutex);
        cancelled.swap(cancelled_running);
        end_request = std::exchange(end_workers_request, std::nullopt);
    }
    for (auto& task : cancelled) {
        for (auto& w : workers) {
            if (w->condemned || w->in_flight.empty()) continue;
            // Only the running task costs its worker; one still waiting in the window is skipped when answered.
            if (w->in_flight.front() == task) condemn(*w, nullptr);
        }
    }
    if (end_request) {
        auto error = std::make_exception_ptr(
            TaskCancelled(std::string("the pool's workers were ended by ") +
                          (*end_request ? "terminate_workers()" : "kill_workers() or the destructor's shutdown_timeout")));
        std::exception_ptr broken_before;
        {
            std::lock_guard lock(mutex);
            accepting = false;
            retire = true;
            broken_before = broken;
        }
        break_pool(error, *end_request ? SIGTERM : SIGKILL);
        {
            std::lock_guard lock(mutex);
            broken = broken_before;  // shut down, not broken: submit() says so
        }
        if (*end_request) sigkill_at = Clock::now() + **end_request;
    }
}

// Hands queued tasks to the workers that take them (scheduler.hpp decides which goes where) and sends them.
void PoolCore::Impl::assign_tasks() {
    std::vector<TaskWindow*> ready;
    for (auto& w : workers)
        if (w->takes_tasks(dispatch)) ready.push_back(w.get());
    if (ready.empty()) return;
    TaskQueue::Round round;
    {
        // The running count grows under the lock that moved the tasks: a cancel() claiming one meanwhile takes
        // the count back only after this.
        std::lock_guard lock(mutex);
        round = queue.assign(ready);
        counts.running += round.started;
    }
    const auto now = Clock::now();
    for (auto& handout : round.handouts) {
        auto& w = static_cast<Worker&>(*handout.window);
        if (handout.runs_now) w.head_since = now;
        const TaskState& task = *handout.task;
        w.writer.queue(task.id, encode_task(task.invoker_code, task.function_code, task.submission.arguments));
    }
    if (round.spawns_needed) {
        try {
            request_spawn(round.spawns_needed);
        } catch (...) {
            break_pool(std::current_exception());
        }
    }
    for (TaskWindow* window : ready) {
        auto& w = static_cast<Worker&>(*window);
        if (!w.writer.empty()) flush_worker(w);
    }
}

// What is known of a dead worker's end, read now (the cgroup's OOM count and the main process may have changed since
// the last look).
WorkerDeath PoolCore::Impl::death_of(const Worker& w) const {
    return {w.pid, *w.exit_status, main_process_gone(), w.unit_gone_verdict, oom_kill_count(control_group)};
}
// A worker that died with a task: the task fails saying how (worker_death.hpp), unless the unit was stopped (then
// everything does).
void PoolCore::Impl::fail_dead_workers_task(Worker& w) {
    auto head = std::move(w.in_flight.front());
    w.in_flight.pop_front();
    const DeathVerdict verdict = classify_death(death_of(w), options.unit_name, oom_kills_seen);
    fail_task(head, verdict.error);
    if (verdict.unit_stopped) break_pool(verdict.error);
    requeue_window(w);
}

void PoolCore::Impl::finalize_dead_workers() {
    bool removed = false;
    for (auto it = workers.begin(); it != workers.end();) {
        Worker& w = **it;
        if (!(w.eof && w.exit_status) || (w.entry_error && w.awaiting_verdict)) {
            ++it;
            continue;
        }
        if (!w.in_flight.empty()) {
            // systemd's SIGTERM or SIGKILL, and the anchor still there: was the unit stopped, or this worker alone
            // killed? The manager says, on the bus thread; the worker waits here until it has.
            if (needs_unit_verdict(death_of(w), oom_kills_seen)) {
                if (!w.awaiting_verdict) {
                    w.awaiting_verdict = true;
                    pool_bus->ask_unit_state(w.pid);
                }
                ++it;
                continue;
            }
            fail_dead_workers_task(w);
        }
        it = workers.erase(it);
        removed = true;
    }
    if (!removed) return;
    update_pids();
    replace_workers();
}

// A worker lost (dead, or killed by the pool): more may be forked (scheduler.hpp says how many).
void PoolCore::Impl::replace_workers() {
    Workforce workforce{.target = target_workers.load(), .live = live_workers(), .spawning = spawning,
                        .server_alive = server_alive};
    {
        std::lock_guard lock(mutex);
        workforce.broken = broken != nullptr;
        workforce.retiring = retire;
        workforce.work_left = !queue.empty() || unfinished > 0;
    }
    if (const std::size_t n = replacements_to_spawn(workforce)) {
        try {
            request_spawn(n);
        } catch (...) {
            break_pool(std::current_exception());
        }
    }
}

void PoolCore::Impl::enforce_deadlines() {
    const auto now = Clock::now();
    for (auto& w : workers) {
        if (w->condemned || !w->alive()) continue;
        if (w->phase == Worker::Phase::entering && now - w->phase_since > kEntryTimeout) {
            w->condemned = true;
            w->kill();
            break_pool(std::make_exception_ptr(
                SetupError("enter the unit", 0, "replacement worker " + std::to_string(w->pid) +
                                                    " did not report within " + std::to_string(kEntryTimeout.count()) + " ms")));
            return;
        }
        if (options.heartbeat_timeout && !w->in_flight.empty() && now >= heartbeat_deadline(*w) && stalled(*w, now)) {
            condemn(*w, std::make_exception_ptr(TaskStalled(
                            "the task went longer than the pool's heartbeat_timeout of " +
                            std::to_string(options.heartbeat_timeout->count()) +
                            " ms without calling sdfutures::this_task::heartbeat() (pool unit " + options.unit_name +
                            "); its worker was killed and replaced")));
            continue;
        }
        if (options.task_timeout && !w->in_flight.empty() && now >= w->head_since + *options.task_timeout) {
            // Its answer may be waiting in the socket already: take it before blaming the task.
            if (!w->eof) read_worker(*w);
            if (w->condemned || w->in_flight.empty() || now < w->head_since + *options.task_timeout) continue;
            condemn(*w, std::make_exception_ptr(TaskTimeout(
                            "the task ran longer than the pool's task_timeout of " +
                            std::to_string(options.task_timeout->count()) + " ms; its worker was killed and replaced")));
        }
    }
    for (auto& w : workers) {
        // A worker done with its quota (or told to finish) exits once its last task is answered; one that lingers
        // (a thread of its task holding it up) is ended after a grace period, so it cannot hold a slot forever.
        const bool done = dispatch.quota_reached(*w) || w->write_closed;
        if (!done || !w->in_flight.empty() || w->condemned || !w->alive()) {
            w->idle_done_since.reset();
            continue;
        }
        if (!w->idle_done_since) w->idle_done_since = now;
        else if (now - *w->idle_done_since > kLingerTimeout) condemn(*w, nullptr);
    }
    if (spawning > 0 && server_alive && now - spawn_requested > kSpawnTimeout) {
        spawning = 0;
        break_pool(std::make_exception_ptr(Error("the pool's fork server (pid " + std::to_string(server.pid) +
                                                 ") forked no worker within " + std::to_string(kSpawnTimeout.count()) +
                                                 " ms; the pool cannot go on")));
    }
    if (sigkill_at && now >= *sigkill_at) {
        for (auto& w : workers)
            if (w->alive()) w->kill();
        sigkill_at.reset();
    }
}

// When the running task stalls unless the worker beats before: heartbeat_timeout after its start or the latest
// heartbeat the dispatcher saw, whichever is later.
Clock::time_point PoolCore::Impl::heartbeat_deadline(const Worker& w) const {
    return std::max(w.head_since, w.last_beat_seen) + *options.heartbeat_timeout;
}

// At the heartbeat deadline: looks at the worker's page once (nothing is read between deadlines, so heartbeat()
// costs the owner nothing) and moves the deadline to the latest beat; true when the task has stalled even so.
//
// The worker may have written anything on its page. A stamp later than the owner's clock is taken as a heartbeat
// now: a worker scribbling such values keeps its own task alive only by going on scribbling, as a task calling
// heartbeat() would, and task_timeout (if set) still ends it. Any other garbage (0, negative, in the past) is
// older than the task's start and changes nothing: the task stalls. Nothing else is derived from the value, and
// each worker's page is read only for that worker, so no value can touch another task.
bool PoolCore::Impl::stalled(Worker& w, Clock::time_point now) {
    const std::int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
    const std::int64_t beat_ns = std::min(w.heartbeat.last_beat_ns(), now_ns);
    const auto beat = Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::nanoseconds(beat_ns)));
    w.last_beat_seen = std::max(w.last_beat_seen, beat);
    if (now < heartbeat_deadline(w)) return false;
    // Its answer may be waiting in the socket already: take it before blaming the task.
    if (!w.eof) read_worker(w);
    return !w.condemned && !w.in_flight.empty() && now >= heartbeat_deadline(w);
}

// fork, forkserver: cat, the anchor pipe's reader, ended; exec: the fork server itself, the unit's main process.
// Either way systemd stops the unit with it.
bool PoolCore::Impl::main_process_gone() const {
    if (!exec) return pipe_reader_gone(anchor.get());
    return sys::poll_now(server.pidfd.get(), POLLIN) & POLLIN;
}

bool PoolCore::Impl::retired() {
    {
        std::lock_guard lock(mutex);
        if (!(retire && queue.empty() && unfinished == 0)) return false;
    }
    // Closing our sending side lets each worker finish and exit on end of file.
    for (auto& w : workers)
        if (!w->write_closed && w->writer.empty()) {
            ::shutdown(w->socket.get(), SHUT_WR);
            w->write_closed = true;
        }
    return (workers.empty() && spawning == 0) || !server_alive;
}

void PoolCore::Impl::poll_events(std::vector<pollfd>& fds, std::vector<Worker*>& polled) {
    fds.clear();
    polled.clear();
    fds.push_back({wake.get(), POLLIN, 0});
    fds.push_back({server.control.get(), POLLIN, 0});
    // POLLERR once the unit's main process is gone (the anchor pipe's reader, or the exec'd server's pidfd).
    if (exec) fds.push_back({server.pidfd.get(), POLLIN, 0});
    else fds.push_back({anchor.get(), 0, 0});
    constexpr std::size_t kFixed = 3;
    for (auto& w : workers) {
        if (w->eof) continue;
        short events = POLLIN;
        if (!w->writer.empty()) events |= POLLOUT;
        fds.push_back({w->socket.get(), events, 0});
        polled.push_back(w.get());
    }
    // Sleep until the nearest deadline: a task's timeout, a worker's entry, the fork server's answer, SIGKILL.
    std::optional<Clock::time_point> next;
    auto consider = [&](Clock::time_point t) { next = next ? std::min(*next, t) : t; };
    for (auto& w : workers) {
        if (w->condemned || !w->alive()) continue;
        if (w->phase == Worker::Phase::entering) consider(w->phase_since + kEntryTimeout);
        if (options.task_timeout && !w->in_flight.empty()) consider(w->head_since + *options.task_timeout);
        if (options.heartbeat_timeout && !w->in_flight.empty()) consider(heartbeat_deadline(*w));
        if (w->idle_done_since) consider(*w->idle_done_since + kLingerTimeout);
    }
    if (spawning > 0) consider(spawn_requested + kSpawnTimeout);
    if (sigkill_at) consider(*sigkill_at);
    int timeout_ms = -1;
    if (next)
        timeout_ms = static_cast<int>(std::max<long long>(0, std::chrono::ceil<milliseconds>(*next - Clock::now()).count()));
    if (sys::poll(fds.data(), fds.size(), timeout_ms) < 0) {
        for (auto& p : fds) p.revents = 0;
        return;
    }
    if (fds[0].revents & POLLIN) {
        uint64_t count;
        [[maybe_unused]] ssize_t n = sys::read(wake.get(), &count, sizeof count);
    }
    for (std::size_t i = 0; i < polled.size(); ++i) {
        Worker& w = *polled[i];
        short revents = fds[kFixed + i].revents;
        if (revents & (POLLIN | POLLHUP | POLLERR)) read_worker(w);
        if ((revents & POLLOUT) && !w.eof) flush_worker(w);
    }
    if (fds[1].revents) handle_server_events();
    if (fds[2].revents & (POLLERR | POLLIN)) {
        bool already;
        {
            std::lock_guard lock(mutex);
            already = broken != nullptr;
        }
        if (!already) break_pool(std::make_exception_ptr(UnitStopped(options.unit_name)));
    }
}

void PoolCore::Impl::run_dispatcher() {
    ::fcntl(server.control.get(), F_SETFL, O_NONBLOCK);
    std::vector<pollfd> fds;
    std::vector<Worker*> polled;
    for (;;) {
        try {
            take_requests();
            take_bus_answers();
            // A verdict just taken may be all a dead worker's task waited for; no event would follow it, so the
            // task must settle now, not after the next poll (which could sleep until an unrelated deadline).
            finalize_dead_workers();
            // Before the retiring check: dropping cancelled tasks from the queue may be what it waits for, and no
            // event would follow to bring the loop back to it.
            assign_tasks();
            if (retired()) break;
            poll_events(fds, polled);
            enforce_deadlines();
            finalize_dead_workers();
        } catch (...) {
            // Nothing a worker sends gets here (read_worker contains it); memory running out in the owner might.
            // The pool cannot be trusted to go on, but it must not take the owner down with it.
            break_pool(std::current_exception());
        }
    }
    std::lock_guard lock(mutex);
    dispatcher_done = true;
    changed.notify_all();
}

PoolCore::PoolCore(Properties properties, PoolOptions options)
    : impl_(std::make_unique<Impl>(std::move(properties), std::move(options))) {}

PoolCore::~PoolCore() = default;

std::shared_ptr<TaskState> PoolCore::submit(Submission submission) {
    std::vector<Submission> one;
    one.push_back(std::move(submission));
    return submit_many(std::move(one)).front();
}

std::vector<std::shared_ptr<TaskState>> PoolCore::submit_many(std::vector<Submission> submissions) {
    std::vector<std::shared_ptr<TaskState>> tasks;
    tasks.reserve(submissions.size());
    for (auto& s : submissions) {
        auto task = std::make_shared<TaskState>();
        task->invoker_code = reinterpret_cast<std::uintptr_t>(s.invoker);
        task->function_code = s.function;
        if (impl_->exec) {  // refused here, before anything is queued, when it is not code of the executable
            task->invoker_code = image_offset(task->invoker_code, "task's code (its invoker)");
            if (task->function_code) task->function_code = image_offset(task->function_code, "task function");
        }
        task->submission = std::move(s);
        task->pool = impl_.get();
        tasks.push_back(std::move(task));
    }
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->broken) std::rethrow_exception(impl_->broken);
        if (!impl_->accepting) throw StateError("submit() after shutdown() of pool " + impl_->options.unit_name);
        for (auto& task : tasks) {
            // A keyed mix of a counter: distinct for every task, and not to be guessed from another task's id.
            std::uint64_t z = ++impl_->next_id + impl_->id_key;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
            task->id = (z ^ (z >> 31)) | 1;  // never 0, the bootstrap id
        }
        impl_->queue.append(tasks);
        impl_->unfinished += tasks.size();
    }
    impl_->wake_up();
    return tasks;
}

bool PoolCore::cancel(const std::shared_ptr<TaskState>& task) {
    if (!task) return false;
    const int before = task->claim_from();
    if (before == TaskState::resolved) return false;
    const char* why = before == TaskState::queued ? "the task was cancelled before it started"
                                                  : "the task was cancelled; if it had started, its worker was killed";
    try {
        task->submission.fail(std::make_exception_ptr(TaskCancelled(why)));
    } catch (...) {
    }
    Impl& pool = *task->pool;  // the pool outlives every unfinished task
    if (before == TaskState::sent || before == TaskState::started) {
        {
            std::lock_guard lock(pool.mutex);
            pool.cancelled_running.push_back(task);
        }
        pool.wake_up();
    }
    pool.settle(*task, before, Impl::Outcome::cancelled);
    return true;
}

void PoolCore::shutdown(bool wait, bool cancel_pending) {
    std::vector<std::shared_ptr<TaskState>> pending;
    {
        std::lock_guard lock(impl_->mutex);
        impl_->accepting = false;
        if (cancel_pending) pending = impl_->queue.snapshot();
    }
    // Only tasks still queued: one the dispatcher sends meanwhile runs to its end, as a started task does.
    for (auto& task : pending) {
        if (!task->claim_if_queued()) continue;
        try {
            task->submission.fail(std::make_exception_ptr(TaskCancelled("the task was cancelled before it started")));
        } catch (...) {
        }
        impl_->settle(*task, TaskState::queued, Impl::Outcome::cancelled);
    }
    if (!wait) return;
    {
        std::lock_guard lock(impl_->mutex);
        impl_->retire = true;
    }
    impl_->wake_up();
    std::unique_lock lock(impl_->mutex);
    impl_->changed.wait(lock, [&] { return impl_->dispatcher_done; });
}

void PoolCore::end_workers(std::optional<std::chrono::milliseconds> grace) {
    {
        std::lock_guard lock(impl_->mutex);
        impl_->accepting = false;
        impl_->retire = true;
        impl_->end_workers_request.emplace(grace);
    }
    impl_->wake_up();
    std::unique_lock lock(impl_->mutex);
    impl_->changed.wait(lock, [&] { return impl_->dispatcher_done; });
}

const Unit& PoolCore::unit() const { return *impl_->unit; }

PoolStats PoolCore::stats() const {
    std::lock_guard lock(impl_->mutex);
    PoolStats stats = impl_->counts;
    stats.queued = impl_->unfinished - stats.running;
    return stats;
}

bool cancel_task(const std::shared_ptr<TaskState>& task) { return PoolCore::cancel(task); }

std::vector<pid_t> PoolCore::worker_pids() const {
    std::lock_guard lock(impl_->pids_mutex);
    return impl_->pids;
}

std::size_t PoolCore::max_workers() const noexcept { return impl_->target_workers.load(); }

const WireLimits& PoolCore::limits() const noexcept { return impl_->limits; }

}  // namespace detail
}  // namespace sdfutures
