#include "property_catalog.hpp"

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace sdfutures::detail {
namespace {

namespace c = convert;
using F = Forked;
using R = Requirement;

PropertyRow row(std::string_view name, c::Converter converter, std::string_view example, Forked forked) {
    return PropertyRow{.name = name, .convert = std::move(converter), .example = example, .forked = forked};
}
// A property only Properties::set_typed can give (no unit-file syntax here), which the library still knows
// something about.
PropertyRow typed(std::string_view name, Forked forked = F::unknown) { return row(name, {}, {}, forked); }

constexpr std::string_view kStdin = "use stdin_from/stdin_from_fd/stdin_from_null/inherit_stdin";
constexpr std::string_view kStdout =
    "use capture_stdout/stdout_to_fd/stdout_to_null/stdout_to_journal/inherit_stdout";
constexpr std::string_view kStderr =
    "use capture_stderr/stderr_to_fd/stderr_to_null/stderr_to_journal/inherit_stderr";

std::vector<PropertyRow> make_catalog() {
    const auto stream = c::one_of({"null", "inherit", "tty", "journal", "kmsg", "socket"});
    return {
        // cgroup resource control. In the hybrid layout the memory and cpuset controllers are v1 ones, which have
        // no knobs for the properties that need cgroup2; systemd accepts those there and does nothing with them.
        row("CPUQuota", c::cpu_quota, "25%", F::cgroup),
        row("CPUWeight", c::integer_in(1, 10000), "200", F::cgroup),
        row("StartupCPUWeight", c::integer_in(1, 10000), "200", F::cgroup),
        row("IOWeight", c::integer_in(1, 10000), "200", F::cgroup),
        row("AllowedCPUs", c::cpu_set, "0", F::cgroup).needs(R::cpuset),
        row("StartupAllowedCPUs", c::cpu_set, "0", F::cgroup).needs(R::cpuset),
        row("AllowedMemoryNodes", c::cpu_set, "0", F::cgroup).needs(R::cpuset),
        row("StartupAllowedMemoryNodes", c::cpu_set, "0", F::cgroup).needs(R::cpuset),
        row("MemoryMax", c::memory_limit(), "64M", F::cgroup),
        row("MemoryHigh", c::memory_limit(), "48M", F::cgroup).needs(R::unified_memory),
        row("MemoryLow", c::memory_limit(), "8M", F::cgroup).needs(R::unified_memory),
        row("MemoryMin", c::memory_limit(), "4M", F::cgroup).needs(R::unified_memory),
        row("MemorySwapMax", c::memory_limit(), "16M", F::cgroup).needs(R::unified_memory),
        row("MemoryZSwapMax", c::memory_limit(), "16M", F::cgroup).needs(R::unified_memory),
        row("StartupMemoryHigh", c::memory_limit(), "48M", F::cgroup).needs(R::unified_memory),
        row("StartupMemoryLow", c::memory_limit(), "8M", F::cgroup).needs(R::unified_memory),
        row("StartupMemoryMax", c::memory_limit(), "64M", F::cgroup).needs(R::unified_memory),
        row("StartupMemorySwapMax", c::memory_limit(), "16M", F::cgroup).needs(R::unified_memory),
        row("StartupMemoryZSwapMax", c::memory_limit(), "16M", F::cgroup).needs(R::unified_memory),
        row("TasksMax", c::tasks_max, "64", F::cgroup),
        row("IPAddressDeny", c::ip_address_list, "any", F::unverified_filter).needs(R::ip_address_filter),
        row("IPAddressAllow", c::ip_address_list, "localhost", F::unverified_filter).needs(R::ip_address_filter),
        row("Delegate", c::boolean(), "yes", F::unit),
        row("Slice", c::slice_name(), "sdfutures-catalog.slice", F::unit),

        // identity
        row("User", c::user_name(), "nobody", F::credentials),
        row("Group", c::group_name(), "nogroup", F::credentials),
        row("SupplementaryGroups", c::group_list, "nogroup", F::credentials).list(),
        row("DynamicUser", c::boolean(), "yes", F::dynamic_user),

        // the sandbox: what joining the main process's namespaces gives a forked child, and what systemd applies
        // only to a program it executes
        row("PrivateNetwork", c::boolean(), "yes", F::namespaces),
        row("PrivateTmp", c::boolean(), "yes", F::namespaces),
        row("ProtectSystem", c::protect_system, "strict", F::namespaces),
        row("ProtectHome", c::protect_home, "read-only", F::namespaces),
        row("PrivateIPC", c::boolean(), "yes", F::unknown),
        row("PrivateMounts", c::boolean(), "yes", F::unknown),
        row("PrivateUsers", c::boolean(), "yes", F::unverified_userns),
        row("PrivateDevices", c::boolean(), "yes", F::needs_exec),
        row("ProtectKernelTunables", c::boolean(), "yes", F::needs_exec),
        row("ProtectKernelModules", c::boolean(), "yes", F::needs_exec),
        row("ProtectKernelLogs", c::boolean(), "yes", F::needs_exec),
        row("ProtectControlGroups", c::boolean(), "yes", F::needs_exec),
        row("ProtectClock", c::boolean(), "yes", F::needs_exec),
        row("ProtectHostname", c::boolean(), "yes", F::needs_exec),
        row("RestrictRealtime", c::boolean(), "yes", F::needs_exec),
        row("RestrictSUIDSGID", c::boolean(), "yes", F::needs_exec),
        row("LockPersonality", c::boolean(), "yes", F::needs_exec),
        row("MemoryDenyWriteExecute", c::boolean(), "yes", F::needs_exec),
        row("SystemCallFilter", c::system_call_filter, "~@mount", F::needs_exec),
        row("SystemCallArchitectures", c::word_list, "native", F::needs_exec),
        row("RestrictAddressFamilies", c::address_families, "AF_UNIX AF_INET", F::needs_exec),
        row("CapabilityBoundingSet", c::capability_set, "CAP_NET_BIND_SERVICE", F::needs_exec),
        row("AmbientCapabilities", c::capability_set, "CAP_NET_BIND_SERVICE", F::needs_exec),
        typed("RestrictNamespaces", F::needs_exec),
        typed("RestrictFileSystems", F::needs_exec),
        typed("RestrictNetworkInterfaces", F::needs_exec),
        row("ReadWritePaths", c::word_list, "/tmp", F::unknown).list(),
        row("ReadOnlyPaths", c::word_list, "/usr", F::unknown).list(),
        row("InaccessiblePaths", c::word_list, "/mnt", F::unknown).list(),
        typed("ExecPaths").list(),
        typed("NoExecPaths").list(),
        typed("BindPaths").list().file_system_view(),
        typed("BindReadOnlyPaths").list().file_system_view(),
        typed("TemporaryFileSystem").list().file_system_view(),
        typed("RuntimeDirectory").list().file_system_view(),
        typed("StateDirectory").list().file_system_view(),
        typed("CacheDirectory").list().file_system_view(),
        typed("LogsDirectory").list().file_system_view(),
        typed("ConfigurationDirectory").list().file_system_view(),
        typed("LoadCredential").list(),
        typed("SetCredential").list(),
        typed("RootDirectory").file_system_view(),
        typed("RootImage").file_system_view(),
        typed("MountImages").file_system_view(),
        typed("ExtensionImages").file_system_view(),
        typed("ExtensionDirectories").file_system_view(),

        // the execution environment, which sdfutures copies from the unit's main process into a forked child
        row("NoNewPrivileges", c::boolean(), "yes", F::library),
        row("Nice", c::nice, "5", F::library),
        row("Environment", c::environment, "CATALOG=1", F::library),
        row("WorkingDirectory", c::working_directory(), "/tmp", F::library),
        row("UMask", c::umask, "0027", F::library),
        row("LimitCPU", c::rlimit_seconds(), "100", F::library),
        row("LimitFSIZE", c::rlimit_bytes(), "1G", F::library),
        row("LimitDATA", c::rlimit_bytes(), "1G", F::library),
        row("LimitSTACK", c::rlimit_bytes(), "8M", F::library),
        row("LimitCORE", c::rlimit_bytes(), "0", F::library),
        row("LimitRSS", c::rlimit_bytes(), "1G", F::library),
        row("LimitNOFILE", c::rlimit_count(), "100:200", F::library),
        row("LimitAS", c::rlimit_bytes(), "4G", F::library),
        row("LimitNPROC", c::rlimit_count(), "1000", F::library),
        row("LimitMEMLOCK", c::rlimit_bytes(), "8M", F::library),
        row("LimitLOCKS", c::rlimit_count(), "100", F::library),
        row("LimitSIGPENDING", c::rlimit_count(), "100", F::library),
        row("LimitMSGQUEUE", c::rlimit_bytes(), "800K", F::library),
        row("LimitNICE", c::rlimit_count(), "0", F::library),
        row("LimitRTPRIO", c::rlimit_count(), "0", F::library),
        row("LimitRTTIME", c::rlimit_microseconds(), "1s", F::library),

        // the unit itself
        row("Description", c::any_text(), "the catalogue's test unit", F::unit),
        row("KillMode", c::one_of({"control-group", "mixed", "process", "none"}), "mixed", F::unit),
        row("KillSignal", c::signal, "SIGINT", F::unit),
        row("CollectMode", c::one_of({"inactive", "inactive-or-failed"}), "inactive-or-failed", F::unit)
            .reserved("a Command's unit is always collected after its result is read"),
        row("RuntimeMaxSec", c::time_span("RuntimeMaxUSec"), "1h", F::unit),
        row("TimeoutStopSec", c::time_span("TimeoutStopUSec"), "3s", F::unit),
        row("TimeoutStartSec", c::time_span("TimeoutStartUSec"), "30s", F::unknown),
        row("RestartSec", c::time_span("RestartUSec"), "2s", F::unknown),
        typed("AddRef").owned().reserved("Command holds the reference that keeps the unit readable until its result "
                                         "is read"),

        // how the service runs its main program: the pool's and TransientUnitProcess's own (their main process and
        // lifetime are the library's), a Command's where it is the user's program. notify-reload is systemd 253's;
        // require_properties() says so on an older manager.
        row("Type", c::one_of({"simple", "exec", "forking", "oneshot", "dbus", "notify", "notify-reload", "idle"}),
            "exec", F::unknown).owned(),
        row("ExecStart", c::exec_start, "/bin/sleep infinity", F::unknown).owned().reserved("the program is Command's argv"),
        typed("ExecStartEx").owned(),
        typed("ExecStartPre").owned(),
        typed("ExecStartPreEx").owned(),
        typed("ExecStartPost").owned(),
        typed("ExecStartPostEx").owned(),
        typed("ExecCondition").owned(),
        typed("ExecConditionEx").owned(),
        typed("ExecReload").owned(),
        typed("ExecReloadEx").owned(),
        typed("ExecStop").owned(),
        typed("ExecStopEx").owned(),
        typed("ExecStopPost").owned(),
        typed("ExecStopPostEx").owned(),
        row("Restart", c::one_of({"no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"}),
            "on-failure", F::unknown).owned(),
        row("RemainAfterExit", c::boolean(), "yes", F::unknown).owned(),
        typed("PIDFile").owned(),
        typed("BusName").owned(),
        typed("Sockets").owned(),
        typed("FileDescriptorStoreMax").owned(),
        row("NotifyAccess", c::one_of({"none", "main", "exec", "all"}), "main", F::unknown).owned(),
        row("WatchdogSec", c::time_span("WatchdogUSec"), "30s", F::unknown),
        row("StandardInput", stream, "null", F::unknown).owned().reserved(kStdin),
        typed("StandardInputFileDescriptor").owned().reserved("use stdin_from_fd"),
        typed("StandardInputData").owned().reserved("use stdin_from"),
        typed("StandardInputText").owned().reserved("use stdin_from"),
        row("StandardOutput", stream, "journal", F::unknown).owned().reserved(kStdout),
        typed("StandardOutputFileDescriptor").owned().reserved("use stdout_to_fd"),
        typed("StandardOutputFile").owned().reserved(kStdout),
        typed("StandardOutputFileToAppend").owned().reserved(kStdout),
        typed("StandardOutputFileToTruncate").owned().reserved(kStdout),
        row("StandardError", stream, "journal", F::unknown).owned().reserved(kStderr),
        typed("StandardErrorFileDescriptor").owned().reserved("use stderr_to_fd"),
        typed("StandardErrorFile").owned().reserved(kStderr),
        typed("StandardErrorFileToAppend").owned().reserved(kStderr),
        typed("StandardErrorFileToTruncate").owned().reserved(kStderr),

        // a .socket unit's (daemon.hpp's listen_fds() receives them)
        row("ListenStream", c::listen("Stream"), "/run/sdfutures-catalog.sock", F::unknown),
        row("ListenDatagram", c::listen("Datagram"), "/run/sdfutures-catalog.dgram", F::unknown),
        row("ListenSequentialPacket", c::listen("SequentialPacket"), "/run/sdfutures-catalog.seq", F::unknown),
        row("FileDescriptorName", c::fd_name(), "catalog", F::unknown),
    };
}

struct Catalog {
    std::vector<PropertyRow> rows = make_catalog();
    std::map<std::string_view, const PropertyRow*, std::less<>> by_name = [this] {
        std::map<std::string_view, const PropertyRow*, std::less<>> index;
        for (const auto& r : rows)
            if (!index.emplace(r.name, &r).second)
                throw std::logic_error("the property catalogue has two rows for " + std::string(r.name));
        return index;
    }();
};

const Catalog& catalog() {
    static const Catalog instance;
    return instance;
}

}  // namespace

std::span<const PropertyRow> property_catalog() { return catalog().rows; }

const PropertyRow* find_property(std::string_view name) {
    auto it = catalog().by_name.find(name);
    return it == catalog().by_name.end() ? nullptr : it->second;
}

std::optional<PropertyReach> reach_of(Forked forked) {
    switch (forked) {
        case F::cgroup: return PropertyReach::cgroup;
        case F::namespaces: return PropertyReach::namespaces;
        case F::credentials: return PropertyReach::credentials;
        case F::library: return PropertyReach::library;
        case F::unit: return PropertyReach::unit;
        default: return std::nullopt;
    }
}

}  // namespace sdfutures::detail
