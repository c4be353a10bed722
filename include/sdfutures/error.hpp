#pragma once
// The exception hierarchy of sdfutures. Everything the library throws on its own account derives from
// sdfutures::Error; a task's own exception is rethrown as itself when it is a standard type, else as RemoteError.

#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>

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

private:
    std::string unit_, job_type_, result_;
};

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
    int error_number() const noexcept { return errno_; }

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

// A task was cancelled before it started.
class TaskCancelled : public Error {
public:
    using Error::Error;
};

// The operation needs a state the object is not in (join before start, submit after shutdown, ...).
class StateError : public Error {
public:
    using Error::Error;
};

// errno as "strerror (ENAME)" text, for messages.
std::string errno_text(int error_number);

}  // namespace sdfutures
