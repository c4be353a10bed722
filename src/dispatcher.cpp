#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <deque>
#include <utility>

#include "anchored_unit.hpp"
#include "channel.hpp"
#include "pool_impl.hpp"
#include "scheduler.hpp"
#include "sys.hpp"
#include "task_state.hpp"
#include "worker_death.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/serialization.hpp"

// The pool's dispatcher thread: the only one that talks to the workers and the fork server. Its loop
// (run_dispatcher) is a few steps, each a function below; the policy they apply is in scheduler.hpp (which task
// goes where) and worker_death.hpp (what a death means); settling a task is in pool_tasks.cpp.

namespace sdfutures::detail {

namespace {

constexpr milliseconds kLingerTimeout{5'000};
// Records read from one worker before the dispatcher looks at the others again.
constexpr int kRecordsPerTurn = 256;

bool pipe_reader_gone(int write_fd) { return sys::poll_now(write_fd, 0) & POLLERR; }

}  // namespace

// The loop: take what other threads asked for and what the bus answered, settle the dead, hand out tasks, then
// sleep until something happens or a deadline comes, handle it, and enforce the deadlines.
void PoolCore::Impl::run_dispatcher() {
    ::fcntl(server.control.get(), F_SETFL, O_NONBLOCK);
    PollSet poll_set;
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
            wait_for_events(poll_set);
            handle_events(poll_set);
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

// What the submitting threads asked for: workers running a task cancel() resolved, and end_workers().
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
    if (end_request) end_all_workers(*end_request);
}

// terminate_workers() (SIGTERM, then SIGKILL after `grace`), kill_workers() or the destructor's shutdown_timeout
// (SIGKILL, no grace): every unfinished task is cancelled, and the pool is shut down, not broken.
void PoolCore::Impl::end_all_workers(std::optional<milliseconds> grace) {
    auto error = std::make_exception_ptr(
        TaskCancelled(std::string("the pool's workers were ended by ") +
                      (grace ? "terminate_workers()" : "kill_workers() or the destructor's shutdown_timeout")));
    std::exception_ptr broken_before;
    {
        std::lock_guard lock(mutex);
        accepting = false;
        retire = true;
        broken_before = broken;
    }
    break_pool(error, grace ? SIGTERM : SIGKILL);
    {
        std::lock_guard lock(mutex);
        broken = broken_before;  // shut down, not broken: submit() says so
    }
    if (grace) sigkill_at = Clock::now() + *grace;
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

void PoolCore::Impl::build_poll_set(PollSet& poll_set) const {
    auto& fds = poll_set.fds;
    fds.assign(PollSet::first_worker_slot, pollfd{-1, 0, 0});
    poll_set.workers.clear();
    fds[PollSet::wake_slot] = {wake.get(), POLLIN, 0};
    fds[PollSet::fork_server_slot] = {server.control.get(), POLLIN, 0};
    // POLLERR once the unit's main process is gone (the anchor pipe's reader, or the exec'd server's pidfd).
    if (exec) fds[PollSet::main_process_slot] = {server.pidfd.get(), POLLIN, 0};
    else fds[PollSet::main_process_slot] = {anchor.get(), 0, 0};
    for (const auto& w : workers) {
        if (w->eof) continue;
        short events = POLLIN;
        if (!w->writer.empty()) events |= POLLOUT;
        fds.push_back({w->socket.get(), events, 0});
        poll_set.workers.push_back(w.get());
    }
}

// The nearest deadline: a task's timeout or heartbeat, a worker's entry or lingering, the fork server's answer,
// SIGKILL after terminate_workers()'s grace.
std::optional<Clock::time_point> PoolCore::Impl::next_deadline() const {
    std::optional<Clock::time_point> next;
    auto consider = [&](Clock::time_point t) { next = next ? std::min(*next, t) : t; };
    for (const auto& w : workers) {
        if (w->condemned || !w->alive()) continue;
        if (w->phase == Worker::Phase::entering) consider(w->phase_since + kEntryTimeout);
        if (options.task_timeout && !w->in_flight.empty()) consider(w->head_since + *options.task_timeout);
        if (options.heartbeat_timeout && !w->in_flight.empty()) consider(heartbeat_deadline(*w));
        if (w->idle_done_since) consider(*w->idle_done_since + kLingerTimeout);
    }
    if (spawning > 0) consider(spawn_requested + kSpawnTimeout);
    if (sigkill_at) consider(*sigkill_at);
    return next;
}

// Sleeps until one of the poll set's descriptors is ready or the nearest deadline; an interrupted poll counts as
// nothing ready.
void PoolCore::Impl::wait_for_events(PollSet& poll_set) {
    build_poll_set(poll_set);
    // Records a reader took ahead are there to read now, whatever poll would say of the socket.
    if (std::any_of(workers.begin(), workers.end(), [](const auto& w) { return !w->eof && w->reader.holds_records(); })) {
        if (sys::poll(poll_set.fds.data(), poll_set.fds.size(), 0) < 0)
            for (auto& p : poll_set.fds) p.revents = 0;
        return;
    }
    const auto began = Clock::now();
    if (!(spin.worth_it() && spin_for_events(poll_set, began))) sleep_for_events(poll_set);
    spin.observe(Clock::now() - began);
}

// Polls without sleeping for up to the spin budget (adaptive_spin.hpp): true when something became ready.
bool PoolCore::Impl::spin_for_events(PollSet& poll_set, Clock::time_point began) {
    const auto until = began + spin.budget();
    do {
        if (sys::poll(poll_set.fds.data(), poll_set.fds.size(), 0) > 0) return true;
    } while (Clock::now() < until);
    return false;
}

void PoolCore::Impl::sleep_for_events(PollSet& poll_set) {
    int timeout_ms = -1;
    if (auto next = next_deadline())
        timeout_ms = static_cast<int>(std::max<long long>(0, std::chrono::ceil<milliseconds>(*next - Clock::now()).count()));
    if (sys::poll(poll_set.fds.data(), poll_set.fds.size(), timeout_ms) < 0)
        for (auto& p : poll_set.fds) p.revents = 0;
}

void PoolCore::Impl::handle_events(const PollSet& poll_set) {
    if (poll_set.revents(PollSet::wake_slot) & POLLIN) {
        uint64_t count;
        [[maybe_unused]] ssize_t n = sys::read(wake.get(), &count, sizeof count);
    }
    for (std::size_t i = 0; i < poll_set.workers.size(); ++i) {
        Worker& w = *poll_set.workers[i];
        const short revents = poll_set.worker_revents(i);
        if ((revents & (POLLIN | POLLHUP | POLLERR)) || w.reader.holds_records()) read_worker(w);
        if ((revents & POLLOUT) && !w.eof) flush_worker(w);
    }
    if (poll_set.revents(PollSet::fork_server_slot)) handle_server_events();
    if (poll_set.revents(PollSet::main_process_slot) & (POLLERR | POLLIN)) {
        bool already;
        {
            std::lock_guard lock(mutex);
            already = broken != nullptr;
        }
        if (!already) break_pool(std::make_exception_ptr(UnitStopped(options.unit_name)));
    }
}

// A task over its task_timeout or heartbeat_timeout, a replacement that does not enter, a fork server that forks
// nothing, SIGKILL due after terminate_workers()'s grace.
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
    end_lingering_workers(now);
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

// A worker done with its quota (or told to finish) exits once its last task is answered; one that lingers (a thread
// of its task holding it up) is ended after a grace period, so it cannot hold a slot forever.
void PoolCore::Impl::end_lingering_workers(Clock::time_point now) {
    for (auto& w : workers) {
        const bool done = dispatch.quota_reached(*w) || w->write_closed;
        if (!done || !w->in_flight.empty() || w->condemned || !w->alive()) {
            w->idle_done_since.reset();
            continue;
        }
        if (!w->idle_done_since) w->idle_done_since = now;
        else if (now - *w->idle_done_since > kLingerTimeout) condemn(*w, nullptr);
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
        // The socket was empty when last read: asking again would only say EAGAIN (poll brings the loop back).
        if (w.reader.drained()) return;
    }
}

// A replacement's report that it entered the unit (a void reply, id 0), or why it could not.
void PoolCore::Impl::handle_entry_report(Worker& w, const Message& message) {
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
}

// A worker's answer to the task at the head of its window; anything else breaks the protocol.
void PoolCore::Impl::handle_message(Worker& w, Message message) {
    if (w.phase == Worker::Phase::entering) return handle_entry_report(w, message);
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
        reply = task->submission.complete(std::move(message.body).take());
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

// What is known of a dead worker's end, read now (the cgroup's OOM count and the main process may have changed since
// the last look).
WorkerDeath PoolCore::Impl::death_of(const Worker& w) const {
    return {w.pid, *w.exit_status, main_process_gone(), w.unit_gone_verdict, oom_kill_count(control_group)};
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

}  // namespace sdfutures::detail
