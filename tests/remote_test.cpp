// Bus::remote against a real sshd on 127.0.0.1 whose logins reach the test's own manager: the test starts sshd
// (its own host key, config and authorized key in a temporary directory), and the remote side's
// systemd-stdio-bridge is pointed at $SDFUTURES_BUS with --bus-path=, so "the other host" is this one, reached
// through ssh exactly as a real one would be.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "support/manager_environment.hpp"
#include "support/workloads.hpp"

extern char** environ;

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;
using testing::unique_unit_name;

// Runs argv to its end with stdout and stderr into `log`; its exit status.
int run_program(const std::vector<std::string>& argv, const std::string& log) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = -1;
    int r = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (r != 0) return -1;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A loopback TCP port nothing listens on. Held (bound, not listening) by the returned socket, so nobody else
// takes it meanwhile: connecting to it is refused.
std::pair<int, int> closed_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {-1, -1};
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    return {fd, ntohs(a.sin_port)};
}

bool port_accepts(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
}

std::string first_line(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    return line;
}

// One sshd for the whole suite, started before the first test (so that the leak audit counts it as there
// before) and stopped by its pid after the last.
class Sshd {
public:
    static Sshd* instance;

    void start() {
        char pattern[] = "/tmp/sdfutures-remote-XXXXXX";
        ASSERT_NE(::mkdtemp(pattern), nullptr);
        dir = pattern;
        // The client's files in a directory whose name needs D-Bus address escaping (',', ' ', '%') on its way
        // into the unixexec: address.
        client_dir = dir + "/client key,100%";
        std::filesystem::create_directories(client_dir);
        log = dir + "/log";
        const std::string keygen = "/usr/bin/ssh-keygen";
        ASSERT_EQ(run_program({keygen, "-q", "-t", "ed25519", "-N", "", "-C", "host", "-f", dir + "/host_key"}, log), 0)
            << testing::read_file(log);
        identity = client_dir + "/id_ed25519";
        ASSERT_EQ(run_program({keygen, "-q", "-t", "ed25519", "-N", "", "-C", "client", "-f", identity}, log), 0)
            << testing::read_file(log);
        std::filesystem::copy_file(identity + ".pub", dir + "/authorized_keys");

        // A free port: taken by the kernel for a socket, then released for sshd. Another program could take
        // it in between; then sshd fails to bind and says so in the log.
        auto [held, free_port] = closed_port();
        ASSERT_GE(held, 0);
        port = free_port;
        ::close(held);

        std::ofstream config(dir + "/sshd_config");
        config << "ListenAddress 127.0.0.1\n"
               << "Port " << port << "\n"
               << "HostKey " << dir << "/host_key\n"
               << "AuthorizedKeysFile " << dir << "/authorized_keys\n"
               << "PermitRootLogin prohibit-password\n"
               << "PasswordAuthentication no\n"
               << "KbdInteractiveAuthentication no\n"
               << "StrictModes no\n"
               << "UsePAM no\n"
               << "PidFile " << dir << "/sshd.pid\n";
        config.close();
        std::ofstream known(client_dir + "/known_hosts");
        known << "[127.0.0.1]:" << port << " " << first_line(dir + "/host_key.pub") << "\n";
        known.close();

        // Privilege separation: sshd refuses to start without this directory (a machine that never ran
        // sshd has none).
        ::mkdir("/run/sshd", 0755);

        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
        posix_spawn_file_actions_adddup2(&actions, 1, 2);
        std::string config_path = dir + "/sshd_config";
        std::vector<std::string> argv{"/usr/sbin/sshd", "-D", "-e", "-f", config_path};
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        int r = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        ASSERT_EQ(r, 0) << "posix_spawn sshd: " << std::strerror(r);

        auto deadline = std::chrono::steady_clock::now() + 20s;
        while (!port_accepts(port)) {
            int status = 0;
            if (::waitpid(pid, &status, WNOHANG) == pid) {
                pid = -1;
                FAIL() << "sshd exited before listening: " << testing::read_file(log);
            }
            ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "sshd does not listen: " << testing::read_file(log);
            std::this_thread::sleep_for(20ms);
        }
    }

    void stop() {
        if (pid > 0) {
            ::kill(pid, SIGTERM);
            int status = 0;
            while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            }
            pid = -1;
        }
        if (!dir.empty()) std::filesystem::remove_all(dir);
    }

    // sshd forks a process per connection, which ends a moment after ssh went away: a test waits for them so
    // that the next one (and the leak audit) starts from sshd alone.
    void wait_for_sessions_to_end() const {
        auto deadline = std::chrono::steady_clock::now() + 10s;
        while (std::chrono::steady_clock::now() < deadline) {
            std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
            pid_t child = 0;
            if (!(in >> child)) return;
            std::this_thread::sleep_for(20ms);
        }
        ADD_FAILURE() << "sshd's sessions did not end within 10 s";
    }

    RemoteOptions options() const {
        RemoteOptions o;
        o.identity_file = identity;
        o.ssh_arguments = {"-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                           "-o", "UserKnownHostsFile=" + ssh_path(client_dir + "/known_hosts")};
        // getenv: the test is single-threaded here.
        const char* bus = std::getenv("SDFUTURES_BUS");  // NOLINT(concurrency-mt-unsafe)
        o.bus_address = bus ? bus : "";
        return o;
    }
    // A path as ssh's -o options take it: quoted (a space would separate two files) and with '%' as "%%" (ssh
    // expands %-tokens there).
    static std::string ssh_path(const std::string& path) {
        std::string out = "\"";
        for (char c : path) out += c == '%' ? std::string("%%") : std::string(1, c);
        return out + "\"";
    }
    std::string host() const { return "root@127.0.0.1:" + std::to_string(port); }

    std::string dir, client_dir, log, identity;
    int port = 0;
    pid_t pid = -1;
};
Sshd* Sshd::instance = nullptr;

class RemoteTest : public SystemdTest {
protected:
    static void SetUpTestSuite() {
        Sshd::instance = new Sshd();
        Sshd::instance->start();
    }
    static void TearDownTestSuite() {
        Sshd::instance->stop();
        delete Sshd::instance;
        Sshd::instance = nullptr;
    }
    void SetUp() override {
        // The remote side's bridge is told this address; the manager of scripts/with-systemd is on a unix socket.
        const char* bus = std::getenv("SDFUTURES_BUS");  // NOLINT(concurrency-mt-unsafe)
        ASSERT_TRUE(bus && std::string(bus).starts_with("unix:path=")) << "SDFUTURES_BUS is " << (bus ? bus : "unset");
        ASSERT_GT(sshd().pid, 0) << "sshd did not start: " << testing::read_file(sshd().log);
        SystemdTest::SetUp();
    }
    void TearDown() override {
        sshd().wait_for_sessions_to_end();
        SystemdTest::TearDown();
    }
    static Sshd& sshd() { return *Sshd::instance; }
    Bus remote() { return Bus::remote(sshd().host(), sshd().options()); }
};

TEST_F(RemoteTest, TheManagerBehindSshIsTheLocalOne) {
    Bus bus = remote();
    EXPECT_NE(bus.description().find("127.0.0.1:" + std::to_string(sshd().port)), std::string::npos) << bus.description();
    EXPECT_NE(bus.description().find("over ssh"), std::string::npos) << bus.description();
    EXPECT_EQ(Manager(bus).version(), manager().version());
}

TEST_F(RemoteTest, AUnitStartedThroughSshIsSeenLocally) {
    Bus bus = remote();
    Manager far(bus);
    auto name = unique_unit_name();
    Properties props = testing::sleeping_service();
    props.set("Description", "sdfutures remote test");
    Unit unit = far.start_transient_unit(name, props);
    EXPECT_EQ(unit.active_state(), "active");
    EXPECT_TRUE(manager().unit_loaded(name));
    EXPECT_EQ(manager().get_unit(name).active_state(), "active");
    EXPECT_EQ(manager().get_unit(name).property_as<std::string>("org.freedesktop.systemd1.Unit", "Description"), "sdfutures remote test");
    // Stopped from here, its removal is seen over there.
    manager().stop_unit(name);
    EXPECT_TRUE(far.wait_unit_gone(name, 20s));
}

TEST_F(RemoteTest, CommandsRunOverSshWithoutDescriptors) {
    Bus bus = remote();
    CommandResult r = Command({"/bin/sh", "-c", "echo hi; exit 3"}).stdout_to_journal().stderr_to_null().bus(bus).run(30s);
    EXPECT_EQ(r.exit_code, 3) << r.status_text();
    EXPECT_EQ(r.unit_result, "exit-code");
    EXPECT_FALSE(manager().unit_loaded(r.unit));

    CommandResult ok = Command({"/bin/echo", "hi"}).stdout_to_null().stderr_to_null().bus(bus).run(30s);
    EXPECT_TRUE(ok.success()) << ok.status_text();
    EXPECT_EQ(ok.exit_code, 0);
}

TEST_F(RemoteTest, CommandRefusesWhatWouldPassDescriptors) {
    Bus bus = remote();
    // Capture, fed input and the default (inherited) stdout and stderr all hand systemd descriptors.
    std::vector<Command> refused{Command({"/bin/echo", "hi"}).capture_stdout().stderr_to_null(),
                                 Command({"/bin/cat"}).stdin_from("x").stdout_to_null().stderr_to_null(),
                                 Command({"/bin/echo", "hi"})};
    for (auto& command : refused) {
        try {
            command.bus(bus).run(30s);
            ADD_FAILURE() << "ran";
        } catch (const Unsupported& e) {
            std::string what = e.what();
            EXPECT_NE(what.find("file descriptors"), std::string::npos) << what;
            EXPECT_NE(what.find("over ssh"), std::string::npos) << what;
            EXPECT_NE(what.find("stdout_to_journal()"), std::string::npos) << what;
        }
    }
    // The program is on the other host: no $PATH search here.
    try {
        Command({"echo", "hi"}).stdout_to_null().stderr_to_null().bus(bus).run(30s);
        ADD_FAILURE() << "ran";
    } catch (const ProgramNotFound& e) {
        EXPECT_NE(std::string(e.what()).find("absolute path"), std::string::npos) << e.what();
    }
    // A pool's workers are this host's processes.
    PoolOptions pool;
    pool.bus = bus;
    pool.max_workers = 1;
    EXPECT_THROW(TransientUnitPoolExecutor(Properties{}, pool), Unsupported);
}

TEST_F(RemoteTest, AClosedPortIsABusErrorNamingTheHostWithinSeconds) {
    auto [held, port] = closed_port();
    ASSERT_GE(held, 0);
    std::string host = "127.0.0.1:" + std::to_string(port);
    auto begin = std::chrono::steady_clock::now();
    try {
        Bus::remote(host, sshd().options());
        ADD_FAILURE() << "connected";
    } catch (const BusError& e) {
        EXPECT_EQ(e.address(), host);
        std::string what = e.what();
        EXPECT_NE(what.find(host), std::string::npos) << what;
        // ssh's own words, from its log.
        EXPECT_NE(what.find("Connection refused"), std::string::npos) << what;
    }
    EXPECT_LT(std::chrono::steady_clock::now() - begin, 5s);
    ::close(held);
}

TEST_F(RemoteTest, AMissingSshOrAMalformedHostIsABusErrorNamingTheHost) {
    RemoteOptions o = sshd().options();
    o.ssh_program = "/nonexistent/sdfutures/ssh";
    try {
        Bus::remote(sshd().host(), o);
        ADD_FAILURE() << "connected";
    } catch (const BusError& e) {
        EXPECT_EQ(e.address(), sshd().host());
        EXPECT_NE(std::string(e.what()).find("/nonexistent/sdfutures/ssh"), std::string::npos) << e.what();
    }
    o.ssh_program = "sdfutures-no-such-ssh";
    EXPECT_THROW(Bus::remote(sshd().host(), o), BusError);
    for (std::string host : {"", "root@", "@host", "a@b@c", "[::1", "[::1]x", "host:", "host:ssh", "host:70000",
                             "-oProxyCommand=x", "host/container", "ho st"}) {
        try {
            Bus::remote(host, sshd().options());
            ADD_FAILURE() << "connected to '" << host << "'";
        } catch (const BusError& e) {
            EXPECT_EQ(e.address(), host);
            EXPECT_NE(std::string(e.what()).find("not a host for ssh"), std::string::npos) << e.what();
        }
    }
}

TEST_F(RemoteTest, ABridgeThatCannotReachTheBusIsABusError) {
    RemoteOptions o = sshd().options();
    o.bus_address = "unix:path=/nonexistent/sdfutures/bus";
    try {
        Bus::remote(sshd().host(), o);
        ADD_FAILURE() << "connected";
    } catch (const BusError& e) {
        EXPECT_EQ(e.address(), sshd().host());
    }
}

}  // namespace
}  // namespace sdfutures
