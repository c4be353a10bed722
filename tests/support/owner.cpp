#include "support/owner.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sstream>
#include <stdexcept>
#include <thread>

namespace sdfutures::testing {

Owner start_owner(const char* helper, const char* kind) {
    // Orphans of the owner are re-parented to us, so we can tell when they are really gone and reap them.
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe");
    Owner owner;
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
    ::waitpid(owner.pid, nullptr, 0);
    owner.pid = -1;
}

std::set<pid_t> wait_orphans_gone(const std::vector<pid_t>& pids, std::chrono::milliseconds timeout) {
    std::set<pid_t> alive(pids.begin(), pids.end());
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!alive.empty() && std::chrono::steady_clock::now() < deadline) {
        for (auto it = alive.begin(); it != alive.end();)
            it = (::kill(*it, 0) != 0 || ::waitpid(*it, nullptr, WNOHANG) == *it) ? alive.erase(it) : std::next(it);
        if (!alive.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    ::prctl(PR_SET_CHILD_SUBREAPER, 0);
    return alive;
}

}  // namespace sdfutures::testing
