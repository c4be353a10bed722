#pragma once
// Command: the systemd-run of sdfutures. Runs a program in a transient service unit of its own, with any
// property systemd accepts for a service (sandboxing included), its standard streams connected as asked,
// and reports how it ended: exit code or signal, the unit's Result, CPU time, captured output.
//
//     CommandResult r = Command({"/usr/bin/file", "-"})
//                           .property("PrivateNetwork", "yes")
//                           .property("DynamicUser", "yes")
//                           .stdin_from(untrusted_bytes)
//                           .capture_stdout()
//                           .run(std::chrono::seconds(10));
//     if (r.success()) std::cout << r.captured_stdout;
//
// The streams reach systemd as file descriptors (StandardInputFileDescriptor= and friends, as
// `systemd-run --pipe` does), so the program reads and writes them itself. Fed input and captured output
// pass through pipes that this process serves in the same poll(2) loop that dispatches systemd's signals:
// no threads, and large outputs cannot deadlock against a large input.
//
// How the end is seen: the unit's PropertiesChanged signal (and JobRemoved of its start job) are matched
// before StartTransientUnit is sent, so waiting sleeps in poll(2) and nothing is missed. The unit is started
// with AddRef=yes, which keeps it loaded after it ends so its Result and exit status can be read; then this
// library drops the reference (Unit.Unref) and, with CollectMode=inactive-or-failed, systemd collects it.
// When wait() returns, the unit is gone (with RemainAfterExit=yes: when the CommandProcess is destroyed).
// Needs systemd >= 236 (AddRef=).

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sdbus-c++/Types.h>

#include "sdfutures/bus.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/properties.hpp"

namespace sdfutures {

namespace detail {
struct CommandSteps;  // the steps of Command::start(), in src/
}

// The size of a pty()'s terminal, in character cells (struct winsize's ws_row and ws_col).
struct PtyOptions {
    unsigned short rows = 24;
    unsigned short cols = 80;
};

// How a command ended. Filled in from the unit's properties after it became inactive or failed.
struct CommandResult {
    std::string unit;                // the unit it ran in (already collected)
    std::optional<int> exit_code;    // the main process exited (ExecMainCode=CLD_EXITED): its exit code
    std::optional<int> signal;       // the main process was killed (CLD_KILLED or CLD_DUMPED): the signal
    bool core_dumped = false;        // ... and dumped core (CLD_DUMPED)
    // systemd's Result= for the unit: "success", "exit-code", "signal", "core-dump", "timeout" (RuntimeMaxSec=),
    // "oom-kill", ... Note systemd counts SIGHUP, SIGINT, SIGTERM and SIGPIPE deaths as "success".
    std::string unit_result;
    // CPUUsageNSec=, when the manager accounted it (CPUAccounting=yes is set unless you set it yourself; a
    // manager without a usable cpu controller, e.g. a user manager on cgroup v1, reports nothing).
    std::optional<std::chrono::nanoseconds> cpu_time;
    // Peak memory in bytes (page cache included): MemoryPeak= where the manager has it (systemd >= 255); on an
    // older manager with a v1 memory controller, the cgroup's memory.max_usage_in_bytes, copied by a privileged
    // ExecStopPost= (/bin/sh) that Command adds while the cgroup still exists (it is gone when the end is
    // reported). Of the last run under Restart=; none with RemainAfterExit=yes or when unaccounted.
    std::optional<uint64_t> memory_peak;
    // Bytes the unit's processes read from and wrote to block devices (what reached the device: reads served
    // from the page cache are not counted, and buffered writes count when they are written back, by whoever
    // causes it; O_DIRECT and fsync'd writes count as the program's). IOReadBytes=/IOWriteBytes= where the
    // manager records them (cgroup v2, IOAccounting=yes, which Command sets unless you set it or
    // BlockIOAccounting= yourself). systemd 252 on the hybrid or legacy layout records none: there the v1 blkio
    // cgroup's blkio.throttle.io_service_bytes_recursive (or blkio.bfq.*, on a bfq-scheduled device) is copied
    // by the same ExecStopPost= as memory_peak and summed over the devices it lists (a little of it is that
    // /bin/sh's own reading, when /bin/sh is not cached). Empty, not 0, when no counter lists any device: the
    // kernel's blk-throttle (measured on 6.18) counts on a device only once a throttle limit has been set on it
    // since boot, in any cgroup's blkio.throttle.*_device, and bfq only on a bfq-scheduled device; IO to a
    // device that no counter lists is not included. Of the last run, as above.
    std::optional<uint64_t> io_read_bytes;
    std::optional<uint64_t> io_write_bytes;
    // From the main process's start to its exit (ExecMainStartTimestamp= to ExecMainExitTimestamp=).
    std::optional<std::chrono::microseconds> run_time;
    std::string captured_stdout;     // empty unless capture_stdout(); with pty(), what read_terminal() had not taken
    std::string captured_stderr;     // empty unless capture_stderr()
    bool stdout_truncated = false;   // the capture limit was reached: later output was not read
    bool stderr_truncated = false;
    bool timed_out = false;          // run()'s timeout passed and the unit was stopped
    bool stopped = false;            // stopped on request: CommandProcess::stop() or run()'s timeout
    // Restart=: how often systemd restarted the program (NRestarts=); the fields above are the last run's.
    unsigned restarts = 0;
    // RemainAfterExit=yes: the program ended and the unit remains active (not yet collected: `unit` still
    // names a loaded unit) until the CommandProcess is destroyed, which stops it and waits until it is gone.
    bool remains_active = false;

    // Exited with code 0 and was not stopped.
    bool success() const noexcept { return exit_code == 0 && !stopped; }
    // "exited with code 3", "killed by signal SIGSEGV (core dumped)", for messages.
    std::string status_text() const;
};

// systemd created the unit but could not start the program: the start job failed. Raised by start() (and
// run()) with the unit already collected. Typical causes, named in what(): the program could not be
// executed (exit status 203/EXEC), WorkingDirectory= does not exist (200/CHDIR), User= unknown (217/USER),
// a sandbox setting the kernel refused (226/NAMESPACE, 228/SECCOMP, ...).
// systemd 252 can fail the start job of a program that did run but failed within moments (its exit can
// overtake systemd's notice of the execve()); such a run is reported as a CommandResult, not as this error.
// Only a program that itself exits at once with one of systemd's setup statuses (200..243) is mistaken for
// a start failure.
class CommandStartFailed : public JobFailed {
public:
    // `cause`: the properties behind exec_status, as StartFailed::property() names them ("WorkingDirectory=/x"),
    // appended to what() as ", caused by <cause>"; empty when none is known.
    CommandStartFailed(std::string unit, std::string job_result, std::string program, std::string unit_result,
                       std::optional<int> exec_status, const std::string& cause = {});
    const std::string& program() const noexcept { return program_; }
    const std::string& unit_result() const noexcept { return unit_result_; }
    // ExecMainStatus= when systemd's setup of the process failed: 200..243, see systemd.exec(5) "PROCESS EXIT CODES".
    std::optional<int> exec_status() const noexcept { return exec_status_; }
    // Names the program, the unit and systemd's reason (JobFailed's own text says only the job result).
    const char* what() const noexcept override { return message_.c_str(); }

private:
    std::string program_, unit_result_, message_;
    std::optional<int> exec_status_;
};

// The program named in argv[0] cannot be run: it does not exist, is not an executable file, or is a relative
// path. Thrown by Command::start() before anything is sent to systemd.
class ProgramNotFound : public Error {
public:
    ProgramNotFound(std::string program, const std::string& why);
    const std::string& program() const noexcept { return program_; }

private:
    std::string program_;
};

class CommandProcess;

// A program to run and how: build it with the chainable setters, then start() or run() it (as often as you
// like; each start makes a new unit). Every check that can be made before systemd is asked is made by the
// setter or by start(), before anything runs: bad properties throw PropertyError, a missing program throws
// ProgramNotFound naming it, combinations this class cannot honour throw UnsupportedProperty or Unsupported.
class Command {
public:
    // argv[0] is the program: an absolute path, or a name without '/' looked up in $PATH here (as systemd-run
    // does; the default "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" when $PATH is unset).
    // Relative paths with a '/' are refused: the unit does not run in this process's directory. The arguments
    // reach the program verbatim, as with execve(): the '$' that systemd would expand in ExecStart= are escaped.
    explicit Command(std::vector<std::string> argv);

    // ---- the unit
    // A property in unit-file syntax, as `systemd-run -p NAME=VALUE` takes it: any name the property parser
    // knows (SystemCallFilter, ProtectSystem, DynamicUser, PrivateNetwork, MemoryMax, User, ...). Properties
    // Command sets itself are refused (ExecStart, CollectMode, AddRef and the Standard* ones: use the stream
    // setters below). Service settings systemd-run takes pass through:
    //   Type=      exec (the default: start() returns once the program was executed), simple, notify (once it
    //              sent READY=1; NotifyAccess= as given, main by default), oneshot (once it exited), and
    //              notify-reload (systemd >= 253, refused with Unsupported before anything starts on an older
    //              manager). forking and dbus are refused: the main process would not be the program.
    //   Restart=, RestartSec=: the result counts the restarts (CommandResult::restarts) and is the last run's.
    //   RemainAfterExit=yes: wait() returns when the program has ended, with remains_active set; the unit
    //              stays active until the CommandProcess is destroyed, which stops it.
    //   NotifyAccess=, WatchdogSec=: the program's sd_notify (sdfutures/daemon.hpp) reaches the manager; a
    //              program that stops pinging is killed (SIGABRT) and ends with unit_result "watchdog".
    Command& property(std::string name, std::string value);
    // Any property as its D-Bus name and typed value, checked by systemd at start (Properties::set_typed).
    Command& typed_property(std::string name, sdbus::Variant value);
    // All of `properties`, in order, with the same checks.
    Command& properties(const Properties& properties);
    // Environment=: one variable for the program. Its value may hold any characters (it is not re-parsed).
    Command& environment(const std::string& name, const std::string& value);
    // WorkingDirectory=: an absolute path, or "~" for the home of the unit's user.
    Command& working_directory(std::string path);
    // The unit's name, ending in ".service". Default: "sdfutures-cmd-<pid>-<n>-<random>.service", new for
    // every start().
    Command& unit_name(std::string name);
    // The manager to run under. Default: a new Bus::automatic() connection for every start(). A thread that
    // serves a command (wait(), stop(), ...) holds its Bus's lock meanwhile, as PendingJob::wait() does, so
    // other users of a shared Bus wait for it; a Bus of its own (the default) avoids that.
    Command& bus(Bus bus);

    // ---- standard input (default: /dev/null, as for every service)
    Command& stdin_from(std::string data);  // these bytes, then end of file
    Command& stdin_from_fd(int fd);         // a descriptor of yours: systemd gets a duplicate; yours stays open
    Command& stdin_from_null();             // /dev/null
    Command& inherit_stdin();               // this process's descriptor 0

    // ---- standard output (default: inherit)
    // Collect it into CommandResult::captured_stdout. With max_bytes, stop reading once that many bytes are
    // held: the pipe is closed, so the program's next write fails with EPIPE (systemd ignores SIGPIPE for
    // services; with typed_property("IgnoreSIGPIPE", false) it dies of SIGPIPE, as under `| head -c`), and
    // stdout_truncated is set. Memory is then bounded by max_bytes.
    Command& capture_stdout(std::optional<std::size_t> max_bytes = std::nullopt);
    Command& stdout_to_fd(int fd);          // a descriptor of yours, duplicated as for stdin_from_fd
    Command& stdout_to_null();
    Command& stdout_to_journal();           // StandardOutput=journal
    Command& inherit_stdout();              // this process's descriptor 1

    // ---- standard error (default: inherit)
    Command& capture_stderr(std::optional<std::size_t> max_bytes = std::nullopt);
    Command& stderr_to_fd(int fd);
    Command& stderr_to_null();
    Command& stderr_to_journal();
    Command& inherit_stderr();              // this process's descriptor 2
    Command& stderr_to_stdout();            // 2>&1: wherever stdout goes (captured together, when captured)

    // ---- a terminal instead, as `systemd-run --pty` (pystemd.run(pty=True)) gives one
    // stdin, stdout and stderr are one pseudo-terminal's replica, of `size`; this process keeps the master and
    // serves it in the same poll loop as the pipes: CommandProcess::write_terminal(), read_terminal() and
    // resize_terminal(). The replica reaches systemd as StandardInput/Output/ErrorFileDescriptor=, and systemd
    // makes it the program's controlling terminal (measured on 252: /proc/self/stat's tty_nr is the replica's,
    // the program is its session leader and foreground group, a resize raises SIGWINCH), so no TTYPath= is
    // needed, and the terminal is the same whatever /dev/pts the manager sees. The terminal does what terminals
    // do: it echoes input, turns "\n" into "\r\n" on output, hands input over line by line (canonical mode), and
    // takes "\x04" at a line's start as end of file, "\x03" as SIGINT. TERM is not set: environment("TERM", ...).
    // systemd (per its source) resets and flushes (TCIOFLUSH) a terminal stdin for every process it spawns: input
    // written before the program was executed is discarded (start() returns after that under Type=exec, the
    // default; not under Type=simple), and for the same reason Command adds no ExecStopPost= (it would discard
    // the program's last output), so on the hybrid layout memory_peak and the IO bytes stay empty with pty().
    // Combined with any stdin, stdout or stderr setter (either order), throws UnsupportedProperty naming both.
    Command& pty(PtyOptions size = {});

    const std::vector<std::string>& argv() const noexcept { return argv_; }

    // Starts the unit and returns when the service is ready: when its start job has ended (Type=exec: the
    // program was executed; notify: it sent READY=1; oneshot: it exited). The program runs while you do other
    // things. Input is fed and output captured while start() waits and while a thread is in
    // CommandProcess::wait()/wait_for()/stop() (a program that fills its pipe meanwhile just blocks, as with
    // any pipe). Throws before anything runs (see above), SystemdError when systemd refuses the unit (a
    // property it does not accept, UnitExists, ...), or CommandStartFailed when systemd could not start the
    // program (the unit is then collected). A program that ran but failed at once is a result for wait().
    CommandProcess start() const;
    // start() and wait until it ends. With a timeout (counted from when start() returned): when it passes, the unit is stopped (StopUnit, waiting
    // for the stop: SIGTERM, then SIGKILL after TimeoutStopSec=) and the result has timed_out set.
    CommandResult run(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const;

private:
    enum class Stream { inherit, null, fd, capture, data, journal, to_stdout, terminal };
    struct StreamSpec {
        StreamSpec(Stream k, int f = -1, std::optional<std::size_t> max = std::nullopt) : kind(k), fd(f), max_bytes(max) {}
        Stream kind;
        int fd;
        std::optional<std::size_t> max_bytes;
    };
    friend class CommandProcess;
    friend struct detail::CommandSteps;
    enum Which { in, out, err };
    // Sets stream `which` on behalf of `setter` ("capture_stdout()"), refusing the mix with pty().
    Command& set_stream(Which which, StreamSpec spec, const char* setter);

    std::vector<std::string> argv_;
    Properties properties_;
    std::vector<std::string> environment_;  // "NAME=value", sent as one typed Environment= property
    std::optional<std::string> unit_name_;
    std::optional<Bus> bus_;
    StreamSpec stdin_{Stream::null};
    StreamSpec stdout_{Stream::inherit};
    StreamSpec stderr_{Stream::inherit};
    std::array<const char*, 3> setter_{};  // which setter set each stream (nullptr: the default)
    PtyOptions pty_size_;
    std::shared_ptr<const std::string> stdin_data_;  // shared, not copied, between copies of a Command
};

// A started command. wait() serves its pipes and systemd's signals until it ends. Any of wait(), wait_for(),
// stop() and kill() may be called from different threads at once: one thread serves the command at a time,
// and a stop() or kill() made while another thread waits is handed to that thread and carried out at once.
// Destroying a handle whose command has not ended stops the unit (without waiting) and lets it be collected.
// A moved-from handle may only be destroyed or assigned to.
class CommandProcess {
public:
    CommandProcess(CommandProcess&&) noexcept;
    CommandProcess& operator=(CommandProcess&&) noexcept;
    CommandProcess(const CommandProcess&) = delete;
    CommandProcess& operator=(const CommandProcess&) = delete;
    ~CommandProcess();

    const std::string& unit() const noexcept;
    const Bus& bus() const noexcept;

    // Until the program has ended and its unit is gone (or, with RemainAfterExit=yes, remains active). The
    // result can be taken once (a second call throws StateError). A start systemd failed was thrown by start().
    CommandResult wait();
    // As wait(), or nullopt when the timeout passes first; the command then keeps running (and may be waited
    // for again, or stopped).
    std::optional<CommandResult> wait_for(std::chrono::milliseconds timeout);
    // StopUnit, and returns when the unit has stopped (its result then waits for wait()). Nothing happens when
    // the command has already ended.
    void stop();
    // KillUnit: `signal` to every process of the unit, at once; wait() reports the outcome. Nothing happens
    // when the command has already ended.
    void kill(int signal);

    // ---- Command::pty(): the terminal's master. Each throws StateError when the command has no pty().
    // `data` as if typed on the terminal: written at once as far as the terminal takes it, the rest whenever a
    // thread serves the command (wait(), wait_for(), read_terminal(), ...). Ignored once the command has ended.
    void write_terminal(std::string data);
    // What the program wrote to the terminal since the last call: as soon as there is some; empty when
    // `timeout` passes first, or once the command has ended (what was not taken then is in the result's
    // captured_stdout). Serves the command meanwhile, as wait_for() does; another thread may serve at the same
    // time. Output waits here until taken (or until the result takes it): memory grows with what is not read.
    std::string read_terminal(std::chrono::milliseconds timeout);
    // A new window size: TIOCSWINSZ on the master, which sends SIGWINCH to the terminal's foreground process
    // group. Ignored once the command has ended.
    void resize_terminal(PtyOptions size);

private:
    friend class Command;
    friend struct detail::CommandSteps;
    struct Impl;
    explicit CommandProcess(std::unique_ptr<Impl> impl);
    Impl& impl() const;
    std::unique_ptr<Impl> impl_;
};

}  // namespace sdfutures
