// Command against a real manager: exit statuses, signals, large streams both ways, sandbox properties that
// must really apply, timeouts, clear errors before and at start, and nothing left behind.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <sdbus-c++/sdbus-c++.h>

#include "support/descriptor_exhaustion.hpp"
#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;
using testing::unique_unit_name;

constexpr size_t kMiB = 1024 * 1024;

// The uid the manager runs as, from the bus daemon: what decides whether User= and DynamicUser= can work.
uint32_t manager_uid(Bus& bus) {
    auto lock = bus.lock();
    auto proxy = sdbus::createProxy(bus.connection(), "org.freedesktop.DBus", "/org/freedesktop/DBus");
    uint32_t uid = 0;
    proxy->callMethod("GetConnectionUnixUser").onInterface("org.freedesktop.DBus")
        .withArguments(std::string("org.freedesktop.systemd1")).storeResultsTo(uid);
    return uid;
}

// "1\n2\n3\n..." cut at `size` bytes: what `seq 1 N | head -c size` prints, so a capture can be compared
// byte for byte (order, loss and duplication all show).
std::string seq_bytes(size_t size) {
    std::string out;
    out.reserve(size + 16);
    for (unsigned long i = 1; out.size() < size; ++i) {
        out += std::to_string(i);
        out += '\n';
    }
    out.resize(size);
    return out;
}

std::string random_bytes(size_t size, unsigned seed) {
    std::mt19937_64 gen(seed);
    std::string out(size, '\0');
    for (size_t i = 0; i < size; i += 8) {
        uint64_t v = gen();
        for (size_t j = 0; j < 8 && i + j < size; ++j) out[i + j] = static_cast<char>(v >> (8 * j));
    }
    return out;
}

class CommandTest : public SystemdTest {
protected:
    // The unit is gone when a Command's wait returns; asserted after every run, besides the fixture's audit.
    void expect_gone(const std::string& unit) { EXPECT_FALSE(manager().unit_loaded(unit)) << unit; }

    CommandResult sh(const std::string& script) {
        auto r = Command({"/bin/sh", "-c", script}).capture_stdout().capture_stderr().run(30s);
        expect_gone(r.unit);
        return r;
    }
};

// ---- how it ended

// Repeated: a program that fails at once can end its unit before systemd saw its execve() succeed, which
// fails the start job although the program ran; that must still be reported as the program's exit.
TEST_F(CommandTest, ExitCodesAreReportedExactly) {
    for (int code : {0, 3, 255, 0, 3, 255, 3, 255, 3, 255}) {
        auto r = sh("exit " + std::to_string(code));
        ASSERT_TRUE(r.exit_code.has_value()) << r.status_text();
        EXPECT_EQ(*r.exit_code, code);
        EXPECT_FALSE(r.signal.has_value());
        EXPECT_EQ(r.unit_result, code == 0 ? "success" : "exit-code");
        EXPECT_EQ(r.success(), code == 0);
        EXPECT_FALSE(r.timed_out);
        EXPECT_FALSE(r.stopped);
        EXPECT_EQ(r.status_text(), "exited with code " + std::to_string(code));
    }
}

TEST_F(CommandTest, SignalsAreReportedExactly) {
    for (int round = 0; round < 5; ++round) EXPECT_EQ(sh("kill -SEGV $$").signal, SIGSEGV);
    auto segv = sh("kill -SEGV $$");
    ASSERT_TRUE(segv.signal.has_value()) << segv.status_text();
    EXPECT_EQ(*segv.signal, SIGSEGV);
    EXPECT_FALSE(segv.exit_code.has_value());
    EXPECT_EQ(segv.unit_result, segv.core_dumped ? "core-dump" : "signal");
    EXPECT_FALSE(segv.success());
    EXPECT_NE(segv.status_text().find("SIGSEGV"), std::string::npos) << segv.status_text();

    auto term = sh("kill -TERM $$");
    ASSERT_TRUE(term.signal.has_value()) << term.status_text();
    EXPECT_EQ(*term.signal, SIGTERM);
    EXPECT_FALSE(term.exit_code.has_value());
    EXPECT_FALSE(term.core_dumped);
    // systemd counts a SIGTERM death as a clean exit.
    EXPECT_EQ(term.unit_result, "success");
}

TEST_F(CommandTest, RunTimeIsMeasuredBySystemd) {
    auto r = Command({"/bin/sleep", "0.3"}).run(30s);
    ASSERT_TRUE(r.run_time.has_value());
    EXPECT_GE(*r.run_time, 300ms);
    EXPECT_LT(*r.run_time, 10s);
    if (r.cpu_time) {
        EXPECT_LT(*r.cpu_time, *r.run_time);  // sleeping costs (almost) no CPU
    }
    expect_gone(r.unit);
}

// ---- streams

TEST_F(CommandTest, HundredMiBOfStdoutArriveIntact) {
    constexpr size_t size = 100 * kMiB;
    auto r = Command({"/bin/sh", "-c", "seq 1 20000000 | head -c " + std::to_string(size)}).capture_stdout().run(120s);
    EXPECT_EQ(r.exit_code, 0) << r.status_text();
    ASSERT_EQ(r.captured_stdout.size(), size);
    EXPECT_TRUE(r.captured_stdout == seq_bytes(size)) << "the captured bytes differ from seq's";
    EXPECT_FALSE(r.stdout_truncated);
    expect_gone(r.unit);
}

// The program writes 100 MiB before it reads any of its 10 MiB of input: feeding all input first and reading
// afterwards would deadlock on two full pipes.
TEST_F(CommandTest, LargeOutputWhileInputIsStillBeingFedDoesNotDeadlock) {
    constexpr size_t out_size = 100 * kMiB, in_size = 10 * kMiB;
    auto r = Command({"/bin/sh", "-c", "seq 1 20000000 | head -c " + std::to_string(out_size) + "; wc -c"})
                 .stdin_from(random_bytes(in_size, 7))
                 .capture_stdout()
                 .run(120s);
    EXPECT_EQ(r.exit_code, 0) << r.status_text();
    ASSERT_EQ(r.captured_stdout.size(), out_size + std::to_string(in_size).size() + 1);
    EXPECT_TRUE(r.captured_stdout.compare(0, out_size, seq_bytes(out_size)) == 0);
    EXPECT_EQ(r.captured_stdout.substr(out_size), std::to_string(in_size) + "\n");
    expect_gone(r.unit);
}

TEST_F(CommandTest, TenMiBRoundTripThroughCat) {
    std::string data = random_bytes(10 * kMiB, 42);  // every byte value, NULs included
    auto r = Command({"/bin/cat"}).stdin_from(data).capture_stdout().run(60s);
    EXPECT_EQ(r.exit_code, 0) << r.status_text();
    ASSERT_EQ(r.captured_stdout.size(), data.size());
    EXPECT_TRUE(r.captured_stdout == data);
    expect_gone(r.unit);
}

TEST_F(CommandTest, EmptyInputIsEndOfFileAtOnce) {
    auto r = Command({"/usr/bin/wc", "-c"}).stdin_from("").capture_stdout().run(30s);
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.captured_stdout, "0\n");
}

// A command with its input fed and its output captured takes descriptors for the bus, three pipes, and the
// copies passed to systemd; running out at any of them is an sdfutures::Error and leaves nothing behind.
TEST_F(CommandTest, RunningOutOfDescriptorsAtAnyStepFailsCleanly) {
    auto sweep = testing::sweep_descriptor_exhaustion(manager(), 32, [] {
        auto r = Command({"/bin/cat"}).stdin_from("in").capture_stdout().capture_stderr().run(30s);
        EXPECT_EQ(r.captured_stdout, "in");
    });
    EXPECT_GE(sweep.failed, 6) << "a command needs more than six new descriptors; the sweep did not reach its steps";
    EXPECT_GE(sweep.succeeded, 1) << "no command could run even with 31 descriptors to spare";
    for (const auto& e : sweep.errors) EXPECT_NE(e.find("Too many open files"), std::string::npos) << e;
}

TEST_F(CommandTest, StdoutAndStderrAreCapturedApartOrTogether) {
    auto apart = sh("echo out; echo err >&2; echo out2");
    EXPECT_EQ(apart.captured_stdout, "out\nout2\n");
    EXPECT_EQ(apart.captured_stderr, "err\n");

    auto together = Command({"/bin/sh", "-c", "echo out; echo err >&2; echo out2"})
                        .capture_stdout()
                        .stderr_to_stdout()
                        .run(30s);
    EXPECT_EQ(together.captured_stdout, "out\nerr\nout2\n");
    EXPECT_EQ(together.captured_stderr, "");
    expect_gone(together.unit);

    auto discarded = Command({"/bin/sh", "-c", "echo out; echo err >&2"}).stdout_to_null().capture_stderr().run(30s);
    EXPECT_EQ(discarded.captured_stdout, "");
    EXPECT_EQ(discarded.captured_stderr, "err\n");
}

TEST_F(CommandTest, CallersDescriptorsAreUsedAndLeftOpen) {
    char in_path[] = "/tmp/sdfutures-command-in-XXXXXX";
    char out_path[] = "/tmp/sdfutures-command-out-XXXXXX";
    int in = mkstemp(in_path), out = mkstemp(out_path);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    ASSERT_EQ(write(in, "from a file\n", 12), 12);
    ASSERT_EQ(lseek(in, 0, SEEK_SET), 0);
    auto r = Command({"/usr/bin/tr", "a-z", "A-Z"}).stdin_from_fd(in).stdout_to_fd(out).run(30s);
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(testing::read_file(out_path), "FROM A FILE\n");
    EXPECT_GE(fcntl(in, F_GETFD), 0) << "the caller's descriptor was closed";
    EXPECT_GE(fcntl(out, F_GETFD), 0) << "the caller's descriptor was closed";
    close(in);
    close(out);
    unlink(in_path);
    unlink(out_path);
    expect_gone(r.unit);
}

TEST_F(CommandTest, CaptureCapStopsReadingAndSaysSo) {
    auto capped = Command({"/usr/bin/head", "-c", "10000000", "/dev/zero"}).capture_stdout(1000).capture_stderr().run(30s);
    EXPECT_EQ(capped.captured_stdout, std::string(1000, '\0'));
    EXPECT_TRUE(capped.stdout_truncated);
    // The closed pipe ends the writer instead of letting it write 10 MB to nobody: with EPIPE, as systemd
    // ignores SIGPIPE for services unless IgnoreSIGPIPE=no.
    EXPECT_EQ(capped.exit_code, 1) << capped.status_text();
    EXPECT_NE(capped.captured_stderr.find("Broken pipe"), std::string::npos) << capped.captured_stderr;
    expect_gone(capped.unit);

    auto killed = Command({"/usr/bin/head", "-c", "10000000", "/dev/zero"})
                      .typed_property("IgnoreSIGPIPE", sdbus::Variant(false))
                      .capture_stdout(1000)
                      .run(30s);
    EXPECT_EQ(killed.signal, SIGPIPE) << killed.status_text();
    EXPECT_TRUE(killed.stdout_truncated);

    auto exact = Command({"/bin/sh", "-c", "printf 12345"}).capture_stdout(5).run(30s);
    EXPECT_EQ(exact.captured_stdout, "12345");
    EXPECT_FALSE(exact.stdout_truncated);
    EXPECT_EQ(exact.exit_code, 0);
}

// Descriptors of this process that a fork+exec elsewhere could inherit would hold the pipes open.
TEST_F(CommandTest, EveryDescriptorItOpensIsCloseOnExec) {
    auto before = testing::ProcessSnapshot::take(manager()).fds;
    auto process = Command({"/bin/cat"}).stdin_from(std::string(4 * kMiB, 'x')).capture_stdout().capture_stderr().start();
    auto during = testing::ProcessSnapshot::take(manager()).fds;
    int opened = 0;
    for (int fd : during) {
        if (before.count(fd)) continue;
        ++opened;
        int flags = fcntl(fd, F_GETFD);
        char target[256] = {};
        (void)readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), target, sizeof target - 1);
        EXPECT_TRUE(flags >= 0 && (flags & FD_CLOEXEC)) << "descriptor " << fd << " (" << target << ") is inheritable";
    }
    EXPECT_GE(opened, 4);  // the bus, the wake-up eventfd, and this end of three pipes
    auto r = process.wait();
    EXPECT_EQ(r.captured_stdout.size(), 4 * kMiB);
}

// ---- what reaches the program

TEST_F(CommandTest, ArgumentsEnvironmentAndWorkingDirectoryArriveVerbatim) {
    char dir[] = "/tmp/sdfutures-command-cwd-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    // systemd would expand ${X}, a bare $X and $$ in arguments, and %-specifiers in unit files: none may happen.
    std::vector<std::string> argv{"/bin/sh", "-c", "printf '%s|' \"$GREETING\" \"$@\"; pwd", "sh", "$GREETING",
                                  "${GREETING}", "$$", "100%", "%n", "two words", ""};
    auto r = Command(argv)
                 .environment("GREETING", "hello world; $HOME ${X} 'q' \"d\"")
                 .environment("EMPTY", "")
                 .working_directory(dir)
                 .capture_stdout()
                 .run(30s);
    EXPECT_EQ(r.exit_code, 0) << r.status_text();
    EXPECT_EQ(r.captured_stdout, "hello world; $HOME ${X} 'q' \"d\"|$GREETING|${GREETING}|$$|100%|%n|two words||" +
                                     std::string(dir) + "\n");
    rmdir(dir);
    expect_gone(r.unit);
}

TEST_F(CommandTest, ProgramNamesAreLookedUpInPath) {
    auto r = Command({"sh", "-c", "echo $0"}).bus(bus()).capture_stdout().run(30s);  // on the fixture's Bus, too
    EXPECT_EQ(r.exit_code, 0) << r.status_text();
    EXPECT_EQ(r.captured_stdout, "sh\n");  // argv[0] stays as given, as with systemd-run
}

// ---- sandboxing that must really apply (each checked against a run without it)

TEST_F(CommandTest, PrivateNetworkLeavesOnlyLoopback) {
    bool have_ip = access("/usr/sbin/ip", X_OK) == 0 || access("/sbin/ip", X_OK) == 0 || access("/bin/ip", X_OK) == 0;
    // /proc/self/net shows the reader's namespace (unlike /sys/class/net, which shows the mounter's).
    std::string list = have_ip ? "ip -o link show | cut -d: -f2 | tr -d ' '"
                               : "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";
    std::string script = "readlink /proc/self/ns/net; " + list;
    auto isolated = Command({"/bin/sh", "-c", script}).property("PrivateNetwork", "yes").capture_stdout().run(30s);
    auto shared = Command({"/bin/sh", "-c", script}).capture_stdout().run(30s);
    ASSERT_EQ(isolated.exit_code, 0) << isolated.status_text();
    ASSERT_EQ(shared.exit_code, 0);

    char own_ns[128] = {};
    ASSERT_GT(readlink("/proc/self/ns/net", own_ns, sizeof own_ns - 1), 0);
    std::istringstream in(isolated.captured_stdout);
    std::string ns, iface, rest;
    std::getline(in, ns);
    EXPECT_NE(ns, own_ns) << "PrivateNetwork=yes did not give the program a network namespace of its own";
    std::vector<std::string> interfaces;
    while (std::getline(in, iface)) interfaces.push_back(iface);
    EXPECT_EQ(interfaces, std::vector<std::string>{"lo"}) << isolated.captured_stdout;
    // Without it the program sees this machine's network, so the check above can tell the two apart.
    EXPECT_EQ(shared.captured_stdout.substr(0, shared.captured_stdout.find('\n')), own_ns);
    expect_gone(isolated.unit);
}

TEST_F(CommandTest, SystemCallFilterNoNewPrivilegesAndProtectSystemApply) {
    std::string script = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -d ' \\t'; "
                         "touch /usr/sdfutures-command-probe 2>/dev/null && rm /usr/sdfutures-command-probe && "
                         "echo usr:writable || echo usr:read-only";
    auto plain = Command({"/bin/sh", "-c", script}).capture_stdout().run(30s);
    auto sandboxed = Command({"/bin/sh", "-c", script})
                         .property("SystemCallFilter", "@system-service")
                         .property("NoNewPrivileges", "yes")
                         .property("ProtectSystem", "strict")
                         .capture_stdout()
                         .run(30s);
    EXPECT_EQ(plain.captured_stdout, "NoNewPrivs:0\nSeccomp:0\nusr:writable\n");
    EXPECT_EQ(sandboxed.captured_stdout, "NoNewPrivs:1\nSeccomp:2\nusr:read-only\n");

    // A system call outside the allowed set kills the program with SIGSYS, as systemd documents.
    auto denied = Command({"/bin/date", "-s", "@0"}).property("SystemCallFilter", "~@clock").capture_stderr().run(30s);
    EXPECT_EQ(denied.signal, SIGSYS) << denied.status_text();
    expect_gone(denied.unit);
}

// User= needs a manager that may switch users, i.e. one running as root. What decides is the manager's uid,
// not whether it is a system or a user manager: scripts/with-systemd's private user manager runs as root.
TEST_F(CommandTest, UserAndDynamicUserApplyWhenTheManagerMaySwitchUsers) {
    auto command = Command({"/usr/bin/id", "-u"});
    command.property("User", "nobody").capture_stdout();
    if (manager_uid(bus()) != 0) {
        try {
            command.run(30s);
            FAIL() << "User=nobody was accepted by a manager that is not root";
        } catch (const Unsupported& e) {
            EXPECT_NE(std::string(e.what()).find("User=nobody"), std::string::npos) << e.what();
        }
        return;
    }
    auto r = command.run(30s);
    EXPECT_EQ(r.exit_code, 0) << r.status_text();
    EXPECT_EQ(r.captured_stdout, "65534\n");

    auto dynamic = Command({"/usr/bin/id", "-u"}).property("DynamicUser", "yes").capture_stdout().run(30s);
    EXPECT_EQ(dynamic.exit_code, 0) << dynamic.status_text();
    unsigned long uid = std::stoul(dynamic.captured_stdout);
    EXPECT_GE(uid, 61184u);  // systemd's range for dynamic users
    EXPECT_LE(uid, 65519u);
    expect_gone(dynamic.unit);
}

// ---- stopping

TEST_F(CommandTest, TimeoutStopsTheProgramWithinTimeoutPlusOneSecond) {
    auto begin = std::chrono::steady_clock::now();
    auto r = Command({"/bin/sleep", "1000"}).run(500ms);
    auto took = std::chrono::steady_clock::now() - begin;
    EXPECT_TRUE(r.timed_out);
    EXPECT_TRUE(r.stopped);
    EXPECT_FALSE(r.success());
    EXPECT_EQ(r.signal, SIGTERM) << r.status_text();
    EXPECT_GE(took, 500ms);
    EXPECT_LT(took, 1500ms);
    expect_gone(r.unit);
}

TEST_F(CommandTest, StartReturnsAtOnceAndStopEndsTheUnit) {
    auto process = Command({"/bin/sleep", "1000"}).start();
    EXPECT_FALSE(process.wait_for(200ms).has_value());  // still running: wait_for gives up, the unit stays
    EXPECT_EQ(Unit(bus(), process.unit()).active_state(), "active");
    process.stop();
    auto r = process.wait();
    EXPECT_TRUE(r.stopped);
    EXPECT_FALSE(r.timed_out);
    EXPECT_EQ(r.signal, SIGTERM);
    EXPECT_THROW(process.wait(), StateError);
    expect_gone(r.unit);
}

// A stop that overtakes the start job cancels it: the program may never run, and that is no error.
TEST_F(CommandTest, StopRightAfterStartIsNoError) {
    auto process = Command({"/bin/sleep", "1000"}).start();
    process.stop();
    auto r = process.wait();
    EXPECT_TRUE(r.stopped);
    EXPECT_FALSE(r.exit_code.has_value() && *r.exit_code == 0) << r.status_text();
    expect_gone(r.unit);
}

TEST_F(CommandTest, KillSignalsTheProgram) {
    auto process = Command({"/bin/sleep", "1000"}).start();
    process.kill(SIGKILL);
    auto r = process.wait();
    EXPECT_EQ(r.signal, SIGKILL) << r.status_text();
    EXPECT_EQ(r.unit_result, "signal");
    EXPECT_FALSE(r.stopped);
    process.kill(SIGKILL);  // ended: nothing happens
    expect_gone(r.unit);
}

TEST_F(CommandTest, StopFromAnotherThreadEndsAWaitInProgress) {
    auto process = Command({"/bin/sh", "-c", "echo started; exec sleep 1000"}).capture_stdout().start();
    std::optional<CommandResult> result;
    std::thread waiter([&] { result = process.wait(); });
    // The waiting thread serves the command; a stop from here is handed to it.
    std::this_thread::sleep_for(200ms);
    process.stop();
    waiter.join();
    ASSERT_TRUE(result.has_value());
    EXPECT_TRUE(result->stopped);
    EXPECT_EQ(result->captured_stdout, "started\n");
    expect_gone(result->unit);
}

TEST_F(CommandTest, DroppingAHandleStopsItsUnit) {
    auto name = unique_unit_name();
    {
        auto process = Command({"/bin/sleep", "1000"}).unit_name(name).capture_stdout().start();
        EXPECT_EQ(process.unit(), name);
    }
    EXPECT_TRUE(manager().wait_unit_gone(name, 10s));
}

// ---- errors, before anything starts and at start

TEST_F(CommandTest, AMissingProgramIsNamedBeforeAnythingStarts) {
    try {
        Command({"/nonexistent/sdfutures-program", "x"}).start();
        FAIL() << "started";
    } catch (const ProgramNotFound& e) {
        EXPECT_EQ(e.program(), "/nonexistent/sdfutures-program");
        EXPECT_NE(std::string(e.what()).find("/nonexistent/sdfutures-program"), std::string::npos) << e.what();
    }
    try {
        Command({"sdfutures-no-such-program"}).start();
        FAIL() << "started";
    } catch (const ProgramNotFound& e) {
        EXPECT_NE(std::string(e.what()).find("sdfutures-no-such-program"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("PATH"), std::string::npos) << e.what();
    }
    try {
        Command({"./bin/tool"}).start();
        FAIL() << "started";
    } catch (const ProgramNotFound& e) {
        EXPECT_NE(std::string(e.what()).find("absolute path"), std::string::npos) << e.what();
    }
    EXPECT_THROW(Command({"/etc"}).start(), ProgramNotFound);  // a directory
    char plain[] = "/tmp/sdfutures-command-plain-XXXXXX";
    int fd = mkstemp(plain);  // mode 0600: no execute bit, which stops even root
    ASSERT_GE(fd, 0);
    close(fd);
    try {
        Command({plain}).start();
        ADD_FAILURE() << "started";
    } catch (const ProgramNotFound& e) {
        EXPECT_NE(std::string(e.what()).find("not executable"), std::string::npos) << e.what();
    }
    unlink(plain);
    EXPECT_THROW(Command(std::vector<std::string>{}), ProgramNotFound);
}

// Past this process's checks, a program systemd cannot execute fails the start job (Type=exec): the wait ends
// with an error naming the program and systemd's reason, and the unit is collected.
TEST_F(CommandTest, AProgramSystemdCannotExecuteFailsTheStartClearly) {
    char path[] = "/tmp/sdfutures-command-notexec-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, "\x01\x02garbage", 9), 9);  // executable bits, but no format the kernel knows
    close(fd);
    chmod(path, 0755);
    auto name = unique_unit_name();
    try {
        Command({path}).unit_name(name).run(30s);
        ADD_FAILURE() << "ran";
    } catch (const CommandStartFailed& e) {
        EXPECT_EQ(e.program(), path);
        EXPECT_EQ(e.unit(), name);
        EXPECT_EQ(e.result(), "failed");
        EXPECT_EQ(e.exec_status(), 203);
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("203/EXEC"), std::string::npos) << e.what();
    }
    unlink(path);
    expect_gone(name);

    try {
        Command({"/bin/true"}).working_directory("/nonexistent/sdfutures-dir").unit_name(name).run(30s);
        ADD_FAILURE() << "ran";
    } catch (const CommandStartFailed& e) {
        EXPECT_EQ(e.exec_status(), 200) << e.what();
        EXPECT_NE(std::string(e.what()).find("200/CHDIR"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("caused by WorkingDirectory=/nonexistent/sdfutures-dir"), std::string::npos)
            << e.what();
    }
    expect_gone(name);

    // A user systemd cannot find: 217/USER, named with the User= that caused it, not a bare "result 'failed'".
    try {
        Command({"/bin/true"}).property("User", "sdfutures-no-such-user").unit_name(name).run(30s);
        ADD_FAILURE() << "ran";
    } catch (const CommandStartFailed& e) {
        EXPECT_EQ(e.exec_status(), 217) << e.what();
        EXPECT_NE(std::string(e.what()).find("217/USER"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("caused by User=sdfutures-no-such-user"), std::string::npos) << e.what();
    }
    expect_gone(name);
}

TEST_F(CommandTest, PropertiesCommandSetsItselfAreRefusedWithWhatToUse) {
    Command command({"/bin/true"});
    try {
        command.property("StandardOutput", "journal");
        FAIL();
    } catch (const UnsupportedProperty& e) {
        EXPECT_NE(std::string(e.what()).find("stdout_to_journal"), std::string::npos) << e.what();
    }
    EXPECT_THROW(command.property("ExecStart", "/bin/false"), UnsupportedProperty);
    // Service types whose main process would not be the program (command_service_test has the others).
    EXPECT_THROW(command.property("Type", "forking"), UnsupportedProperty);
    EXPECT_THROW(command.typed_property("Type", sdbus::Variant(std::string("dbus"))), UnsupportedProperty);
    EXPECT_THROW(command.typed_property("AddRef", sdbus::Variant(false)), UnsupportedProperty);
    EXPECT_THROW(command.properties(Properties{{"CollectMode", "inactive"}}), UnsupportedProperty);
    EXPECT_THROW(command.property("MemoryMax", "lots"), PropertyError);
    EXPECT_THROW(command.environment("1BAD", "x"), PropertyError);
    EXPECT_THROW(command.unit_name("x.scope"), Error);
    EXPECT_THROW(command.stdout_to_fd(9999).start(), Error);  // not an open descriptor
}

// systemd accepts MemoryHigh= on a v1 memory controller and does nothing with it; Command says so instead, as
// TransientUnitProcess and the pool do. Where the requirement is met, the same command runs.
TEST_F(CommandTest, APropertyThisMachineCannotHonourIsRefusedBeforeAnythingStarts) {
    const auto unmet = unmet_requirement(Requirement::unified_memory, system_info(bus()), "MemoryHigh=");
    auto name = unique_unit_name();
    Command command({"/bin/true"});
    command.property("MemoryHigh", "32M").unit_name(name);
    if (unmet) {
        try {
            command.start();
            FAIL() << "started although " << *unmet;
        } catch (const Unsupported& e) {
            EXPECT_EQ(e.what(), *unmet);
        }
        EXPECT_FALSE(manager().unit_loaded(name));
    } else {
        EXPECT_EQ(command.run(30s).exit_code, 0);
    }
}

TEST_F(CommandTest, APropertySystemdRefusesFailsStartWithItsError) {
    auto name = unique_unit_name();
    try {
        Command({"/bin/true"}).typed_property("MemoryMax", sdbus::Variant(std::string("nope"))).unit_name(name).start();
        FAIL() << "started";
    } catch (const SystemdError& e) {
        EXPECT_NE(std::string(e.what()).find("StartTransientUnit " + name), std::string::npos) << e.what();
    }
    expect_gone(name);
}

TEST_F(CommandTest, DefaultUnitNamesAreUniqueAndReadable) {
    auto a = Command({"/bin/true"}).run(30s);
    auto b = Command({"/bin/true"}).run(30s);
    std::regex pattern("sdfutures-cmd-" + std::to_string(getpid()) + "-[0-9]+-[0-9a-f]{8}\\.service");
    EXPECT_TRUE(std::regex_match(a.unit, pattern)) << a.unit;
    EXPECT_TRUE(std::regex_match(b.unit, pattern)) << b.unit;
    EXPECT_NE(a.unit, b.unit);
}

TEST_F(CommandTest, AFixedUnitNameCanBeReusedAsSoonAsTheRunReturns) {
    auto name = unique_unit_name();
    auto command = Command({"/bin/true"}).unit_name(name);
    EXPECT_EQ(command.run(30s).unit, name);
    EXPECT_EQ(command.run(30s).exit_code, 0);  // no UnitExists: the first unit is already collected
    expect_gone(name);
}

}  // namespace
}  // namespace sdfutures
