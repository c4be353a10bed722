#include "sdfutures/properties.hpp"

#include <arpa/inet.h>
#include <signal.h>
#include <sys/socket.h>

#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>

#include "sdfutures/error.hpp"

namespace sdfutures {
namespace {

constexpr uint64_t kInfinity = std::numeric_limits<uint64_t>::max();
constexpr uint64_t kUsecPerSec = 1'000'000;

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

[[noreturn]] void invalid(std::string_view property, std::string_view value, const std::string& expected) {
    throw PropertyError(std::string(property), std::string(value), expected);
}

DbusProperty prop(std::string name, sdbus::Variant value) { return DbusProperty{std::move(name), std::move(value)}; }

// A non-negative decimal with an optional fraction, the number part of "1.5G" or "12.5%".
std::optional<long double> decimal(std::string_view s) {
    if (s.empty() || !(std::isdigit(static_cast<unsigned char>(s.front())) || s.front() == '.')) return std::nullopt;
    long double whole = 0, scale = 1;
    bool seen_dot = false, seen_digit = false;
    for (char c : s) {
        if (c == '.' && !seen_dot) {
            seen_dot = true;
        } else if (std::isdigit(static_cast<unsigned char>(c))) {
            seen_digit = true;
            if (seen_dot) {
                scale /= 10;
                whole += (c - '0') * scale;
            } else {
                whole = whole * 10 + (c - '0');
            }
        } else {
            return std::nullopt;
        }
    }
    if (!seen_digit) return std::nullopt;
    return whole;
}

template <class Int>
std::optional<Int> integer(std::string_view s) {
    s = trim(s);
    Int out{};
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
    return out;
}

// "25%" → 25.0; nullopt when the value is not a percentage.
std::optional<long double> percentage(std::string_view value) {
    value = trim(value);
    if (value.empty() || value.back() != '%') return std::nullopt;
    return decimal(value.substr(0, value.size() - 1));
}

uint32_t percent_to_scale(std::string_view property, std::string_view value, long double percent) {
    if (percent > 100) invalid(property, value, "a percentage from 0% to 100%");
    return static_cast<uint32_t>(std::llround(percent / 100 * std::numeric_limits<uint32_t>::max()));
}

using Converter = std::function<std::vector<DbusProperty>(std::string_view name, std::string_view value)>;

Converter string_property(std::function<bool(std::string_view)> valid, std::string expected) {
    return [valid = std::move(valid), expected = std::move(expected)](std::string_view name, std::string_view value) {
        std::string_view v = trim(value);
        if (!valid(v)) invalid(name, value, expected);
        return std::vector{prop(std::string(name), sdbus::Variant(std::string(v)))};
    };
}

Converter one_of(std::vector<std::string> choices) {
    std::string expected = "one of";
    for (auto& c : choices) expected += " '" + c + "'";
    return string_property([choices = std::move(choices)](std::string_view v) {
        for (auto& c : choices) if (v == c) return true;
        return false;
    }, expected);
}

Converter boolean_property(std::string dbus_name = {}) {
    return [dbus_name = std::move(dbus_name)](std::string_view name, std::string_view value) {
        return std::vector{prop(dbus_name.empty() ? std::string(name) : dbus_name,
                                sdbus::Variant(parse::boolean(name, value)))};
    };
}

Converter ranged_u64(uint64_t lo, uint64_t hi) {
    return [lo, hi](std::string_view name, std::string_view value) {
        auto n = integer<uint64_t>(value);
        if (!n || *n < lo || *n > hi)
            invalid(name, value, "an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
        return std::vector{prop(std::string(name), sdbus::Variant(*n))};
    };
}

// MemoryMax= and friends: bytes, "infinity", or a percentage of physical memory (the *Scale property).
Converter memory_limit() {
    return [](std::string_view name, std::string_view value) {
        if (auto pct = percentage(value))
            return std::vector{prop(std::string(name) + "Scale", sdbus::Variant(percent_to_scale(name, value, *pct)))};
        return std::vector{prop(std::string(name), sdbus::Variant(parse::bytes(name, value)))};
    };
}

Converter time_property(std::string dbus_name) {
    return [dbus_name = std::move(dbus_name)](std::string_view name, std::string_view value) {
        return std::vector{prop(dbus_name, sdbus::Variant(parse::microseconds(name, value)))};
    };
}

// ListenStream=/run/x.sock → Listen = [("Stream", "/run/x.sock")]: systemd checks the address when it takes the
// unit (a path, "@abstract", a port, "host:port").
Converter listen_property(std::string type) {
    return [type = std::move(type)](std::string_view name, std::string_view value) {
        std::string v(trim(value));
        if (v.empty()) invalid(name, value, "a socket address: a path, a port or host:port");
        using Listen = std::vector<sdbus::Struct<std::string, std::string>>;
        return std::vector{prop("Listen", sdbus::Variant(Listen{{type, v}}))};
    };
}

// What sd_listen_fds_with_names(3) can pass on: $LISTEN_FDNAMES separates names with ':'.
bool valid_fd_name(std::string_view v) {
    if (v.empty() || v.size() > 255) return false;
    for (char c : v)
        if (c < 0x21 || c > 0x7e || c == ':') return false;
    return true;
}

bool valid_user_or_group(std::string_view v) {
    if (v.empty() || v.size() > 256 || v.front() == '-') return false;
    for (char c : v)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' || c == '$')) return false;
    return true;
}

bool valid_env_assignment(std::string_view w) {
    auto eq = w.find('=');
    if (eq == 0 || eq == std::string_view::npos) return false;
    if (std::isdigit(static_cast<unsigned char>(w.front()))) return false;
    for (char c : w.substr(0, eq))
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return false;
    return true;
}

std::vector<DbusProperty> cpu_quota(std::string_view name, std::string_view value) {
    auto pct = percentage(value);
    if (!pct || *pct <= 0 || *pct > 1e6) invalid(name, value, "a percentage above 0%, e.g. 25% or 150%");
    auto usec = static_cast<uint64_t>(std::llround(*pct * kUsecPerSec / 100));
    return {prop("CPUQuotaPerSecUSec", sdbus::Variant(usec))};
}

std::vector<DbusProperty> tasks_max(std::string_view name, std::string_view value) {
    if (auto pct = percentage(value))
        return {prop("TasksMaxScale", sdbus::Variant(percent_to_scale(name, value, *pct)))};
    if (trim(value) == "infinity") return {prop("TasksMax", sdbus::Variant(kInfinity))};
    auto n = integer<uint64_t>(value);
    if (!n || *n == 0) invalid(name, value, "a positive number of tasks, a percentage or 'infinity'");
    return {prop("TasksMax", sdbus::Variant(*n))};
}

std::vector<DbusProperty> allowed_cpus(std::string_view name, std::string_view value) {
    std::vector<uint8_t> mask;
    std::string text(value);
    for (char& c : text) if (c == ',') c = ' ';
    for (auto& item : parse::words(name, text)) {
        auto dash = item.find('-');
        auto first = integer<unsigned>(std::string_view(item).substr(0, dash));
        auto last = dash == std::string::npos ? first : integer<unsigned>(std::string_view(item).substr(dash + 1));
        if (!first || !last || *first > *last || *last >= 8192)
            invalid(name, value, "CPU indices or ranges like '0-1,3' (below 8192)");
        for (unsigned cpu = *first; cpu <= *last; ++cpu) {
            if (mask.size() <= cpu / 8) mask.resize(cpu / 8 + 1, 0);
            mask[cpu / 8] |= static_cast<uint8_t>(1u << (cpu % 8));
        }
    }
    if (mask.empty()) invalid(name, value, "at least one CPU, e.g. '0-1'");
    return {prop(std::string(name), sdbus::Variant(mask))};
}

using IpPrefix = sdbus::Struct<int32_t, std::vector<uint8_t>, uint32_t>;

void add_prefix(std::vector<IpPrefix>& out, int family, const char* address, uint32_t prefix) {
    std::array<uint8_t, 16> buf{};
    inet_pton(family, address, buf.data());
    out.emplace_back(family, std::vector<uint8_t>(buf.begin(), buf.begin() + (family == AF_INET ? 4 : 16)), prefix);
}

std::vector<DbusProperty> ip_address_list(std::string_view name, std::string_view value) {
    std::vector<IpPrefix> out;
    for (auto& word : parse::words(name, value)) {
        if (word == "any") {
            add_prefix(out, AF_INET, "0.0.0.0", 0);
            add_prefix(out, AF_INET6, "::", 0);
        } else if (word == "localhost") {
            add_prefix(out, AF_INET, "127.0.0.0", 8);
            add_prefix(out, AF_INET6, "::1", 128);
        } else if (word == "link-local") {
            add_prefix(out, AF_INET, "169.254.0.0", 16);
            add_prefix(out, AF_INET6, "fe80::", 64);
        } else if (word == "multicast") {
            add_prefix(out, AF_INET, "224.0.0.0", 4);
            add_prefix(out, AF_INET6, "ff00::", 8);
        } else {
            auto slash = word.find('/');
            std::string address = word.substr(0, slash);
            std::array<uint8_t, 16> buf{};
            int family = address.find(':') != std::string::npos ? AF_INET6 : AF_INET;
            uint32_t max_prefix = family == AF_INET ? 32 : 128;
            std::optional<uint32_t> prefix = max_prefix;
            if (slash != std::string::npos) prefix = integer<uint32_t>(std::string_view(word).substr(slash + 1));
            if (inet_pton(family, address.c_str(), buf.data()) != 1 || !prefix || *prefix > max_prefix)
                invalid(name, value, "IP addresses with optional /prefix, or any, localhost, link-local, multicast");
            add_prefix(out, family, address.c_str(), *prefix);
        }
    }
    if (out.empty()) invalid(name, value, "at least one address");
    return {prop(std::string(name), sdbus::Variant(out))};
}

// LimitNOFILE=soft:hard or a single value for both; the soft limit travels as Limit*Soft.
Converter rlimit(std::function<uint64_t(std::string_view, std::string_view)> unit_parser) {
    return [unit_parser = std::move(unit_parser)](std::string_view name, std::string_view value) {
        auto colon = value.find(':');
        uint64_t soft = unit_parser(name, value.substr(0, colon));
        uint64_t hard = colon == std::string_view::npos ? soft : unit_parser(name, value.substr(colon + 1));
        if (soft > hard) invalid(name, value, "a soft limit not above the hard limit (soft:hard)");
        return std::vector{prop(std::string(name), sdbus::Variant(hard)),
                           prop(std::string(name) + "Soft", sdbus::Variant(soft))};
    };
}

uint64_t count_or_infinity(std::string_view name, std::string_view value) {
    if (trim(value) == "infinity") return kInfinity;
    auto n = integer<uint64_t>(value);
    if (!n) invalid(name, value, "a number or 'infinity'");
    return *n;
}

uint64_t seconds_limit(std::string_view name, std::string_view value) {
    uint64_t usec = parse::microseconds(name, value);
    return usec == kInfinity ? kInfinity : usec / kUsecPerSec;
}

std::vector<DbusProperty> exec_start(std::string_view name, std::string_view value) {
    std::string_view v = trim(value);
    bool ignore_failure = false;
    if (!v.empty() && v.front() == '-') {
        ignore_failure = true;
        v.remove_prefix(1);
    }
    auto argv = parse::words(name, v);
    if (argv.empty() || argv.front().front() != '/') invalid(name, value, "an absolute program path and its arguments");
    using Exec = sdbus::Struct<std::string, std::vector<std::string>, bool>;
    std::vector<Exec> commands{Exec{argv.front(), argv, ignore_failure}};
    return {prop(std::string(name), sdbus::Variant(commands))};
}

// A list in unit-file syntax that may start with '~' ("all but these"): the words, and whether it was not inverted.
struct InvertibleList {
    bool inverted = false;
    std::vector<std::string> words;
};
InvertibleList invertible_list(std::string_view name, std::string_view value) {
    std::string_view v = trim(value);
    InvertibleList list;
    list.inverted = !v.empty() && v.front() == '~';
    if (list.inverted) v.remove_prefix(1);
    list.words = parse::words(name, v);
    return list;
}

// SystemCallFilter=, RestrictAddressFamilies=: (allow list?, names) on the bus.
DbusProperty allow_or_deny_list(std::string_view name, const InvertibleList& list) {
    return prop(std::string(name), sdbus::Variant(sdbus::Struct<bool, std::vector<std::string>>{!list.inverted, list.words}));
}

std::vector<DbusProperty> system_call_filter(std::string_view name, std::string_view value) {
    auto calls = invertible_list(name, value);
    if (calls.words.empty()) invalid(name, value, "system call names or @groups, optionally after '~' to deny them");
    return {allow_or_deny_list(name, calls)};
}

// Linux's capability numbers (linux/capability.h), by name.
std::optional<unsigned> capability_number(std::string_view name) {
    static constexpr std::string_view names[] = {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"};
    for (unsigned i = 0; i < std::size(names); ++i)
        if (names[i] == name) return i;
    return std::nullopt;
}

// CapabilityBoundingSet=, AmbientCapabilities=: capability names, or '~' and the names to leave out; empty: none.
std::vector<DbusProperty> capability_set(std::string_view name, std::string_view value) {
    auto capabilities = invertible_list(name, value);
    uint64_t mask = 0;
    for (const auto& word : capabilities.words) {
        auto number = capability_number(word);
        if (!number) invalid(name, value, "capability names such as CAP_NET_BIND_SERVICE, optionally after '~'");
        mask |= uint64_t{1} << *number;
    }
    if (capabilities.inverted) mask = ~mask & ((uint64_t{1} << 41) - 1);
    return {prop(std::string(name), sdbus::Variant(mask))};
}

// RestrictAddressFamilies=: AF_ names to allow, or '~' and the names to deny.
std::vector<DbusProperty> address_families(std::string_view name, std::string_view value) {
    auto families = invertible_list(name, value);
    if (families.words.empty()) invalid(name, value, "address family names such as AF_UNIX, optionally after '~'");
    for (const auto& f : families.words)
        if (!f.starts_with("AF_") || f.size() < 4) invalid(name, value, "address family names such as AF_UNIX");
    return {allow_or_deny_list(name, families)};
}

const std::map<std::string, Converter, std::less<>>& table() {
    static const std::map<std::string, Converter, std::less<>> t = [] {
        std::map<std::string, Converter, std::less<>> m;
        // cgroup resource control
        m["CPUQuota"] = cpu_quota;
        m["CPUWeight"] = ranged_u64(1, 10000);
        m["StartupCPUWeight"] = ranged_u64(1, 10000);
        m["IOWeight"] = ranged_u64(1, 10000);
        m["AllowedCPUs"] = allowed_cpus;
        for (const char* n : {"MemoryMax", "MemoryHigh", "MemorySwapMax", "MemoryLow", "MemoryMin"}) m[n] = memory_limit();
        m["TasksMax"] = tasks_max;
        m["IPAddressDeny"] = ip_address_list;
        m["IPAddressAllow"] = ip_address_list;
        m["Delegate"] = boolean_property();
        m["Slice"] = string_property([](std::string_view v) { return v.size() > 6 && v.ends_with(".slice"); },
                                     "a slice unit name ending in .slice");
        // identity and sandbox
        m["User"] = string_property(valid_user_or_group, "a user name or numeric uid");
        m["Group"] = string_property(valid_user_or_group, "a group name or numeric gid");
        m["DynamicUser"] = boolean_property();
        m["SupplementaryGroups"] = [](std::string_view name, std::string_view value) {
            auto groups = parse::words(name, value);
            for (auto& g : groups) if (!valid_user_or_group(g)) invalid(name, value, "group names separated by spaces");
            return std::vector{prop(std::string(name), sdbus::Variant(groups))};
        };
        for (const char* n : {"NoNewPrivileges", "PrivateNetwork", "PrivateTmp", "PrivateDevices", "PrivateUsers",
                              "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                              "ProtectClock", "ProtectHostname", "RestrictRealtime", "RestrictSUIDSGID",
                              "LockPersonality", "MemoryDenyWriteExecute", "RemainAfterExit"})
            m[n] = boolean_property();
        m["ProtectSystem"] = [](std::string_view name, std::string_view value) {
            std::string v(trim(value));
            if (v == "full" || v == "strict") return std::vector{prop(std::string(name), sdbus::Variant(v))};
            try {
                return std::vector{prop(std::string(name), sdbus::Variant(std::string(parse::boolean(name, v) ? "yes" : "no")))};
            } catch (const PropertyError&) {
                invalid(name, value, "a boolean, 'full' or 'strict'");
            }
        };
        m["ProtectHome"] = [](std::string_view name, std::string_view value) {
            std::string v(trim(value));
            if (v == "read-only" || v == "tmpfs") return std::vector{prop(std::string(name), sdbus::Variant(v))};
            try {
                return std::vector{prop(std::string(name), sdbus::Variant(std::string(parse::boolean(name, v) ? "yes" : "no")))};
            } catch (const PropertyError&) {
                invalid(name, value, "a boolean, 'read-only' or 'tmpfs'");
            }
        };
        m["SystemCallFilter"] = system_call_filter;
        m["RestrictAddressFamilies"] = address_families;
        m["CapabilityBoundingSet"] = capability_set;
        m["AmbientCapabilities"] = capability_set;
        for (const char* n : {"ProtectKernelLogs", "PrivateIPC", "PrivateMounts"}) m[n] = boolean_property();
        for (const char* n : {"ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "SystemCallArchitectures"})
            m[n] = [](std::string_view name, std::string_view value) {
                return std::vector{prop(std::string(name), sdbus::Variant(parse::words(name, value)))};
            };
        // execution environment
        m["Nice"] = [](std::string_view name, std::string_view value) {
            auto n = integer<int32_t>(value);
            if (!n || *n < -20 || *n > 19) invalid(name, value, "an integer from -20 to 19");
            return std::vector{prop(std::string(name), sdbus::Variant(*n))};
        };
        m["Environment"] = [](std::string_view name, std::string_view value) {
            auto words = parse::words(name, value);
            for (auto& w : words) if (!valid_env_assignment(w)) invalid(name, value, "VAR=value assignments separated by spaces");
            if (words.empty()) invalid(name, value, "at least one VAR=value assignment");
            return std::vector{prop(std::string(name), sdbus::Variant(words))};
        };
        m["WorkingDirectory"] = string_property([](std::string_view v) {
            if (!v.empty() && v.front() == '-') v.remove_prefix(1);
            return v == "~" || (!v.empty() && v.front() == '/');
        }, "an absolute path or '~'");
        m["UMask"] = [](std::string_view name, std::string_view value) {
            std::string_view v = trim(value);
            uint32_t mode = 0;
            auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), mode, 8);
            if (v.empty() || ec != std::errc() || end != v.data() + v.size() || mode > 0777)
                invalid(name, value, "an octal mode from 0000 to 0777");
            return std::vector{prop(std::string(name), sdbus::Variant(mode))};
        };
        for (const char* n : {"LimitFSIZE", "LimitDATA", "LimitSTACK", "LimitCORE", "LimitRSS", "LimitAS",
                              "LimitMEMLOCK", "LimitMSGQUEUE"})
            m[n] = rlimit(parse::bytes);
        for (const char* n : {"LimitNOFILE", "LimitNPROC", "LimitLOCKS", "LimitSIGPENDING", "LimitNICE", "LimitRTPRIO"})
            m[n] = rlimit(count_or_infinity);
        m["LimitCPU"] = rlimit(seconds_limit);
        m["LimitRTTIME"] = rlimit(parse::microseconds);
        // the unit itself
        m["Description"] = string_property([](std::string_view) { return true; }, "text");
        // notify-reload is systemd 253's; require_properties() says so on an older manager.
        m["Type"] = one_of({"simple", "exec", "forking", "oneshot", "dbus", "notify", "notify-reload", "idle"});
        m["ExecStart"] = exec_start;
        m["KillMode"] = one_of({"control-group", "mixed", "process", "none"});
        m["KillSignal"] = [](std::string_view name, std::string_view value) {
            return std::vector{prop(std::string(name), sdbus::Variant(int32_t{parse::signal_number(name, value)}))};
        };
        m["CollectMode"] = one_of({"inactive", "inactive-or-failed"});
        m["RuntimeMaxSec"] = time_property("RuntimeMaxUSec");
        m["TimeoutStopSec"] = time_property("TimeoutStopUSec");
        m["TimeoutStartSec"] = time_property("TimeoutStartUSec");
        m["Restart"] = one_of({"no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"});
        m["RestartSec"] = time_property("RestartUSec");
        for (const char* n : {"StandardInput", "StandardOutput", "StandardError"})
            m[n] = one_of({"null", "inherit", "tty", "journal", "kmsg", "socket"});
        // the service side (daemon.hpp): notifications, the watchdog, and the sockets of a .socket unit
        m["NotifyAccess"] = one_of({"none", "main", "exec", "all"});
        m["WatchdogSec"] = time_property("WatchdogUSec");
        m["ListenStream"] = listen_property("Stream");
        m["ListenDatagram"] = listen_property("Datagram");
        m["ListenSequentialPacket"] = listen_property("SequentialPacket");
        m["FileDescriptorName"] = string_property(valid_fd_name, "up to 255 printable ASCII characters, no ':'");
        return m;
    }();
    return t;
}

}  // namespace

namespace parse {

bool boolean(std::string_view property, std::string_view value) {
    std::string v(trim(value));
    for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (v == "1" || v == "yes" || v == "y" || v == "true" || v == "t" || v == "on") return true;
    if (v == "0" || v == "no" || v == "n" || v == "false" || v == "f" || v == "off") return false;
    invalid(property, value, "a boolean (yes/no, true/false, on/off, 1/0)");
}

uint64_t bytes(std::string_view property, std::string_view value) {
    std::string_view v = trim(value);
    if (v == "infinity") return kInfinity;
    static constexpr std::string_view suffixes = "KMGTPE";
    long double factor = 1;
    if (!v.empty()) {
        auto pos = suffixes.find(static_cast<char>(std::toupper(static_cast<unsigned char>(v.back()))));
        if (pos != std::string_view::npos && !std::isdigit(static_cast<unsigned char>(v.back()))) {
            factor = std::pow(1024.0L, static_cast<long double>(pos + 1));
            v.remove_suffix(1);
        } else if (!v.empty() && (v.back() == 'B' || v.back() == 'b') && v.size() > 1) {
            v.remove_suffix(1);  // "512B"
        }
    }
    auto n = decimal(v);
    if (!n) invalid(property, value, "a size in bytes with an optional K, M, G, T, P or E suffix (base 1024), or 'infinity'");
    long double total = std::floor(*n * factor);
    if (total >= static_cast<long double>(kInfinity)) invalid(property, value, "a size below 16E");
    return static_cast<uint64_t>(total);
}

uint64_t microseconds(std::string_view property, std::string_view value) {
    std::string_view v = trim(value);
    if (v == "infinity") return kInfinity;
    static const std::map<std::string_view, uint64_t, std::less<>> units = {
        {"us", 1}, {"usec", 1}, {"µs", 1}, {"ms", 1000}, {"msec", 1000},
        {"s", kUsecPerSec}, {"sec", kUsecPerSec}, {"second", kUsecPerSec}, {"seconds", kUsecPerSec},
        {"m", 60 * kUsecPerSec}, {"min", 60 * kUsecPerSec}, {"minute", 60 * kUsecPerSec}, {"minutes", 60 * kUsecPerSec},
        {"h", 3600 * kUsecPerSec}, {"hr", 3600 * kUsecPerSec}, {"hour", 3600 * kUsecPerSec}, {"hours", 3600 * kUsecPerSec},
        {"d", 86400 * kUsecPerSec}, {"day", 86400 * kUsecPerSec}, {"days", 86400 * kUsecPerSec},
        {"w", 604800 * kUsecPerSec}, {"week", 604800 * kUsecPerSec}, {"weeks", 604800 * kUsecPerSec}};
    const std::string expected = "a time span like '90', '500ms', '5s', '1min 30s', '2h' or 'infinity'";
    if (v.empty()) invalid(property, value, expected);
    long double total = 0;
    while (!v.empty()) {
        size_t i = 0;
        while (i < v.size() && (std::isdigit(static_cast<unsigned char>(v[i])) || v[i] == '.')) ++i;
        auto number = decimal(v.substr(0, i));
        if (!number) invalid(property, value, expected);
        v.remove_prefix(i);
        while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
        size_t j = 0;
        while (j < v.size() && !std::isdigit(static_cast<unsigned char>(v[j])) && v[j] != ' ' && v[j] != '.') ++j;
        std::string_view unit = v.substr(0, j);
        uint64_t factor = kUsecPerSec;  // a bare number means seconds, as in unit files
        if (!unit.empty()) {
            auto it = units.find(unit);
            if (it == units.end()) invalid(property, value, expected);
            factor = it->second;
        }
        v.remove_prefix(j);
        while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
        total += *number * factor;
        if (total >= static_cast<long double>(kInfinity)) invalid(property, value, expected);
    }
    return static_cast<uint64_t>(std::llround(total));
}

int signal_number(std::string_view property, std::string_view value) {
    std::string v(trim(value));
    if (auto n = integer<int>(v); n && *n > 0 && *n < NSIG) return *n;
    if (v.rfind("SIG", 0) == 0) v = v.substr(3);
    for (int s = 1; s < NSIG; ++s) {
        const char* abbrev = sigabbrev_np(s);
        if (abbrev && v == abbrev) return s;
    }
    invalid(property, value, "a signal name like SIGTERM or TERM, or its number");
}

std::vector<std::string> words(std::string_view property, std::string_view value) {
    std::vector<std::string> out;
    std::string current;
    bool in_word = false;
    char quote = 0;
    for (size_t i = 0; i < value.size(); ++i) {
        char c = value[i];
        if (quote) {
            if (c == quote) quote = 0;
            else if (c == '\\' && i + 1 < value.size()) current += value[++i];
            else current += c;
        } else if (c == '"' || c == '\'') {
            quote = c;
            in_word = true;
        } else if (c == '\\' && i + 1 < value.size()) {
            current += value[++i];
            in_word = true;
        } else if (std::isspace(static_cast<unsigned char>(c))) {
            if (in_word) out.push_back(std::move(current));
            current.clear();
            in_word = false;
        } else {
            current += c;
            in_word = true;
        }
    }
    if (quote) invalid(property, value, "balanced quotes");
    if (in_word) out.push_back(std::move(current));
    return out;
}

}  // namespace parse

namespace {

// D-Bus strings must be valid UTF-8 without NUL; sdbus-c++ would throw its own error at the call, or systemd
// would silently see a string cut at the NUL.
bool valid_dbus_text(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c == 0) return false;
        size_t extra = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xe ? 2 : (c >> 3) == 0x1e ? 3 : 4;
        if (extra == 4 || s.size() - i <= extra) return false;
        uint32_t code = extra == 0 ? c : c & (0x3f >> extra);
        for (size_t k = 1; k <= extra; ++k) {
            auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc >> 6) != 0x2) return false;
            code = (code << 6) | (cc & 0x3f);
        }
        static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
        if (code < kMin[extra] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return false;
        if ((code >= 0xfdd0 && code <= 0xfdef) || (code & 0xfffe) == 0xfffe) return false;  // sd-bus refuses noncharacters
        i += extra + 1;
    }
    return true;
}

}  // namespace

std::vector<DbusProperty> parse_property(std::string_view name, std::string_view value) {
    if (!valid_dbus_text(name)) throw PropertyError("(invalid name)", "", "a property name in valid UTF-8 without NUL");
    if (!valid_dbus_text(value)) throw PropertyError(std::string(name), "(invalid text)", "valid UTF-8 without NUL bytes");
    auto it = table().find(name);
    if (it != table().end()) {
        try {
            return it->second(name, value);
        } catch (const sdbus::Error& e) {
            // sd-bus validates strings itself when a value is put into a Variant; whatever else it refuses is
            // still the property's fault, not a library error.
            throw PropertyError(std::string(name), "(text D-Bus refuses)", "text D-Bus can carry: " + e.getMessage());
        }
    }
    throw UnsupportedProperty(std::string(name),
                              "sdfutures does not know this property; pass it with Properties::set_typed "
                              "as its D-Bus name and typed value");
}

Properties::Properties(std::initializer_list<std::pair<std::string, std::string>> assignments) {
    for (auto& [name, value] : assignments) set(name, value);
}

Properties& Properties::set(std::string name, std::string value) {
    parse_property(name, value);  // reject bad input at the point it is given
    entries_.push_back(Entry{std::move(name), std::move(value), std::nullopt});
    return *this;
}

Properties& Properties::set_typed(std::string name, sdbus::Variant value) {
    if (name.empty()) throw PropertyError("", "", "a non-empty D-Bus property name");
    entries_.push_back(Entry{std::move(name), {}, std::move(value)});
    return *this;
}

bool Properties::contains(std::string_view name) const {
    for (auto& e : entries_) if (e.name == name) return true;
    return false;
}

std::optional<std::string> Properties::text_of(std::string_view name) const {
    std::optional<std::string> out;
    for (auto& e : entries_) if (e.name == name && !e.typed) out = e.text;
    return out;
}

std::vector<DbusProperty> Properties::to_dbus() const {
    std::vector<DbusProperty> out;
    for (auto& e : entries_) {
        if (e.typed) {
            out.push_back(prop(e.name, *e.typed));
        } else {
            auto converted = parse_property(e.name, e.text);
            out.insert(out.end(), std::make_move_iterator(converted.begin()), std::make_move_iterator(converted.end()));
        }
    }
    return out;
}

}  // namespace sdfutures
