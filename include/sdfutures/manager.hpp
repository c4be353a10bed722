#pragma once
// A typed client of systemd's org.freedesktop.systemd1.Manager: the calls sdfutures is built on.
// Job-producing calls wait for the job's JobRemoved signal, which is matched before the call is made so it
// cannot be missed; waiting sleeps in poll(2) on the bus, never in a timed loop.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sdfutures/bus.hpp"
#include "sdfutures/properties.hpp"
#include "sdfutures/unit.hpp"

namespace sdfutures {

struct UnitInfo {
    std::string name, description, load_state, active_state, sub_state, following;
    std::string object_path;
};

// A job systemd accepted and has not necessarily finished; wait() blocks until it has.
class PendingJob {
public:
    PendingJob(Bus bus, std::string unit, std::string type, std::string path);
    PendingJob(PendingJob&&) noexcept;
    PendingJob& operator=(PendingJob&&) noexcept;
    PendingJob(const PendingJob&) = delete;
    PendingJob& operator=(const PendingJob&) = delete;
    ~PendingJob();

    // The job's result ("done", "failed", "canceled", "timeout", "dependency", "skipped"); nullopt when the
    // timeout passed first.
    std::optional<std::string> wait_result(std::optional<std::chrono::milliseconds> timeout = std::nullopt);
    // Waits and throws JobFailed unless the result is "done".
    void wait(std::optional<std::chrono::milliseconds> timeout = std::nullopt);
    const std::string& path() const noexcept { return path_; }
    const std::string& unit() const noexcept { return unit_; }

private:
    Bus bus_;
    std::string unit_, type_, path_;
    bool waited_ = false;
};

// A unit StartTransientUnit creates together with the one it starts (an "auxiliary" unit): the service a transient
// .socket activates, or the one a .timer starts. It is created and loaded, not started; the main unit starts it
// as its kind of unit does (the socket on its first connection).
struct AuxiliaryUnit {
    std::string name;
    Properties properties;
};

class Manager {
public:
    explicit Manager(Bus bus = Bus::automatic());

    const Bus& bus() const noexcept { return bus_; }
    std::string version() const;  // e.g. "252.39-1~deb12u2"
    // The numeric major version, e.g. 252.
    unsigned version_major() const;

    // StartTransientUnit. `mode` is systemd's job mode ("fail", "replace", ...); `aux` the units created with
    // it. All properties are converted (and rejected, throwing PropertyError) before anything is sent.
    PendingJob start_transient_unit_async(const std::string& name, const Properties& properties,
                                          std::vector<DbusProperty> extra = {}, const std::string& mode = "fail",
                                          const std::vector<AuxiliaryUnit>& aux = {});
    Unit start_transient_unit(const std::string& name, const Properties& properties,
                              std::vector<DbusProperty> extra = {}, const std::string& mode = "fail",
                              const std::vector<AuxiliaryUnit>& aux = {});

    void stop_unit(const std::string& name, const std::string& mode = "replace");
    PendingJob stop_unit_async(const std::string& name, const std::string& mode = "replace");
    // ResetFailedUnit: forgets that the unit failed, so that it is inactive (and a transient one is collected).
    void reset_failed_unit(const std::string& name);
    // KillUnit sends a signal at once; systemd makes no job of it.
    void kill_unit(const std::string& name, int signal, const std::string& whom = "all");
    // Waits until the unit is unloaded (UnitRemoved), or returns false after the timeout.
    bool wait_unit_gone(const std::string& name, std::optional<std::chrono::milliseconds> timeout = std::nullopt);

    void attach_processes_to_unit(const std::string& name, const std::string& subcgroup, const std::vector<uint32_t>& pids);

    Unit get_unit(const std::string& name) const;   // throws SystemdError NoSuchUnit when not loaded
    Unit load_unit(const std::string& name) const;  // loads it if needed
    Unit get_unit_by_pid(uint32_t pid) const;
    std::vector<UnitProcess> get_unit_processes(const std::string& name) const;
    std::vector<UnitInfo> list_units() const;
    bool unit_loaded(const std::string& name) const;

private:
    Bus bus_;
};

}  // namespace sdfutures
