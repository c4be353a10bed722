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
    // The test process's children from before the owner started: not the owner's orphans, never waited for.
    std::set<pid_t> earlier_children;
};

// Starts `helper kind`, becoming the subreaper of what it leaves behind, and waits for its report line.
Owner start_owner(const char* helper, const char* kind);

// Kills the owner with SIGKILL and reaps it.
void kill_owner(Owner& owner);

// Waits until every worker the owner reported is gone and every orphan it left has ended and been reaped by us:
// each process re-parented to us (the subreaper) since start_owner, which includes processes the owner never
// reported, such as a pool's fork server (the owner's own child, which ends only after it has reaped its workers,
// so after they are gone). Returns the workers and orphans still alive after `timeout`; then stops being a
// subreaper. Nothing the owner left can thus end after this returns and stay behind as our zombie.
std::set<pid_t> wait_orphans_gone(const Owner& owner, std::chrono::milliseconds timeout);

}  // namespace sdfutures::testing
