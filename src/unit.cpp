#include "sdfutures/unit.hpp"

#include <limits>
#include <stdexcept>

#include "bus_state.hpp"

namespace sdfutures {
namespace {

constexpr std::string_view kUnitPathPrefix = "/org/freedesktop/systemd1/unit/";

bool label_char(char c, bool first) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (!first && c >= '0' && c <= '9');
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

std::string unit_object_path(std::string_view unit_name) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string path(kUnitPathPrefix);
    if (unit_name.empty()) return path + "_";
    for (size_t i = 0; i < unit_name.size(); ++i) {
        char c = unit_name[i];
        if (label_char(c, i == 0)) {
            path += c;
        } else {
            auto u = static_cast<unsigned char>(c);
            path += '_';
            path += hex[u >> 4];
            path += hex[u & 15];
        }
    }
    return path;
}

std::string unit_name_from_object_path(std::string_view object_path) {
    if (!object_path.starts_with(kUnitPathPrefix))
        throw std::invalid_argument("not a systemd unit object path: " + std::string(object_path));
    std::string_view label = object_path.substr(kUnitPathPrefix.size());
    if (label == "_") return {};
    std::string name;
    for (size_t i = 0; i < label.size(); ++i) {
        if (label[i] != '_') {
            if (!label_char(label[i], false))
                throw std::invalid_argument("invalid character in unit object path: " + std::string(object_path));
            name += label[i];
            continue;
        }
        int hi = i + 1 < label.size() ? hex_value(label[i + 1]) : -1;
        int lo = i + 2 < label.size() ? hex_value(label[i + 2]) : -1;
        if (hi < 0 || lo < 0) throw std::invalid_argument("invalid escape in unit object path: " + std::string(object_path));
        name += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    return name;
}

Unit::Unit(Bus bus, std::string name) : bus_(std::move(bus)), name_(std::move(name)), path_(unit_object_path(name_)) {}

std::string Unit::type_interface() const {
    auto dot = name_.rfind('.');
    std::string type = dot == std::string::npos ? "" : name_.substr(dot + 1);
    if (type.empty()) return detail::kUnitInterface;
    type[0] = static_cast<char>(type[0] - 'a' + 'A');
    return "org.freedesktop.systemd1." + type;
}

sdbus::Variant Unit::property(const std::string& interface, const std::string& name) const {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    return detail::translate_errors("Get " + name_ + " " + name, [&] {
        auto proxy = sdbus::createProxy(*state.connection, detail::kSystemdService, path_);
        sdbus::Variant value;
        proxy->callMethod("Get").onInterface(detail::kPropertiesInterface).withArguments(interface, name).storeResultsTo(value);
        return value;
    });
}

std::string Unit::id() const { return property_as<std::string>(detail::kUnitInterface, "Id"); }
std::string Unit::active_state() const { return property_as<std::string>(detail::kUnitInterface, "ActiveState"); }
std::string Unit::sub_state() const { return property_as<std::string>(detail::kUnitInterface, "SubState"); }
std::string Unit::load_state() const { return property_as<std::string>(detail::kUnitInterface, "LoadState"); }
uint32_t Unit::main_pid() const { return property_as<uint32_t>("org.freedesktop.systemd1.Service", "MainPID"); }
std::string Unit::control_group() const { return property_as<std::string>(type_interface(), "ControlGroup"); }

std::optional<uint64_t> Unit::optional_u64(const char* property_name) const {
    auto v = property_as<uint64_t>(type_interface(), property_name);
    if (v == std::numeric_limits<uint64_t>::max()) return std::nullopt;
    return v;
}

std::optional<uint64_t> Unit::cpu_usage_nsec() const { return optional_u64("CPUUsageNSec"); }
std::optional<uint64_t> Unit::memory_current() const { return optional_u64("MemoryCurrent"); }

std::vector<UnitProcess> Unit::processes() const {
    auto& state = detail::state_of(bus_);
    std::lock_guard lock(state.mutex);
    state.check_owner();
    return detail::translate_errors("GetUnitProcesses " + name_, [&] {
        std::vector<sdbus::Struct<std::string, uint32_t, std::string>> raw;
        state.manager->callMethod("GetUnitProcesses").onInterface(detail::kManagerInterface).withArguments(name_).storeResultsTo(raw);
        std::vector<UnitProcess> out;
        out.reserve(raw.size());
        for (auto& p : raw) out.push_back(UnitProcess{p.get<0>(), p.get<1>(), p.get<2>()});
        return out;
    });
}

}  // namespace sdfutures
