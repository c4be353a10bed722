#include "sdfutures/system_info.hpp"

#include <linux/magic.h>
#include <sys/statfs.h>
#include <sys/utsname.h>

#include <cerrno>
#include <charconv>

#include "property_catalog.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/manager.hpp"

namespace sdfutures {
namespace {

struct FsType {
    bool exists = false;
    decltype(statfs::f_type) type = 0;
    int error_number = 0;
};

FsType fs_type(const std::string& path) {
    struct statfs fs {};
    if (::statfs(path.c_str(), &fs) != 0) return {false, 0, errno};
    return {true, fs.f_type, 0};
}

// What each requirement needs. A zero version means "any".
struct Need {
    std::string_view subject;
    unsigned systemd = 0;
    KernelVersion kernel;
    enum class Layout { any, systemd_on_cgroup2, all_on_cgroup2 } layout = Layout::any;
};

Need need_of(Requirement requirement) {
    switch (requirement) {
        case Requirement::exec_service_type: return {"Type=exec", 240, {}, Need::Layout::any};
        case Requirement::notify_reload_service_type: return {"Type=notify-reload", 253, {}, Need::Layout::any};
        // Before 254 a run's end is a real dead/failed state, in which the service releases its stdio descriptors.
        case Requirement::restart_keeping_stream_fds:
            return {"Restart= with standard streams passed as descriptors", 254, {}, Need::Layout::any};
        case Requirement::attach_processes: return {"AttachProcessesToUnit", 238, {}, Need::Layout::any};
        case Requirement::pidfd: return {"pidfd_open(2)", 0, {5, 3}, Need::Layout::any};
        case Requirement::close_range: return {"close_range(2)", 0, {5, 9}, Need::Layout::any};
        // systemd attaches its BPF firewall to the unit's cgroup in the hierarchy it tracks processes in, which is
        // cgroup2 in the hybrid layout too; only where that hierarchy is v1 does it skip the filter, silently.
        case Requirement::ip_address_filter:
            return {"IPAddressDeny=/IPAddressAllow=", 235, {}, Need::Layout::systemd_on_cgroup2};
        // In the hybrid layout the memory and cpuset controllers are v1 ones, which have no such knobs; systemd
        // accepts the settings there and does nothing with them.
        case Requirement::unified_memory:
            return {"MemoryHigh=, MemoryLow=, MemoryMin= and MemorySwapMax=", 0, {}, Need::Layout::all_on_cgroup2};
        case Requirement::cpuset: return {"AllowedCPUs=", 244, {}, Need::Layout::all_on_cgroup2};
    }
    return {"an unknown requirement", ~0u, {}, Need::Layout::any};
}

std::string kernel_text(KernelVersion v) { return std::to_string(v.major) + "." + std::to_string(v.minor); }

}  // namespace

std::string_view to_string(CgroupLayout layout) noexcept {
    switch (layout) {
        case CgroupLayout::legacy: return "legacy";
        case CgroupLayout::hybrid: return "hybrid";
        case CgroupLayout::unified: return "unified";
    }
    return "unknown";
}

CgroupLayout detect_cgroup_layout(const std::string& root) {
    FsType top = fs_type(root);
    if (!top.exists) throw Unsupported("cannot inspect the cgroup file system at " + root + ": " + errno_text(top.error_number));
    if (top.type == CGROUP2_SUPER_MAGIC) return CgroupLayout::unified;
    if (top.type != TMPFS_MAGIC)
        throw Unsupported("no cgroup file system is mounted at " + root + " (neither cgroup2 nor a tmpfs of hierarchies)");
    if (fs_type(root + "/unified").type == CGROUP2_SUPER_MAGIC) return CgroupLayout::hybrid;
    // The hybrid layout of systemd 232 and 233 mounted cgroup2 at .../systemd instead.
    FsType own = fs_type(root + "/systemd");
    if (own.type == CGROUP2_SUPER_MAGIC) return CgroupLayout::hybrid;
    if (own.type == CGROUP_SUPER_MAGIC) return CgroupLayout::legacy;
    throw Unsupported("no hierarchy for systemd is mounted below " + root + " (no cgroup2 at " + root +
                      "/unified, no cgroup at " + root + "/systemd)");
}

KernelVersion running_kernel_version() {
    utsname names{};
    if (::uname(&names) != 0) throw SystemError("uname", errno);
    std::string_view release(names.release);
    KernelVersion v;
    auto [rest, error] = std::from_chars(release.data(), release.data() + release.size(), v.major);
    if (error == std::errc() && rest < release.data() + release.size() && *rest == '.')
        std::from_chars(rest + 1, release.data() + release.size(), v.minor);
    return v;
}

SystemInfo system_info(const Bus& bus) {
    SystemInfo info;
    info.systemd_version = Manager(bus).version_major();
    info.cgroup_layout = detect_cgroup_layout();
    info.kernel = running_kernel_version();
    return info;
}

std::optional<std::string> unmet_requirement(Requirement requirement, const SystemInfo& info, std::string_view subject) {
    Need need = need_of(requirement);
    std::string who(subject.empty() ? need.subject : subject);
    if (need.systemd && info.systemd_version < need.systemd)
        return who + " needs systemd >= " + std::to_string(need.systemd) + "; the manager is " +
               std::to_string(info.systemd_version);
    if (need.kernel.major && info.kernel < need.kernel)
        return who + " needs Linux >= " + kernel_text(need.kernel) + "; the kernel is " + kernel_text(info.kernel);
    std::string layout(to_string(info.cgroup_layout));
    if (need.layout == Need::Layout::all_on_cgroup2 && info.cgroup_layout != CgroupLayout::unified)
        return who + " needs the unified cgroup hierarchy (cgroup v2); this machine has the " + layout + " layout";
    if (need.layout == Need::Layout::systemd_on_cgroup2 && info.cgroup_layout == CgroupLayout::legacy)
        return who + " needs systemd to track processes in a cgroup2 hierarchy (the unified or the hybrid layout); "
                     "this machine has the legacy layout";
    return std::nullopt;
}

void require(Requirement requirement, const SystemInfo& info) {
    if (auto why = unmet_requirement(requirement, info)) throw Unsupported(*why);
}

std::optional<Requirement> requirement_of_property(std::string_view name) {
    const detail::PropertyRow* row = detail::find_property(name);
    return row ? row->requirement : std::nullopt;
}

std::optional<Requirement> requirement_of_property(std::string_view name, std::string_view value) {
    if (name == "Type" && value == "notify-reload") return Requirement::notify_reload_service_type;
    return requirement_of_property(name);
}

void require_properties(const Properties& properties, const SystemInfo& info) {
    for (const auto& entry : properties.entries()) {
        std::string value = entry.text;
        if (entry.typed && entry.typed->containsValueOfType<std::string>()) value = entry.typed->get<std::string>();
        auto requirement = requirement_of_property(entry.name, value);
        if (!requirement) continue;
        // A requirement of the value names the whole assignment ("Type=notify-reload needs systemd >= 253").
        std::string subject = requirement == requirement_of_property(entry.name) ? entry.name + "=" : entry.name + "=" + value;
        if (auto why = unmet_requirement(*requirement, info, subject)) throw Unsupported(*why);
    }
}

}  // namespace sdfutures
