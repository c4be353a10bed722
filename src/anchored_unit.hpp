#pragma once
// The transient service every forked child or pool worker runs in: its main process is `cat` reading a pipe
// whose only writer is the owner, so the unit ends when the owner does. Private to the library.

#include <cstdint>
#include <string>
#include <vector>

#include "sdfutures/bus.hpp"
#include "sdfutures/properties.hpp"
#include "sdfutures/unit.hpp"

namespace sdfutures::detail {

// "sdfutures-<kind>-<pid>-<n>-<random>.service"
std::string default_unit_name(const char* kind);

// The properties sdfutures adds to the user's: Type=exec with cat as main process reading `anchor_read_fd`,
// Delegate=yes, and defaults for CollectMode=, TimeoutStopSec= and Description= the user did not set.
std::vector<DbusProperty> anchored_service_properties(const Properties& user, int anchor_read_fd,
                                                      const std::string& description);

// The unit's main process, checked to be the exec'd anchor program (never a just-forked, not yet set up
// process whose identity is still root's). Throws Error otherwise.
uint32_t verified_main_pid(const Unit& unit);

// Cumulative OOM kills recorded for a cgroup (v1 memory.oom_control or v2 memory.events); 0 if unknown.
uint64_t oom_kill_count(const std::string& control_group) noexcept;

// >= 0 an exit code, < 0 the negated signal, from a wait status.
int exit_status_from_wait_status(int wait_status) noexcept;
// "exited with code 3", "was killed by SIGSEGV"
std::string describe_exit(int exit_status);

// Throws PropertyError for what check_identity_and_paths finds, then Unsupported naming what is missing when
// the manager, the kernel or the cgroup layout lack what an anchored unit with these properties needs (see
// system_info.hpp); asks the manager for its version. Called before anything is created, so both refusals
// leave no unit and no process behind.
void require_support(const Bus& bus, const Properties& properties);

// Refuses, with PropertyError naming the property, the value and what was expected, what this process can
// already tell would fail the start: User= naming no user (numeric uids pass), Group= or SupplementaryGroups=
// naming no group (none of the three with DynamicUser=yes, whose user systemd makes), WorkingDirectory= an
// absolute path that does not exist or is not a directory. Anything it cannot be sure of is left to systemd.
void check_identity_and_paths(const Properties& properties);


// Stops the unit and waits until it is unloaded; a unit already gone is fine. Never throws.
void stop_and_wait_gone(const Bus& bus, const std::string& unit) noexcept;

}  // namespace sdfutures::detail
