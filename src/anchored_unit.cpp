#include "anchored_unit.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <random>

#include "bus_state.hpp"
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

}  // namespace

std::string default_unit_name(const char* kind) {
    static std::atomic<unsigned> counter{0};
    std::random_device random;
    char suffix[9];
    std::snprintf(suffix, sizeof suffix, "%08x", random());
    return std::string("sdfutures-") + kind + "-" + std::to_string(getpid()) + "-" + std::to_string(++counter) + "-" +
           suffix + ".service";
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
    extra.emplace_back("Delegate", sdbus::Variant(true));
    if (!user.contains("CollectMode"))  // nothing lingers loaded or failed
        extra.emplace_back("CollectMode", sdbus::Variant(std::string("inactive-or-failed")));
    if (!user.contains("TimeoutStopSec"))  // work that ignores SIGTERM is killed 1 s later
        extra.emplace_back("TimeoutStopUSec", sdbus::Variant(uint64_t{1'000'000}));
    if (!user.contains("Description")) extra.emplace_back("Description", sdbus::Variant(description));
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

void require_support(const Bus& bus, const Properties& properties) {
    const SystemInfo info = system_info(bus);
    for (auto requirement : {Requirement::exec_service_type, Requirement::attach_processes, Requirement::pidfd,
                             Requirement::close_range})
        require(requirement, info);
    require_properties(properties, info);
}

void stop_and_wait_gone(const Bus& bus, const std::string& unit) noexcept {
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
