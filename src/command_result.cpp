// Command: how it ended. Once the unit is inactive or failed, its Service properties are read and decoded
// into a CommandResult, or into CommandStartFailed when systemd never got the program running; then the
// reference that kept the unit loaded is dropped so that systemd collects it.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <charconv>
#include <cstring>
#include <limits>
#include <map>

#include "anchored_unit.hpp"
#include "command_impl.hpp"

namespace sdfutures {

using detail::kManagerInterface;
using detail::kPropertiesInterface;
using detail::kServiceInterface;
using detail::kUnitInterface;

namespace {

// After Unref a collectable unit is freed in the manager's next loop iteration; this only bounds the wait
// when something else (another client's Ref) keeps it loaded.
constexpr auto kCollectWait = std::chrono::seconds(5);

std::string signal_name(int sig) {
    const char* abbrev = sigabbrev_np(sig);
    return abbrev ? std::string("SIG") + abbrev : std::to_string(sig);
}

// The privileged ExecStopPost= of record_memory_peak(): the shell's builtins alone, so that it needs nothing but
// /bin/sh. It runs in the unit's cgroups, so /proc/self/cgroup names the one to read. It writes only into a file
// that still exists: a handle that went first has removed it, and nothing is to be left behind.
constexpr const char* kPeakScript =
    "while IFS=: read -r _ controllers path; do"
    "  if [ \"$controllers\" = memory ]; then"
    "    read -r peak < \"/sys/fs/cgroup/memory$path/memory.max_usage_in_bytes\" &&"
    "      [ -e \"$1\" ] && echo \"$peak\" > \"$1\";"
    "  fi;"
    "done < /proc/self/cgroup";

std::optional<uint64_t> read_peak_file(const std::string& path) {
    std::string text(32, '\0');
    detail::OwnedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return std::nullopt;
    ssize_t n = ::read(fd.get(), text.data(), text.size());
    if (n <= 0) return std::nullopt;
    uint64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + n, value);
    if (ec != std::errc() || end == text.data()) return std::nullopt;
    return value;
}

// One property of a GetAll answer, or `fallback` when it is missing or of another type.
template <class T>
T property_or(const std::map<std::string, sdbus::Variant>& props, const char* name, T fallback) {
    auto it = props.find(name);
    if (it == props.end()) return fallback;
    try {
        return it->second.get<T>();
    } catch (const sdbus::Error&) {
        return fallback;
    }
}

}  // namespace

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

void CommandProcess::Impl::record_memory_peak(const SystemInfo& info, std::vector<DbusProperty>& props) {
    // systemd >= 255 has MemoryPeak=; on the unified hierarchy the v1 file does not exist.
    if (info.systemd_version >= 255 || info.cgroup_layout == CgroupLayout::unified) return;
    // On another host the file would be written there, out of this process's reach.
    if (detail::state_of(bus).remote_host) return;
    char path[] = "/tmp/sdfutures-cmd-peak-XXXXXX";
    int fd = ::mkostemp(path, O_CLOEXEC);
    if (fd < 0) return;  // best effort: the result then has no memory_peak, as without this
    ::close(fd);
    peak_file = path;
    // privileged ("+"): outside the unit's sandbox and namespaces, so it can read the cgroup file and write
    // ours whatever the program may; ignore-failure ("-"): its end does not change the unit's Result=.
    using ExecEx = sdbus::Struct<std::string, std::vector<std::string>, std::vector<std::string>>;
    std::vector<std::string> argv = detail::escape_for_exec({"/bin/sh", "-c", kPeakScript, "sh", peak_file});
    props.emplace_back("ExecStopPostEx", sdbus::Variant(std::vector<ExecEx>{
                                             ExecEx{"/bin/sh", argv, {"privileged", "ignore-failure"}}}));
}

void CommandProcess::Impl::finish() {
    drain_pipes();
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
    // A unit that remains active keeps this client's reference until the handle goes (abandon() stops it).
    if (!remains_active) release_unit();

    auto get = [&]<class T>(const char* name, T fallback) -> T { return property_or(props, name, fallback); };
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
        if (!peak_file.empty() && !r.memory_peak) r.memory_peak = read_peak_file(peak_file);
        uint64_t started = get("ExecMainStartTimestampMonotonic", uint64_t{0});
        uint64_t exited = get("ExecMainExitTimestampMonotonic", uint64_t{0});
        if (started && exited >= started) r.run_time = std::chrono::microseconds(exited - started);
        r.captured_stdout = std::move(out.data);
        r.captured_stderr = std::move(err.data);
        r.stdout_truncated = out.truncated;
        r.stderr_truncated = err.truncated;
        r.stopped = stopped;
        r.timed_out = timed_out;
        r.restarts = get("NRestarts", uint32_t{0});
        r.remains_active = remains_active;
        result = std::move(r);
    }
    if (!peak_file.empty()) ::unlink(peak_file.c_str());
    peak_file.clear();
    finished = true;
    for (auto& w : stop_waiters) answer(*w);
    stop_waiters.clear();
}

void CommandProcess::Impl::release_unit() {
    auto& state = detail::state_of(bus);
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

void CommandProcess::Impl::abandon() noexcept {
    if (!peak_file.empty()) ::unlink(peak_file.c_str());  // a handle that ends before its unit, or never started one
    if (!started) return;
    auto& state = detail::state_of(bus);
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
    } else if (remains_active) {
        // The program has ended; only the unit's "active" remains, so stopping it is immediate. Waited for,
        // so that no unit outlives its handle.
        try {
            detail::RemovalWatch watch(state, unit);
            state.manager->callMethod("StopUnit").onInterface(kManagerInterface)
                .withArguments(unit, std::string("replace"));
            unit_proxy->callMethod("Unref").onInterface(kUnitInterface);
            watch.wait(std::chrono::steady_clock::now() + kCollectWait);
        } catch (...) {
            // Best effort, as above.
        }
    }
    properties_match.reset();
    unit_proxy.reset();
}

}  // namespace sdfutures
