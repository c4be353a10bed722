#pragma once
// What this machine and its systemd manager offer, and the checks that turn a missing feature into a clear
// sdfutures::Unsupported before anything is started.
//
// Several settings are not refused by systemd where they cannot work; it accepts them and silently does
// nothing (MemoryHigh= on a cgroup v1 memory controller, AllowedCPUs= without the v2 cpuset controller), so
// a limit the user relies on would not hold. And a manager older than a call sdfutures makes fails with an
// "unknown method" error that says nothing about versions. require() says what is needed and what there is:
//
//     "Type=exec needs systemd >= 240; the manager is 239"
//     "MemoryHigh= needs the unified cgroup hierarchy (cgroup v2); this machine has the hybrid layout"

#include <optional>
#include <string>
#include <string_view>

#include "sdfutures/bus.hpp"
#include "sdfutures/properties.hpp"

namespace sdfutures {

// How the cgroup hierarchies are mounted, as systemd itself tells them apart (statfs of /sys/fs/cgroup and
// the directories below it).
enum class CgroupLayout {
    legacy,   // cgroup v1 only: a tmpfs of v1 hierarchies, systemd tracking processes in name=systemd
    hybrid,   // v1 controllers, plus a cgroup2 mount (/sys/fs/cgroup/unified) systemd tracks processes in
    unified,  // cgroup v2 only: /sys/fs/cgroup is cgroup2, every controller on it
};

// "legacy", "hybrid" or "unified".
std::string_view to_string(CgroupLayout layout) noexcept;

// The layout of the hierarchies mounted at `root`. Throws Unsupported when nothing systemd could run on is
// mounted there (no cgroup2 at the root, and no cgroup hierarchy for systemd below a tmpfs).
CgroupLayout detect_cgroup_layout(const std::string& root = "/sys/fs/cgroup");

struct KernelVersion {
    unsigned major = 0, minor = 0;
    friend bool operator==(const KernelVersion&, const KernelVersion&) = default;
    friend bool operator<(const KernelVersion& a, const KernelVersion& b) {
        return a.major != b.major ? a.major < b.major : a.minor < b.minor;
    }
};
// From uname(2), e.g. {6, 1} for "6.1.0-13-amd64".
KernelVersion running_kernel_version();

struct SystemInfo {
    unsigned systemd_version = 0;  // the manager's major version (Manager.Version), e.g. 252
    CgroupLayout cgroup_layout = CgroupLayout::unified;
    KernelVersion kernel;
};

// Asks the manager on `bus` for its version; the layout and kernel are this machine's (the manager runs on
// it, which is what sdfutures needs anyway).
SystemInfo system_info(const Bus& bus);

// What sdfutures, or a property given to it, needs from the manager, the kernel or the cgroup layout.
enum class Requirement {
    exec_service_type,  // Type=exec for the unit's anchor process: systemd >= 240
    notify_reload_service_type,  // Type=notify-reload (READY=1, then RELOADING=1 on SIGHUP): systemd >= 253
    // Restart= of a service whose standard streams are descriptors it was given: systemd >= 254 (older ones close
    // them at the end of the first run, so the later runs' output does not reach them)
    restart_keeping_stream_fds,
    attach_processes,   // Manager.AttachProcessesToUnit: systemd >= 238
    pidfd,              // pidfd_open(2) and pidfd_send_signal(2): Linux >= 5.3
    close_range,        // close_range(2): Linux >= 5.9
    ip_address_filter,  // IPAddressDeny=, IPAddressAllow=: systemd >= 235 tracking processes in a cgroup2 hierarchy
    unified_memory,     // MemoryHigh=, MemoryLow=, MemoryMin=, MemorySwapMax=: the memory controller on cgroup2
    cpuset,             // AllowedCPUs=, AllowedMemoryNodes=: systemd >= 244, the cpuset controller on cgroup2
};

// Why `requirement` is not met on `info`, as a sentence naming what is needed and what there is, e.g.
// "Type=exec needs systemd >= 240; the manager is 239"; nullopt when it is met. `subject` replaces the
// requirement's own name at the start of the sentence (a property's "MemoryHigh=", say).
std::optional<std::string> unmet_requirement(Requirement requirement, const SystemInfo& info,
                                             std::string_view subject = {});
// Throws Unsupported with unmet_requirement()'s sentence when it is not met.
void require(Requirement requirement, const SystemInfo& info);

// The requirement a unit property brings (unit-file or D-Bus name, e.g. "MemoryHigh"), if any.
std::optional<Requirement> requirement_of_property(std::string_view name);
// The requirement a property brings with this value (Type=notify-reload, say), or else requirement_of_property's.
std::optional<Requirement> requirement_of_property(std::string_view name, std::string_view value);
// Throws Unsupported naming the first property whose requirement is not met on `info`.
void require_properties(const Properties& properties, const SystemInfo& info);

}  // namespace sdfutures
