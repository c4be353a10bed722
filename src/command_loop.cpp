// Command: the loop that serves a running command. One thread at a time serves (wait(), wait_for(), stop(),
// kill() hand their requests to it); it dispatches systemd's signals, feeds stdin and reads the captured
// output in the same poll(2), and follows the start job and the unit's state until the unit has ended.
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <span>

#include "command_impl.hpp"
#include "sys.hpp"

namespace sdfutures {

using detail::kManagerInterface;
using detail::kPropertiesInterface;
using detail::kPipeSize;
using detail::kUnitInterface;

namespace {

constexpr size_t kReadChunk = size_t{256} * 1024;
// Bounds one wake-up's reading of one pipe, so a fast writer cannot keep the loop from the bus and the
// other pipes.
constexpr int kReadsPerWakeup = 16;

}  // namespace

namespace detail {

Pipe make_pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) < 0) throw SystemError("pipe2", errno, "to create a pipe for the program's stream");
    Pipe p{OwnedFd(fds[0]), OwnedFd(fds[1])};
    (void)::fcntl(fds[0], F_SETPIPE_SZ, kPipeSize);
    return p;
}

void CommandSteps::open_terminal(PtyOptions size, CommandProcess::Impl& process) {
    OwnedFd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!master) throw SystemError("posix_openpt", errno, "to open a pseudo-terminal for the program");
    if (::grantpt(master.get()) < 0) throw SystemError("grantpt", errno, "to open a pseudo-terminal for the program");
    if (::unlockpt(master.get()) < 0) throw SystemError("unlockpt", errno, "to open a pseudo-terminal for the program");
    winsize ws{};
    ws.ws_row = size.rows;
    ws.ws_col = size.cols;
    if (::ioctl(master.get(), TIOCSWINSZ, &ws) < 0) throw SystemError("ioctl(TIOCSWINSZ)", errno, "to size the program's terminal");
    char name[64];
    if (int e = ::ptsname_r(master.get(), name, sizeof name); e != 0)
        throw SystemError("ptsname_r", e, "to name the program's terminal");
    // O_NOCTTY: the replica does not become this process's controlling terminal; systemd makes it the program's.
    OwnedFd replica(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!replica) throw SystemError("open", errno, std::string("to open the program's terminal ") + name);
    set_nonblocking(master.get());
    process.terminal = std::move(master);
    process.terminal_replica = std::move(replica);
    process.has_terminal = true;
}

void set_nonblocking(int fd) {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        throw SystemError("fcntl", errno, "to make the program's pipe non-blocking");
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------------
// The streams

void detail::CommandSteps::connect_streams(const Command& command, std::vector<DbusProperty>& props,
                                           CommandProcess::Impl& process) {
    using Stream = Command::Stream;
    auto add = [&](const char* name, sdbus::Variant value) { props.emplace_back(name, std::move(value)); };
    if (command.stdin_.kind == Stream::terminal) {  // pty(): all three streams, and only then
        open_terminal(command.pty_size_, process);
        for (const char* name : {"StandardInputFileDescriptor", "StandardOutputFileDescriptor", "StandardErrorFileDescriptor"})
            add(name, fd_variant(process.terminal_replica.get(), "the terminal"));
        return;
    }
    switch (command.stdin_.kind) {
        case Stream::data: {
            Pipe p = make_pipe();
            set_nonblocking(p.write.get());
            add("StandardInputFileDescriptor", fd_variant(p.read.get(), "stdin"));
            process.stdin_fd = std::move(p.write);
            process.stdin_data = command.stdin_data_;
            break;
        }
        case Stream::fd: add("StandardInputFileDescriptor", fd_variant(command.stdin_.fd, "stdin")); break;
        case Stream::inherit: add("StandardInputFileDescriptor", fd_variant(STDIN_FILENO, "stdin")); break;
        default: add("StandardInput", sdbus::Variant(std::string("null"))); break;
    }
    auto output = [&](const Command::StreamSpec& spec, CommandProcess::Impl::Capture& capture, int own_fd,
                      const char* fd_property, const char* text_property, const char* what) {
        switch (spec.kind) {
            case Stream::capture: {
                Pipe p = make_pipe();
                set_nonblocking(p.read.get());
                add(fd_property, fd_variant(p.write.get(), what));
                capture.fd = std::move(p.read);
                capture.max_bytes = spec.max_bytes;
                break;
            }
            case Stream::fd: add(fd_property, fd_variant(spec.fd, what)); break;
            case Stream::inherit: add(fd_property, fd_variant(own_fd, what)); break;
            case Stream::journal: add(text_property, sdbus::Variant(std::string("journal"))); break;
            default: add(text_property, sdbus::Variant(std::string("null"))); break;
        }
    };
    output(command.stdout_, process.out, STDOUT_FILENO, "StandardOutputFileDescriptor", "StandardOutput", "stdout");
    if (command.stderr_.kind == Stream::to_stdout) {
        // The same destination as stdout: its descriptor again (sd-bus sends a copy), or its StandardOutput=.
        sdbus::Variant same = props.back().get<1>();
        add(props.back().get<0>() == "StandardOutput" ? "StandardError" : "StandardErrorFileDescriptor", same);
    } else {
        output(command.stderr_, process.err, STDERR_FILENO, "StandardErrorFileDescriptor", "StandardError", "stderr");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Entering and leaving the serving role

bool CommandProcess::Impl::become_server(detail::Deadline deadline) {
    std::unique_lock lock(control);
    while (serving) {
        if (!deadline) control_cv.wait(lock);
        else if (control_cv.wait_until(lock, *deadline) == std::cv_status::timeout && serving) return false;
    }
    serving = true;
    return true;
}

void CommandProcess::Impl::request(std::shared_ptr<Request> r) {
    auto done = r->done.get_future();
    auto answered = [&] { return done.wait_for(std::chrono::seconds(0)) == std::future_status::ready; };
    {
        std::unique_lock lock(control);
        if (finished) return;
        requests.push_back(std::move(r));
        if (serving) {
            uint64_t one = 1;
            // The serving thread sleeps until this lands: an interrupted write is retried, never lost.
            while (detail::sys::write(wake.get(), &one, sizeof one) < 0 && errno == EINTR) {
            }
            control_cv.wait(lock, [&] { return answered() || !serving; });
        }
        if (!answered()) serving = true;
    }
    if (!answered()) serve(std::nullopt, answered);
    done.get();
}

void CommandProcess::Impl::answer(Request& r, const std::exception_ptr& error) {
    std::lock_guard lock(control);
    if (error) r.done.set_exception(error);
    else r.done.set_value();
    control_cv.notify_all();
}

// ---------------------------------------------------------------------------------------------------------
// The loop

void CommandProcess::Impl::serve(detail::Deadline deadline, const std::function<bool()>& until) {
    auto& state = detail::state_of(bus);
    try {
        std::unique_lock bus_lock(state.mutex);
        state.check_owner();
        for (;;) {
            while (state.connection->processPendingRequest()) {
            }
            carry_out_requests();
            progress();
            bool more_requests;  // requests that arrived while this round ran
            {
                std::lock_guard lock(control);
                more_requests = !requests.empty();
                bool out_of_time = deadline && std::chrono::steady_clock::now() >= *deadline;
                if (!more_requests && (until() || out_of_time)) {
                    serving = false;
                    control_cv.notify_all();
                    return;
                }
            }
            if (!more_requests) poll_once(state, deadline);
        }
    } catch (...) {
        std::lock_guard lock(control);
        for (auto& r : requests) r->done.set_exception(std::current_exception());
        for (auto& r : stop_waiters) r->done.set_exception(std::current_exception());
        requests.clear();
        stop_waiters.clear();
        serving = false;
        control_cv.notify_all();
        throw;
    }
}

void CommandProcess::Impl::poll_once(detail::BusState& state, detail::Deadline deadline) {
    pollfd fds[5];
    size_t n = 0;
    fds[n++] = pollfd{wake.get(), POLLIN, 0};
    int stdin_slot = -1, out_slot = -1, err_slot = -1, terminal_slot = -1;
    if (terminal) {
        terminal_slot = int(n);
        auto events = short(POLLIN | (terminal_input_written < terminal_input.size() ? POLLOUT : 0));
        fds[n++] = pollfd{terminal.get(), events, 0};
    }
    if (stdin_fd) { stdin_slot = int(n); fds[n++] = pollfd{stdin_fd.get(), POLLOUT, 0}; }
    if (out.fd) { out_slot = int(n); fds[n++] = pollfd{out.fd.get(), POLLIN, 0}; }
    if (err.fd) { err_slot = int(n); fds[n++] = pollfd{err.fd.get(), POLLIN, 0}; }
    if (!state.poll_with(std::span<pollfd>(fds, n), deadline)) return;
    if (fds[0].revents) {
        uint64_t count;
        (void)detail::sys::read(wake.get(), &count, sizeof count);
    }
    if (stdin_slot >= 0 && fds[stdin_slot].revents) feed_stdin();
    if (out_slot >= 0 && fds[out_slot].revents) read_capture(out, kReadsPerWakeup);
    if (err_slot >= 0 && fds[err_slot].revents) read_capture(err, kReadsPerWakeup);
    if (terminal_slot >= 0 && (fds[terminal_slot].revents & POLLOUT)) feed_terminal();
    if (terminal_slot >= 0 && (fds[terminal_slot].revents & ~POLLOUT)) read_terminal(kReadsPerWakeup);
}

void CommandProcess::Impl::feed_terminal() {
    while (terminal && terminal_input_written < terminal_input.size()) {
        size_t n = terminal_input.size() - terminal_input_written;
        ssize_t w = detail::sys::write(terminal.get(), terminal_input.data() + terminal_input_written, n);
        if (w > 0) {
            terminal_input_written += size_t(w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) return;
        break;  // EIO: no replica is open any more; nobody will read the rest
    }
    terminal_input.clear();
    terminal_input_written = 0;
}

void CommandProcess::Impl::read_terminal(int rounds) {
    std::string got;
    for (int i = 0; i < rounds && terminal; ++i) {
        size_t old = got.size();
        got.resize(old + kReadChunk);
        ssize_t r = detail::sys::read(terminal.get(), got.data() + old, kReadChunk);
        int saved = errno;
        got.resize(old + (r > 0 ? size_t(r) : 0));
        if (r > 0) continue;
        if (r < 0 && (saved == EINTR)) continue;
        if (r < 0 && saved == EAGAIN) break;
        // EIO: no replica is open (cannot happen while this process holds one); nothing more can come.
        terminal.reset();
    }
    if (got.empty()) return;
    std::lock_guard lock(control);
    terminal_output += got;
    control_cv.notify_all();
}

void CommandProcess::Impl::feed_stdin() {
    const std::string& data = *stdin_data;
    while (stdin_written < data.size()) {
        size_t n = std::min(data.size() - stdin_written, size_t(kPipeSize));
        ssize_t w = detail::write_without_sigpipe(stdin_fd.get(), data.data() + stdin_written, n);
        if (w > 0) {
            stdin_written += size_t(w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) return;
        break;  // EPIPE: the program closed its input; the rest is not wanted
    }
    stdin_fd.reset();  // end of file for the program
}

void CommandProcess::Impl::read_capture(Capture& c, int rounds) {
    for (int i = 0; i < rounds && c.fd; ++i) {
        size_t room = c.max_bytes ? *c.max_bytes - std::min(*c.max_bytes, c.data.size()) : kReadChunk;
        if (room == 0) {
            // Full: one byte more means there was more than the cap; stop reading either way.
            char byte;
            ssize_t r = detail::sys::read(c.fd.get(), &byte, 1);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && errno == EAGAIN) return;
            if (r > 0) c.truncated = true;
            c.fd.reset();
            return;
        }
        size_t chunk = std::min(room, kReadChunk);
        size_t old = c.data.size();
        c.data.resize(old + chunk);
        ssize_t r = detail::sys::read(c.fd.get(), c.data.data() + old, chunk);
        int saved = errno;
        c.data.resize(old + (r > 0 ? size_t(r) : 0));
        if (r > 0) continue;
        if (r < 0 && saved == EINTR) continue;
        if (r < 0 && saved == EAGAIN) return;
        c.fd.reset();  // end of file (or a read error, after which nothing more can come)
        return;
    }
}

void CommandProcess::Impl::carry_out_requests() {
    std::vector<std::shared_ptr<Request>> todo;
    {
        std::lock_guard lock(control);
        todo.swap(requests);
    }
    auto& state = detail::state_of(bus);
    for (auto& r : todo) {
        if (finished) {
            answer(*r);
            continue;
        }
        try {
            if (r->kind == Request::write_terminal) {
                if (terminal) {
                    terminal_input.append(r->data);
                    feed_terminal();
                }
                answer(*r);
                continue;
            }
            if (r->kind == Request::resize_terminal) {
                winsize ws{};
                ws.ws_row = r->size.rows;
                ws.ws_col = r->size.cols;
                // The kernel sends SIGWINCH to the terminal's foreground process group, if the size changed.
                if (terminal && ::ioctl(terminal.get(), TIOCSWINSZ, &ws) < 0)
                    throw SystemError("ioctl(TIOCSWINSZ)", errno, "to resize the terminal of unit " + unit);
                answer(*r);
                continue;
            }
            if (r->kind == Request::kill) {
                try {
                    state.manager->callMethod("KillUnit").onInterface(kManagerInterface)
                        .withArguments(unit, std::string("all"), int32_t{r->signal});
                } catch (const sdbus::Error& e) {
                    // It ended before the signal could be sent: nothing to do, wait() will say how it ended.
                    if (e.getName() != "org.freedesktop.systemd1.NoSuchProcess" &&
                        e.getName() != "org.freedesktop.systemd1.NoSuchUnit")
                        detail::throw_systemd_error("KillUnit " + unit, e);
                }
                answer(*r);
                continue;
            }
            if (!stopped) {
                sdbus::ObjectPath job = detail::translate_errors("StopUnit " + unit, [&] {
                    sdbus::ObjectPath p;
                    state.manager->callMethod("StopUnit").onInterface(kManagerInterface)
                        .withArguments(unit, std::string("replace")).storeResultsTo(p);
                    return p;
                });
                // Queued signals are dispatched only after this returns, so the job's end is not missed.
                state.awaited_jobs.emplace(job, std::nullopt);
                stop_job = job;
                stopped = true;
            }
            timed_out = timed_out || r->because_of_timeout;
            stop_waiters.push_back(r);
        } catch (...) {
            answer(*r, std::current_exception());
        }
    }
}

std::optional<std::string> CommandProcess::Impl::take_job_result(std::string& job) {
    if (job.empty()) return std::nullopt;
    auto& jobs = detail::state_of(bus).awaited_jobs;
    auto it = jobs.find(job);
    if (it == jobs.end() || !it->second) return std::nullopt;
    std::string result = *it->second;
    jobs.erase(it);
    job.clear();
    return result;
}

void CommandProcess::Impl::progress() {
    if (finished) return;
    if (auto r = take_job_result(start_job)) {
        start_job_result = r;
        // Read the state once for certain, not only from signals: the job's end is the point from which
        // "inactive" means the program ran and ended rather than has not started yet.
        active_state_stale = true;
    }
    take_job_result(stop_job);
    if (!start_job_result) return;
    // Under Restart=, systemd before 254 passes a run's end through failed (or dead) before auto-restart, and
    // signals it: only a state read afterwards tells whether the unit has ended or is restarting.
    bool run_ended = active_state == "inactive" || active_state == "failed";
    if (restart_configured && run_ended && !state_was_read) active_state_stale = true;
    if (active_state_stale) {
        auto get = [&](const char* name) {
            return detail::translate_errors("Get " + std::string(name) + " of " + unit, [&] {
                sdbus::Variant v;
                unit_proxy->callMethod("Get").onInterface(kPropertiesInterface)
                    .withArguments(std::string(kUnitInterface), std::string(name)).storeResultsTo(v);
                return v.get<std::string>();
            });
        };
        active_state = get("ActiveState");
        sub_state = get("SubState");
        active_state_stale = false;
        state_was_read = true;
    }
    // Also after a failed start job: the job may end (on a start timeout, say) before the processes do.
    bool ended = active_state == "inactive" || active_state == "failed";
    // RemainAfterExit=yes: the program has ended when the service stays active in its "exited" state.
    bool remains = remain_after_exit && active_state == "active" && sub_state == "exited";
    if (!(ended || remains) || !stop_job.empty()) return;
    remains_active = remains;
    finish();
}

void CommandProcess::Impl::drain_pipes() {
    stdin_fd.reset();
    // Until the pipe is empty (EAGAIN) rather than until end of file: processes left behind under
    // KillMode=process or none may hold it open, and systemd closes its own copy only when it releases
    // the unit's resources.
    for (Capture* c : {&out, &err}) read_capture(*c, std::numeric_limits<int>::max());
    out.fd.reset();
    err.fd.reset();
    read_terminal(std::numeric_limits<int>::max());
    terminal.reset();
    terminal_replica.reset();
    terminal_input.clear();
}

// ---------------------------------------------------------------------------------------------------------
// The handle

CommandProcess::CommandProcess(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CommandProcess::CommandProcess(CommandProcess&&) noexcept = default;
CommandProcess& CommandProcess::operator=(CommandProcess&&) noexcept = default;
CommandProcess::~CommandProcess() = default;

CommandProcess::Impl& CommandProcess::impl() const {
    if (!impl_) throw StateError("this CommandProcess was moved from");
    return *impl_;
}

const std::string& CommandProcess::unit() const noexcept {
    static const std::string none;
    return impl_ ? impl_->unit : none;
}

const Bus& CommandProcess::bus() const noexcept { return impl_->bus; }

std::optional<CommandResult> CommandProcess::wait_for(std::chrono::milliseconds timeout) {
    Impl& i = impl();
    auto deadline = detail::deadline_after(timeout);
    if (!i.become_server(deadline)) return std::nullopt;
    i.serve(deadline, [&] { return i.finished.load(); });
    if (!i.finished) return std::nullopt;
    std::lock_guard lock(i.control);  // a concurrent wait() may be taking the result too
    if (i.failure) std::rethrow_exception(i.failure);
    if (i.result_taken) throw StateError("the result of unit " + i.unit + " was already taken by an earlier wait()");
    i.result_taken = true;
    return std::move(i.result);
}

CommandResult CommandProcess::wait() {
    Impl& i = impl();
    i.become_server(std::nullopt);
    i.serve(std::nullopt, [&] { return i.finished.load(); });
    std::lock_guard lock(i.control);
    if (i.failure) std::rethrow_exception(i.failure);
    if (i.result_taken) throw StateError("the result of unit " + i.unit + " was already taken by an earlier wait()");
    i.result_taken = true;
    return std::move(*i.result);
}

void CommandProcess::stop() {
    auto r = std::make_shared<Impl::Request>();
    r->kind = Impl::Request::stop;
    impl().request(std::move(r));
}

void CommandProcess::write_terminal(std::string data) {
    Impl& i = impl();
    if (!i.has_terminal) throw StateError("write_terminal(): unit " + i.unit + " was not started with pty()");
    auto r = std::make_shared<Impl::Request>();
    r->kind = Impl::Request::write_terminal;
    r->data = std::move(data);
    i.request(std::move(r));
}

void CommandProcess::resize_terminal(PtyOptions size) {
    Impl& i = impl();
    if (!i.has_terminal) throw StateError("resize_terminal(): unit " + i.unit + " was not started with pty()");
    auto r = std::make_shared<Impl::Request>();
    r->kind = Impl::Request::resize_terminal;
    r->size = size;
    i.request(std::move(r));
}

std::string CommandProcess::read_terminal(std::chrono::milliseconds timeout) {
    Impl& i = impl();
    if (!i.has_terminal) throw StateError("read_terminal(): unit " + i.unit + " was not started with pty()");
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    // Under the control lock, as serve() calls it and as read_terminal(int) appends.
    auto ready = [&] { return !i.terminal_output.empty() || i.finished.load(); };
    std::unique_lock lock(i.control);
    for (;;) {
        if (ready()) return std::exchange(i.terminal_output, std::string());
        if (std::chrono::steady_clock::now() >= deadline) return {};
        if (!i.serving) {
            // Nobody serves: this thread does, until there is output, the end, or the deadline.
            i.serving = true;
            lock.unlock();
            i.serve(deadline, ready);
            lock.lock();
            continue;
        }
        // Another thread serves; it wakes this one when it reads output or stops serving.
        i.control_cv.wait_until(lock, deadline);
    }
}

void CommandProcess::kill(int signal) {
    auto r = std::make_shared<Impl::Request>();
    r->kind = Impl::Request::kill;
    r->signal = signal;
    impl().request(std::move(r));
}

}  // namespace sdfutures
