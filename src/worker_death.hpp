#pragma once
// What a worker's death means for the task it was running: which error the task gets, and whether the manager
// must be asked first whether the unit was stopped. Plain code: the dispatcher gathers the facts (the exit status
// the fork server reported, whether the unit's main process is gone, the manager's verdict, the cgroup's OOM kill
// count) and decides here. Private to the library; tests/worker_death_test.cpp drives it directly.

#include <sys/types.h>

#include <cstdint>
#include <exception>
#include <optional>
#include <string>

namespace sdfutures::detail {

struct WorkerDeath {
    pid_t pid = -1;
    int exit_status = 0;                    // its exit code, or minus the signal that killed it
    bool main_process_gone = false;         // the unit's main process ended: systemd stops the unit with it
    std::optional<bool> unit_gone_verdict;  // the manager's answer to "was the unit stopped?", once asked
    std::uint64_t oom_kills = 0;            // the unit cgroup's OOM kill count, read after the death was reported
};

// Whether the worker ended the way every process of a stopped unit ends (systemd's SIGTERM, or SIGKILL after
// TimeoutStopSec=): then only the manager can say whether the unit was stopped or the worker alone was killed.
bool ends_like_a_stopped_unit(int exit_status) noexcept;

// Each OOM kill the cgroup records explains one SIGKILLed worker, busy or idle; `oom_kills_seen` counts those
// already used to explain one. A SIGTERM never is the OOM killer's.
bool oom_explains(const WorkerDeath& death, std::uint64_t oom_kills_seen) noexcept;

// Whether the task of this dead worker must wait for the manager's verdict before it fails: it ended like a stopped
// unit's process, no verdict is in yet, the main process is still there, and no OOM kill explains it.
bool needs_unit_verdict(const WorkerDeath& death, std::uint64_t oom_kills_seen) noexcept;

struct DeathVerdict {
    std::exception_ptr error;   // for the task it was running
    bool unit_stopped = false;  // the unit was stopped: every unfinished task fails with `error`
};
// The error of the task the worker was running: UnitStopped when the unit was stopped (`unit` is its name), else
// ProcessDied saying how it ended, naming the OOM killer when the cgroup's count explains a SIGKILL (which uses
// that kill up: `oom_kills_seen` grows by one, so another worker's death cannot claim it too).
DeathVerdict classify_death(const WorkerDeath& death, const std::string& unit, std::uint64_t& oom_kills_seen);

// A replacement worker that could not enter the unit: when the manager says the unit is gone, the stop is what
// failed it (UnitStopped); otherwise its own entry failure stands.
std::exception_ptr failed_entry_error(bool unit_gone, const std::string& unit, const std::exception_ptr& entry_error);

}  // namespace sdfutures::detail
