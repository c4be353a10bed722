#include "sdfutures/pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <random>
#include <span>
#include <thread>

#include "anchored_unit.hpp"
#include "bootstrap.hpp"
#include "bus_state.hpp"
#include "channel.hpp"
#include "fd_util.hpp"
#include "exec_server.hpp"
#include "fork_server.hpp"
#include "heartbeat_page.hpp"
#include "pool_impl.hpp"
#include "program_image.hpp"
#include "property_reach.hpp"
#include "pool_bus.hpp"
#include "sys.hpp"
#include "task_state.hpp"
#include "worker_death.hpp"
#include "zygote.hpp"
#include "sdfutures/manager.hpp"

// The pool's facade and lifetime: construction (its steps to the first workers are in pool_start.cpp), how workers
// arrive, stop and leave (the fork server's events, the bus's answers), PoolCore's calls, and teardown. The
// dispatcher thread's loop is in dispatcher.cpp, the dispatch policy in scheduler.hpp, what a death means in
// worker_death.hpp.

namespace sdfutures {
namespace detail {

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

}  // namespace

PoolCore::Impl::Impl(Properties p, PoolOptions o)
    : properties(std::move(p)), options(std::move(o)), limits{options.max_result_bytes, WireLimits{}.max_depth} {
    exec = options.start_method == StartMethod::exec;
    check_properties_for_start_method(properties, options.start_method);
    target_workers = options.max_workers ? options.max_workers : default_worker_count(properties);
    options.max_window = std::max<std::size_t>(options.max_window, 1);
    if (options.unit_name.empty()) options.unit_name = default_unit_name("pool");
    bus = options.bus ? *options.bus : Bus::automatic();
    state_of(*bus).refuse_remote("starting a pool's workers", "they are this host's processes");
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

void PoolCore::Impl::request_spawn(std::size_t n) {
    if (n == 0) return;
    ForkServerRequest request{static_cast<uint32_t>(n)};
    if (!send_with_fds(server.control.get(), &request, sizeof request))
        throw SystemError("sendmsg", errno, "to ask the pool's fork server for workers");
    if (spawning == 0) spawn_requested = Clock::now();
    spawning += n;
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
            w.writer.queue(0, release);
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
