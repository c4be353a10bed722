#pragma once
// How work forked outside its unit gets into it: the one protocol of TransientUnitProcess and of the pool's fork and
// forkserver workers. (An exec'd pool's workers are born inside the unit, exec_server.hpp: they skip steps 2 to 4
// and report as in step 5.) Private to the library.
//
//   owner                                              child, forked outside the unit, its parent-death signal armed
//   1. starts the unit and waits for its start job
//      (Type=exec: the main process is final by then)
//   2. forks the child (or has the fork server fork it) ─►  waits for the release, doing nothing else
//   3. AttachProcessesToUnit(children), one call; while
//      systemd works on it, asks for the main pid, checks
//      it is the exec'd program and reads the entry plan
//      from it (entry_plan.hpp: its namespaces, rlimits,
//      credentials, ...), once for all children
//   4. sends each the release: the entry plan ──────────►  enter_unit(): applies the plan (unit_entry.hpp), opening
//                                                           the main process's namespaces only where they differ
//   5. waits for the report ◄─────────────────────────────  "entered", or the step that failed
//
// The two messages, on whichever channel carries them (the pool: channel.hpp's records, id 0 both ways; a
// TransientUnitProcess: a release pipe one way, closed after the release, and the first frame of its reply pipe,
// wire.hpp, the other):
//   release  the entry plan, encode_entry_plan's bytes (entry_plan.hpp)
//   report   a wire reply: void for "entered" (for the pool's workers: entered and initialized), or a SetupError
//            naming the step, its errno and what was being done
// The pool keeps the release and sends the same bytes to the workers it adds later: the main process (the anchor,
// cat) does not change its own credentials, limits or namespaces.
// A child whose channel ends before the release, or that gets anything else as one, exits 127 before any user code;
// one whose step fails reports it and exits 125.

#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "unit_entry.hpp"

namespace sdfutures {
class Manager;
class Unit;
}  // namespace sdfutures

namespace sdfutures::detail {

// A release longer than this is no owner's (the plan is dominated by the main process's environment, which the
// kernel bounds far below).
inline constexpr std::size_t kMaxReleaseBytes = 16u << 20;

// Step 4's message, and the main process it was read from.
struct Release {
    pid_t main_pid = 0;
    std::string message;
};

// Owner, steps 3 and 4: attaches the children in one call, meanwhile checks that the unit's main process is its
// exec'd program (never a just-forked one still holding root's identity) and reads the entry plan from it, and
// releases each child through `send(i, release)`, i indexing `children`; send throws (a SystemError naming its
// call) when it cannot. Returns the release sent. Throws SetupError for the plan (the step that failed),
// SystemdError for the attach.
Release attach_and_release(Manager& manager, const Unit& unit, std::span<const pid_t> children,
                           const std::function<void(std::size_t child, const std::string& release)>& send);

// A TransientUnitProcess's release pipe: the owner writes the release whole (SystemError "write" when it cannot),
// then closes the pipe; the child reads to its end (nullopt for nothing, an error, or more than kMaxReleaseBytes).
void write_release_pipe(int fd, std::string_view release);
std::optional<std::string> read_release_pipe(int fd);

// Child, steps 2 and 4: waits for the release (`receive_release` returns its body, or nullopt once the channel
// ended), then enters the unit. Returns the descriptor the channel is on afterwards (kEnteredPipeFd); the report
// of step 5 is the caller's to send. A failed step is sent through `report_failure` on the channel's new
// descriptor, and the child exits 125; no release, and it exits 127.
int enter_when_released(const EntryRequest& entry, const std::function<std::optional<std::string>()>& receive_release,
                        const std::function<void(int channel_fd, const std::string& report)>& report_failure);

}  // namespace sdfutures::detail
