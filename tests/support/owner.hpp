#pragma once
// An owner process for lifetime tests: tests/helpers/owner_helper started in a child, reporting the unit it
// created and the processes it runs there. The test kills it and checks that nothing survives it.

#include <sys/types.h>

#include <chrono>
#include <set>
#include <string>
#include <vector>

namespace sdfutures::testing {

struct Owner {
    pid_t pid = -1;
    std::string unit;
    std::vector<pid_t> workers;
};

// Starts `helper kind`, becoming the subreaper of what it leaves behind, and waits for its report line.
Owner start_owner(const char* helper, const char* kind);

// Kills the owner with SIGKILL and reaps it.
void kill_owner(Owner& owner);

// Waits until every pid is gone (reaped by us as their subreaper, or vanished); returns those still alive
// after `timeout`. Reaps any other orphan too, and stops being a subreaper.
std::set<pid_t> wait_orphans_gone(const std::vector<pid_t>& pids, std::chrono::milliseconds timeout);

}  // namespace sdfutures::testing
