#include "support/manager_environment.hpp"

#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace sdfutures::testing {

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

ProcessSnapshot ProcessSnapshot::take(Manager& manager) {
    ProcessSnapshot s;
    if (DIR* d = opendir("/proc/self/fd")) {
        int own = dirfd(d);
        while (dirent* e = readdir(d)) {
            if (e->d_name[0] == '.') continue;
            int fd = std::atoi(e->d_name);
            if (fd != own) s.fds.insert(fd);
        }
        closedir(d);
    }
    for (auto& u : manager.list_units())
        if (u.name.rfind("sdfutures", 0) == 0) s.units.insert(u.name);
    return s;
}

namespace {
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

void SystemdTest::SetUp() {
    warm_up_once();
    bus_.emplace(Bus::automatic());
    manager_.emplace(*bus_);
    before_ = ProcessSnapshot::take(*manager_);
}

void SystemdTest::TearDown() {
    auto after = ProcessSnapshot::take(*manager_);
    for (auto& u : after.units)
        if (!before_.units.count(u)) ADD_FAILURE() << "leak audit: unit " << u << " is still loaded after the test";
    for (int fd : after.fds)
        if (!before_.fds.count(fd)) {
            char target[256] = {};
            ssize_t n = readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), target, sizeof target - 1);
            ADD_FAILURE() << "leak audit: file descriptor " << fd << " (" << (n > 0 ? target : "?")
                          << ") was opened by the test and is still open";
        }
    siginfo_t info{};
    if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid != 0)
        ADD_FAILURE() << "leak audit: child process " << info.si_pid << " was left unreaped (a zombie)";
    manager_.reset();
    bus_.reset();
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

}  // namespace sdfutures::testing
