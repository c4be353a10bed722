#pragma once
// The test suite's view of systemd: every test that needs a manager derives its fixture from SystemdTest,
// which opens the bus configured by scripts/with-systemd and audits each test for leaks when it ends.

#include <gtest/gtest.h>

#include <sys/types.h>

#include <set>
#include <string>
#include <vector>

#include "sdfutures/sdfutures.hpp"

namespace sdfutures::testing {

// Re-runs the test binary under scripts/with-systemd unless SDFUTURES_BUS already names a manager.
void ensure_manager(int argc, char** argv);

// A unique unit name for a test: "sdfutures-test-<pid>-<n>.service".
std::string unique_unit_name(const std::string& suffix = ".service");

// What a test may leave behind, recorded before it runs and compared after.
struct ProcessSnapshot {
    std::set<int> fds;
    std::set<std::string> units;        // loaded units whose name starts with "sdfutures"
    std::set<pid_t> managed_processes;  // processes the manager's units hold (see manager_cgroup_root)
    std::set<std::string> cgroup_dirs;  // cgroup directories of sdfutures units, in every hierarchy
    std::set<pid_t> children;           // this process's children, running or zombies
    static ProcessSnapshot take(Manager& manager);
};

// One thing a test left behind.
struct Leak {
    enum class Kind { unit, process, cgroup_dir, child, zombie, fd };
    Kind kind;
    std::string subject;  // the unit name, the pid, the cgroup directory or the descriptor number
    std::string message;  // a sentence naming it, for the failure report
};

// The audit: everything in `now` that was not in `before` and should not outlive a test. Processes are
// looked for in the manager's subtree; with the private manager of scripts/with-systemd that is everything
// below its cgroup but the manager itself (init.scope) and its dbus-daemon (app.slice/dbus.service); with a
// machine's own manager, only what is in cgroups of units named sdfutures*.
std::vector<Leak> find_leaks(const ProcessSnapshot& before, const ProcessSnapshot& now);
// The same against a fresh snapshot.
std::vector<Leak> find_leaks(Manager& manager, const ProcessSnapshot& before);

// Where the manager's units live, relative to each hierarchy's mount point: $SDFUTURES_PRIVATE_MANAGER_CGROUP
// for the private manager, else the parent of the manager's init.scope.
std::string manager_cgroup_root(Manager& manager);
// The mount point of the hierarchy systemd tracks processes in: /sys/fs/cgroup/systemd (legacy and hybrid
// layouts) or /sys/fs/cgroup (unified).
std::string tracking_hierarchy();

class SystemdTest : public ::testing::Test {
protected:
    void SetUp() override;
    void TearDown() override;
    Manager& manager() { return *manager_; }
    Bus& bus() { return *bus_; }

private:
    std::optional<Bus> bus_;
    std::optional<Manager> manager_;
    ProcessSnapshot before_;
};

// The base of tests run once per start method (INSTANTIATE_TEST_SUITE_P with start_method_name for their names):
// with_method() puts the test's start method into a pool's options.
class StartMethodTest : public SystemdTest, public ::testing::WithParamInterface<StartMethod> {
protected:
    PoolOptions with_method(PoolOptions options) const {
        options.start_method = GetParam();
        return options;
    }
};
// "fork", "forkserver", "exec": the suffix of a test run for that start method.
std::string start_method_name(const ::testing::TestParamInfo<StartMethod>& info);

// MemoryMax=`max`, with MemorySwapMax=0 where a memory controller can hold it (the unified layout; elsewhere
// systemd would accept it and do nothing, and sdfutures refuses it): an allocation past the limit then meets the
// OOM killer, not swap, on every layout of a machine without swap, and on unified ones with it.
Properties memory_max_without_swap(const std::string& max);

// This process's children, running or zombies, whichever of its threads they belong to (a child re-parented to
// a subreaper goes to one of its threads).
std::set<pid_t> own_children();

// Reads a whole file, for /proc and /sys checks.
std::string read_file(const std::string& path);
// The cgroup path of `pid` in the name=systemd (v1) or unified hierarchy, as in /proc/PID/cgroup.
std::string cgroup_of(int pid);

}  // namespace sdfutures::testing
