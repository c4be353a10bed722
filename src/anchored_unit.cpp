#include "anchored_unit.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string_view>

#include "bus_state.hpp"
#include "property_catalog.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/manager.hpp"
#include "sdfutures/system_info.hpp"

namespace sdfutures::detail {
namespace {

const char* anchor_program() {
    for (const char* p : {"/usr/bin/cat", "/bin/cat"})
        if (::access(p, X_OK) == 0) return p;
    throw Unsupported("no /usr/bin/cat or /bin/cat: sdfutures needs it as the unit's main process");
}

constexpr const char* kServiceInterface = "org.freedesktop.systemd1.Service";

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

// A typed value as unit-file text, for messages.
std::string typed_text(const sdbus::Variant& value) {
    try {
        const std::string type = value.peekValueType();
        if (type == "s") return value.get<std::string>();
        if (type == "b") return value.get<bool>() ? "yes" : "no";
        if (type == "t") return std::to_string(value.get<uint64_t>());
        if (type == "x") return std::to_string(value.get<int64_t>());
        if (type == "u") return std::to_string(value.get<uint32_t>());
        if (type == "i") return std::to_string(value.get<int32_t>());
        if (type == "as") {
            std::string out;
            for (const auto& word : value.get<std::vector<std::string>>()) out += (out.empty() ? "" : " ") + word;
            return out;
        }
        return "(a value of D-Bus type " + type + ")";
    } catch (const sdbus::Error&) {
        return "(a typed value)";
    }
}

bool accumulates(std::string_view name) {
    const detail::PropertyRow* row = detail::find_property(name);
    return row && row->accumulates;
}

// What systemd ends up with for `name`, as unit-file text; nullopt when it was not given.
std::optional<std::string> effective_text(const Properties& properties, std::string_view name) {
    std::optional<std::string> out;
    for (const auto& e : properties.entries()) {
        if (e.name != name) continue;
        std::string text = e.typed ? typed_text(*e.typed) : e.text;
        if (accumulates(name) && out && !out->empty() && !text.empty()) *out += " " + text;
        else out = std::move(text);
    }
    return out;
}

// Whether an assignment turns its feature on: "no" (or "false", ...) does not; a path, a mode or "strict" does.
bool enables(const std::string& text) {
    if (text.empty()) return false;
    try {
        return parse::boolean("", text);
    } catch (const PropertyError&) {
        return true;
    }
}

// The last string given for `name` (text, or a typed "s"); nullopt when none was.
std::optional<std::string> last_string(const Properties& properties, std::string_view name) {
    std::optional<std::string> out;
    for (const auto& e : properties.entries()) {
        if (e.name != name) continue;
        if (!e.typed) out = std::string(trim(e.text));
        else if (e.typed->containsValueOfType<std::string>()) out = e.typed->get<std::string>();
        else out.reset();  // a mistyped value: systemd refuses it itself
    }
    return out;
}

bool dynamic_user(const Properties& properties) {
    bool dynamic = false;
    for (const auto& e : properties.entries()) {
        if (e.name != "DynamicUser") continue;
        if (!e.typed) dynamic = enables(e.text);
        else if (e.typed->containsValueOfType<bool>()) dynamic = e.typed->get<bool>();
    }
    return dynamic;
}

std::vector<std::string> supplementary_groups(const Properties& properties) {
    std::vector<std::string> groups;
    for (const auto& e : properties.entries()) {
        if (e.name != "SupplementaryGroups") continue;
        std::vector<std::string> more;
        if (!e.typed) more = parse::words(e.name, e.text);
        else if (e.typed->containsValueOfType<std::vector<std::string>>()) more = e.typed->get<std::vector<std::string>>();
        if (more.empty()) groups.clear();  // an empty assignment resets the list
        groups.insert(groups.end(), more.begin(), more.end());
    }
    return groups;
}

bool numeric_id(const std::string& name) {
    return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

enum class Lookup { found, missing, unknown };

// getpwnam_r/getgrnam_r with a buffer that grows as the entry needs; `unknown` when NSS fails otherwise (a
// directory service that does not answer, say), which says nothing about the name.
template <class Entry>
Lookup look_up(const std::function<int(Entry*, char*, size_t, Entry**)>& get) {
    std::vector<char> buffer(16384);
    for (;;) {
        Entry entry{};
        Entry* found = nullptr;
        int r = get(&entry, buffer.data(), buffer.size(), &found);
        if (r == ERANGE && buffer.size() < (size_t{1} << 22)) {
            buffer.resize(buffer.size() * 2);
            continue;
        }
        if (r == 0) return found ? Lookup::found : Lookup::missing;
        return r == ENOENT ? Lookup::missing : Lookup::unknown;
    }
}

// systemd resolves these itself, whatever NSS says (src/basic/user-util.c: root and nobody are synthesized;
// Debian builds name the nobody group "nogroup").
bool synthesized_by_systemd(const std::string& name) {
    return name == "root" || name == "nobody" || name == "nogroup";
}

void check_user(const std::string& user) {
    if (user.empty() || numeric_id(user) || synthesized_by_systemd(user)) return;
    auto get = [&](passwd* pw, char* buf, size_t size, passwd** found) {
        return ::getpwnam_r(user.c_str(), pw, buf, size, found);
    };
    if (look_up<passwd>(get) == Lookup::missing)
        throw PropertyError("User", user, "a user that exists (this machine's user database knows no user '" + user +
                                              "'; numeric uids are passed to systemd as they are)");
}

void check_group(const char* property, const std::string& value, const std::string& name) {
    if (name.empty() || numeric_id(name) || synthesized_by_systemd(name)) return;
    auto get = [&](group* gr, char* buf, size_t size, group** found) {
        return ::getgrnam_r(name.c_str(), gr, buf, size, found);
    };
    if (look_up<group>(get) == Lookup::missing)
        throw PropertyError(property, value, "groups that exist (this machine's group database knows no group '" +
                                                 name + "'; numeric gids are passed to systemd as they are)");
}

void check_working_directory(const Properties& properties) {
    std::optional<std::string> dir = last_string(properties, "WorkingDirectory");
    // "-/path": systemd starts the unit without it; "~": the user's home, resolved by systemd.
    if (!dir || dir->empty() || dir->front() != '/') return;
    // The unit may see another file system than this process: then only systemd can tell (and the decode of a
    // failed start names 200/CHDIR). Without those, this process's view is taken for the manager's.
    // (another root, a tmpfs or bind mount at or above it, or a directory systemd creates before it changes into it)
    for (const auto& entry : properties.entries()) {
        const detail::PropertyRow* row = detail::find_property(entry.name);
        if (row && row->own_file_system_view) return;
    }
    struct stat st{};
    if (::stat(dir->c_str(), &st) != 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR)
            throw PropertyError("WorkingDirectory", *dir, "an existing directory (" + errno_text(err) +
                                                              "); prefix it with '-' to start the unit without it");
        return;  // EACCES and the like: the unit's user may still get there
    }
    if (!S_ISDIR(st.st_mode)) throw PropertyError("WorkingDirectory", *dir, "a directory, not a file of another type");
}

// The properties systemd's setup statuses point at, in unit-file spelling (which is the D-Bus one for all of
// these). `only_enabled`: assignments that turn their feature off ("PrivateTmp=no") are not a cause.
struct StatusProperties {
    std::vector<std::string_view> names;
    bool only_enabled = false;
};

StatusProperties status_properties(int status) {
    switch (status) {
        case 200: return {{"WorkingDirectory"}};
        case 201: return {{"Nice"}};
        case 203: return {{"ExecStart"}};
        case 206: return {{"OOMScoreAdjust"}};
        case 208: return {{"StandardInput", "StandardInputText", "StandardInputData", "TTYPath"}};
        case 209: return {{"StandardOutput"}};
        case 210: return {{"RootDirectory", "RootImage"}};
        case 211: return {{"IOSchedulingClass", "IOSchedulingPriority"}};
        case 212: return {{"TimerSlackNSec"}};
        case 213: return {{"SecureBits"}};
        case 214: return {{"CPUSchedulingPolicy", "CPUSchedulingPriority", "CPUSchedulingResetOnFork"}};
        case 215: return {{"CPUAffinity"}};
        case 216: return {{"Group", "SupplementaryGroups"}};
        case 217: return {{"User"}};
        case 218: return {{"CapabilityBoundingSet", "AmbientCapabilities"}};
        case 222: return {{"StandardError"}};
        case 224: return {{"PAMName"}};
        case 225: return {{"PrivateNetwork", "NetworkNamespacePath"}, true};
        case 226:
            return {{"PrivateTmp", "PrivateDevices", "PrivateMounts", "PrivateIPC", "ProtectSystem", "ProtectHome",
                     "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                     "ProtectHostname", "ProtectProc", "ProcSubset", "ReadOnlyPaths", "ReadWritePaths",
                     "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem", "BindPaths",
                     "BindReadOnlyPaths", "RootDirectory", "RootImage", "MountImages", "ExtensionImages",
                     "ExtensionDirectories", "MountAPIVFS", "IPCNamespacePath"},
                    true};
        case 227: return {{"NoNewPrivileges"}, true};
        case 228:
            return {{"SystemCallFilter", "SystemCallArchitectures", "SystemCallLog", "SystemCallErrorNumber",
                     "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "MemoryDenyWriteExecute",
                     "LockPersonality", "ProtectKernelModules", "ProtectKernelLogs", "ProtectClock", "ProtectHostname"},
                    true};
        case 229: return {{"SELinuxContext"}};
        case 230: return {{"Personality", "LockPersonality"}};
        case 231: return {{"AppArmorProfile"}};
        case 232: return {{"RestrictAddressFamilies"}};
        case 233: return {{"RuntimeDirectory"}};
        case 236: return {{"SmackProcessLabel"}};
        case 237: return {{"KeyringMode"}};
        case 238: return {{"StateDirectory"}};
        case 239: return {{"CacheDirectory"}};
        case 240: return {{"LogsDirectory"}};
        case 241: return {{"ConfigurationDirectory"}};
        case 242: return {{"NUMAPolicy", "NUMAMask"}};
        case 243:
            return {{"LoadCredential", "LoadCredentialEncrypted", "SetCredential", "SetCredentialEncrypted",
                     "ImportCredential"}};
        case 244: return {{"RestrictFileSystems"}};
        case 245: return {{"MemoryKSM"}, true};
        case 246: return {{"MemoryTHP"}};
        default: return {};
    }
}

}  // namespace

std::string default_unit_name(const char* kind) {
    static std::atomic<unsigned> counter{0};
    std::random_device random;
    char suffix[9];
    std::snprintf(suffix, sizeof suffix, "%08x", random());
    return std::string("sdfutures-") + kind + "-" + std::to_string(getpid()) + "-" + std::to_string(++counter) + "-" +
           suffix + ".service";
}

void add_library_defaults(std::vector<DbusProperty>& extra, const Properties& user, const std::string& description) {
    if (!user.contains("Delegate"))  // forked work needs it to be attached; exec'd work may turn it off
        extra.emplace_back("Delegate", sdbus::Variant(true));
    if (!user.contains("CollectMode"))  // nothing lingers loaded or failed
        extra.emplace_back("CollectMode", sdbus::Variant(std::string("inactive-or-failed")));
    if (!user.contains("TimeoutStopSec"))  // work that ignores SIGTERM is killed 1 s later
        extra.emplace_back("TimeoutStopUSec", sdbus::Variant(uint64_t{1'000'000}));
    if (!user.contains("Description")) extra.emplace_back("Description", sdbus::Variant(description));
    // Keeps a failed unit loaded until wait_anchored_start has read why it failed (CollectMode= would collect it
    // at once); the reference is this bus client's and goes with its connection at the latest.
    extra.emplace_back("AddRef", sdbus::Variant(true));
}

std::vector<DbusProperty> anchored_service_properties(const Properties& user, int anchor_read_fd,
                                                      const std::string& description) {
    using Exec = sdbus::Struct<std::string, std::vector<std::string>, bool>;
    std::vector<DbusProperty> extra;
    // Type=exec: the start job ends only after cat was executed, so the main process's identity and
    // namespaces are final by the time a child copies them.
    extra.emplace_back("Type", sdbus::Variant(std::string("exec")));
    extra.emplace_back("ExecStart", sdbus::Variant(std::vector<Exec>{Exec{anchor_program(), {"cat"}, false}}));
    extra.emplace_back("StandardInputFileDescriptor", detail::fd_variant(anchor_read_fd, "the unit's anchor pipe"));
    extra.emplace_back("StandardOutput", sdbus::Variant(std::string("null")));
    extra.emplace_back("StandardError", sdbus::Variant(std::string("null")));
    add_library_defaults(extra, user, description);
    return extra;
}

uint32_t verified_main_pid(const Unit& unit) {
    uint32_t main_pid = unit.main_pid();
    char exe[4096] = {};
    ssize_t n = main_pid ? ::readlink(("/proc/" + std::to_string(main_pid) + "/exe").c_str(), exe, sizeof exe - 1) : -1;
    std::string_view path(exe, n > 0 ? static_cast<size_t>(n) : 0);
    if (!path.ends_with("/cat"))
        throw Error("the main process of " + unit.name() + " (pid " + std::to_string(main_pid) +
                    ") is not the exec'd anchor program");
    return main_pid;
}

bool manager_says_unit_stopped(const Bus& bus, const std::string& unit) noexcept {
    try {
        const std::string state = Unit(bus, unit).active_state();
        return state != "active" && state != "reloading";
    } catch (const SystemdError& e) {
        return e.name() == "org.freedesktop.systemd1.NoSuchUnit" || e.name() == "org.freedesktop.DBus.Error.UnknownObject";
    } catch (...) {
        return false;
    }
}

uint64_t oom_kill_count(const std::string& control_group) noexcept {
    try {
        for (const std::string& file : {"/sys/fs/cgroup/memory" + control_group + "/memory.oom_control",
                                 "/sys/fs/cgroup/unified" + control_group + "/memory.events",
                                 "/sys/fs/cgroup" + control_group + "/memory.events"}) {
            std::ifstream in(file);
            std::string key;
            uint64_t value;
            while (in >> key >> value)
                if (key == "oom_kill") return value;
        }
    } catch (...) {
    }
    return 0;
}

int exit_status_from_wait_status(int wait_status) noexcept {
    if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
    if (WIFSIGNALED(wait_status)) return -WTERMSIG(wait_status);
    return 0;
}

std::string describe_exit(int exit_status) {
    if (exit_status >= 0) return "exited with code " + std::to_string(exit_status);
    const char* abbrev = sigabbrev_np(-exit_status);
    return std::string("was killed by ") + (abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(-exit_status));
}

void require_support(const Bus& bus, const Properties& properties, bool attaches) {
    check_identity_and_paths(properties);
    const SystemInfo info = system_info(bus);
    for (auto requirement : {Requirement::exec_service_type, Requirement::pidfd, Requirement::close_range})
        require(requirement, info);
    if (attaches) require(Requirement::attach_processes, info);
    require_properties(properties, info);
}

void check_identity_and_paths(const Properties& properties) {
    // DynamicUser=yes: systemd makes the user and its group, which do not exist before the unit starts.
    if (!dynamic_user(properties)) {
        if (auto user = last_string(properties, "User")) check_user(*user);
        if (auto group = last_string(properties, "Group")) check_group("Group", *group, *group);
        const std::vector<std::string> groups = supplementary_groups(properties);
        std::string all;
        for (const auto& g : groups) all += (all.empty() ? "" : " ") + g;
        for (const auto& g : groups) check_group("SupplementaryGroups", all, g);
    }
    check_working_directory(properties);
}

ExitStatusCause exit_status_cause(int exit_status, const Properties& properties) {
    ExitStatusCause cause;
    const StatusProperties pointed = status_properties(exit_status);
    auto add = [&](std::string_view name) {
        std::optional<std::string> text = effective_text(properties, name);
        if (!text || (pointed.only_enabled && !enables(*text))) return;
        if (!cause.property.empty()) cause.property += ", ";
        cause.property += std::string(name) + "=" + *text;
    };
    if (exit_status == 205) {  // LIMITS: whichever Limit*= were given
        for (const auto& e : properties.entries())
            if (e.name.starts_with("Limit") && cause.property.find(e.name + "=") == std::string::npos) add(e.name);
    }
    if (exit_status == 217 && dynamic_user(properties)) add("DynamicUser");
    for (std::string_view name : pointed.names) add(name);

    const std::optional<std::string> user = effective_text(properties, "User");
    switch (exit_status) {
        case 200:
            if (!properties.contains("WorkingDirectory"))
                cause.note = "WorkingDirectory= is not set: the manager's default (the root directory for the system "
                             "manager, the user's home for a user manager) could not be entered";
            else if (user && *user != "root" && *user != "0")
                cause.note = "the directory must exist and be searchable by User=" + *user;
            break;
        case 216:
            if (cause.property.empty() && user) {
                cause.property = "User=" + *user;
                cause.note = "the groups of User=" + *user + " could not be set";
            }
            break;
        case 226: {
            const std::optional<std::string> home = effective_text(properties, "ProtectHome");
            const std::optional<std::string> tunables = effective_text(properties, "ProtectKernelTunables");
            if ((home && enables(*home)) || (tunables && enables(*tunables)))
                cause.note = "some managers fail ProtectHome= and ProtectKernelTunables= with 226/NAMESPACE for any "
                             "program; starting without them tells whether this one does";
            break;
        }
        default: break;
    }
    return cause;
}

StartFailed read_start_failure(const Bus& bus, const std::string& unit, const std::string& job_result,
                               const Properties& properties) {
    int32_t code = 0, status = 0;
    std::string unit_result, unread;
    try {
        auto& state = detail::state_of(bus);
        std::lock_guard lock(state.mutex);
        state.check_owner();
        // GetUnit first: a property read on the path of a unit that is gone would load a "not-found" stub and
        // answer with its zeros.
        sdbus::ObjectPath path;
        state.manager->callMethod("GetUnit").onInterface(kManagerInterface).withArguments(unit).storeResultsTo(path);
        auto proxy = sdbus::createProxy(*state.connection, kSystemdService, path);
        auto get = [&](const char* name) {
            sdbus::Variant value;
            proxy->callMethod("Get").onInterface(kPropertiesInterface)
                .withArguments(std::string(kServiceInterface), std::string(name)).storeResultsTo(value);
            return value;
        };
        code = get("ExecMainCode").get<int32_t>();
        status = get("ExecMainStatus").get<int32_t>();
        unit_result = get("Result").get<std::string>();
    } catch (const sdbus::Error& e) {
        unread = e.getName() == "org.freedesktop.systemd1.NoSuchUnit"
                     ? "systemd had unloaded the unit before why it failed could be read"
                     : "why it failed could not be read: " + e.getName() + ": " + e.getMessage();
    } catch (const Error& e) {
        unread = std::string("why it failed could not be read: ") + e.what();
    }
    release_unit_reference(bus, unit);

    ExitStatusCause cause = code == 1 ? exit_status_cause(status, properties) : ExitStatusCause{};
    if (code == 1 && status == 203 && cause.property.empty())
        cause.note = "the unit's main process is the program sdfutures starts as its anchor (cat)";
    std::string note = cause.note;
    if (!unread.empty()) note += (note.empty() ? "" : "; ") + unread;
    return StartFailed(unit, job_result, unit_result, code, status, cause.property, note);
}

void wait_anchored_start(const Bus& bus, PendingJob& job, const Properties& properties,
                         std::optional<std::chrono::milliseconds> timeout) {
    std::optional<std::string> result = job.wait_result(timeout);
    if (!result) throw JobFailed(job.unit(), "start", "not finished in time");
    if (*result == "done") {
        release_unit_reference(bus, job.unit());
        return;
    }
    throw read_start_failure(bus, job.unit(), *result, properties);
}

void release_unit_reference(const Bus& bus, const std::string& unit) noexcept {
    try {
        auto& state = detail::state_of(bus);
        std::lock_guard lock(state.mutex);
        if (getpid() != state.owner_pid) return;  // a forked child: the connection is the parent's
        state.manager->callMethod("UnrefUnit").onInterface(kManagerInterface).withArguments(unit).dontExpectReply();
    } catch (...) {
        // The connection is gone, and with it the reference.
    }
}

void stop_and_wait_gone(const Bus& bus, const std::string& unit) noexcept {
    // The AddRef= reference is normally dropped once the start job ended (wait_anchored_start); not when the
    // start was abandoned before, or its waiting failed. Queued before StopUnit, so it is handled first.
    release_unit_reference(bus, unit);
    try {
        Manager manager(bus);
        try {
            manager.stop_unit(unit);
        } catch (const SystemdError& e) {
            if (e.name() != "org.freedesktop.systemd1.NoSuchUnit") throw;
        } catch (const JobFailed&) {
        }
        manager.wait_unit_gone(unit, std::chrono::seconds(10));
    } catch (...) {
        // The bus went away: the unit's main process still ends when the owner's end of its pipe closes.
    }
}

}  // namespace sdfutures::detail
