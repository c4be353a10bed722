#include "sdfutures/pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <span>
#include <thread>

#include "anchored_unit.hpp"
#include "fd_util.hpp"
#include "fork_server.hpp"
#include "sdfutures/manager.hpp"

namespace sdfutures {
namespace detail {

using Clock = std::chrono::steady_clock;

struct TaskState {
    enum Status : int { queued, running, done, cancelled };
    std::atomic<int> status{queued};
    PoolCore::Submission submission;
    PoolCore::Impl* pool = nullptr;
};

namespace {

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

bool pipe_reader_gone(int write_fd) {
    pollfd p{write_fd, 0, 0};
    return ::poll(&p, 1, 0) == 1 && (p.revents & POLLERR);
}

}  // namespace

struct Worker {
    pid_t pid = -1;
    Fd socket;
    Fd pidfd;
    enum class Phase { starting, ready } phase = Phase::starting;
    FrameReader reader;
    std::string outbox;
    std::size_t sent = 0;
    std::deque<std::shared_ptr<TaskState>> in_flight;
    std::size_t assigned = 0;
    Clock::time_point head_since;
    bool eof = false;
    bool write_closed = false;
    std::optional<int> exit_status;
    bool timed_out = false;

    explicit Worker(const WireLimits& limits) : reader(limits) {}
    void kill() const {
        if (pidfd) ::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
    }
};

struct PoolCore::Impl {
    Properties properties;
    PoolOptions options;
    WireLimits limits;
    std::size_t target_workers = 1;
    std::optional<Bus> bus;
    std::optional<Unit> unit;
    std::string control_group;
    uint32_t main_pid = 0;
    uint64_t oom_kills_seen = 0;
    Fd anchor;   // write end of the unit main process's stdin: the owner's lifeline
    Fd control;  // the fork server's control socket
    pid_t server_pid = -1;
    Fd wake;     // eventfd: new tasks, shutdown

    std::mutex mutex;
    std::condition_variable changed;
    std::deque<std::shared_ptr<TaskState>> queue;
    std::size_t unfinished = 0;
    bool accepting = true;
    bool retire = false;
    bool dispatcher_done = false;
    std::exception_ptr broken;

    std::thread dispatcher;
    std::vector<std::unique_ptr<Worker>> workers;  // the dispatcher's, once it runs
    std::size_t spawning = 0;
    bool server_alive = true;
    mutable std::mutex pids_mutex;
    std::vector<pid_t> pids;

    Impl(Properties p, PoolOptions o);
    ~Impl();

    // construction
    void spawn_initial_workers();
    void wait_until_ready(Worker& w);
    void teardown() noexcept;

    // dispatcher thread
    void run_dispatcher();
    void assign_tasks();
    void read_worker(Worker& w);
    void flush_worker(Worker& w);
    void handle_server_events();
    // A worker from a `spawned` event and the descriptors that came with it; throws Error when they did not.
    std::unique_ptr<Worker> new_worker(pid_t pid, std::span<Fd, 2> passed, bool dropped);
    void handle_spawned(std::unique_ptr<Worker> worker);
    void finalize_dead_workers();
    void break_pool(const std::exception_ptr& error);
    bool unit_stopped();
    void update_pids();
    void request_spawn(std::size_t n);
    void wake_up();

    // tasks
    void task_finished();
    void fail_task(const std::shared_ptr<TaskState>& task, std::exception_ptr error);
};

PoolCore::Impl::Impl(Properties p, PoolOptions o)
    : properties(std::move(p)), options(std::move(o)), limits{options.max_result_bytes, WireLimits{}.max_depth} {
    check_properties_reach_forked_children(properties);
    target_workers = options.max_workers ? options.max_workers : default_worker_count(properties);
    if (options.unit_name.empty()) options.unit_name = default_unit_name("pool");
    bus = options.bus ? *options.bus : Bus::automatic();
    unit.emplace(*bus, options.unit_name);
    require_support(*bus, properties);

    int anchor_pipe[2];
    if (::pipe2(anchor_pipe, O_CLOEXEC) != 0) throw Error("cannot create the unit's anchor pipe: " + errno_text(errno));
    anchor = Fd(anchor_pipe[1]);
    Fd anchor_read(anchor_pipe[0]);
    wake = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake) throw Error("cannot create the dispatcher's wake-up eventfd: " + errno_text(errno));

    Manager manager(*bus);
    PendingJob job = manager.start_transient_unit_async(
        options.unit_name, properties,
        anchored_service_properties(properties, anchor_read.get(), "sdfutures pool of pid " + std::to_string(getpid())));
    anchor_read.reset();  // systemd holds its own copy
    try {
        // The workers are forked while systemd starts the unit: the two overlap.
        WorkerConfig config{limits, options.max_tasks_per_child, options.keep_stdio, options.initializer};
        server_pid = start_fork_server(config, control);
        request_spawn(target_workers);
        spawn_initial_workers();
        job.wait();
        main_pid = verified_main_pid(*unit);
        control_group = unit->control_group();
        oom_kills_seen = oom_kill_count(control_group);
        std::vector<uint32_t> to_attach;
        for (auto& w : workers) to_attach.push_back(static_cast<uint32_t>(w->pid));
        manager.attach_processes_to_unit(options.unit_name, "/", to_attach);  // one call for all of them
        for (auto& w : workers) {
            pid_t release = static_cast<pid_t>(main_pid);
            if (!write_all(w->socket.get(), &release, sizeof release))
                throw Error("cannot release worker " + std::to_string(w->pid) + ": " + errno_text(errno));
        }
        for (auto& w : workers) wait_until_ready(*w);
    } catch (...) {
        teardown();
        throw;
    }
    update_pids();
    dispatcher = std::thread([this] { run_dispatcher(); });
}

void PoolCore::Impl::request_spawn(std::size_t n) {
    if (n == 0) return;
    ForkServerRequest request{static_cast<uint32_t>(n)};
    if (!send_with_fds(control.get(), &request, sizeof request))
        throw Error("the pool's fork server does not answer: " + errno_text(errno));
    spawning += n;
}

void PoolCore::Impl::spawn_initial_workers() {
    while (spawning > 0) {
        ForkServerEvent event{};
        Fd passed[2];
        bool dropped = false;
        ssize_t n = receive_with_fds(control.get(), &event, sizeof event, passed, &dropped);
        if (n <= 0) throw Error("the pool's fork server ended while forking workers");
        if (event.kind == ForkServerEvent::spawned) {
            --spawning;
            workers.push_back(new_worker(event.pid, passed, dropped));
        } else if (event.kind == ForkServerEvent::spawn_failed) {
            throw Error("the pool's fork server could not fork a worker: " + errno_text(event.value));
        }
    }
}

void PoolCore::Impl::wait_until_ready(Worker& w) {
    for (;;) {
        if (auto frame = w.reader.next()) {
            decode_reply<void>(*frame, limits);  // SetupError for the step that failed
            w.phase = Worker::Phase::ready;
            ::fcntl(w.socket.get(), F_SETFL, O_NONBLOCK);
            return;
        }
        auto area = w.reader.write_area(64u << 10);
        ssize_t n = ::read(w.socket.get(), area.data(), area.size());
        w.reader.commit(n > 0 ? static_cast<size_t>(n) : 0);
        if (n == 0) throw SetupError("enter the unit", 0, "worker " + std::to_string(w.pid) + " ended before it entered the unit");
        if (n < 0 && errno != EINTR) throw Error("reading from worker: " + errno_text(errno));
    }
}

void PoolCore::Impl::teardown() noexcept {
    // Closing the control socket ends the fork server, which kills and reaps its workers.
    control.reset();
    if (server_pid > 0) {
        while (::waitpid(server_pid, nullptr, 0) < 0 && errno == EINTR) {
        }
        server_pid = -1;
    }
    workers.clear();
    anchor.reset();
    if (bus) stop_and_wait_gone(*bus, options.unit_name);
}

PoolCore::Impl::~Impl() {
    try {
        {
            std::unique_lock lock(mutex);
            accepting = false;
            retire = true;
        }
        wake_up();
        if (dispatcher.joinable()) dispatcher.join();
    } catch (...) {
    }
    teardown();
}

void PoolCore::Impl::wake_up() {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake.get(), &one, sizeof one);
}

void PoolCore::Impl::update_pids() {
    std::lock_guard lock(pids_mutex);
    pids.clear();
    for (auto& w : workers)
        if (!w->exit_status) pids.push_back(w->pid);
}

void PoolCore::Impl::task_finished() {
    std::lock_guard lock(mutex);
    --unfinished;
    changed.notify_all();
    // A retiring dispatcher sleeps in poll() until this count reaches zero, which a task cancelled by another
    // thread brings about without any event of its own. Under the lock: the pool may be gone right after.
    if (retire && unfinished == 0) wake_up();
}

void PoolCore::Impl::fail_task(const std::shared_ptr<TaskState>& task, std::exception_ptr error) {
    task->status = TaskState::done;
    try {
        task->submission.fail(std::move(error));
    } catch (...) {
    }
    task_finished();
}

bool PoolCore::Impl::unit_stopped() {
    if (pipe_reader_gone(anchor.get())) return true;
    try {
        auto state = unit->active_state();
        return state != "active" && state != "reloading";
    } catch (const SystemdError&) {
        return true;  // NoSuchUnit: already gone
    } catch (...) {
        return false;
    }
}

void PoolCore::Impl::break_pool(const std::exception_ptr& error) {
    std::deque<std::shared_ptr<TaskState>> queued;
    {
        std::lock_guard lock(mutex);
        if (!broken) broken = error;
        accepting = false;
        queued.swap(queue);
    }
    for (auto& task : queued) {
        int expected = TaskState::queued;
        if (task->status.compare_exchange_strong(expected, TaskState::running)) fail_task(task, error);
    }
    for (auto& w : workers) {
        for (auto& task : w->in_flight) fail_task(task, error);
        w->in_flight.clear();
        w->kill();
    }
}

std::unique_ptr<Worker> PoolCore::Impl::new_worker(pid_t pid, std::span<Fd, 2> passed, bool dropped) {
    if (!passed[0] || !passed[1]) {
        // The worker itself ends: its socket's other end is gone with the message.
        rlimit limit{};
        ::getrlimit(RLIMIT_NOFILE, &limit);
        throw Error("worker " + std::to_string(pid) + "'s socket and pidfd did not reach the pool's owner" +
                    (dropped ? " (the kernel dropped them, as it does for a receiver at its descriptor limit: "
                               "Too many open files, RLIMIT_NOFILE " + std::to_string(limit.rlim_cur) + ")"
                             : ""));
    }
    auto w = std::make_unique<Worker>(limits);
    w->pid = pid;
    w->socket = std::move(passed[0]);
    w->pidfd = std::move(passed[1]);
    return w;
}

void PoolCore::Impl::handle_spawned(std::unique_ptr<Worker> worker) {
    const pid_t pid = worker->pid;
    workers.push_back(std::move(worker));
    Worker& ref = *workers.back();
    bool is_broken;
    {
        std::lock_guard lock(mutex);
        is_broken = broken != nullptr || retire;
    }
    if (is_broken) {
        ref.kill();
        return;
    }
    try {
        Manager(*bus).attach_processes_to_unit(options.unit_name, "/", {static_cast<uint32_t>(pid)});
        pid_t release = static_cast<pid_t>(main_pid);
        write_all(ref.socket.get(), &release, sizeof release);
        ::fcntl(ref.socket.get(), F_SETFL, O_NONBLOCK);
    } catch (...) {
        ref.kill();
        if (unit_stopped()) break_pool(std::make_exception_ptr(UnitStopped(options.unit_name)));
        else break_pool(std::current_exception());
    }
    update_pids();
}

void PoolCore::Impl::handle_server_events() {
    for (;;) {
        ForkServerEvent event{};
        Fd passed[2];
        bool dropped = false;
        ssize_t n = ::recv(control.get(), nullptr, 0, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        n = receive_with_fds(control.get(), &event, sizeof event, passed, &dropped);
        if (n <= 0) {
            server_alive = false;
            spawning = 0;
            for (auto& w : workers)
                if (!w->exit_status) w->exit_status = -SIGKILL, w->eof = true;
            break_pool(std::make_exception_ptr(Error("the pool's fork server ended; the pool cannot go on")));
            return;
        }
        if (event.kind == ForkServerEvent::spawned) {
            --spawning;
            std::unique_ptr<Worker> worker;
            try {
                worker = new_worker(event.pid, passed, dropped);
            } catch (const Error&) {
                break_pool(std::current_exception());
                continue;
            }
            handle_spawned(std::move(worker));
        } else if (event.kind == ForkServerEvent::spawn_failed) {
            --spawning;
            break_pool(std::make_exception_ptr(Error("the pool's fork server could not fork a worker: " + errno_text(event.value))));
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

void PoolCore::Impl::read_worker(Worker& w) {
    for (;;) {
        auto area = w.reader.write_area(1u << 20);
        ssize_t n = ::read(w.socket.get(), area.data(), area.size());
        if (n > 0) {
            w.reader.commit(static_cast<size_t>(n));
        } else {
            w.reader.commit(0);
            if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                w.eof = true;
                if (!w.exit_status) w.kill();  // it closed its socket but lives on: it cannot be talked to
            }
            if (n < 0 && errno == EINTR) continue;
            break;
        }
    }
    for (;;) {
        std::optional<std::string> frame;
        try {
            frame = w.reader.next();
        } catch (const ProtocolError&) {
            w.kill();  // garbage from a worker: it cannot be trusted with further tasks
            w.eof = true;
            break;
        }
        if (!frame) break;
        if (w.phase == Worker::Phase::starting) {
            try {
                decode_reply<void>(*frame, limits);
                w.phase = Worker::Phase::ready;
            } catch (...) {
                w.kill();
                break_pool(std::current_exception());  // a replacement that cannot start: nothing will
            }
            continue;
        }
        if (w.in_flight.empty()) {  // a reply to nothing: the worker is confused or hostile
            w.kill();
            break;
        }
        auto task = std::move(w.in_flight.front());
        w.in_flight.pop_front();
        w.head_since = Clock::now();
        task->status = TaskState::done;
        std::string().swap(task->submission.arguments);
        try {
            task->submission.complete(*frame);
        } catch (...) {
        }
        task_finished();
    }
}

void PoolCore::Impl::flush_worker(Worker& w) {
    while (w.sent < w.outbox.size()) {
        ssize_t n = ::send(w.socket.get(), w.outbox.data() + w.sent, w.outbox.size() - w.sent, MSG_NOSIGNAL);
        if (n > 0) {
            w.sent += static_cast<size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        w.kill();  // its end is closed: it is dying; the exit report finishes it
        return;
    }
    w.outbox.clear();
    w.sent = 0;
}

void PoolCore::Impl::assign_tasks() {
    std::vector<Worker*> ready;
    for (auto& w : workers)
        if (w->phase == Worker::Phase::ready && !w->eof && !w->exit_status &&
            !(options.max_tasks_per_child && w->assigned >= options.max_tasks_per_child))
            ready.push_back(w.get());
    if (ready.empty()) return;
    std::unique_lock lock(mutex);
    if (queue.empty()) return;
    // Tasks go round-robin, idle workers first. Only when there are more tasks than workers does a worker get
    // several at once (up to kMaxWindow), so it finds its next task waiting and batches its replies. A task
    // handed to a worker can no longer be cancelled, which is why the window is small.
    constexpr std::size_t kMaxWindow = 8;
    std::size_t window = std::clamp<std::size_t>((queue.size() + ready.size() - 1) / ready.size(), 1, kMaxWindow);
    std::size_t spawn_needed = 0;
    for (std::size_t depth = 1; depth <= window && !queue.empty(); ++depth) {
        for (Worker* w : ready) {
            if (queue.empty()) break;
            if (w->in_flight.size() >= depth) continue;
            if (options.max_tasks_per_child && w->assigned >= options.max_tasks_per_child) continue;
            std::shared_ptr<TaskState> task;
            while (!queue.empty() && !task) {
                task = std::move(queue.front());
                queue.pop_front();
                int expected = TaskState::queued;
                if (!task->status.compare_exchange_strong(expected, TaskState::running)) task.reset();  // cancelled
            }
            if (!task) break;
            if (w->in_flight.empty()) w->head_since = Clock::now();
            auto payload = encode_task(reinterpret_cast<std::uintptr_t>(task->submission.invoker),
                                       task->submission.function, task->submission.arguments);
            auto header = frame_header(payload.size());
            w->outbox.append(header.data(), header.size());
            w->outbox.append(payload);
            w->in_flight.push_back(std::move(task));
            ++w->assigned;
            // Its replacement starts while it finishes its last task.
            if (options.max_tasks_per_child && w->assigned == options.max_tasks_per_child) ++spawn_needed;
        }
    }
    lock.unlock();
    if (spawn_needed) request_spawn(spawn_needed);
    for (auto& w : workers)
        if (!w->outbox.empty()) flush_worker(*w);
}

void PoolCore::Impl::finalize_dead_workers() {
    bool removed = false;
    for (auto it = workers.begin(); it != workers.end();) {
        Worker& w = **it;
        if (!(w.eof && w.exit_status)) {
            ++it;
            continue;
        }
        // Each OOM kill the cgroup records explains one SIGKILLed worker, busy or idle. A worker that died of
        // something else must not use it up: the victim's own exit may be handled after it.
        bool oom_killed = false;
        if (*w.exit_status == -SIGKILL && !w.timed_out && oom_kill_count(control_group) > oom_kills_seen) {
            ++oom_kills_seen;
            oom_killed = true;
        }
        if (!w.in_flight.empty()) {
            auto head = std::move(w.in_flight.front());
            w.in_flight.pop_front();
            std::exception_ptr error;
            bool stopped = false;
            if (w.timed_out) {
                error = std::make_exception_ptr(TaskTimeout(
                    "the task ran longer than the pool's task_timeout of " +
                    std::to_string(options.task_timeout->count()) + " ms; its worker was killed and replaced"));
            } else if (unit_stopped()) {
                error = std::make_exception_ptr(UnitStopped(options.unit_name));
                stopped = true;
            } else {
                std::string how = "the worker (pid " + std::to_string(w.pid) + ") running the task " + describe_exit(*w.exit_status);
                if (oom_killed) how += " by the kernel's OOM killer (the unit's MemoryMax= was reached)";
                error = std::make_exception_ptr(ProcessDied(how, *w.exit_status));
            }
            fail_task(head, error);
            if (stopped) break_pool(error);
            // The others were sent but never started: they go back to the front of the queue.
            std::lock_guard lock(mutex);
            for (auto rit = w.in_flight.rbegin(); rit != w.in_flight.rend(); ++rit) {
                (*rit)->status = TaskState::queued;
                queue.push_front(std::move(*rit));
            }
            w.in_flight.clear();
        }
        it = workers.erase(it);
        removed = true;
    }
    if (!removed) return;
    update_pids();
    bool replace;
    {
        std::lock_guard lock(mutex);
        replace = !broken && !retire && server_alive;
    }
    std::size_t live = workers.size() + spawning;
    if (replace && live < target_workers) {
        try {
            request_spawn(target_workers - live);
        } catch (...) {
            break_pool(std::current_exception());
        }
    }
}

void PoolCore::Impl::run_dispatcher() {
    ::fcntl(control.get(), F_SETFL, O_NONBLOCK);
    std::vector<pollfd> fds;
    for (;;) {
        // Before the retiring check: dropping cancelled tasks from the queue may be what it waits for, and no
        // event would follow to bring the loop back to it.
        assign_tasks();
        bool retiring;
        {
            std::lock_guard lock(mutex);
            retiring = retire && queue.empty() && unfinished == 0;
        }
        if (retiring) {
            // Closing our sending side lets each worker finish and exit on end of file.
            for (auto& w : workers)
                if (!w->write_closed && w->outbox.empty()) {
                    ::shutdown(w->socket.get(), SHUT_WR);
                    w->write_closed = true;
                }
            if (workers.empty() && spawning == 0) break;
            if (!server_alive) break;
        }

        fds.clear();
        fds.push_back({wake.get(), POLLIN, 0});
        fds.push_back({control.get(), POLLIN, 0});
        fds.push_back({anchor.get(), 0, 0});  // POLLERR once the unit's main process is gone
        for (auto& w : workers) {
            short events = w->eof ? 0 : POLLIN;
            if (!w->outbox.empty()) events |= POLLOUT;
            fds.push_back({w->eof ? -1 : w->socket.get(), events, 0});
        }
        int timeout_ms = -1;
        if (options.task_timeout) {
            auto now = Clock::now();
            for (auto& w : workers) {
                if (w->in_flight.empty() || w->timed_out || w->exit_status) continue;
                auto deadline = w->head_since + *options.task_timeout;
                if (now >= deadline) {
                    w->timed_out = true;
                    w->kill();
                    continue;
                }
                int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count());
                timeout_ms = timeout_ms < 0 ? ms : std::min(timeout_ms, ms);
            }
        }
        if (::poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) break;

        if (fds[0].revents & POLLIN) {
            uint64_t count;
            [[maybe_unused]] ssize_t n = ::read(wake.get(), &count, sizeof count);
        }
        for (std::size_t i = 0; i < workers.size() && i + 3 < fds.size(); ++i) {
            Worker& w = *workers[i];
            short revents = fds[i + 3].revents;
            if (revents & (POLLIN | POLLHUP | POLLERR)) read_worker(w);
            if ((revents & POLLOUT) && !w.eof) flush_worker(w);
        }
        if (fds[1].revents) handle_server_events();
        if (fds[2].revents & POLLERR) {
            bool already;
            {
                std::lock_guard lock(mutex);
                already = broken != nullptr;
            }
            if (!already) break_pool(std::make_exception_ptr(UnitStopped(options.unit_name)));
        }
        finalize_dead_workers();
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
        task->submission = std::move(s);
        task->pool = impl_.get();
        tasks.push_back(std::move(task));
    }
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->broken) std::rethrow_exception(impl_->broken);
        if (!impl_->accepting) throw StateError("submit() after shutdown() of pool " + impl_->options.unit_name);
        impl_->queue.insert(impl_->queue.end(), tasks.begin(), tasks.end());
        impl_->unfinished += tasks.size();
    }
    impl_->wake_up();
    return tasks;
}

bool PoolCore::cancel(const std::shared_ptr<TaskState>& task) {
    int expected = TaskState::queued;
    if (!task || !task->status.compare_exchange_strong(expected, TaskState::cancelled)) return false;
    try {
        task->submission.fail(std::make_exception_ptr(TaskCancelled("the task was cancelled before it started")));
    } catch (...) {
    }
    task->pool->task_finished();  // the pool outlives every unfinished task
    return true;
}

void PoolCore::shutdown(bool wait, bool cancel_pending) {
    std::deque<std::shared_ptr<TaskState>> pending;
    {
        std::lock_guard lock(impl_->mutex);
        impl_->accepting = false;
        if (cancel_pending) pending = impl_->queue;
    }
    for (auto& task : pending) cancel(task);
    if (!wait) return;
    {
        std::lock_guard lock(impl_->mutex);
        impl_->retire = true;
    }
    impl_->wake_up();
    std::unique_lock lock(impl_->mutex);
    impl_->changed.wait(lock, [&] { return impl_->dispatcher_done; });
}

const Unit& PoolCore::unit() const { return *impl_->unit; }

std::vector<pid_t> PoolCore::worker_pids() const {
    std::lock_guard lock(impl_->pids_mutex);
    return impl_->pids;
}

std::size_t PoolCore::max_workers() const noexcept { return impl_->target_workers; }

const WireLimits& PoolCore::limits() const noexcept { return impl_->limits; }

}  // namespace detail
}  // namespace sdfutures
