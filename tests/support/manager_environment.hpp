#pragma once
// The test suite's view of systemd: every test that needs a manager derives its fixture from SystemdTest,
// which opens the bus configured by scripts/with-systemd and audits each test for leaks when it ends.

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "sdfutures/sdfutures.hpp"

namespace sdfutures::testing {

// Re-runs the test binary under scripts/with-systemd unless SDFUTURES_BUS already names a manager.
void ensure_manager(int argc, char** argv);

// A unique unit name for a test: "sdfutures-test-<pid>-<n>.service".
std::string unique_unit_name(const std::string& suffix = ".service");

// What a test may leave behind, recorded before it runs and compared after.
struct ProcessSnapshot {
    std::set<int> fds;
    std::set<std::string> units;  // loaded units whose name starts with "sdfutures"
    static ProcessSnapshot take(Manager& manager);
};

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

// Reads a whole file, for /proc and /sys checks.
std::string read_file(const std::string& path);
// The cgroup path of `pid` in the name=systemd (v1) or unified hierarchy, as in /proc/PID/cgroup.
std::string cgroup_of(int pid);

}  // namespace sdfutures::testing
