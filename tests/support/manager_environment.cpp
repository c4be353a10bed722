#include "support/manager_environment.hpp"

#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string_view>
#include <thread>
#include <vector>

#include "sdfutures/system_info.hpp"

#if defined(__SANITIZE_THREAD__)
#define SDFUTURES_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SDFUTURES_TSAN 1
#endif
#endif

namespace sdfutures::testing {

#ifdef SDFUTURES_TSAN
namespace {
// ThreadSanitizer gives a child forked from a single-threaded process a background thread of its own, and a
// process of two threads cannot join the unit's mount namespace (setns fails with EINVAL), so no child could
// enter its unit. A child of a multi-threaded process gets no such thread (TSan only stops checking in it), so
// the test binary keeps one idle thread from before its first fork to its end.
[[maybe_unused]] const bool kept_multithreaded = [] {
    std::thread([] {
        for (;;) ::pause();
    }).detach();
    return true;
}();
}  // namespace
#endif

void ensure_manager(int argc, char** argv) {
    if (std::getenv("SDFUTURES_BUS")) return;
    std::vector<char*> args{const_cast<char*>(SDFUTURES_WITH_SYSTEMD)};
    for (int i = 0; i < argc; ++i) args.push_back(argv[i]);
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    std::perror("cannot run " SDFUTURES_WITH_SYSTEMD);
    std::exit(1);
}

std::string unique_unit_name(const std::string& suffix) {
    static std::atomic<int> counter{0};
    return "sdfutures-test-" + std::to_string(getpid()) + "-" + std::to_string(++counter) + suffix;
}

namespace {

bool is_sdfutures_name(const std::string& name) { return name.rfind("sdfutures", 0) == 0; }

// Calls visit(path, name) for every directory below `dir` (not `dir` itself), depth first. Directories that
// vanish meanwhile (a unit being removed) are skipped.
template <class Visit>
void walk_directories(const std::string& dir, Visit&& visit, int depth = 0) {
    if (depth > 16) return;
    DIR* d = ::opendir(dir.c_str());
    if (!d) return;
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d))
        if (e->d_type == DT_DIR && e->d_name[0] != '.') names.emplace_back(e->d_name);
    ::closedir(d);
    for (const auto& name : names) {
        std::string path = dir + "/" + name;
        if (visit(path, name)) walk_directories(path, visit, depth + 1);
    }
}

std::vector<pid_t> pids_in(const std::string& cgroup_dir) {
    std::vector<pid_t> pids;
    std::ifstream in(cgroup_dir + "/cgroup.procs");
    for (pid_t pid; in >> pid;) pids.push_back(pid);
    return pids;
}

std::vector<std::string> cgroup_mount_points() {
    std::vector<std::string> mounts;
    std::ifstream in("/proc/mounts");
    std::string device, mount_point, type, rest;
    while (in >> device >> mount_point >> type && std::getline(in, rest))
        if (type == "cgroup" || type == "cgroup2") mounts.push_back(mount_point);
    return mounts;
}

bool private_manager() { return std::getenv("SDFUTURES_PRIVATE_MANAGER_CGROUP") != nullptr; }

// What the manager's units hold: with the private manager every process below its root but its own two;
// with a machine's manager only those in sdfutures* cgroups (everything else there belongs to the machine).
std::set<pid_t> processes_below(const std::string& root) {
    std::set<pid_t> found;
    const std::string top = tracking_hierarchy() + (root == "/" ? "" : root);
    const bool everything = private_manager();
    const std::string own_scope = top + "/init.scope", own_bus = top + "/app.slice/dbus.service";
    if (everything)
        for (pid_t pid : pids_in(top)) found.insert(pid);
    walk_directories(top, [&](const std::string& path, const std::string&) {
        if (path == own_scope || path == own_bus) return false;
        if (everything || path.find("/sdfutures", top.size()) != std::string::npos)
            for (pid_t pid : pids_in(path)) found.insert(pid);
        return true;
    });
    return found;
}

std::set<std::string> sdfutures_cgroup_dirs(const std::string& root) {
    std::set<std::string> dirs;
    for (const auto& mount : cgroup_mount_points()) {
        // The hierarchies the private manager was not confined to (cpuset) hold nothing of it.
        std::string top = mount + (root == "/" ? "" : root);
        walk_directories(top, [&](const std::string& path, const std::string& name) {
            if (!is_sdfutures_name(name)) return true;
            // Another test run's private manager, met when auditing against the machine's own manager.
            if (name.rfind("sdfutures-private-", 0) == 0) return false;
            dirs.insert(path);
            return false;
        });
    }
    return dirs;
}

char process_state(pid_t pid) {
    std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    auto paren = stat.rfind(')');
    return paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : '?';
}

std::string describe_process(pid_t pid) {
    std::string cmdline = read_file("/proc/" + std::to_string(pid) + "/cmdline");
    for (char& c : cmdline)
        if (c == '\0') c = ' ';
    while (!cmdline.empty() && cmdline.back() == ' ') cmdline.pop_back();
    if (cmdline.empty()) {
        cmdline = read_file("/proc/" + std::to_string(pid) + "/comm");
        if (!cmdline.empty() && cmdline.back() == '\n') cmdline.pop_back();
        cmdline = "[" + cmdline + "]";
    }
    return "process " + std::to_string(pid) + " (" + cmdline + ")";
}

std::string fd_target(int fd) {
    char target[512] = {};
    ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), target, sizeof target - 1);
    return n > 0 ? std::string(target, static_cast<size_t>(n)) : "?";
}

// sd-bus and sdbus-c++ open a few process-wide descriptors on first use (eventfds for synchronous calls);
// open them before the first audit baseline so they are not taken for a test's leak.
void warm_up_once() {
    static bool done = [] {
        Manager manager(Bus::automatic());
        manager.version();
        Unit(manager.bus(), "init.scope").id();
        return true;
    }();
    (void)done;
}

}  // namespace

std::set<pid_t> own_children() {
    std::set<pid_t> children;
    DIR* d = ::opendir("/proc/self/task");
    if (!d) return children;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::ifstream in(std::string("/proc/self/task/") + e->d_name + "/children");
        for (pid_t pid; in >> pid;) children.insert(pid);
    }
    ::closedir(d);
    return children;
}

std::string tracking_hierarchy() {
    return detect_cgroup_layout() == CgroupLayout::unified ? "/sys/fs/cgroup" : "/sys/fs/cgroup/systemd";
}

std::string manager_cgroup_root(Manager& manager) {
    if (const char* root = std::getenv("SDFUTURES_PRIVATE_MANAGER_CGROUP")) return root;
    std::string scope = Unit(manager.bus(), "init.scope").control_group();
    auto slash = scope.rfind('/');
    return slash == std::string::npos || slash == 0 ? "/" : scope.substr(0, slash);
}

ProcessSnapshot ProcessSnapshot::take(Manager& manager) {
    ProcessSnapshot s;
    // A sanitizer starts its symbolizer as a child, talking to it over two pipes, the first time it symbolizes a
    // stack (a suppressed report, say); they live to the end of the process and are none of the test's doing.
    std::set<pid_t> symbolizers;
    std::set<std::string> symbolizer_pipes;
    for (pid_t pid : own_children()) {
        char exe[512] = {};
        ssize_t n = ::readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), exe, sizeof exe - 1);
        if (n <= 0 || std::string_view(exe).find("symbolizer") == std::string_view::npos) continue;
        symbolizers.insert(pid);
        for (const char* fd : {"/fd/0", "/fd/1"}) {
            char target[64] = {};
            if (::readlink(("/proc/" + std::to_string(pid) + fd).c_str(), target, sizeof target - 1) > 0)
                symbolizer_pipes.insert(target);
        }
    }
    if (DIR* d = opendir("/proc/self/fd")) {
        int own = dirfd(d);
        while (dirent* e = readdir(d)) {
            if (e->d_name[0] == '.') continue;
            int fd = std::atoi(e->d_name);
            if (fd != own && !symbolizer_pipes.count(fd_target(fd))) s.fds.insert(fd);
        }
        closedir(d);
    }
    for (auto& u : manager.list_units())
        if (is_sdfutures_name(u.name)) s.units.insert(u.name);
    std::string root = manager_cgroup_root(manager);
    s.managed_processes = processes_below(root);
    s.cgroup_dirs = sdfutures_cgroup_dirs(root);
    for (pid_t pid : own_children())
        if (!symbolizers.count(pid)) s.children.insert(pid);
    return s;
}

std::vector<Leak> find_leaks(const ProcessSnapshot& before, const ProcessSnapshot& now) {
    std::vector<Leak> leaks;
    for (const auto& u : now.units)
        if (!before.units.count(u))
            leaks.push_back({Leak::Kind::unit, u, "unit " + u + " is still loaded after the test"});
    for (pid_t pid : now.managed_processes)
        if (!before.managed_processes.count(pid))
            leaks.push_back({Leak::Kind::process, std::to_string(pid),
                             describe_process(pid) + " is still in the manager's subtree, in " +
                                 cgroup_of(pid)});
    for (const auto& dir : now.cgroup_dirs)
        if (!before.cgroup_dirs.count(dir))
            leaks.push_back({Leak::Kind::cgroup_dir, dir, "cgroup directory " + dir + " still exists"});
    for (pid_t pid : now.children) {
        if (before.children.count(pid)) continue;
        if (process_state(pid) == 'Z')
            leaks.push_back({Leak::Kind::zombie, std::to_string(pid),
                             "child process " + std::to_string(pid) + " was left unreaped (a zombie)"});
        else
            leaks.push_back({Leak::Kind::child, std::to_string(pid),
                             "child " + describe_process(pid) + " is still running"});
    }
    for (int fd : now.fds)
        if (!before.fds.count(fd))
            leaks.push_back({Leak::Kind::fd, std::to_string(fd),
                             "file descriptor " + std::to_string(fd) + " (" + fd_target(fd) +
                                 ") was opened by the test and is still open"});
    return leaks;
}

std::vector<Leak> find_leaks(Manager& manager, const ProcessSnapshot& before) {
    return find_leaks(before, ProcessSnapshot::take(manager));
}

void SystemdTest::SetUp() {
    warm_up_once();
    bus_.emplace(Bus::automatic());
    manager_.emplace(*bus_);
    before_ = ProcessSnapshot::take(*manager_);
}

void SystemdTest::TearDown() {
    for (const auto& leak : find_leaks(*manager_, before_)) ADD_FAILURE() << "leak audit: " << leak.message;
    manager_.reset();
    bus_.reset();
}

Properties memory_max_without_swap(const std::string& max) {
    Properties p{{"MemoryMax", max}};
    if (detect_cgroup_layout() == CgroupLayout::unified) p.set("MemorySwapMax", "0");
    return p;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string cgroup_of(int pid) {
    std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/cgroup"));
    std::string line, unified;
    while (std::getline(in, line)) {
        auto first = line.find(':'), second = line.find(':', first + 1);
        std::string controllers = line.substr(first + 1, second - first - 1);
        if (controllers == "name=systemd") return line.substr(second + 1);
        if (line.rfind("0::", 0) == 0) unified = line.substr(3);
    }
    return unified;
}

std::string start_method_name(const ::testing::TestParamInfo<StartMethod>& info) {
    switch (info.param) {
        case StartMethod::fork: return "fork";
        case StartMethod::forkserver: return "forkserver";
        case StartMethod::exec: return "exec";
    }
    return "unknown";
}

}  // namespace sdfutures::testing
