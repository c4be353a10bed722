#include "sdfutures/command.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include "anchored_unit.hpp"
#include "bus_state.hpp"
#include "fd_util.hpp"
#include "sdfutures/system_info.hpp"
#include "sdfutures/unit.hpp"

namespace sdfutures {

using detail::fd_variant;
using detail::kManagerInterface;
using detail::kPropertiesInterface;
using detail::kSystemdService;
using detail::kUnitInterface;

namespace {

constexpr const char* kServiceInterface = "org.freedesktop.systemd1.Service";
// What systemd-run falls back to when $PATH is unset.
constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
// Large enough that a 100 MiB stream takes ~100 wake-ups, not ~1600; best effort (pipe-max-size may forbid).
constexpr int kPipeSize = 1 << 20;
constexpr size_t kReadChunk = size_t{256} * 1024;
// Bounds one wake-up's reading of one pipe, so a fast writer cannot keep the loop from the bus and the
// other pipes.
constexpr int kReadsPerWakeup = 16;
// After Unref a collectable unit is freed in the manager's next loop iteration; this only bounds the wait
// when something else (another client's Ref) keeps it loaded.
constexpr auto kCollectWait = std::chrono::seconds(5);

// Every descriptor made here is O_CLOEXEC, so a fork+exec elsewhere in the process cannot inherit a pipe
// end and hold it open.
using OwnedFd = detail::Fd;

struct Pipe {
    OwnedFd read, write;
};

Pipe make_pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) < 0) throw Error("cannot create a pipe: " + errno_text(errno));
    Pipe p{OwnedFd(fds[0]), OwnedFd(fds[1])};
    (void)::fcntl(fds[0], F_SETPIPE_SZ, kPipeSize);
    return p;
}

void set_nonblocking(int fd) {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        throw Error("cannot make a pipe non-blocking: " + errno_text(errno));
}

std::string signal_name(int sig) {
    const char* abbrev = sigabbrev_np(sig);
    return abbrev ? std::string("SIG") + abbrev : std::to_string(sig);
}

std::string join_argv(const std::vector<std::string>& argv) {
    std::string out;
    for (auto& a : argv) {
        if (!out.empty()) out += ' ';
        out += a;
        if (out.size() > 200) return out.substr(0, 200) + "...";
    }
    return out;
}

// Checks argv[0] as systemd would when it executes it, so that a typo fails here, naming the program,
// rather than as a failed unit.
std::string resolve_program(const std::string& name, const Properties& properties) {
    if (name.empty()) throw ProgramNotFound(name, "the program name is empty");
    // The path is resolved inside a different root there; only systemd can check it.
    if (properties.contains("RootDirectory") || properties.contains("RootImage")) {
        if (name.front() != '/') throw ProgramNotFound(name, "give an absolute path when RootDirectory=/RootImage= is set");
        return name;
    }
    auto check = [](const std::string& path) -> std::string {
        struct stat st{};
        if (::stat(path.c_str(), &st) < 0) return errno_text(errno);
        if (!S_ISREG(st.st_mode)) return "not a regular file";
        if (::access(path.c_str(), X_OK) < 0) return "not executable: " + errno_text(errno);
        return {};
    };
    if (name.front() == '/') {
        std::string why = check(name);
        if (!why.empty()) throw ProgramNotFound(name, why);
        return name;
    }
    if (name.find('/') != std::string::npos)
        throw ProgramNotFound(name, "a relative path cannot be run in a unit (it does not share this process's "
                                    "working directory): give an absolute path");
    // getenv races only with setenv/putenv, which sdfutures calls in forked children alone.
    const char* env = std::getenv("PATH");  // NOLINT(concurrency-mt-unsafe)
    std::string path = env && *env ? env : kDefaultPath;
    size_t start = 0;
    while (start <= path.size()) {
        size_t end = path.find(':', start);
        if (end == std::string::npos) end = path.size();
        std::string dir = path.substr(start, end - start);
        // Empty or relative $PATH entries mean this process's directory, which the unit does not share.
        if (!dir.empty() && dir.front() == '/') {
            std::string candidate = std::move(dir);
            candidate += '/';
            candidate += name;
            if (check(candidate).empty()) return candidate;
        }
        start = end + 1;
    }
    throw ProgramNotFound(name, "not found in $PATH (" + path + "); give an absolute path");
}

// systemd expands ${VAR}, a bare $VAR word and $$ in ExecStart= arguments, also when they come over D-Bus;
// doubling every '$' makes its expansion give back exactly what the caller wrote, as execve() would.
std::vector<std::string> escape_for_exec(const std::vector<std::string>& argv) {
    std::vector<std::string> out;
    out.reserve(argv.size());
    for (auto& a : argv) {
        std::string e;
        e.reserve(a.size());
        for (char c : a) {
            if (c == '$') e += '$';
            e += c;
        }
        out.push_back(std::move(e));
    }
    return out;
}

// Properties Command sets itself, each with what to use instead.
const std::map<std::string, std::string, std::less<>>& reserved_properties() {
    static const std::map<std::string, std::string, std::less<>> m = {
        {"ExecStart", "the program is Command's argv"},
        {"Type", "a Command always runs as Type=exec, so that a program that cannot be executed fails the start"},
        {"RemainAfterExit", "the unit must become inactive when the program ends, or the wait would not end"},
        {"Restart", "a Command runs its program once"},
        {"CollectMode", "a Command's unit is always collected after its result is read"},
        {"AddRef", "Command holds the reference that keeps the unit readable until its result is read"},
        {"StandardInput", "use stdin_from/stdin_from_fd/stdin_from_null/inherit_stdin"},
        {"StandardInputFileDescriptor", "use stdin_from_fd"},
        {"StandardInputData", "use stdin_from"},
        {"StandardInputText", "use stdin_from"},
        {"StandardOutput", "use capture_stdout/stdout_to_fd/stdout_to_null/stdout_to_journal/inherit_stdout"},
        {"StandardOutputFileDescriptor", "use stdout_to_fd"},
        {"StandardError", "use capture_stderr/stderr_to_fd/stderr_to_null/stderr_to_journal/inherit_stderr"},
        {"StandardErrorFileDescriptor", "use stderr_to_fd"},
    };
    return m;
}

void check_not_reserved(const std::string& name) {
    auto it = reserved_properties().find(name);
    if (it != reserved_properties().end()) throw UnsupportedProperty(name, it->second);
}

bool valid_env_name(const std::string& name) {
    if (name.empty() || (name.front() >= '0' && name.front() <= '9')) return false;
    for (char c : name)
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
    return true;
}

// A manager that is not root cannot switch users: systemd would fail the start with 217/USER. Said here,
// before anything runs, with what is needed instead.
void check_identity_properties(const Bus& bus, const Properties& properties) {
    std::optional<std::string> user;
    bool dynamic = false;
    for (auto& e : properties.entries()) {
        try {
            if (e.name == "User") user = e.typed ? e.typed->get<std::string>() : e.text;
            if (e.name == "DynamicUser") dynamic = e.typed ? e.typed->get<bool>() : parse::boolean(e.name, e.text);
        } catch (const sdbus::Error&) {
            // A mistyped typed value: systemd's own check at start says so.
        }
    }
    if (!user && !dynamic) return;
    uint32_t manager_uid = 0;
    {
        auto& state = bus.state();
        std::lock_guard lock(state.mutex);
        state.check_owner();
        try {
            auto proxy = sdbus::createProxy(*state.connection, "org.freedesktop.DBus", "/org/freedesktop/DBus");
            proxy->callMethod("GetConnectionUnixUser").onInterface("org.freedesktop.DBus")
                .withArguments(std::string(kSystemdService)).storeResultsTo(manager_uid);
        } catch (const sdbus::Error&) {
            return;  // no bus daemon to ask (a direct connection): leave the verdict to systemd
        }
    }
    if (manager_uid == 0) return;
    std::string where = "the manager on " + bus.description() + " runs as uid " + std::to_string(manager_uid);
    if (dynamic)
        throw Unsupported("DynamicUser=yes needs a manager running as root, but " + where +
                          " and cannot allocate users; use Bus::system() (as root or with polkit's permission)");
    if (user) {
        std::optional<uint32_t> uid;
        uint32_t n = 0;
        auto [end, ec] = std::from_chars(user->data(), user->data() + user->size(), n);
        if (ec == std::errc() && end == user->data() + user->size()) {
            uid = n;
        } else {
            passwd pw{}, *found = nullptr;
            std::vector<char> buf(16384);
            if (getpwnam_r(user->c_str(), &pw, buf.data(), buf.size(), &found) == 0 && found) uid = found->pw_uid;
        }
        if (!uid || *uid != manager_uid)
            throw Unsupported("User=" + *user + " needs a manager running as root, but " + where +
                              " and cannot switch to another user; use Bus::system()");
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Errors and results

ProgramNotFound::ProgramNotFound(std::string program, const std::string& why)
    : Error("cannot run '" + program + "': " + why), program_(std::move(program)) {}

CommandStartFailed::CommandStartFailed(std::string unit, std::string job_result, std::string program,
                                       std::string unit_result, std::optional<int> exec_status, const std::string& cause)
    : JobFailed(std::move(unit), "start", std::move(job_result)), program_(std::move(program)), unit_result_(std::move(unit_result)),
      exec_status_(exec_status) {
    message_ = "systemd could not start '" + program_ + "' in unit '" + this->unit() + "': the start job ended with '" +
               this->result() + "'";
    if (!unit_result_.empty()) message_ += ", Result=" + unit_result_;
    if (exec_status_) {
        message_ += ", exit status " + exit_status_text(*exec_status_);
        if (std::string_view meaning = exit_status_meaning(*exec_status_); !meaning.empty())
            message_ += ": " + std::string(meaning);
    }
    if (!cause.empty()) message_ += ", caused by " + cause;
}

std::string CommandResult::status_text() const {
    std::string text;
    if (exit_code) text = "exited with code " + std::to_string(*exit_code);
    else if (signal) text = "killed by signal " + signal_name(*signal) + (core_dumped ? " (core dumped)" : "");
    else text = "did not run";
    if (timed_out) text += ", stopped after the timeout";
    else if (stopped) text += ", stopped on request";
    return text;
}

// ---------------------------------------------------------------------------------------------------------
// Command: the builder

Command::Command(std::vector<std::string> argv) : argv_(std::move(argv)) {
    if (argv_.empty()) throw ProgramNotFound("", "the argument vector is empty");
}

Command& Command::property(std::string name, std::string value) {
    check_not_reserved(name);
    properties_.set(std::move(name), std::move(value));
    return *this;
}

Command& Command::typed_property(std::string name, sdbus::Variant value) {
    check_not_reserved(name);
    properties_.set_typed(std::move(name), std::move(value));
    return *this;
}

Command& Command::properties(const Properties& properties) {
    for (auto& e : properties.entries()) check_not_reserved(e.name);
    for (auto& e : properties.entries()) {
        if (e.typed) properties_.set_typed(e.name, *e.typed);
        else properties_.set(e.name, e.text);
    }
    return *this;
}

Command& Command::environment(const std::string& name, const std::string& value) {
    if (!valid_env_name(name))
        throw PropertyError("Environment", name + "=" + value, "a variable name of letters, digits and '_'");
    environment_.push_back(name + "=" + value);
    return *this;
}

Command& Command::working_directory(std::string path) {
    properties_.set("WorkingDirectory", std::move(path));
    return *this;
}

Command& Command::unit_name(std::string name) {
    if (name.size() <= 8 || !name.ends_with(".service"))
        throw Error("unit name '" + name + "' must end in \".service\": a Command runs as a service");
    unit_name_ = std::move(name);
    return *this;
}

Command& Command::bus(Bus bus) {
    bus_ = std::move(bus);
    return *this;
}

Command& Command::stdin_from(std::string data) {
    stdin_ = {Stream::data};
    stdin_data_ = std::make_shared<const std::string>(std::move(data));
    return *this;
}
Command& Command::stdin_from_fd(int fd) { stdin_ = {Stream::fd, fd}; return *this; }
Command& Command::stdin_from_null() { stdin_ = {Stream::null}; return *this; }
Command& Command::inherit_stdin() { stdin_ = {Stream::inherit}; return *this; }

Command& Command::capture_stdout(std::optional<std::size_t> max_bytes) { stdout_ = {Stream::capture, -1, max_bytes}; return *this; }
Command& Command::stdout_to_fd(int fd) { stdout_ = {Stream::fd, fd}; return *this; }
Command& Command::stdout_to_null() { stdout_ = {Stream::null}; return *this; }
Command& Command::stdout_to_journal() { stdout_ = {Stream::journal}; return *this; }
Command& Command::inherit_stdout() { stdout_ = {Stream::inherit}; return *this; }

Command& Command::capture_stderr(std::optional<std::size_t> max_bytes) { stderr_ = {Stream::capture, -1, max_bytes}; return *this; }
Command& Command::stderr_to_fd(int fd) { stderr_ = {Stream::fd, fd}; return *this; }
Command& Command::stderr_to_null() { stderr_ = {Stream::null}; return *this; }
Command& Command::stderr_to_journal() { stderr_ = {Stream::journal}; return *this; }
Command& Command::inherit_stderr() { stderr_ = {Stream::inherit}; return *this; }
Command& Command::stderr_to_stdout() { stderr_ = {Stream::to_stdout}; return *this; }

// ---------------------------------------------------------------------------------------------------------
// CommandProcess: the loop that serves a running command

struct CommandProcess::Impl {
    struct Capture {
        OwnedFd fd;
        std::string data;
        std::optional<std::size_t> max_bytes;
        bool truncated = false;
    };
    struct Request {
        enum Kind { stop, kill } kind;
        int signal = 0;
        bool because_of_timeout = false;
        std::promise<void> done;
    };

    Bus bus;
    std::string unit, object_path, program;
    Properties properties;  // the caller's, to name the one behind a failed start
    std::unique_ptr<sdbus::IProxy> unit_proxy;
    sdbus::Slot properties_match;

    // Written by the PropertiesChanged handler, which runs in whichever thread dispatches the bus; read by
    // the serving thread. Both hold the bus lock.
    std::string active_state;
    bool active_state_stale = false;

    // From here to the control block: touched only by the serving thread, under the bus lock.
    std::string start_job, stop_job;  // paths awaited in BusState::awaited_jobs; empty once finished
    std::optional<std::string> start_job_result;
    bool stopped = false, timed_out = false;  // stopped: a StopUnit was sent (on request or at the timeout)

    OwnedFd stdin_fd;
    std::shared_ptr<const std::string> stdin_data;
    size_t stdin_written = 0;
    Capture out, err;

    std::optional<CommandResult> result;
    bool result_taken = false;
    std::exception_ptr failure;
    std::atomic<bool> finished{false};
    bool started = false;  // StartTransientUnit succeeded: there is a unit to stop or release

    // Control: who serves, and what other threads asked of it. Taken after the bus lock, never before it.
    std::mutex control;
    std::condition_variable control_cv;
    bool serving = false;
    std::vector<std::shared_ptr<Request>> requests;      // not yet carried out
    std::vector<std::shared_ptr<Request>> stop_waiters;  // stop sent; answered when the command has finished
    std::vector<std::shared_ptr<Request>> deferred_kills;  // kills waiting for the start job to have run
    OwnedFd wake;                                         // eventfd: a request is waiting

    explicit Impl(Bus b) : bus(std::move(b)) {}
    ~Impl() { abandon(); }

    // ---- entering and leaving the serving role

    // For wait()/wait_for(): false when the deadline passed while another thread served.
    bool become_server(detail::Deadline deadline) {
        std::unique_lock lock(control);
        while (serving) {
            if (!deadline) control_cv.wait(lock);
            else if (control_cv.wait_until(lock, *deadline) == std::cv_status::timeout && serving) return false;
        }
        serving = true;
        return true;
    }

    // Hands a request to the serving thread, or serves it here when none does (or when the server leaves, at
    // its own deadline, before the request is answered).
    void request(std::shared_ptr<Request> r) {
        auto done = r->done.get_future();
        auto answered = [&] { return done.wait_for(std::chrono::seconds(0)) == std::future_status::ready; };
        {
            std::unique_lock lock(control);
            if (finished) return;
            requests.push_back(std::move(r));
            if (serving) {
                uint64_t one = 1;
                (void)::write(wake.get(), &one, sizeof one);
                control_cv.wait(lock, [&] { return answered() || !serving; });
            }
            if (!answered()) serving = true;
        }
        if (!answered()) serve(std::nullopt, answered);
        done.get();
    }

    // Answers a request; under the control lock, so that a requester checking answered() cannot miss it.
    void answer(Request& r, const std::exception_ptr& error = nullptr) {
        std::lock_guard lock(control);
        if (error) r.done.set_exception(error);
        else r.done.set_value();
        control_cv.notify_all();
    }

    // ---- the loop

    // Serves until `until()` holds or the deadline passes. The caller has become the server.
    void serve(detail::Deadline deadline, const std::function<bool()>& until) {
        auto& state = bus.state();
        try {
            std::unique_lock bus_lock(state.mutex);
            state.check_owner();
            for (;;) {
                while (state.connection->processPendingRequest()) {
                }
                carry_out_requests();
                progress();
                bool more_requests;  // e.g. kills progress() released once the start job ended
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
            for (auto& r : deferred_kills) r->done.set_exception(std::current_exception());
            requests.clear();
            stop_waiters.clear();
            deferred_kills.clear();
            serving = false;
            control_cv.notify_all();
            throw;
        }
    }

    void poll_once(detail::BusState& state, detail::Deadline deadline) {
        pollfd fds[4];
        size_t n = 0;
        fds[n++] = pollfd{wake.get(), POLLIN, 0};
        int stdin_slot = -1, out_slot = -1, err_slot = -1;
        if (stdin_fd) { stdin_slot = int(n); fds[n++] = pollfd{stdin_fd.get(), POLLOUT, 0}; }
        if (out.fd) { out_slot = int(n); fds[n++] = pollfd{out.fd.get(), POLLIN, 0}; }
        if (err.fd) { err_slot = int(n); fds[n++] = pollfd{err.fd.get(), POLLIN, 0}; }
        if (!state.poll_with(std::span<pollfd>(fds, n), deadline)) return;
        if (fds[0].revents) {
            uint64_t count;
            (void)::read(wake.get(), &count, sizeof count);
        }
        if (stdin_slot >= 0 && fds[stdin_slot].revents) feed_stdin();
        if (out_slot >= 0 && fds[out_slot].revents) read_capture(out, kReadsPerWakeup);
        if (err_slot >= 0 && fds[err_slot].revents) read_capture(err, kReadsPerWakeup);
    }

    void feed_stdin() {
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

    // Reads what the pipe holds now (at most `rounds` chunks); closes it at end of file or at the cap.
    void read_capture(Capture& c, int rounds) {
        for (int i = 0; i < rounds && c.fd; ++i) {
            size_t room = c.max_bytes ? *c.max_bytes - std::min(*c.max_bytes, c.data.size()) : kReadChunk;
            if (room == 0) {
                // Full: one byte more means there was more than the cap; stop reading either way.
                char byte;
                ssize_t r = ::read(c.fd.get(), &byte, 1);
                if (r < 0 && errno == EINTR) continue;
                if (r < 0 && errno == EAGAIN) return;
                if (r > 0) c.truncated = true;
                c.fd.reset();
                return;
            }
            size_t chunk = std::min(room, kReadChunk);
            size_t old = c.data.size();
            c.data.resize(old + chunk);
            ssize_t r = ::read(c.fd.get(), c.data.data() + old, chunk);
            int saved = errno;
            c.data.resize(old + (r > 0 ? size_t(r) : 0));
            if (r > 0) continue;
            if (r < 0 && saved == EINTR) continue;
            if (r < 0 && saved == EAGAIN) return;
            c.fd.reset();  // end of file (or a read error, after which nothing more can come)
            return;
        }
    }

    void carry_out_requests() {
        std::vector<std::shared_ptr<Request>> todo;
        {
            std::lock_guard lock(control);
            todo.swap(requests);
        }
        auto& state = bus.state();
        for (auto& r : todo) {
            if (finished) {
                answer(*r);
                continue;
            }
            try {
                if (r->kind == Request::kill && !start_job_result) {
                    // Before the start job has run there is no process to signal (systemd would answer
                    // NoSuchProcess and the program would start afterwards, unsignalled).
                    deferred_kills.push_back(r);
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

    // Takes a job's result out of the shared bookkeeping once JobRemoved reported it.
    std::optional<std::string> take_job_result(std::string& job) {
        if (job.empty()) return std::nullopt;
        auto& jobs = bus.state().awaited_jobs;
        auto it = jobs.find(job);
        if (it == jobs.end() || !it->second) return std::nullopt;
        std::string result = *it->second;
        jobs.erase(it);
        job.clear();
        return result;
    }

    void progress() {
        if (finished) return;
        if (auto r = take_job_result(start_job)) {
            start_job_result = r;
            // Read the state once for certain, not only from signals: the job's end is the point from which
            // "inactive" means the program ran and ended rather than has not started yet.
            active_state_stale = true;
            if (!deferred_kills.empty()) {
                std::lock_guard lock(control);
                requests.insert(requests.begin(), deferred_kills.begin(), deferred_kills.end());
                deferred_kills.clear();
            }
        }
        take_job_result(stop_job);
        if (!start_job_result) return;
        if (active_state_stale) {
            active_state = detail::translate_errors("Get ActiveState of " + unit, [&] {
                sdbus::Variant v;
                unit_proxy->callMethod("Get").onInterface(kPropertiesInterface)
                    .withArguments(std::string(kUnitInterface), std::string("ActiveState")).storeResultsTo(v);
                return v.get<std::string>();
            });
            active_state_stale = false;
        }
        // Also after a failed start job: the job may end (on a start timeout, say) before the processes do.
        bool ended = active_state == "inactive" || active_state == "failed";
        if (!ended || !stop_job.empty()) return;
        finish();
    }

    // The unit has ended: every process of it is gone, so whatever it wrote is already in the pipes.
    void finish() {
        stdin_fd.reset();
        // Until the pipe is empty (EAGAIN) rather than until end of file: processes left behind under
        // KillMode=process or none may hold it open, and systemd closes its own copy only when it releases
        // the unit's resources.
        for (Capture* c : {&out, &err}) read_capture(*c, std::numeric_limits<int>::max());
        out.fd.reset();
        err.fd.reset();

        std::map<std::string, sdbus::Variant> props;
        std::exception_ptr error;
        try {
            props = detail::translate_errors("GetAll " + std::string(kServiceInterface) + " of " + unit, [&] {
                std::map<std::string, sdbus::Variant> p;
                unit_proxy->callMethod("GetAll").onInterface(kPropertiesInterface)
                    .withArguments(std::string(kServiceInterface)).storeResultsTo(p);
                return p;
            });
        } catch (...) {
            error = std::current_exception();
        }
        properties_match.reset();
        release_unit();

        auto get = [&]<class T>(const char* name, T fallback) -> T {
            auto it = props.find(name);
            if (it == props.end()) return fallback;
            try {
                return it->second.get<T>();
            } catch (const sdbus::Error&) {
                return fallback;
            }
        };
        int32_t code = get("ExecMainCode", int32_t{0});
        int32_t status = get("ExecMainStatus", int32_t{0});
        std::string unit_result = get("Result", std::string());
        // A failed start job alone does not mean the program never ran: under Type=exec, a program that
        // fails within moments can end the unit before systemd has seen its execve() succeed. It never ran
        // when no process ended at all, or when the process ended with one of systemd's own setup-failure
        // statuses (200..243), which a program could only imitate by exiting with one at once.
        bool setup_status = code == 1 && status >= 200 && status <= 243;
        bool start_failed = *start_job_result != "done" && !(stopped && *start_job_result == "canceled") &&
                            (code == 0 || setup_status);
        if (error) {
            failure = error;
        } else if (start_failed) {
            std::string cause;
            if (setup_status) {  // the same naming of the property behind the status as for processes and pools
                detail::ExitStatusCause c = detail::exit_status_cause(status, properties);
                if (!c.property.empty()) cause = c.note.empty() ? c.property : c.property + " (" + c.note + ")";
            }
            failure = std::make_exception_ptr(CommandStartFailed(unit, *start_job_result, program, unit_result,
                                                                 setup_status ? std::optional<int>(status) : std::nullopt,
                                                                 cause));
        } else {
            CommandResult r;
            r.unit = unit;
            if (code == 1) r.exit_code = status;                // CLD_EXITED
            if (code == 2 || code == 3) r.signal = status;      // CLD_KILLED, CLD_DUMPED
            r.core_dumped = code == 3;
            r.unit_result = unit_result;
            constexpr uint64_t not_set = std::numeric_limits<uint64_t>::max();
            if (uint64_t cpu = get("CPUUsageNSec", not_set); cpu != not_set) r.cpu_time = std::chrono::nanoseconds(cpu);
            if (uint64_t peak = get("MemoryPeak", not_set); peak != not_set) r.memory_peak = peak;
            uint64_t started = get("ExecMainStartTimestampMonotonic", uint64_t{0});
            uint64_t exited = get("ExecMainExitTimestampMonotonic", uint64_t{0});
            if (started && exited >= started) r.run_time = std::chrono::microseconds(exited - started);
            r.captured_stdout = std::move(out.data);
            r.captured_stderr = std::move(err.data);
            r.stdout_truncated = out.truncated;
            r.stderr_truncated = err.truncated;
            r.stopped = stopped;
            r.timed_out = timed_out;
            result = std::move(r);
        }
        finished = true;
        for (auto& w : stop_waiters) answer(*w);
        for (auto& w : deferred_kills) answer(*w);
        stop_waiters.clear();
        deferred_kills.clear();
    }

    // Drops the reference AddRef=yes gave this client, so that systemd collects the unit, and waits until it
    // has: a caller may reuse the unit name as soon as wait() returns.
    void release_unit() {
        auto& state = bus.state();
        detail::RemovalWatch watch(state, unit);
        try {
            unit_proxy->callMethod("Unref").onInterface(kUnitInterface);
        } catch (const sdbus::Error& e) {
            // Already unloaded (NoSuchUnit) or never referenced: either way nothing of ours keeps it.
            if (e.getName() == "org.freedesktop.systemd1.NoSuchUnit") return;
        }
        bool loaded = true;
        try {
            sdbus::ObjectPath path;
            state.manager->callMethod("GetUnit").onInterface(kManagerInterface).withArguments(unit).storeResultsTo(path);
        } catch (const sdbus::Error&) {
            loaded = false;
        }
        if (loaded) watch.wait(std::chrono::steady_clock::now() + kCollectWait);
    }

    // The handle is going away before the command ended: stop the unit without waiting and let systemd
    // collect it, so nothing is left behind.
    // Also releases the proxy and the match under the bus lock, as everything touching the connection must be.
    void abandon() noexcept {
        if (!started) return;
        auto& state = bus.state();
        std::lock_guard lock(state.mutex);
        if (getpid() != state.owner_pid) {
            // A forked child: the connection belongs to the parent and must not be touched.
            (void)properties_match.release();
            (void)unit_proxy.release();
            return;
        }
        if (!finished) {
            try {
                if (!start_job.empty()) state.awaited_jobs.erase(start_job);
                if (!stop_job.empty()) state.awaited_jobs.erase(stop_job);
                properties_match.reset();
                state.manager->callMethod("StopUnit").onInterface(kManagerInterface)
                    .withArguments(unit, std::string("replace"));
                unit_proxy->callMethod("Unref").onInterface(kUnitInterface);
            } catch (...) {
                // Best effort: the reference ends with the connection in any case.
            }
        }
        properties_match.reset();
        unit_proxy.reset();
    }
};

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

void CommandProcess::kill(int signal) {
    auto r = std::make_shared<Impl::Request>();
    r->kind = Impl::Request::kill;
    r->signal = signal;
    impl().request(std::move(r));
}

// ---------------------------------------------------------------------------------------------------------
// Starting

CommandProcess Command::start() const {
    // Everything that can be checked here is, before systemd sees anything.
    std::string program = resolve_program(argv_.front(), properties_);
    for (auto* s : {&stdin_, &stdout_, &stderr_})
        if (s->kind == Stream::fd && ::fcntl(s->fd, F_GETFD) < 0)
            throw Error("a standard stream of '" + argv_.front() + "' was to be descriptor " + std::to_string(s->fd) +
                        ", which is not open (" + errno_text(errno) + ")");

    std::vector<DbusProperty> props;
    auto add = [&](const char* name, sdbus::Variant value) { props.emplace_back(name, std::move(value)); };
    // Defaults first, so that the caller's own assignments of the same names win.
    if (!properties_.contains("Description")) add("Description", sdbus::Variant("sdfutures command: " + join_argv(argv_)));
    if (!properties_.contains("CPUAccounting")) add("CPUAccounting", sdbus::Variant(true));
    auto own = properties_.to_dbus();  // throws PropertyError
    props.insert(props.end(), std::make_move_iterator(own.begin()), std::make_move_iterator(own.end()));
    using Exec = sdbus::Struct<std::string, std::vector<std::string>, bool>;
    add("ExecStart", sdbus::Variant(std::vector<Exec>{Exec{program, escape_for_exec(argv_), false}}));
    // exec: the start job ends only once execve() succeeded, so a program systemd cannot run fails the start.
    add("Type", sdbus::Variant(std::string("exec")));
    add("AddRef", sdbus::Variant(true));
    add("CollectMode", sdbus::Variant(std::string("inactive-or-failed")));
    if (!environment_.empty()) add("Environment", sdbus::Variant(environment_));

    Bus bus = bus_ ? *bus_ : Bus::automatic();
    check_identity_properties(bus, properties_);
    // What the manager and the cgroup layout must offer: Type=exec, and whatever the caller's properties need
    // (MemoryHigh= on a v1 memory controller would be accepted and do nothing).
    const SystemInfo info = system_info(bus);
    require(Requirement::exec_service_type, info);
    require_properties(properties_, info);

    auto impl = std::make_unique<CommandProcess::Impl>(bus);
    impl->unit = unit_name_ ? *unit_name_ : detail::default_unit_name("cmd");
    impl->object_path = unit_object_path(impl->unit);
    impl->program = program;
    impl->properties = properties_;
    int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) throw Error("cannot create an eventfd: " + errno_text(errno));
    impl->wake = OwnedFd(wake);

    // The program's ends of the pipes live only in `props` (as sd-bus copies) until the call has been made.
    {
        switch (stdin_.kind) {
            case Stream::data: {
                Pipe p = make_pipe();
                set_nonblocking(p.write.get());
                add("StandardInputFileDescriptor", fd_variant(p.read.get(), "stdin"));
                impl->stdin_fd = std::move(p.write);
                impl->stdin_data = stdin_data_;
                break;
            }
            case Stream::fd: add("StandardInputFileDescriptor", fd_variant(stdin_.fd, "stdin")); break;
            case Stream::inherit: add("StandardInputFileDescriptor", fd_variant(STDIN_FILENO, "stdin")); break;
            default: add("StandardInput", sdbus::Variant(std::string("null"))); break;
        }
        auto output = [&](const StreamSpec& spec, CommandProcess::Impl::Capture& capture, int own_fd, const char* fd_property,
                          const char* text_property, const char* what) {
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
        output(stdout_, impl->out, STDOUT_FILENO, "StandardOutputFileDescriptor", "StandardOutput", "stdout");
        if (stderr_.kind == Stream::to_stdout) {
            // The same destination as stdout: its descriptor again (sd-bus sends a copy), or its StandardOutput=.
            sdbus::Variant same = props.back().get<1>();
            add(props.back().get<0>() == "StandardOutput" ? "StandardError" : "StandardErrorFileDescriptor", same);
        } else {
            output(stderr_, impl->err, STDERR_FILENO, "StandardErrorFileDescriptor", "StandardError", "stderr");
        }
    }

    auto& state = bus.state();
    {
        std::lock_guard lock(state.mutex);
        state.check_owner();
        CommandProcess::Impl* raw = impl.get();
        try {
            impl->unit_proxy = sdbus::createProxy(*state.connection, kSystemdService, impl->object_path);
            // Installed (synchronously, at the bus daemon) before the unit exists, so no state change of it can
            // be missed.
            impl->properties_match = state.connection->addMatch(
                "type='signal',sender='" + std::string(kSystemdService) + "',path='" + impl->object_path +
                    "',interface='" + kPropertiesInterface + "',member='PropertiesChanged',arg0='" + kUnitInterface + "'",
                [raw](sdbus::Message& msg) {
                    try {
                        std::string interface;
                        std::map<std::string, sdbus::Variant> changed;
                        std::vector<std::string> invalidated;
                        msg >> interface >> changed >> invalidated;
                        if (interface != kUnitInterface) return;
                        if (auto it = changed.find("ActiveState"); it != changed.end()) {
                            raw->active_state = it->second.get<std::string>();
                            raw->active_state_stale = false;
                        } else if (std::find(invalidated.begin(), invalidated.end(), "ActiveState") != invalidated.end()) {
                            raw->active_state_stale = true;
                        }
                    } catch (const sdbus::Error&) {
                        raw->active_state_stale = true;  // unreadable: ask instead
                    }
                });
            using Aux = std::vector<sdbus::Struct<std::string, std::vector<DbusProperty>>>;
            sdbus::ObjectPath job = detail::translate_errors("StartTransientUnit " + impl->unit, [&] {
                sdbus::ObjectPath p;
                state.manager->callMethod("StartTransientUnit").onInterface(kManagerInterface)
                    .withArguments(impl->unit, std::string("fail"), props, Aux{}).storeResultsTo(p);
                return p;
            });
            // Signals that arrived during the call are queued, not dispatched yet: the job's end is not missed.
            state.awaited_jobs.emplace(job, std::nullopt);
            impl->start_job = job;
            impl->started = true;
        } catch (...) {
            impl->properties_match.reset();
            impl->unit_proxy.reset();
            throw;
        }
    }
    // systemd holds its own copies now; ours would keep the pipes from reaching end of file.
    props.clear();
    if (impl->stdin_fd && impl->stdin_data->empty()) impl->stdin_fd.reset();
    return CommandProcess(std::move(impl));
}

CommandResult Command::run(std::optional<std::chrono::milliseconds> timeout) const {
    CommandProcess process = start();
    if (!timeout) return process.wait();
    if (auto r = process.wait_for(*timeout)) return std::move(*r);
    auto request = std::make_shared<CommandProcess::Impl::Request>();
    request->kind = CommandProcess::Impl::Request::stop;
    request->because_of_timeout = true;
    process.impl().request(std::move(request));
    return process.wait();
}

}  // namespace sdfutures
