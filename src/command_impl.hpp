#pragma once
// Command's internals, shared by its sources: command.cpp (the builder and the properties it assembles),
// command_program.cpp (finding the executable), command_start.cpp (starting the unit and waiting for its start
// job), command_loop.cpp (the serving loop: who serves, the pipes, the poll loop) and command_result.cpp
// (decoding the ended unit's properties into a CommandResult or the start failure).

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <sdbus-c++/sdbus-c++.h>

#include "bus_state.hpp"
#include "fd_util.hpp"
#include "sdfutures/command.hpp"
#include "sdfutures/system_info.hpp"

namespace sdfutures::detail {

constexpr const char* kServiceInterface = "org.freedesktop.systemd1.Service";
// Large enough that a 100 MiB stream takes ~100 wake-ups, not ~1600; best effort (pipe-max-size may forbid).
constexpr int kPipeSize = 1 << 20;

// Every descriptor made here is O_CLOEXEC, so a fork+exec elsewhere in the process cannot inherit a pipe
// end and hold it open.
using OwnedFd = Fd;

struct Pipe {
    OwnedFd read, write;
};
Pipe make_pipe();
void set_nonblocking(int fd);

// ---- the builder (command.cpp)

// The last value given for `name`, in unit-file syntax (a typed string or boolean too); nullopt when none.
std::optional<std::string> property_text(const Properties& properties, std::string_view name);
// Type= as the unit gets it: the caller's, or exec.
std::string service_type(const Properties& properties);

// ---- program lookup (command_program.cpp)

// argv[0] checked as systemd would when it executes it, so that a typo fails here, naming the program,
// rather than as a failed unit: the absolute path to execute. Throws ProgramNotFound.
std::string resolve_program(const std::string& name, const Properties& properties,
                            const std::optional<std::string>& remote_host = std::nullopt);
// argv with every '$' doubled, so that systemd's expansion in ExecStart= gives back what the caller wrote.
std::vector<std::string> escape_for_exec(const std::vector<std::string>& argv);

// ---- the start (command_start.cpp)

// A manager that is not root cannot switch users; refused before anything runs, with what is needed instead.
void check_identity_properties(const Bus& bus, const Properties& properties);

}  // namespace sdfutures::detail

namespace sdfutures {

// A started command's state, served by one thread at a time (see CommandProcess).
struct CommandProcess::Impl {
    using OwnedFd = detail::OwnedFd;
    struct Capture {
        OwnedFd fd;
        std::string data;
        std::optional<std::size_t> max_bytes;
        bool truncated = false;
    };
    struct Request {
        enum Kind { stop, kill, write_terminal, resize_terminal } kind;
        int signal = 0;
        std::string data;   // write_terminal
        PtyOptions size;    // resize_terminal
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
    std::string active_state, sub_state;
    bool active_state_stale = false;
    bool state_was_read = false;     // the states above come from a Get, not from a signal
    bool remain_after_exit = false;  // RemainAfterExit=yes: the unit stays active after the program's end
    bool restart_configured = false;  // Restart= other than no: a run's end may be followed by another run

    // From here to the control block: touched only by the serving thread, under the bus lock.
    std::string start_job, stop_job;  // paths awaited in BusState::awaited_jobs; empty once finished
    std::optional<std::string> start_job_result;
    bool stopped = false, timed_out = false;  // stopped: a StopUnit was sent (on request or at the timeout)

    OwnedFd stdin_fd;
    std::shared_ptr<const std::string> stdin_data;
    size_t stdin_written = 0;
    Capture out, err;
    // pty(): the terminal's master (non-blocking) and what is still to be written to it; and a replica of our
    // own, held until the end, as the pipes' ends are not: measured on kernel 6.18, with only systemd's and the
    // program's copy of the replica (one open file), the master intermittently read EIO (the replica side "closed")
    // while the program was still running and writing, after which nothing more came. Held open here, the master
    // never sees the replica closed; the end is the unit's, and the rest is read until EAGAIN, as for the pipes.
    OwnedFd terminal, terminal_replica;
    bool has_terminal = false;
    std::string terminal_input;
    size_t terminal_input_written = 0;
    std::string usage_file;  // record_cgroup_usage()'s file, removed once read (or when the handle goes)
    bool blkio_counted = false;  // a v1 blkio counter counted on some device when the unit was started

    std::optional<CommandResult> result;
    bool result_taken = false;
    std::exception_ptr failure;
    std::atomic<bool> finished{false};
    bool started = false;  // StartTransientUnit succeeded: there is a unit to stop or release
    bool remains_active = false;  // finished, and the unit remains active (RemainAfterExit=yes) until abandon()

    // Control: who serves, and what other threads asked of it. Taken after the bus lock, never before it.
    std::mutex control;
    std::condition_variable control_cv;
    bool serving = false;
    std::vector<std::shared_ptr<Request>> requests;      // not yet carried out
    std::vector<std::shared_ptr<Request>> stop_waiters;  // stop sent; answered when the command has finished
    std::string terminal_output;  // read from the terminal, not yet taken by read_terminal() (or the result)
    OwnedFd wake;                                         // eventfd: a request is waiting

    explicit Impl(Bus b) : bus(std::move(b)) {}
    ~Impl() { abandon(); }
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    // ---- the start (command_start.cpp)

    // StartTransientUnit, with the unit's signals matched first; its start job is then awaited.
    void start_unit(const std::vector<DbusProperty>& props);
    // Follows ActiveState and SubState from the unit's PropertiesChanged signals.
    void on_properties_changed(sdbus::Message& msg);
    // Serves until the start job has ended (the service is ready: exec'd, READY=1 sent, or, for oneshot,
    // exited), and further until the unit has ended when the job failed. Throws the start failure.
    void wait_until_started();

    // ---- entering and leaving the serving role (command_loop.cpp)

    // For wait()/wait_for(): false when the deadline passed while another thread served.
    bool become_server(detail::Deadline deadline);
    // Hands a request to the serving thread, or serves it here when none does (or when the server leaves, at
    // its own deadline, before the request is answered).
    void request(std::shared_ptr<Request> r);
    // Answers a request; under the control lock, so that a requester checking answered() cannot miss it.
    void answer(Request& r, const std::exception_ptr& error = nullptr);

    // ---- the loop (command_loop.cpp)

    // Serves until `until()` holds or the deadline passes. The caller has become the server.
    void serve(detail::Deadline deadline, const std::function<bool()>& until);
    void poll_once(detail::BusState& state, detail::Deadline deadline);
    void feed_stdin();
    // pty(): writes what the terminal takes of terminal_input; reads what it holds (at most `rounds` chunks)
    // into terminal_output, waking a thread waiting in read_terminal().
    void feed_terminal();
    void read_terminal(int rounds);
    // Reads what the pipe holds now (at most `rounds` chunks); closes it at end of file or at the cap.
    void read_capture(Capture& c, int rounds);
    void carry_out_requests();
    // Takes a job's result out of the shared bookkeeping once JobRemoved reported it.
    std::optional<std::string> take_job_result(std::string& job);
    // Follows the start job and the unit's state; calls finish() once the unit has ended.
    void progress();
    // The rest of what the pipes hold, once every process of the unit is gone.
    void drain_pipes();

    // ---- the end (command_result.cpp)

    // Where the controllers are v1 ones (hybrid or legacy layout), whose cgroups are removed before the end is
    // reported, and systemd 252 records neither MemoryPeak= nor IOReadBytes=/IOWriteBytes=: an ExecStopPost=,
    // run while the cgroups still exist, copies memory.max_usage_in_bytes and the blkio byte counters to
    // `usage_file`, which finish() reads.
    void record_cgroup_usage(const SystemInfo& info, std::vector<DbusProperty>& props);

    // The unit has ended: reads its properties, releases it, and settles `result` or `failure`.
    void finish();
    // Drops the reference AddRef=yes gave this client, so that systemd collects the unit, and waits until it
    // has: a caller may reuse the unit name as soon as wait() returns.
    void release_unit();
    // The handle is going away before the command ended: stop the unit without waiting and let systemd
    // collect it, so nothing is left behind.
    void abandon() noexcept;
};

}  // namespace sdfutures

namespace sdfutures::detail {

// The steps of Command::start(), each where its concept lives; a friend of Command, to read what was built.
struct CommandSteps {
    // A handle for a unit yet to be started, with its wake-up eventfd (command_start.cpp).
    static std::unique_ptr<CommandProcess::Impl> new_process(const Command& command, Bus bus, std::string program);
    // "stdout, stderr as descriptors": the streams systemd gets as descriptors (captured, fed, given, inherited);
    // empty when none is (command_start.cpp).
    static std::string streams_as_descriptors(const Command& command);
    // The descriptors given to the stream setters are open (command_start.cpp).
    static void check_stream_descriptors(const Command& command);
    // Everything the unit is started with but its streams: the caller's properties after Command's defaults,
    // then what Command sets itself (command.cpp).
    static std::vector<DbusProperty> unit_properties(const Command& command, const std::string& program);
    // The streams' properties appended to `props`; the pipes this process serves kept in `process`
    // (command_loop.cpp).
    static void connect_streams(const Command& command, std::vector<DbusProperty>& props, CommandProcess::Impl& process);
    // pty(): a new pseudo-terminal of `size`, its master and replica kept in `process` (command_loop.cpp).
    static void open_terminal(PtyOptions size, CommandProcess::Impl& process);
};

}  // namespace sdfutures::detail
