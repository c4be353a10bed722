// The library used by a real non-root user, against that user's own systemd manager (docs/unprivileged.md).
// ctest runs this binary through `scripts/with-systemd --as-user sdfutures-test`: the process runs as that user,
// with a private `systemd --user` of that user; nothing here fakes a uid. Run as root, or against a manager of
// another user, the first test fails.
#include <grp.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "support/manager_environment.hpp"
#include "support/workloads.hpp"

namespace sdfutures {
namespace {

using testing::SystemdTest;

int square(int x) { return x * x; }

struct Identity {
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;
    std::string cgroup;
    MSGPACK_DEFINE(uid, gid, groups, cgroup);
};

Identity identify() {
    Identity id{getuid(), getgid(), {}, testing::cgroup_of(getpid())};
    id.groups.resize(static_cast<size_t>(getgroups(0, nullptr)));
    getgroups(static_cast<int>(id.groups.size()), id.groups.data());
    return id;
}

using testing::burn;

// Forks children that wait on a pipe until a fork is refused or `cap` succeeded; returns how many succeeded and
// the errno of the refusal (0: none). The cap keeps a TasksMax= that does not hold from becoming a fork bomb.
std::pair<int, int> fork_until_refused(int cap) {
    int gate[2];
    if (pipe(gate) != 0) return {-1, errno};
    std::vector<pid_t> children;
    int refusal = 0;
    while (static_cast<int>(children.size()) < cap) {
        pid_t pid = fork();
        if (pid == 0) {
            char c;
            close(gate[1]);
            (void)!read(gate[0], &c, 1);
            _exit(0);
        }
        if (pid < 0) {
            refusal = errno;
            break;
        }
        children.push_back(pid);
    }
    close(gate[1]);
    close(gate[0]);
    for (pid_t pid : children) waitpid(pid, nullptr, 0);
    return {static_cast<int>(children.size()), refusal};
}

std::string own_group_name() {
    group* g = getgrgid(getegid());
    return g ? g->gr_name : std::to_string(getegid());
}

class Unprivileged : public SystemdTest {};

TEST_F(Unprivileged, RunsAsTheRealTestUserUnderThatUsersOwnManager) {
    passwd* user = getpwnam(SDFUTURES_TEST_USER);
    ASSERT_NE(user, nullptr) << "no user " SDFUTURES_TEST_USER;
    ASSERT_NE(user->pw_uid, 0u);
    EXPECT_EQ(getuid(), user->pw_uid);
    EXPECT_EQ(geteuid(), user->pw_uid);
    EXPECT_EQ(getgid(), user->pw_gid);
    std::string status = testing::read_file("/proc/self/status");
    EXPECT_NE(status.find("CapEff:\t0000000000000000"), std::string::npos) << status;
    // The manager answering on this bus is a `systemd --user` running as this very user.
    auto managers = manager().get_unit_processes("init.scope");
    ASSERT_FALSE(managers.empty());
    for (auto& p : managers) {
        std::string its = testing::read_file("/proc/" + std::to_string(p.pid) + "/status");
        EXPECT_NE(its.find("\nUid:\t" + std::to_string(user->pw_uid) + "\t"), std::string::npos) << p.command_line;
        EXPECT_NE(p.command_line.find("--user"), std::string::npos) << p.command_line;
    }
}

TEST_F(Unprivileged, RunReturnsTheValueFromAChildInItsOwnUnitWithTheCallersIdentity) {
    Identity id = run({}, &identify);
    EXPECT_EQ(id.uid, getuid());
    EXPECT_EQ(id.gid, getgid());
    EXPECT_EQ(id.groups, identify().groups);
    EXPECT_NE(id.cgroup.find("/sdfutures-process-"), std::string::npos) << id.cgroup;
    std::string message = "closure";
    EXPECT_EQ(run({{"CPUQuota", "50%"}}, [&] { return message + "!"; }), "closure!");
    EXPECT_THROW(run({}, [] { return std::stoi("not a number"); }), std::invalid_argument);
}

TEST_F(Unprivileged, APoolServesTasksFromWorkersInItsUnit) {
    TransientUnitPoolExecutor pool({{"MemoryMax", "256M"}, {"TasksMax", "32"}}, {.max_workers = 2});
    std::vector<int> inputs(200);
    for (int i = 0; i < 200; ++i) inputs[static_cast<size_t>(i)] = i;
    auto squares = pool.map(&square, inputs);
    for (int i = 0; i < 200; ++i) EXPECT_EQ(squares[static_cast<size_t>(i)], i * i);
    auto ids = pool.map([](int) { return identify(); }, std::vector<int>{1, 2, 3, 4});
    for (auto& id : ids) {
        EXPECT_EQ(id.uid, getuid());
        EXPECT_NE(id.cgroup.find(pool.unit().name()), std::string::npos) << id.cgroup;
    }
    EXPECT_EQ(pool.worker_pids().size(), 2u);
}

TEST_F(Unprivileged, ACpuQuotaOfAFifthHoldsForTwoBusyWorkers) {
    TransientUnitPoolExecutor pool({{"CPUQuota", "20%"}}, {.max_workers = 2});
    auto a = pool.submit(&burn, 5000);
    auto b = pool.submit(&burn, 5000);
    double share = (a.get() + b.get()) / 5.0;
    std::printf("two busy workers under CPUQuota=20%%: %.1f%% of one CPU over 5 s\n", share * 100);
    EXPECT_NEAR(share, 0.20, 0.03) << "CPU time of both workers over 5 s of wall time";
}

TEST_F(Unprivileged, AllocatingPastMemoryMaxKillsTheChild) {
    TransientUnitProcess p(testing::memory_max_without_swap("64M"), [] { return testing::hog_memory(1024); });
    testing::expect_killed_by_oom(p);
}

TEST_F(Unprivileged, TasksMaxLimitsForksInTheChild) {
    // Eight tasks: the unit's main process, the child, and six children of it.
    auto [forked, refusal] = run({{"TasksMax", "8"}}, &fork_until_refused, 64);
    EXPECT_EQ(forked, 6);
    EXPECT_EQ(refusal, EAGAIN) << std::strerror(refusal);
}

int own_nice() { return getpriority(PRIO_PROCESS, 0); }

TEST_F(Unprivileged, AnOwnerAtALowerPriorityKeepsItInTheChild) {
    // A non-root process cannot take its nice value back down, so this runs in a child of the test process, which
    // then runs at nice 10 while its user manager (and the unit's main process) run at 0.
    int report[2];
    ASSERT_EQ(pipe(report), 0);
    pid_t owner = fork();
    ASSERT_GE(owner, 0);
    if (owner == 0) {
        close(report[0]);
        int values[2] = {-100, -100};
        try {
            if (setpriority(PRIO_PROCESS, 0, 10) == 0) {
                values[0] = run({}, &own_nice);
                values[1] = run({{"Nice", "15"}}, &own_nice);
            }
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s\n", e.what());
        }
        (void)!write(report[1], values, sizeof values);
        _exit(0);
    }
    close(report[1]);
    int values[2] = {0, 0};
    ssize_t got = read(report[0], values, sizeof values);
    close(report[0]);
    int status = 0;
    waitpid(owner, &status, 0);
    ASSERT_EQ(got, static_cast<ssize_t>(sizeof values));
    EXPECT_EQ(values[0], 10) << "the unit runs at nice 0, which the child cannot take";
    EXPECT_EQ(values[1], 15) << "Nice=15 is above the owner's and applies";
}

// Everything a non-root caller cannot have is refused by the constructor, before a unit or a process exists.
void expect_refused_before_anything_starts(Manager& manager, const std::string& name, const std::string& value,
                                           const std::string& why) {
    SCOPED_TRACE(name + "=" + value);
    const auto children_before = testing::own_children();  // the forkserver zygote, started in main()
    auto refused = [&](auto&& construct) {
        try {
            construct();
            ADD_FAILURE() << "accepted";
        } catch (const UnsupportedProperty& e) {
            EXPECT_EQ(e.property(), name);
            std::string what = e.what();
            EXPECT_NE(what.find("property " + name + "="), std::string::npos) << what;
            EXPECT_NE(what.find(why), std::string::npos) << what;
        }
    };
    Properties props{{"CPUQuota", "50%"}, {name, value}};
    std::string unit = testing::unique_unit_name();
    refused([&] { TransientUnitProcess p(props, ProcessOptions{.unit_name = unit}, [] { return 1; }); });
    refused([&] { run(props, [] { return 1; }); });
    refused([&] { TransientUnitPoolExecutor pool(props, {.max_workers = 1, .unit_name = unit}); });
    EXPECT_FALSE(manager.unit_loaded(unit));
    EXPECT_EQ(testing::own_children(), children_before) << "a child process was started";
}

TEST_F(Unprivileged, AnotherIdentityIsRefusedBeforeAnythingStartsSayingItNeedsRoot) {
    expect_refused_before_anything_starts(manager(), "User", "root", "running the work as user 'root' needs root");
    expect_refused_before_anything_starts(manager(), "User", "nobody", "running the work as user 'nobody' needs root");
    expect_refused_before_anything_starts(manager(), "User", "0", "needs root");
    expect_refused_before_anything_starts(manager(), "Group", "root", "with group 'root' needs root");
    expect_refused_before_anything_starts(manager(), "SupplementaryGroups", "root", "needs root");
    // systemd's user manager fails even these, naming the caller itself (216/GROUP).
    expect_refused_before_anything_starts(manager(), "User", SDFUTURES_TEST_USER, "216/GROUP");
    expect_refused_before_anything_starts(manager(), "SupplementaryGroups", own_group_name(), "216/GROUP");
}

TEST_F(Unprivileged, NamespacePropertiesAreRefusedRatherThanSilentlyNotApplied) {
    for (auto [name, value] : {std::pair{"PrivateTmp", "yes"}, {"PrivateNetwork", "yes"}, {"ProtectSystem", "strict"},
                               {"ProtectHome", "read-only"}})
        expect_refused_before_anything_starts(manager(), name, value, "needs root");
}

TEST_F(Unprivileged, WhatChangesNothingIsAccepted) {
    Properties props{{"Group", own_group_name()}, {"PrivateTmp", "no"}, {"PrivateNetwork", "false"},
                     {"ProtectSystem", "no"}, {"ProtectHome", "no"}, {"NoNewPrivileges", "yes"}};
    Identity id = run(props, &identify);
    EXPECT_EQ(id.uid, getuid());
    EXPECT_EQ(id.gid, getegid());
}

// ---- StartMethod::exec for a non-root owner: what the user's own manager applies when it executes the program --

struct Confinement {
    int no_new_privs = -1;
    int seccomp = -1;
    int inet_socket_errno = -1;
    int wx_mapping_errno = -1;
    rlim_t nofile = 0;
    uid_t uid = 0;
    MSGPACK_DEFINE(no_new_privs, seccomp, inet_socket_errno, wx_mapping_errno, nofile, uid);
};

int status_number(const char* key) {
    FILE* f = std::fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int value = -1;
    while (std::fgets(line, sizeof line, f))
        if (std::strncmp(line, key, std::strlen(key)) == 0 && line[std::strlen(key)] == ':')
            value = std::atoi(line + std::strlen(key) + 1);
    std::fclose(f);
    return value;
}

Confinement confinement() {
    Confinement c;
    c.no_new_privs = status_number("NoNewPrivs");
    c.seccomp = status_number("Seccomp");
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    c.inet_socket_errno = fd < 0 ? errno : 0;
    if (fd >= 0) ::close(fd);
    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    c.wx_mapping_errno = p == MAP_FAILED ? errno : 0;
    if (p != MAP_FAILED) ::munmap(p, 4096);
    rlimit limit{};
    ::getrlimit(RLIMIT_NOFILE, &limit);
    c.nofile = limit.rlim_cur;
    c.uid = ::getuid();
    return c;
}

// Measured here (systemd 252, the test user's own manager): the seccomp-based properties, NoNewPrivileges= and
// rlimits take effect on exec'd work of a non-root owner (a user's manager sets NoNewPrivileges itself for a
// filter, which needs no privilege); README "Start methods" has the table.
TEST_F(Unprivileged, AnExecPoolOfANonRootOwnerGetsTheFiltersAndLimitsItsManagerApplies) {
    TransientUnitPoolExecutor pool({{"SystemCallFilter", "@system-service"},
                                    {"RestrictAddressFamilies", "AF_UNIX"},
                                    {"MemoryDenyWriteExecute", "yes"},
                                    {"NoNewPrivileges", "yes"},
                                    {"LimitNOFILE", "100"},
                                    {"CPUQuota", "50%"}},
                                   {.max_workers = 1, .start_method = StartMethod::exec});
    Confinement c = pool.submit(&confinement).get();
    EXPECT_EQ(c.uid, getuid());
    EXPECT_EQ(c.no_new_privs, 1);
    EXPECT_EQ(c.seccomp, 2) << "filter mode";
    EXPECT_EQ(c.inet_socket_errno, EAFNOSUPPORT);
    EXPECT_EQ(c.wx_mapping_errno, EPERM);
    EXPECT_EQ(c.nofile, 100u);
    EXPECT_NE(pool.unit().control_group().find(pool.unit().name()), std::string::npos);
}

TEST_F(Unprivileged, AnExecPoolOfANonRootOwnerIsRefusedAnotherIdentityAndNamespacesByName) {
    for (auto [name, value] : {std::pair{"User", "nobody"}, {"PrivateTmp", "yes"}}) {
        try {
            TransientUnitPoolExecutor pool({{name, value}}, {.start_method = StartMethod::exec});
            ADD_FAILURE() << name << " accepted";
        } catch (const UnsupportedProperty& e) {
            EXPECT_EQ(e.property(), name);
        }
    }
}

}  // namespace
}  // namespace sdfutures
