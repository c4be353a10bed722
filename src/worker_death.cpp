#include "worker_death.hpp"

#include <signal.h>

#include "anchored_unit.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures::detail {

bool ends_like_a_stopped_unit(int exit_status) noexcept { return exit_status == -SIGTERM || exit_status == -SIGKILL; }

bool oom_explains(const WorkerDeath& death, std::uint64_t oom_kills_seen) noexcept {
    return death.exit_status == -SIGKILL && death.oom_kills > oom_kills_seen;
}

bool needs_unit_verdict(const WorkerDeath& death, std::uint64_t oom_kills_seen) noexcept {
    return !death.unit_gone_verdict && !death.main_process_gone && ends_like_a_stopped_unit(death.exit_status) &&
           !oom_explains(death, oom_kills_seen);
}

DeathVerdict classify_death(const WorkerDeath& death, const std::string& unit, std::uint64_t& oom_kills_seen) {
    if (death.main_process_gone || death.unit_gone_verdict.value_or(false))
        return {std::make_exception_ptr(UnitStopped(unit)), true};
    // A worker that died of something else must not use an OOM kill up: the victim's own exit may come after it.
    const bool oom_killed = oom_explains(death, oom_kills_seen);
    if (oom_killed) ++oom_kills_seen;
    std::string how = "the worker (pid " + std::to_string(death.pid) + ") running the task " + describe_exit(death.exit_status);
    if (oom_killed) how += " by the kernel's OOM killer (the unit's MemoryMax= was reached)";
    return {std::make_exception_ptr(ProcessDied(how, death.exit_status)), false};
}

std::exception_ptr failed_entry_error(bool unit_gone, const std::string& unit, const std::exception_ptr& entry_error) {
    return unit_gone ? std::make_exception_ptr(UnitStopped(unit)) : entry_error;
}

}  // namespace sdfutures::detail
