// What the machine and manager offer (cgroup layout, systemd and kernel versions), and the requirement checks
// built on it: their wording, and that what they require is what this machine's manager really enforces.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "sdfutures/system_info.hpp"
#include "support/manager_environment.hpp"
#include "support/workloads.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;

// The layout as /proc/mounts describes it, worked out without statfs: the last mount at each path wins.
std::string layout_from_proc_mounts() {
    std::map<std::string, std::string> type_at;
    std::ifstream in("/proc/mounts");
    std::string device, mount_point, type, rest;
    while (in >> device >> mount_point >> type && std::getline(in, rest)) type_at[mount_point] = type;
    if (type_at["/sys/fs/cgroup"] == "cgroup2") return "unified";
    if (type_at["/sys/fs/cgroup"] != "tmpfs") return "none";
    if (type_at["/sys/fs/cgroup/unified"] == "cgroup2" || type_at["/sys/fs/cgroup/systemd"] == "cgroup2") return "hybrid";
    if (type_at["/sys/fs/cgroup/systemd"] == "cgroup") return "legacy";
    return "none";
}

std::string layout_or_error(const std::string& root) {
    try {
        return std::string(to_string(detect_cgroup_layout(root)));
    } catch (const Unsupported& e) {
        return std::string("Unsupported: ") + e.what();
    }
}

TEST(SystemInfo, TheCgroupLayoutIsTheOneProcMountsDescribes) {
    EXPECT_EQ(to_string(detect_cgroup_layout()), layout_from_proc_mounts());
}

// Each layout is built in a private mount namespace of a child (the machine's mounts are untouched), on a
// tmpfs at `root`: nothing, then name=systemd v1, then cgroup2 beside it, then systemd 232's cgroup2 at systemd/.
std::string layouts_built_at(const std::string& root) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return "pipe: " + errno_text(errno);
    pid_t pid = ::fork();
    if (pid == 0) {
        std::string report;
        auto step = [&](const char* what, bool ok) {
            if (!ok) report += std::string("FAILED ") + what + ": " + errno_text(errno) + "\n";
            return ok;
        };
        std::string systemd = root + "/systemd", unified = root + "/unified";
        if (step("unshare", ::unshare(CLONE_NEWNS) == 0) &&
            step("make / private", ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0) &&
            step("mount tmpfs", ::mount("tmpfs", root.c_str(), "tmpfs", 0, "mode=755") == 0)) {
            report += "empty tmpfs: " + layout_or_error(root) + "\n";
            if (step("mkdir", ::mkdir(systemd.c_str(), 0755) == 0 && ::mkdir(unified.c_str(), 0755) == 0) &&
                step("mount name=systemd", ::mount("cgroup", systemd.c_str(), "cgroup", 0, "none,name=systemd") == 0)) {
                report += "name=systemd: " + layout_or_error(root) + "\n";
                if (step("mount cgroup2", ::mount("cgroup2", unified.c_str(), "cgroup2", 0, nullptr) == 0)) {
                    report += "name=systemd and unified/: " + layout_or_error(root) + "\n";
                    report += "cgroup2 itself: " + layout_or_error(unified) + "\n";
                }
                if (step("umount", ::umount(unified.c_str()) == 0 && ::umount(systemd.c_str()) == 0) &&
                    step("mount cgroup2 at systemd/", ::mount("cgroup2", systemd.c_str(), "cgroup2", 0, nullptr) == 0))
                    report += "cgroup2 at systemd/: " + layout_or_error(root) + "\n";
            }
        }
        report += "procfs: " + layout_or_error("/proc") + "\n";
        (void)!::write(out[1], report.data(), report.size());
        ::_exit(0);
    }
    ::close(out[1]);
    std::string report;
    char buffer[4096];
    for (ssize_t n; (n = ::read(out[0], buffer, sizeof buffer)) > 0;) report.append(buffer, static_cast<size_t>(n));
    ::close(out[0]);
    ::waitpid(pid, nullptr, 0);
    return report;
}

TEST(SystemInfo, EachLayoutIsToldApartFromWhatIsMounted) {
    char dir[] = "/tmp/sdfutures-layout-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    std::string root = dir;
    std::string report = layouts_built_at(root);
    ::rmdir(dir);
    EXPECT_EQ(report, "empty tmpfs: Unsupported: no hierarchy for systemd is mounted below " + root + " (no cgroup2 at " +
                          root + "/unified, no cgroup at " + root + "/systemd)\n"
                          "name=systemd: legacy\n"
                          "name=systemd and unified/: hybrid\n"
                          "cgroup2 itself: unified\n"
                          "cgroup2 at systemd/: hybrid\n"
                          "procfs: Unsupported: no cgroup file system is mounted at /proc (neither cgroup2 nor a "
                          "tmpfs of hierarchies)\n");
}

TEST(SystemInfo, TheKernelVersionIsTheOneProcReports) {
    unsigned major = 0, minor = 0;
    std::ifstream in("/proc/sys/kernel/osrelease");
    char dot = 0;
    in >> major >> dot >> minor;
    ASSERT_EQ(dot, '.');
    EXPECT_EQ(running_kernel_version(), (KernelVersion{major, minor}));
}

class SystemInfoTest : public SystemdTest {};

TEST_F(SystemInfoTest, TheManagersVersionIsTheOneSystemctlReports) {
    // "systemd 252 (252.39-1~deb12u2)": the installed systemd, which the manager runs (a private one, or PID 1).
    FILE* pipe = ::popen("systemctl --version", "r");
    ASSERT_NE(pipe, nullptr);
    char line[256] = {};
    ASSERT_NE(std::fgets(line, sizeof line, pipe), nullptr);
    ::pclose(pipe);
    unsigned installed = 0;
    ASSERT_EQ(std::sscanf(line, "systemd %u", &installed), 1) << line;

    SystemInfo info = system_info(bus());
    EXPECT_EQ(info.systemd_version, installed) << line;
    EXPECT_EQ(to_string(info.cgroup_layout), layout_from_proc_mounts());
    EXPECT_EQ(info.kernel, running_kernel_version());
}

TEST_F(SystemInfoTest, ThisMachineHasWhatSdfuturesItselfNeeds) {
    SystemInfo info = system_info(bus());
    for (auto requirement : {Requirement::exec_service_type, Requirement::attach_processes, Requirement::pidfd,
                             Requirement::close_range})
        EXPECT_EQ(unmet_requirement(requirement, info), std::nullopt);
}

TEST(Requirements, SayWhatIsNeededAndWhatThereIs) {
    SystemInfo old_manager{239, CgroupLayout::unified, {5, 10}};
    EXPECT_EQ(unmet_requirement(Requirement::exec_service_type, old_manager), "Type=exec needs systemd >= 240; the manager is 239");
    EXPECT_EQ(unmet_requirement(Requirement::attach_processes, old_manager), std::nullopt);
    SystemInfo older{237, CgroupLayout::unified, {5, 10}};
    EXPECT_EQ(unmet_requirement(Requirement::attach_processes, older), "AttachProcessesToUnit needs systemd >= 238; the manager is 237");
    SystemInfo old_kernel{252, CgroupLayout::unified, {5, 4}};
    EXPECT_EQ(unmet_requirement(Requirement::pidfd, old_kernel), std::nullopt);
    EXPECT_EQ(unmet_requirement(Requirement::close_range, old_kernel), "close_range(2) needs Linux >= 5.9; the kernel is 5.4");
    EXPECT_EQ(unmet_requirement(Requirement::pidfd, {252, CgroupLayout::unified, {5, 2}}), "pidfd_open(2) needs Linux >= 5.3; the kernel is 5.2");

    SystemInfo hybrid{252, CgroupLayout::hybrid, {6, 1}};
    EXPECT_EQ(unmet_requirement(Requirement::unified_memory, hybrid),
              "MemoryHigh=, MemoryLow=, MemoryMin= and MemorySwapMax= needs the unified cgroup hierarchy (cgroup v2); "
              "this machine has the hybrid layout");
    EXPECT_EQ(unmet_requirement(Requirement::ip_address_filter, hybrid), std::nullopt);
    SystemInfo legacy{252, CgroupLayout::legacy, {6, 1}};
    EXPECT_EQ(unmet_requirement(Requirement::ip_address_filter, legacy),
              "IPAddressDeny=/IPAddressAllow= needs systemd to track processes in a cgroup2 hierarchy (the unified or "
              "the hybrid layout); this machine has the legacy layout");
    EXPECT_EQ(unmet_requirement(Requirement::cpuset, {243, CgroupLayout::unified, {6, 1}}),
              "AllowedCPUs= needs systemd >= 244; the manager is 243");
    for (auto requirement : {Requirement::exec_service_type, Requirement::attach_processes, Requirement::pidfd,
                             Requirement::close_range, Requirement::ip_address_filter, Requirement::unified_memory,
                             Requirement::cpuset})
        EXPECT_EQ(unmet_requirement(requirement, {252, CgroupLayout::unified, {6, 1}}), std::nullopt);

    try {
        require(Requirement::exec_service_type, old_manager);
        ADD_FAILURE() << "no exception";
    } catch (const Unsupported& e) {
        EXPECT_STREQ(e.what(), "Type=exec needs systemd >= 240; the manager is 239");
    }
    EXPECT_NO_THROW(require(Requirement::exec_service_type, hybrid));
}

TEST(Requirements, PropertiesAreRefusedByTheirOwnName) {
    SystemInfo hybrid{252, CgroupLayout::hybrid, {6, 1}};
    try {
        require_properties({{"CPUQuota", "25%"}, {"MemoryMax", "64M"}, {"MemoryHigh", "32M"}}, hybrid);
        ADD_FAILURE() << "no exception";
    } catch (const Unsupported& e) {
        EXPECT_STREQ(e.what(), "MemoryHigh= needs the unified cgroup hierarchy (cgroup v2); this machine has the hybrid layout");
    }
    EXPECT_THROW(require_properties({{"AllowedCPUs", "0"}}, hybrid), Unsupported);
    EXPECT_NO_THROW(require_properties({{"IPAddressDeny", "any"}, {"MemoryMax", "64M"}, {"CPUQuota", "25%"}}, hybrid));
    try {
        require_properties({{"IPAddressDeny", "any"}}, {252, CgroupLayout::legacy, {6, 1}});
        ADD_FAILURE() << "no exception";
    } catch (const Unsupported& e) {
        EXPECT_EQ(std::string(e.what()).rfind("IPAddressDeny= needs systemd to track processes in a cgroup2 hierarchy", 0), 0u)
            << e.what();
    }
    EXPECT_NO_THROW(require_properties({{"MemoryHigh", "32M"}, {"AllowedCPUs", "0"}}, {252, CgroupLayout::unified, {6, 1}}));
}

using testing::sleeping_service;

// Stops the unit however the test ends.
struct StopAtEnd {
    Manager& manager;
    std::string name;
    ~StopAtEnd() {
        try {
            manager.stop_unit(name);
        } catch (...) {
        }
        manager.wait_unit_gone(name, 10s);
    }
};

// systemd accepts MemoryHigh= on every layout; the requirement says where a limit exists to show for it.
TEST_F(SystemInfoTest, MemoryHighTakesEffectExactlyWhereItsRequirementIsMet) {
    SystemInfo info = system_info(bus());
    const bool met = !unmet_requirement(Requirement::unified_memory, info);
    std::string name = testing::unique_unit_name();
    Properties p = sleeping_service();
    p.set("Delegate", "yes");
    p.set("MemoryHigh", "10485760");
    StopAtEnd stop{manager(), name};
    Unit unit = manager().start_transient_unit(name, p);
    std::string cgroup = unit.control_group();
    // Every knob of the unit's cgroup, in every hierarchy, that holds the limit.
    std::vector<std::string> holding;
    for (const auto& hierarchy : std::filesystem::directory_iterator("/sys/fs/cgroup")) {
        std::string dir = hierarchy.path().string() + cgroup;
        if (info.cgroup_layout == CgroupLayout::unified) dir = "/sys/fs/cgroup" + cgroup;
        std::error_code ec;
        for (const auto& knob : std::filesystem::directory_iterator(dir, ec))
            if (testing::read_file(knob.path().string()) == "10485760\n") holding.push_back(knob.path().string());
        if (info.cgroup_layout == CgroupLayout::unified) break;
    }
    if (met) {
        ASSERT_EQ(holding.size(), 1u);
        EXPECT_EQ(std::filesystem::path(holding[0]).filename(), "memory.high");
    } else {
        EXPECT_TRUE(holding.empty()) << "on the " << to_string(info.cgroup_layout) << " layout " << holding[0]
                                     << " holds the limit: MemoryHigh= does work there";
    }
}

// A forked child attached to a unit with IPAddressDeny=any, as sdfutures's children are, tries to connect to
// a listener of ours on 127.0.0.1: where the requirement is met the filter drops it, elsewhere it connects.
TEST_F(SystemInfoTest, IPAddressDenyTakesEffectExactlyWhereItsRequirementIsMet) {
    SystemInfo info = system_info(bus());
    const bool met = !unmet_requirement(Requirement::ip_address_filter, info);

    struct Close {
        std::vector<int> fds;
        ~Close() {
            for (int fd : fds) ::close(fd);
        }
    } close_at_end;
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(listener, 0);
    close_at_end.fds.push_back(listener);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ASSERT_EQ(::listen(listener, 4), 0);
    ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length), 0);

    int release[2], result[2];
    ASSERT_EQ(::pipe2(release, O_CLOEXEC), 0);
    close_at_end.fds.insert(close_at_end.fds.end(), {release[0], release[1]});
    ASSERT_EQ(::pipe2(result, O_CLOEXEC), 0);
    close_at_end.fds.insert(close_at_end.fds.end(), {result[0], result[1]});
    pid_t child = ::fork();
    if (child == 0) {
        char go = 0;
        if (::read(release[0], &go, 1) != 1) ::_exit(1);
        int s = ::socket(AF_INET, SOCK_STREAM, 0);
        timeval timeout{1, 0};  // a dropped SYN would be retried for minutes
        ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
        char connected = ::connect(s, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 ? 'y' : 'n';
        (void)!::write(result[1], &connected, 1);
        ::_exit(0);
    }
    struct Reap {
        pid_t pid;
        ~Reap() {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    } reap{child};
    // The child's ends: its result pipe must read end-of-file if it dies without a word.
    ::close(std::exchange(close_at_end.fds[1], -1));
    ::close(std::exchange(close_at_end.fds[4], -1));

    std::string name = testing::unique_unit_name();
    Properties p = sleeping_service();
    p.set("Delegate", "yes");
    p.set("IPAddressDeny", "any");
    {
        StopAtEnd stop{manager(), name};
        manager().start_transient_unit(name, p);
        manager().attach_processes_to_unit(name, "/", {static_cast<uint32_t>(child)});
        ASSERT_EQ(::write(release[1], "g", 1), 1);
        char connected = 0;
        pollfd wait_for{result[0], POLLIN, 0};
        ASSERT_EQ(::poll(&wait_for, 1, 5000), 1) << "the child did not report";
        ASSERT_EQ(::read(result[0], &connected, 1), 1);
        EXPECT_EQ(connected, met ? 'n' : 'y') << "on the " << to_string(info.cgroup_layout) << " layout with systemd "
                                              << info.systemd_version;
    }
}

}  // namespace
}  // namespace sdfutures
