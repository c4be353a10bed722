#pragma once
// Unit properties in the syntax users know from unit files and `systemd-run -p`, converted to the D-Bus
// names and types systemd expects. Conversion happens before anything is sent: a bad value throws
// PropertyError naming the property, the value and what was expected.

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sdbus-c++/Types.h>

namespace sdfutures {

// One property as systemd's StartTransientUnit takes it: a D-Bus name and a typed value.
using DbusProperty = sdbus::Struct<std::string, sdbus::Variant>;

// Converts one assignment in unit-file syntax ("CPUQuota", "25%") to what systemd takes on D-Bus
// (CPUQuotaPerSecUSec = uint64 250000). Some assignments yield more than one D-Bus property (LimitNOFILE
// sets the hard and the soft limit). Throws PropertyError (bad value) or UnsupportedProperty (a name this
// library does not know: use Properties::set_typed for those).
std::vector<DbusProperty> parse_property(std::string_view name, std::string_view value);

// Ordered unit properties. Later assignments of list-valued properties (Environment=, SupplementaryGroups=)
// add to earlier ones, as in unit files.
class Properties {
public:
    struct Entry {
        std::string name;
        std::string text;                    // unit-file syntax; empty when typed
        std::optional<sdbus::Variant> typed;  // the escape hatch: sent to systemd as given
    };

    Properties() = default;
    Properties(std::initializer_list<std::pair<std::string, std::string>> assignments);

    // An assignment in unit-file syntax; checked at once (throws PropertyError).
    Properties& set(std::string name, std::string value);
    // Any other property, as a D-Bus name and typed value, e.g. set_typed("CPUQuotaPeriodUSec",
    // sdbus::Variant(uint64_t{10000})). systemd checks it when the unit starts.
    Properties& set_typed(std::string name, sdbus::Variant value);

    const std::vector<Entry>& entries() const noexcept { return entries_; }
    bool empty() const noexcept { return entries_.empty(); }
    // Whether a property of this name (unit-file or D-Bus spelling) was given.
    bool contains(std::string_view name) const;
    // The last unit-file value given for a name, if any.
    std::optional<std::string> text_of(std::string_view name) const;

    // All entries in D-Bus form, in order.
    std::vector<DbusProperty> to_dbus() const;

private:
    std::vector<Entry> entries_;
};

// Parsers shared by the property table and its users, exposed for tests and for callers that build
// typed properties themselves. Each throws PropertyError naming `property`.
namespace parse {
uint64_t bytes(std::string_view property, std::string_view value);         // "512M", "1G", "infinity"
uint64_t microseconds(std::string_view property, std::string_view value);  // "5s", "1min 30s", "infinity"
bool boolean(std::string_view property, std::string_view value);           // yes/no/true/false/on/off/1/0
int signal_number(std::string_view property, std::string_view value);      // "SIGTERM", "TERM", "15"
std::vector<std::string> words(std::string_view property, std::string_view value);  // quote-aware split
}  // namespace parse

}  // namespace sdfutures
