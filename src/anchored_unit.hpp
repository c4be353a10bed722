#pragma once
// The transient service every forked child or pool worker runs in: its main process is `cat` reading a pipe
// whose only writer is the owner, so the unit ends when the owner does. Private to the library.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sdfutures/bus.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/manager.hpp"
#include "sdfutures/properties.hpp"
#include "sdfutures/unit.hpp"

namespace sdfutures::detail {

// "sdfutures-<kind>-<pid>-<n>-<random>.service"
std::string default_unit_name(const char* kind);

// The properties sdfutures adds to the user's: Type=exec with cat as main process reading `anchor_read_fd`,
// Delegate=yes, AddRef=yes (see wait_anchored_start), and defaults for CollectMode=, TimeoutStopSec= and
// Description= the user did not set.
std::vector<DbusProperty> anchored_service_properties(const Properties& user, int anchor_read_fd,
                                                      const std::string& description);

// What every unit of the library gets besides its main program: Delegate=yes, AddRef=yes, and defaults for
// CollectMode=, TimeoutStopSec= and Description= the user did not set.
void add_library_defaults(std::vector<DbusProperty>& extra, const Properties& user, const std::string& description);

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
// `attaches`: the work is forked outside and attached (not StartMethod::exec, whose workers are born in the unit).
void require_support(const Bus& bus, const Properties& properties, bool attaches = true);

// Refuses, with PropertyError naming the property, the value and what was expected, what this process can
// already tell would fail the start: User= naming no user (numeric uids pass), Group= or SupplementaryGroups=
// naming no group (none of the three with DynamicUser=yes, whose user systemd makes), WorkingDirectory= an
// absolute path that does not exist or is not a directory. Anything it cannot be sure of is left to systemd,
// whose failure wait_anchored_start names.
void check_identity_and_paths(const Properties& properties);

// What an exit status of the unit's process points at in `properties`.
struct ExitStatusCause {
    std::string property;  // the assignments in unit-file syntax, "User=nobody" or "PrivateTmp=yes, ProtectHome=yes"
    std::string note;      // what else is worth knowing; empty when nothing
};
// For systemd's setup statuses (200/CHDIR → WorkingDirectory=, 216/GROUP → Group= and SupplementaryGroups=,
// 217/USER → User=, 226/NAMESPACE → the namespace properties given, ...); empty for any other status or when
// none of the properties it points at was given.
ExitStatusCause exit_status_cause(int exit_status, const Properties& properties);

// What systemd recorded for `unit` after its start job ended with `job_result` (ExecMainCode=, ExecMainStatus=,
// Result=), as the error to throw. The unit must still be loaded, which AddRef=yes guarantees; the reference is
// dropped afterwards, so the unit is collected (CollectMode=inactive-or-failed). A unit already gone gives a
// StartFailed that says so, and so does one whose bus fails meanwhile: only std::bad_alloc escapes.
StartFailed read_start_failure(const Bus& bus, const std::string& unit, const std::string& job_result,
                               const Properties& properties);

// Waits for the start job of an anchored unit (one made with anchored_service_properties). When it is done,
// drops the unit's AddRef= reference, so that teardown collects it as before; otherwise throws the StartFailed
// of read_start_failure. With a timeout that passes first: JobFailed "not finished in time", the reference
// left to stop_and_wait_gone.
void wait_anchored_start(const Bus& bus, PendingJob& job, const Properties& properties,
                         std::optional<std::chrono::milliseconds> timeout = std::nullopt);

// Drops this client's reference to the unit (Manager.UnrefUnit) without waiting for the answer: nothing is
// left to wait for, and a unit already unreferenced or gone is fine. Never throws.
void release_unit_reference(const Bus& bus, const std::string& unit) noexcept;

// Whether the manager says `unit` is no longer active (deactivating, inactive, failed) or no longer loaded. A
// failed call that names no missing unit (a timeout, a lost connection) says nothing: false. Never throws.
// For a process that died of SIGTERM or SIGKILL, which is how a stopped unit's processes die and also how one
// killed alone dies: only the manager can tell the two apart before the unit's anchor is gone.
bool manager_says_unit_stopped(const Bus& bus, const std::string& unit) noexcept;

// Drops this client's reference, stops the unit and waits until it is unloaded; a unit already gone is fine.
// Never throws.
void stop_and_wait_gone(const Bus& bus, const std::string& unit) noexcept;

}  // namespace sdfutures::detail
