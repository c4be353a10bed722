#include "sdfutures/error.hpp"

#include <array>
#include <cstring>

namespace sdfutures {

BusError::BusError(std::string address, const std::string& why)
    : Error("cannot use the D-Bus bus at '" + address + "': " + why), address_(std::move(address)) {}

SystemdError::SystemdError(std::string call, std::string name, std::string message)
    : Error(call + " failed: " + name + ": " + message),
      call_(std::move(call)), name_(std::move(name)), message_(std::move(message)) {}

JobFailed::JobFailed(std::string unit, std::string job_type, std::string result)
    : Error("the " + job_type + " job of unit '" + unit + "' ended with result '" + result + "'"),
      unit_(std::move(unit)), job_type_(std::move(job_type)), result_(std::move(result)) {}

JobFailed::JobFailed(std::string unit, std::string job_type, std::string result, const std::string& what, int)
    : Error(what), unit_(std::move(unit)), job_type_(std::move(job_type)), result_(std::move(result)) {}

namespace {

struct ExitStatusEntry {
    int status;
    std::string_view name;
    std::string_view meaning;  // for systemd's own statuses: what failed before the program ran
};

// The names are systemd's (`systemd-analyze exit-status`, src/basic/exit-status.c); the meanings follow
// systemd.exec(5), "PROCESS EXIT CODES". 223 and 234 are retired and have no name.
constexpr std::array kExitStatuses = {
    ExitStatusEntry{0, "SUCCESS", ""},
    ExitStatusEntry{1, "FAILURE", ""},
    ExitStatusEntry{2, "INVALIDARGUMENT", ""},
    ExitStatusEntry{3, "NOTIMPLEMENTED", ""},
    ExitStatusEntry{4, "NOPERMISSION", ""},
    ExitStatusEntry{5, "NOTINSTALLED", ""},
    ExitStatusEntry{6, "NOTCONFIGURED", ""},
    ExitStatusEntry{7, "NOTRUNNING", ""},
    ExitStatusEntry{64, "USAGE", ""},
    ExitStatusEntry{65, "DATAERR", ""},
    ExitStatusEntry{66, "NOINPUT", ""},
    ExitStatusEntry{67, "NOUSER", ""},
    ExitStatusEntry{68, "NOHOST", ""},
    ExitStatusEntry{69, "UNAVAILABLE", ""},
    ExitStatusEntry{70, "SOFTWARE", ""},
    ExitStatusEntry{71, "OSERR", ""},
    ExitStatusEntry{72, "OSFILE", ""},
    ExitStatusEntry{73, "CANTCREAT", ""},
    ExitStatusEntry{74, "IOERR", ""},
    ExitStatusEntry{75, "TEMPFAIL", ""},
    ExitStatusEntry{76, "PROTOCOL", ""},
    ExitStatusEntry{77, "NOPERM", ""},
    ExitStatusEntry{78, "CONFIG", ""},
    ExitStatusEntry{200, "CHDIR", "the working directory could not be entered"},
    ExitStatusEntry{201, "NICE", "the nice level could not be set"},
    ExitStatusEntry{202, "FDS", "the file descriptors could not be closed or passed on"},
    ExitStatusEntry{203, "EXEC", "the program could not be executed"},
    ExitStatusEntry{204, "MEMORY", "memory ran out while the process was set up"},
    ExitStatusEntry{205, "LIMITS", "a resource limit could not be set"},
    ExitStatusEntry{206, "OOM_ADJUST", "the OOM score adjustment could not be set"},
    ExitStatusEntry{207, "SIGNAL_MASK", "the signal mask could not be set"},
    ExitStatusEntry{208, "STDIN", "standard input could not be set up"},
    ExitStatusEntry{209, "STDOUT", "standard output could not be set up"},
    ExitStatusEntry{210, "CHROOT", "the root directory could not be changed"},
    ExitStatusEntry{211, "IOPRIO", "the I/O scheduling could not be set"},
    ExitStatusEntry{212, "TIMERSLACK", "the timer slack could not be set"},
    ExitStatusEntry{213, "SECUREBITS", "the secure bits could not be set"},
    ExitStatusEntry{214, "SETSCHEDULER", "the CPU scheduling policy could not be set"},
    ExitStatusEntry{215, "CPUAFFINITY", "the CPU affinity could not be set"},
    ExitStatusEntry{216, "GROUP", "a group could not be determined or switched to"},
    ExitStatusEntry{217, "USER", "the user could not be determined or switched to"},
    ExitStatusEntry{218, "CAPABILITIES", "the capabilities could not be dropped or set"},
    ExitStatusEntry{219, "CGROUP", "the process could not be placed in the unit's control group"},
    ExitStatusEntry{220, "SETSID", "a new session could not be created"},
    ExitStatusEntry{221, "CONFIRM", "the execution was cancelled at the confirmation prompt"},
    ExitStatusEntry{222, "STDERR", "standard error could not be set up"},
    ExitStatusEntry{224, "PAM", "the PAM session could not be set up"},
    ExitStatusEntry{225, "NETWORK", "the network namespace could not be set up"},
    ExitStatusEntry{226, "NAMESPACE", "the mount, UTS or IPC namespace could not be set up"},
    ExitStatusEntry{227, "NO_NEW_PRIVILEGES", "new privileges could not be disabled"},
    ExitStatusEntry{228, "SECCOMP", "the system call filter could not be applied"},
    ExitStatusEntry{229, "SELINUX_CONTEXT", "the SELinux context could not be determined or set"},
    ExitStatusEntry{230, "PERSONALITY", "the execution domain (personality) could not be set"},
    ExitStatusEntry{231, "APPARMOR", "the AppArmor profile could not be prepared"},
    ExitStatusEntry{232, "ADDRESS_FAMILIES", "the address family restriction could not be applied"},
    ExitStatusEntry{233, "RUNTIME_DIRECTORY", "the runtime directory could not be set up"},
    ExitStatusEntry{235, "CHOWN", "the ownership of a socket could not be changed"},
    ExitStatusEntry{236, "SMACK_PROCESS_LABEL", "the SMACK label could not be set"},
    ExitStatusEntry{237, "KEYRING", "the kernel keyring could not be set up"},
    ExitStatusEntry{238, "STATE_DIRECTORY", "the state directory could not be set up"},
    ExitStatusEntry{239, "CACHE_DIRECTORY", "the cache directory could not be set up"},
    ExitStatusEntry{240, "LOGS_DIRECTORY", "the logs directory could not be set up"},
    ExitStatusEntry{241, "CONFIGURATION_DIRECTORY", "the configuration directory could not be set up"},
    ExitStatusEntry{242, "NUMA_POLICY", "the NUMA memory policy could not be set"},
    ExitStatusEntry{243, "CREDENTIALS", "the credentials could not be set up"},
    ExitStatusEntry{244, "BPF", "the BPF restrictions could not be applied"},
    ExitStatusEntry{245, "KSM", "kernel samepage merging could not be set"},
    ExitStatusEntry{246, "MEMORY_THP", "the transparent huge page setting could not be applied"},
    ExitStatusEntry{255, "EXCEPTION", ""},
};

const ExitStatusEntry* find_exit_status(int status) noexcept {
    for (const auto& e : kExitStatuses)
        if (e.status == status) return &e;
    return nullptr;
}

std::string start_failed_text(const std::string& unit, const std::string& job_result, const std::string& unit_result,
                              int code, int status, const std::string& property, const std::string& note) {
    std::string how;
    if (code == 1) {  // CLD_EXITED
        std::string_view meaning = exit_status_meaning(status);
        how = meaning.empty() ? "its process exited with status " + exit_status_text(status)
                              : "systemd could not set up its process, which exited with " + exit_status_text(status) +
                                    " (" + std::string(meaning) + ")";
    } else if (code == 2 || code == 3) {  // CLD_KILLED, CLD_DUMPED
        const char* abbrev = sigabbrev_np(status);
        how = "its process was killed by " + (abbrev ? "SIG" + std::string(abbrev) : "signal " + std::to_string(status)) +
              (code == 3 ? " (core dumped)" : "");
    } else {
        how = "the start job ended with result '" + job_result + "'";
    }
    if (!property.empty()) how += ", caused by " + property;
    std::string what = "unit '" + unit + "' did not start: " + how + " (start job result '" + job_result + "'";
    if (!unit_result.empty()) what += ", Result=" + unit_result;
    what += ")";
    if (!note.empty()) what += "; " + note;
    return what;
}

}  // namespace

std::string_view exit_status_name(int status) noexcept {
    const ExitStatusEntry* e = find_exit_status(status);
    return e ? e->name : std::string_view();
}

std::string_view exit_status_meaning(int status) noexcept {
    const ExitStatusEntry* e = find_exit_status(status);
    return e ? e->meaning : std::string_view();
}

std::string exit_status_text(int status) {
    std::string_view name = exit_status_name(status);
    return std::to_string(status) + (name.empty() ? std::string() : "/" + std::string(name));
}

StartFailed::StartFailed(const std::string& unit, const std::string& job_result, std::string unit_result, int exec_main_code,
                         int exec_main_status, std::string property, const std::string& note)
    : JobFailed(unit, "start", job_result,
                start_failed_text(unit, job_result, unit_result, exec_main_code, exec_main_status, property, note), 0),
      property_(std::move(property)), unit_result_(std::move(unit_result)) {
    if (exec_main_code == 1) {
        exit_status_ = exec_main_status;
        status_name_ = std::string(exit_status_name(exec_main_status));
    } else if (exec_main_code == 2 || exec_main_code == 3) {
        exit_status_ = -exec_main_status;
    }
}

PropertyError::PropertyError(std::string property, std::string value, const std::string& expected)
    : Error("property " + property + "=" + value + " is invalid: expected " + expected),
      property_(std::move(property)), value_(std::move(value)) {}

PropertyError::PropertyError(std::string property, std::string value, const std::string& what, int)
    : Error(what), property_(std::move(property)), value_(std::move(value)) {}

UnsupportedProperty::UnsupportedProperty(const std::string& property, const std::string& why)
    : PropertyError(property, "", "property " + property + "= is not supported here: " + why, 0) {}

RemoteError::RemoteError(std::string type_name, std::string what)
    : Error("task raised " + type_name + (what.empty() ? std::string() : ": " + what)),
      type_name_(std::move(type_name)), what_(std::move(what)) {}

SetupError::SetupError(std::string step, int error_number, const std::string& detail)
    : Error("the child could not enter its unit at step '" + step + "': " + detail +
            (error_number ? " (" + errno_text(error_number) + ")" : std::string())),
      step_(std::move(step)), errno_(error_number) {}

ProcessDied::ProcessDied(const std::string& what, int exit_status) : Error(what), exit_status_(exit_status) {}

UnitStopped::UnitStopped(std::string unit)
    : Error("unit '" + unit + "' was stopped before the work finished"), unit_(std::move(unit)) {}

SystemError::SystemError(std::string call, int error_number, const std::string& detail)
    : Error(call + " failed" + (detail.empty() ? std::string() : " " + detail) + ": " + errno_text(error_number)),
      call_(std::move(call)), errno_(error_number) {}

std::string errno_text(int error_number) {
    const char* name = strerrorname_np(error_number);
    return std::string(strerrordesc_np(error_number) ? strerrordesc_np(error_number) : "unknown error") +
           (name ? std::string(" (") + name + ")" : std::string());
}

}  // namespace sdfutures
