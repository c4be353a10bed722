// Command: how it ended. Once the unit is inactive or failed, its Service properties are read and decoded
// into a CommandResult, or into CommandStartFailed when systemd never got the program running; then the
// reference that kept the unit loaded is dropped so that systemd collects it.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
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

// The privileged ExecStopPost= of record_cgroup_usage(): the shell's builtins alone, so that it needs nothing but
// /bin/sh. It runs in the unit's cgroups, so /proc/self/cgroup names the ones to read; only those that end in the
// unit's name ($2) are the unit's own (with MemoryAccounting=no or IOAccounting=no the unit stays in its slice's,
// whose figures are not the program's). It copies, one line each:
//   memory <memory.max_usage_in_bytes>                  the v1 memory controller's peak
//   blkio                                               the unit has a v1 blkio cgroup of its own; then
//   throttle|bfq <MAJ:MIN> <Read|Write|...> <bytes>    its io_service_bytes_recursive, a line per device and op
//   iostat                                              the unit's cgroup2 has the io controller; then
//   io <MAJ:MIN> rbytes=<n> wbytes=<n> ...             its io.stat
// into $1, and only if that file still exists: a handle that went first has removed it, and nothing is to be
// left behind.
constexpr const char* kUsageScript =
    "[ -e \"$1\" ] || exit 0;"
    "while IFS=: read -r _ controllers path; do"
    "  case \"$path\" in */\"$2\") ;; *) continue;; esac;"
    "  case \"$controllers\" in"
    "  memory) read -r v < \"/sys/fs/cgroup/memory$path/memory.max_usage_in_bytes\" && echo \"memory $v\";;"
    "  blkio) echo blkio; for kind in throttle bfq; do"
    "      f=\"/sys/fs/cgroup/blkio$path/blkio.$kind.io_service_bytes_recursive\";"
    "      [ -r \"$f\" ] && while read -r dev op n; do echo \"$kind $dev $op $n\"; done < \"$f\";"
    "    done;;"
    "  '') f=\"/sys/fs/cgroup/unified$path/io.stat\";"
    "    [ -r \"$f\" ] && echo iostat && while read -r line; do echo \"io $line\"; done < \"$f\";;"
    "  esac;"
    "done < /proc/self/cgroup > \"$1\"";

// What the script above recorded: the memory peak, and the bytes read and written summed over the devices the
// unit's counters list. A cgroup lists a device once it did IO on it, and a v1 blkio counter only where it counts
// (measured on kernel 6.18: blk-throttle counts on a device only once a throttle limit was set on it since boot; bfq
// only where the device's scheduler is bfq). So the v1 figures are used only when `blkio_counts`: the root blkio
// cgroup listed a device when the unit was started (see blkio_counts()); then a device the unit does not list is a
// zero. Where both v1 counters list a device, throttle's figure is taken, so nothing is counted twice.
struct CgroupUsage {
    std::optional<uint64_t> memory_peak, io_read_bytes, io_write_bytes;
};

std::optional<uint64_t> number(std::string_view text) {
    uint64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end == text.data()) return std::nullopt;
    return value;
}

std::vector<std::string_view> words(std::string_view line) {
    std::vector<std::string_view> out;
    size_t i = 0;
    while (i < line.size()) {
        size_t j = line.find(' ', i);
        if (j == std::string_view::npos) j = line.size();
        if (j > i) out.push_back(line.substr(i, j - i));
        i = j + 1;
    }
    return out;
}

CgroupUsage parse_usage(std::string_view text, bool blkio_counts) {
    CgroupUsage usage;
    bool own_blkio = false, own_io = false;
    struct Bytes {
        uint64_t read = 0, written = 0;
    };
    std::map<std::string, std::map<std::string, Bytes, std::less<>>, std::less<>> by_counter;  // counter -> device -> bytes
    while (!text.empty()) {
        size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
        std::vector<std::string_view> w = words(line);
        if (w.size() == 1 && w[0] == "blkio") {
            own_blkio = true;
        } else if (w.size() == 1 && w[0] == "iostat") {
            own_io = true;
        } else if (w.size() == 2 && w[0] == "memory") {
            usage.memory_peak = number(w[1]);
        } else if (w.size() == 4 && (w[0] == "throttle" || w[0] == "bfq") && w[1].find(':') != std::string_view::npos) {
            Bytes& b = by_counter[std::string(w[0])][std::string(w[1])];  // listed, even if with zeros
            if (auto n = number(w[3]); n && w[2] == "Read") b.read = *n;
            else if (n && w[2] == "Write") b.written = *n;
        } else if (w.size() >= 2 && w[0] == "io") {
            Bytes& b = by_counter["io"][std::string(w[1])];
            for (size_t i = 2; i < w.size(); ++i) {
                if (w[i].starts_with("rbytes=")) b.read = number(w[i].substr(7)).value_or(0);
                if (w[i].starts_with("wbytes=")) b.written = number(w[i].substr(7)).value_or(0);
            }
        }
    }
    std::map<std::string, Bytes, std::less<>> devices;
    for (const char* counter : {"io", "throttle", "bfq"})
        for (auto& [device, bytes] : by_counter[counter]) devices.emplace(device, bytes);  // the first counter wins
    if (!own_io && !(own_blkio && blkio_counts)) return usage;
    usage.io_read_bytes = 0;
    usage.io_write_bytes = 0;
    for (auto& [device, bytes] : devices) {
        *usage.io_read_bytes += bytes.read;
        *usage.io_write_bytes += bytes.written;
    }
    return usage;
}

CgroupUsage read_usage_file(const std::string& path, bool blkio_counts) {
    detail::OwnedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return {};
    std::string text;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        text.append(buf, size_t(n));
    }
    return parse_usage(text, blkio_counts);
}

// Whether the v1 blkio counters count on some device: the root cgroup lists every device a counter counts on.
bool blkio_counts() {
    for (const char* counter : {"throttle", "bfq"}) {
        std::string path = std::string("/sys/fs/cgroup/blkio/blkio.") + counter + ".io_service_bytes_recursive";
        detail::OwnedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) continue;
        char buf[256];
        ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n <= 0) continue;
        // "MAJ:MIN Read N" lines come first; a counter that counts nowhere has only "Total 0".
        std::string_view text(buf, size_t(n));
        if (text.substr(0, text.find('\n')).find(':') != std::string_view::npos) return true;
    }
    return false;
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

void CommandProcess::Impl::record_cgroup_usage(const SystemInfo& info, std::vector<DbusProperty>& props) {
    // On the unified hierarchy the v1 files do not exist, and systemd itself records IOReadBytes=/IOWriteBytes=
    // (and, from 255, MemoryPeak=). Elsewhere systemd 252 records neither: IO bytes come only from the v1 blkio
    // counters (or a cgroup2 io.stat, should the io controller be there), read by the script.
    if (info.cgroup_layout == CgroupLayout::unified) return;
    // On another host the file would be written there, out of this process's reach.
    if (detail::state_of(bus).remote_host) return;
    // Asked before the start: a counter that counts on a device goes on counting there until the next boot.
    blkio_counted = blkio_counts();
    char path[] = "/tmp/sdfutures-cmd-usage-XXXXXX";
    int fd = ::mkostemp(path, O_CLOEXEC);
    if (fd < 0) return;  // best effort: the result then has no memory_peak, as without this
    ::close(fd);
    usage_file = path;
    // privileged ("+"): outside the unit's sandbox and namespaces, so it can read the cgroup file and write
    // ours whatever the program may; ignore-failure ("-"): its end does not change the unit's Result=.
    using ExecEx = sdbus::Struct<std::string, std::vector<std::string>, std::vector<std::string>>;
    std::vector<std::string> argv = detail::escape_for_exec({"/bin/sh", "-c", kUsageScript, "sh", usage_file, unit});
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
        if (uint64_t n = get("IOReadBytes", not_set); n != not_set) r.io_read_bytes = n;
        if (uint64_t n = get("IOWriteBytes", not_set); n != not_set) r.io_write_bytes = n;
        if (!usage_file.empty()) {
            CgroupUsage usage = read_usage_file(usage_file, blkio_counted);
            if (!r.memory_peak) r.memory_peak = usage.memory_peak;
            if (!r.io_read_bytes && !r.io_write_bytes) {
                r.io_read_bytes = usage.io_read_bytes;
                r.io_write_bytes = usage.io_write_bytes;
            }
        }
        uint64_t started = get("ExecMainStartTimestampMonotonic", uint64_t{0});
        uint64_t exited = get("ExecMainExitTimestampMonotonic", uint64_t{0});
        if (started && exited >= started) r.run_time = std::chrono::microseconds(exited - started);
        r.captured_stdout = std::move(out.data);
        if (has_terminal) {  // what read_terminal() did not take
            std::lock_guard lock(control);
            r.captured_stdout = std::exchange(terminal_output, std::string());
        }
        r.captured_stderr = std::move(err.data);
        r.stdout_truncated = out.truncated;
        r.stderr_truncated = err.truncated;
        r.stopped = stopped;
        r.timed_out = timed_out;
        r.restarts = get("NRestarts", uint32_t{0});
        r.remains_active = remains_active;
        result = std::move(r);
    }
    if (!usage_file.empty()) ::unlink(usage_file.c_str());
    usage_file.clear();
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
    if (!usage_file.empty()) ::unlink(usage_file.c_str());  // a handle that ends before its unit, or never started one
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
