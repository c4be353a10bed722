#pragma once
// A systemd unit as seen over D-Bus: typed getters for the properties sdfutures and its users need, and
// a generic read for the rest. Each getter asks systemd afresh.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <sdbus-c++/Types.h>

#include "sdfutures/bus.hpp"

namespace sdfutures {

// "run-u7.service" → "/org/freedesktop/systemd1/unit/run_2du7_2eservice", escaped as systemd does.
std::string unit_object_path(std::string_view unit_name);
// The reverse; throws std::invalid_argument for a path that is not a unit path or not validly escaped.
std::string unit_name_from_object_path(std::string_view object_path);

struct UnitProcess {
    std::string control_group;
    uint32_t pid;
    std::string command_line;
};

class Unit {
public:
    Unit(Bus bus, std::string name);

    const std::string& name() const noexcept { return name_; }
    const std::string& object_path() const noexcept { return path_; }
    const Bus& bus() const noexcept { return bus_; }

    std::string id() const;
    std::string active_state() const;
    std::string sub_state() const;
    std::string load_state() const;
    uint32_t main_pid() const;        // 0 when none (not a service, or not running)
    std::string control_group() const;  // relative to the manager's cgroup root, "" when none
    // systemd reports "not set" (accounting off, or not available on this cgroup layout) as UINT64_MAX.
    std::optional<uint64_t> cpu_usage_nsec() const;
    std::optional<uint64_t> memory_current() const;
    std::vector<UnitProcess> processes() const;

    // Any property, e.g. property("org.freedesktop.systemd1.Service", "ExecMainStatus").
    sdbus::Variant property(const std::string& interface, const std::string& name) const;
    template <class T>
    T property_as(const std::string& interface, const std::string& name) const {
        return property(interface, name).get<T>();
    }
    // The unit-type interface for this unit: org.freedesktop.systemd1.Service for "x.service", ...
    std::string type_interface() const;

private:
    std::optional<uint64_t> optional_u64(const char* property) const;
    Bus bus_;
    std::string name_;
    std::string path_;
};

}  // namespace sdfutures
