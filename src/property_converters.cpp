// The converters of unit-file text to what systemd takes on D-Bus, one for each kind of value; which property
// uses which is src/property_catalog.cpp's table.
#include "property_converters.hpp"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <array>
#include <cmath>

#include "property_text.hpp"

namespace sdfutures::detail::convert {

namespace {

DbusProperty prop(std::string name, sdbus::Variant value) { return DbusProperty{std::move(name), std::move(value)}; }

uint32_t percent_to_scale(std::string_view property, std::string_view value, long double percent) {
    if (percent > 100) invalid(property, value, "a percentage from 0% to 100%");
    return static_cast<uint32_t>(std::llround(percent / 100 * std::numeric_limits<uint32_t>::max()));
}

}  // namespace

Converter text_matching(std::function<bool(std::string_view)> valid, std::string expected) {
    return [valid = std::move(valid), expected = std::move(expected)](std::string_view name, std::string_view value) {
        std::string_view v = trim(value);
        if (!valid(v)) invalid(name, value, expected);
        return std::vector{prop(std::string(name), sdbus::Variant(std::string(v)))};
    };
}

Converter one_of(std::vector<std::string> choices) {
    std::string expected = "one of";
    for (auto& c : choices) expected += " '" + c + "'";
    return text_matching([choices = std::move(choices)](std::string_view v) {
        for (auto& c : choices) if (v == c) return true;
        return false;
    }, expected);
}

Converter boolean(std::string dbus_name) {
    return [dbus_name = std::move(dbus_name)](std::string_view name, std::string_view value) {
        return std::vector{prop(dbus_name.empty() ? std::string(name) : dbus_name,
                                sdbus::Variant(parse::boolean(name, value)))};
    };
}

Converter integer_in(uint64_t lo, uint64_t hi) {
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

Converter time_span(std::string dbus_name) {
    return [dbus_name = std::move(dbus_name)](std::string_view name, std::string_view value) {
        return std::vector{prop(dbus_name, sdbus::Variant(parse::microseconds(name, value)))};
    };
}

// ListenStream=/run/x.sock → Listen = [("Stream", "/run/x.sock")]: systemd checks the address when it takes the
// unit (a path, "@abstract", a port, "host:port").
Converter listen(std::string type) {
    return [type = std::move(type)](std::string_view name, std::string_view value) {
        std::string v(trim(value));
        if (v.empty()) invalid(name, value, "a socket address: a path, a port or host:port");
        using Listen = std::vector<sdbus::Struct<std::string, std::string>>;
        return std::vector{prop("Listen", sdbus::Variant(Listen{{type, v}}))};
    };
}

namespace {

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

}  // namespace

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

std::vector<DbusProperty> cpu_set(std::string_view name, std::string_view value) {
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

namespace {

using IpPrefix = sdbus::Struct<int32_t, std::vector<uint8_t>, uint32_t>;

void add_prefix(std::vector<IpPrefix>& out, int family, const char* address, uint32_t prefix) {
    std::array<uint8_t, 16> buf{};
    inet_pton(family, address, buf.data());
    out.emplace_back(family, std::vector<uint8_t>(buf.begin(), buf.begin() + (family == AF_INET ? 4 : 16)), prefix);
}

}  // namespace

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

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

std::vector<DbusProperty> system_call_filter(std::string_view name, std::string_view value) {
    auto calls = invertible_list(name, value);
    if (calls.words.empty()) invalid(name, value, "system call names or @groups, optionally after '~' to deny them");
    return {allow_or_deny_list(name, calls)};
}

namespace {

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

}  // namespace

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

Converter rlimit_bytes() { return rlimit(parse::bytes); }
Converter rlimit_count() { return rlimit(count_or_infinity); }
Converter rlimit_seconds() { return rlimit(seconds_limit); }
Converter rlimit_microseconds() { return rlimit(parse::microseconds); }

Converter any_text() {
    return text_matching([](std::string_view) { return true; }, "text");
}

Converter slice_name() {
    return text_matching([](std::string_view v) { return v.size() > 6 && v.ends_with(".slice"); },
                         "a slice unit name ending in .slice");
}

Converter user_name() { return text_matching(valid_user_or_group, "a user name or numeric uid"); }
Converter group_name() { return text_matching(valid_user_or_group, "a group name or numeric gid"); }
Converter fd_name() { return text_matching(valid_fd_name, "up to 255 printable ASCII characters, no ':'"); }

Converter working_directory() {
    return text_matching([](std::string_view v) {
        if (!v.empty() && v.front() == '-') v.remove_prefix(1);
        return v == "~" || (!v.empty() && v.front() == '/');
    }, "an absolute path or '~'");
}

std::vector<DbusProperty> group_list(std::string_view name, std::string_view value) {
    auto groups = parse::words(name, value);
    for (auto& g : groups) if (!valid_user_or_group(g)) invalid(name, value, "group names separated by spaces");
    return {prop(std::string(name), sdbus::Variant(groups))};
}

std::vector<DbusProperty> word_list(std::string_view name, std::string_view value) {
    return {prop(std::string(name), sdbus::Variant(parse::words(name, value)))};
}

namespace {

// ProtectSystem=, ProtectHome=: a boolean (sent as "yes"/"no") or one of the words `more` lists.
std::vector<DbusProperty> boolean_or_word(std::string_view name, std::string_view value,
                                          std::initializer_list<std::string_view> more, const std::string& expected) {
    std::string v(trim(value));
    for (auto word : more)
        if (v == word) return {prop(std::string(name), sdbus::Variant(v))};
    try {
        return {prop(std::string(name), sdbus::Variant(std::string(parse::boolean(name, v) ? "yes" : "no")))};
    } catch (const PropertyError&) {
        invalid(name, value, expected);
    }
}

}  // namespace

std::vector<DbusProperty> protect_system(std::string_view name, std::string_view value) {
    return boolean_or_word(name, value, {"full", "strict"}, "a boolean, 'full' or 'strict'");
}

std::vector<DbusProperty> protect_home(std::string_view name, std::string_view value) {
    return boolean_or_word(name, value, {"read-only", "tmpfs"}, "a boolean, 'read-only' or 'tmpfs'");
}

std::vector<DbusProperty> nice(std::string_view name, std::string_view value) {
    auto n = integer<int32_t>(value);
    if (!n || *n < -20 || *n > 19) invalid(name, value, "an integer from -20 to 19");
    return {prop(std::string(name), sdbus::Variant(*n))};
}

std::vector<DbusProperty> environment(std::string_view name, std::string_view value) {
    auto words = parse::words(name, value);
    for (auto& w : words) if (!valid_env_assignment(w)) invalid(name, value, "VAR=value assignments separated by spaces");
    if (words.empty()) invalid(name, value, "at least one VAR=value assignment");
    return {prop(std::string(name), sdbus::Variant(words))};
}

std::vector<DbusProperty> umask(std::string_view name, std::string_view value) {
    std::string_view v = trim(value);
    uint32_t mode = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), mode, 8);
    if (v.empty() || ec != std::errc() || end != v.data() + v.size() || mode > 0777)
        invalid(name, value, "an octal mode from 0000 to 0777");
    return {prop(std::string(name), sdbus::Variant(mode))};
}

std::vector<DbusProperty> signal(std::string_view name, std::string_view value) {
    return {prop(std::string(name), sdbus::Variant(int32_t{parse::signal_number(name, value)}))};
}

}  // namespace sdfutures::detail::convert
