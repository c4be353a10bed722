#include "support/owner.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <thread>

#include "support/manager_environment.hpp"

namespace sdfutures::testing {

namespace {

// A sanitizer's symbolizer, which the test process may start at any time and which lives to its end.
bool is_symbolizer(pid_t pid) {
    char exe[512] = {};
    ssize_t n = ::readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), exe, sizeof exe - 1);
    return n > 0 && std::string_view(exe).find("symbolizer") != std::string_view::npos;
}

}  // namespace

Owner start_owner(const char* helper, const char* kind) {
    // Orphans of the owner are re-parented to us, so we can tell when they are really gone and reap them.
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe");
    Owner owner;
    owner.earlier_children = own_children();
    owner.pid = ::fork();
    if (owner.pid == 0) {
        ::dup2(out[1], 1);
        ::close(out[0]);
        ::execl(helper, helper, kind, nullptr);
        ::_exit(127);
    }
    ::close(out[1]);
    std::string line;
    char c;
    while (::read(out[0], &c, 1) == 1 && c != '\n') line += c;
    ::close(out[0]);
    std::istringstream in(line);
    in >> owner.unit;
    for (pid_t pid; in >> pid;) owner.workers.push_back(pid);
    return owner;
}

void kill_owner(Owner& owner) {
    ::kill(owner.pid, SIGKILL);
    while (::waitpid(owner.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    owner.pid = -1;
}

std::set<pid_t> wait_orphans_gone(const Owner& owner, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::set<pid_t> workers(owner.workers.begin(), owner.workers.end());
    std::set<pid_t> alive;
    for (;;) {
        // Every child we have now but did not have before the owner started is an orphan of the owner's (the owner
        // itself was reaped by kill_owner). Those that have ended are reaped here; the others are waited for.
        std::set<pid_t> orphans;
        for (pid_t pid : own_children()) {
            if (owner.earlier_children.count(pid) || is_symbolizer(pid)) continue;
            pid_t reaped = ::waitpid(pid, nullptr, WNOHANG);
            if (reaped == pid || (reaped < 0 && errno == ECHILD)) continue;
            orphans.insert(pid);
        }
        // A worker is gone once its pid no longer exists: reaped by its own parent (a pool's fork server), or as
        // our orphan above.
        for (auto it = workers.begin(); it != workers.end();) it = ::kill(*it, 0) != 0 ? workers.erase(it) : std::next(it);
        alive = orphans;
        alive.insert(workers.begin(), workers.end());
        if (alive.empty() || std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::prctl(PR_SET_CHILD_SUBREAPER, 0);
    return alive;
}

}  // namespace sdfutures::testing
