#include "sdfutures/error.hpp"

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

std::string errno_text(int error_number) {
    const char* name = strerrorname_np(error_number);
    return std::string(strerrordesc_np(error_number) ? strerrordesc_np(error_number) : "unknown error") +
           (name ? std::string(" (") + name + ")" : std::string());
}

}  // namespace sdfutures
