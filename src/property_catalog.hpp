#pragma once
// The one table of what sdfutures knows about each unit property: how its unit-file text converts to D-Bus,
// how it reaches work forked into a unit (or why it cannot), whether the library sets it itself, what it needs
// of the manager, the kernel or the cgroup layout, and how unit files combine repeated assignments. Parsing
// (properties.cpp), the start methods' checks (property_reach.cpp), the requirements (system_info.cpp),
// Command's builder (command.cpp) and the unit's own settings (anchored_unit.cpp) all ask it; a property is added
// in one row. Private to the library.

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "property_converters.hpp"
#include "sdfutures/process.hpp"
#include "sdfutures/system_info.hpp"

namespace sdfutures::detail {

// How a property reaches work forked into the unit (StartMethod::fork and forkserver), or why it cannot.
enum class Forked : std::uint8_t {
    // It reaches: the first five are PropertyReach's.
    cgroup,
    namespaces,
    credentials,
    library,
    unit,
    // It cannot.
    needs_exec,         // systemd applies it only to a program it executes (a seccomp filter, capability sets)
    dynamic_user,       // systemd allocates the user for a program it executes
    unverified_filter,  // a BPF filter systemd skips, silently, where the hierarchy is not cgroup2
    unverified_userns,  // joining a user namespace would change the child's credentials in untested ways
    unknown,            // nobody has shown how it would reach a forked process
};

struct PropertyRow {
    std::string_view name;                // unit-file name, as Properties::set takes it
    convert::Converter convert;           // empty: only Properties::set_typed can give it
    std::string_view example;             // text that converts, and that a real manager accepts (the catalogue test)
    Forked forked = Forked::unknown;
    bool owned_by_library = false;        // a pool's or TransientUnitProcess's unit sets it itself, for every method
    std::string_view reserved_by_command; // non-empty: Command sets it itself; says what to use instead
    std::optional<Requirement> requirement;
    bool accumulates = false;             // later assignments add to earlier ones; an empty one resets the list
    bool own_file_system_view = false;    // gives the unit a file system in which WorkingDirectory= may exist

    PropertyRow&& needs(Requirement r) && { requirement = r; return std::move(*this); }
    PropertyRow&& owned() && { owned_by_library = true; return std::move(*this); }
    PropertyRow&& reserved(std::string_view instead) && { reserved_by_command = instead; return std::move(*this); }
    PropertyRow&& list() && { accumulates = true; return std::move(*this); }
    PropertyRow&& file_system_view() && { own_file_system_view = true; return std::move(*this); }
};

// Every row, in the order of the table.
std::span<const PropertyRow> property_catalog();
// The row of a property, by its unit-file name; nullptr for a name the library does not know.
const PropertyRow* find_property(std::string_view name);

// The PropertyReach of a row that reaches forked work; nullopt for the others.
std::optional<PropertyReach> reach_of(Forked forked);

}  // namespace sdfutures::detail
