#include "sdfutures/properties.hpp"

#include <signal.h>

#include <cmath>
#include <cstring>
#include <map>

#include "property_catalog.hpp"
#include "property_text.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures {
namespace {

using detail::decimal;
using detail::integer;
using detail::invalid;
using detail::kInfinity;
using detail::kUsecPerSec;
using detail::trim;

DbusProperty prop(std::string name, sdbus::Variant value) { return DbusProperty{std::move(name), std::move(value)}; }

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
    const detail::PropertyRow* row = detail::find_property(name);
    if (row && row->convert) {
        try {
            return row->convert(name, value);
        } catch (const sdbus::Error& e) {
            // sd-bus validates strings itself when a value is put into a Variant; whatever else it refuses is
            // still the property's fault, not a library error.
            throw PropertyError(std::string(name), "(text D-Bus refuses)", "text D-Bus can carry: " + e.getMessage());
        }
    }
    throw UnsupportedProperty(std::string(name),
                              row ? "sdfutures has no unit-file syntax for it; pass it with Properties::set_typed "
                                    "as its D-Bus name and typed value"
                                  : "sdfutures does not know this property; pass it with Properties::set_typed "
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
