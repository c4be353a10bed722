#pragma once
// The exception hierarchy of sdfutures. Everything the library throws on its own account derives from
// sdfutures::Error; a task's own exception is rethrown as itself when it is a standard type, else as RemoteError.

#include <cerrno>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

namespace sdfutures {

// Root of everything sdfutures throws on its own account.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The D-Bus bus could not be reached or used: `address` says which one.
class BusError : public Error {
public:
    BusError(std::string address, const std::string& why);
    const std::string& address() const noexcept { return address_; }

private:
    std::string address_;
};

// systemd (or the bus) answered a call with a D-Bus error, e.g. org.freedesktop.systemd1.UnitExists.
class SystemdError : public Error {
public:
    SystemdError(std::string call, std::string name, std::string message);
    const std::string& call() const noexcept { return call_; }
    const std::string& name() const noexcept { return name_; }
    const std::string& message() const noexcept { return message_; }

private:
    std::string call_, name_, message_;
};

// A job (start, stop, kill) ended with a result other than "done".
class JobFailed : public Error {
public:
    JobFailed(std::string unit, std::string job_type, std::string result);
    const std::string& unit() const noexcept { return unit_; }
    const std::string& job_type() const noexcept { return job_type_; }
    const std::string& result() const noexcept { return result_; }

protected:
    // For subclasses that say more than the job result.
    JobFailed(std::string unit, std::string job_type, std::string result, const std::string& what, int);

private:
    std::string unit_, job_type_, result_;
};

// The start job of a unit failed, decoded from what systemd recorded for the unit (ExecMainCode=,
// ExecMainStatus=, Result=): what() names the unit, the exit status in systemd's own words (217/USER,
// 200/CHDIR, 226/NAMESPACE, ...) and the properties that status points at (User=, WorkingDirectory=, ...).
// Thrown by TransientUnitProcess, run() and TransientUnitPoolExecutor when their unit does not start; a
// JobFailed, so code catching that still catches it.
class StartFailed : public JobFailed {
public:
    // `exec_main_code` and `exec_main_status` as systemd reports them: CLD_EXITED (1) and the exit status,
    // CLD_KILLED (2) or CLD_DUMPED (3) and the signal, 0 when no process of the unit ended. `property` names the
    // assignments behind the status in unit-file syntax ("User=nobody"), empty when none; `note` is added to
    // what() as it is.
    StartFailed(const std::string& unit, const std::string& job_result, std::string unit_result,
                int exec_main_code, int exec_main_status, std::string property, const std::string& note = {});

    // How the unit's process ended before the program ran, as ProcessDied counts: >= 0 the exit status
    // (systemd's own setup failures are 200..246), < 0 the negated signal; nullopt when no process ended (the
    // manager failed before forking one, or the job was cancelled or timed out).
    std::optional<int> exit_status() const noexcept { return exit_status_; }
    // systemd's name for exit_status(), as `systemctl status` shows it: "USER" for 217, "CHDIR" for 200; empty
    // for a signal or a status systemd has no name for.
    const std::string& status_name() const noexcept { return status_name_; }
    // The assignments the status points at, in unit-file syntax: "User=no-such-user", "WorkingDirectory=/srv/x",
    // "PrivateTmp=yes, ProtectHome=yes"; empty when the status names no property or none of its properties was
    // given.
    const std::string& property() const noexcept { return property_; }
    // The unit's Result= ("exit-code", "signal", "resources", "timeout", ...); empty when it could not be read.
    const std::string& unit_result() const noexcept { return unit_result_; }

private:
    std::optional<int> exit_status_;
    std::string status_name_, property_, unit_result_;
};

// systemd's name for an exit status, as `systemctl status` shows it ("status=217/USER"): its own statuses
// (systemd.exec(5), "PROCESS EXIT CODES"), libc's 0 and 1, the LSB's 2..7 and BSD's 64..78 (<sysexits.h>);
// empty for any other.
std::string_view exit_status_name(int status) noexcept;
// What one of systemd's own statuses (200..246) says went wrong before the program ran, e.g. "the user could
// not be determined or switched to" for 217; empty for any other status.
std::string_view exit_status_meaning(int status) noexcept;
// "217/USER", or "3" for a status without a name.
std::string exit_status_text(int status);

// A property given in unit-file syntax could not be converted; thrown before anything reaches systemd.
class PropertyError : public Error {
public:
    PropertyError(std::string property, std::string value, const std::string& expected);
    const std::string& property() const noexcept { return property_; }
    const std::string& value() const noexcept { return value_; }

protected:
    PropertyError(std::string property, std::string value, const std::string& what, int);

private:
    std::string property_, value_;
};

// A well-formed property that cannot take effect where it was given (e.g. SystemCallFilter= for a forked
// function, which systemd can only apply to a program it executes itself).
class UnsupportedProperty : public PropertyError {
public:
    UnsupportedProperty(const std::string& property, const std::string& why);
};

// The manager, kernel or privileges lack something a feature needs (a systemd version, cgroup v2, root).
class Unsupported : public Error {
public:
    using Error::Error;
};

// Bytes from a child or worker that are not a valid frame: truncated, oversized or garbage.
class ProtocolError : public Error {
public:
    using Error::Error;
};

// A task raised an exception whose type is not one of the standard ones rethrown as themselves.
class RemoteError : public Error {
public:
    RemoteError(std::string type_name, std::string what);
    const std::string& type_name() const noexcept { return type_name_; }
    const std::string& remote_what() const noexcept { return what_; }

private:
    std::string type_name_, what_;
};

// The child could not enter its unit; user code never ran. `step` names what failed.
class SetupError : public Error {
public:
    SetupError(std::string step, int error_number, const std::string& detail);
    const std::string& step() const noexcept { return step_; }
    // 0 when the step failed without an errno (a timeout, a refusal); code() is then the empty error_code.
    int error_number() const noexcept { return errno_; }
    std::error_code code() const noexcept { return {errno_, std::generic_category()}; }

private:
    std::string step_;
    int errno_;
};

// The process running the function ended without sending a result (a signal, an exit() of its own,
// or the OOM killer under MemoryMax=).
class ProcessDied : public Error {
public:
    // exit_status follows multiprocessing: >= 0 an exit code, < 0 the negated signal number.
    ProcessDied(const std::string& what, int exit_status);
    int exit_status() const noexcept { return exit_status_; }

private:
    int exit_status_;
};

// The unit the work ran in was stopped (from outside, e.g. `systemctl stop`, or by the owner).
class UnitStopped : public Error {
public:
    explicit UnitStopped(std::string unit);
    const std::string& unit() const noexcept { return unit_; }

private:
    std::string unit_;
};

// A pool task ran longer than the pool's task_timeout; its worker was killed and replaced.
class TaskTimeout : public Error {
public:
    using Error::Error;
};

// A pool task went longer than the pool's heartbeat_timeout without calling sdfutures::this_task::heartbeat()
// (<sdfutures/this_task.hpp>); its worker was killed and replaced. what() names the timeout and the pool's unit.
class TaskStalled : public Error {
public:
    using Error::Error;
};

// A wait for several tasks (as_completed(), <sdfutures/completion.hpp>) ran over its own timeout. The tasks
// themselves go on; it is not TaskTimeout, which fails one task its pool's task_timeout ended.
class WaitTimeout : public Error {
public:
    using Error::Error;
};

// A task was cancelled: before it started, while it ran (its worker killed), or by kill_workers().
class TaskCancelled : public Error {
public:
    using Error::Error;
};

// The operation needs a state the object is not in (join before start, submit after shutdown, ...).
class StateError : public Error {
public:
    using Error::Error;
};

// A system call, or a libsystemd function that reports an errno (sd_notify(3), sd_watchdog_enabled(3), ...),
// failed: call() names it, error_number() is the errno, code() the same as a std::error_code (generic category,
// so it compares equal to std::errc values: `e.code() == std::errc::too_many_files_open`).
class SystemError : public Error {
public:
    // `detail`, when given, says what was being done: "to create the unit's anchor pipe".
    SystemError(std::string call, int error_number, const std::string& detail = {});
    const std::string& call() const noexcept { return call_; }
    int error_number() const noexcept { return errno_; }
    std::error_code code() const noexcept { return {errno_, std::generic_category()}; }

private:
    std::string call_;
    int errno_;
};

// errno as "strerror (ENAME)" text, for messages.
std::string errno_text(int error_number);

}  // namespace sdfutures
