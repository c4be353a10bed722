#pragma once
// Converters of one property's unit-file text to the D-Bus properties systemd's StartTransientUnit takes, one
// for each kind of value. Each throws PropertyError naming the property, the value and what was expected.
// Which property uses which is the catalogue's business (src/property_catalog.cpp). Private to the library.

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "sdfutures/properties.hpp"

namespace sdfutures::detail::convert {

using Converter = std::function<std::vector<DbusProperty>(std::string_view name, std::string_view value)>;

// Kinds of value that take a parameter.
Converter text_matching(std::function<bool(std::string_view)> valid, std::string expected);
Converter one_of(std::vector<std::string> choices);
Converter boolean(std::string dbus_name = {});
Converter integer_in(uint64_t lo, uint64_t hi);
Converter memory_limit();                   // bytes, "infinity", or a percentage (the *Scale property)
Converter time_span(std::string dbus_name); // "5s", "1min 30s", "infinity" → microseconds under dbus_name
Converter listen(std::string socket_type);  // ListenStream=/run/x.sock → Listen = [("Stream", "/run/x.sock")]
Converter rlimit_bytes();                   // LimitNOFILE=soft:hard or one value for both, in each unit
Converter rlimit_count();
Converter rlimit_seconds();
Converter rlimit_microseconds();
Converter any_text();
Converter slice_name();
Converter user_name();
Converter group_name();
Converter fd_name();  // what sd_listen_fds_with_names(3) can pass on
Converter working_directory();

// Kinds of value of one property each (or of a family that shares its syntax).
std::vector<DbusProperty> cpu_quota(std::string_view name, std::string_view value);
std::vector<DbusProperty> tasks_max(std::string_view name, std::string_view value);
std::vector<DbusProperty> cpu_set(std::string_view name, std::string_view value);  // "0-1,3" → a bit mask
std::vector<DbusProperty> ip_address_list(std::string_view name, std::string_view value);
std::vector<DbusProperty> exec_start(std::string_view name, std::string_view value);
std::vector<DbusProperty> system_call_filter(std::string_view name, std::string_view value);
std::vector<DbusProperty> capability_set(std::string_view name, std::string_view value);
std::vector<DbusProperty> address_families(std::string_view name, std::string_view value);
std::vector<DbusProperty> group_list(std::string_view name, std::string_view value);
std::vector<DbusProperty> word_list(std::string_view name, std::string_view value);
std::vector<DbusProperty> protect_system(std::string_view name, std::string_view value);
std::vector<DbusProperty> protect_home(std::string_view name, std::string_view value);
std::vector<DbusProperty> nice(std::string_view name, std::string_view value);
std::vector<DbusProperty> environment(std::string_view name, std::string_view value);
std::vector<DbusProperty> umask(std::string_view name, std::string_view value);
std::vector<DbusProperty> signal(std::string_view name, std::string_view value);

}  // namespace sdfutures::detail::convert
