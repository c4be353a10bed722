// Command::pty() against the real manager: the program's stdin, stdout and stderr are a terminal, its
// controlling one, of the size given; input written to the master reaches it, its output comes back, a resize
// reaches it as SIGWINCH and a new size, the exit code is its own; mixing pty() with the stream setters is refused.
// The fixture's leak audit checks that no descriptor, unit or process is left behind.
#include <signal.h>

#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "sdfutures/command.hpp"
#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;

class CommandPtyTest : public SystemdTest {
protected:
    void expect_gone(const std::string& unit) { EXPECT_FALSE(manager().unit_loaded(unit)) << unit; }

    static Command sh(const std::string& script) { return Command({"/bin/sh", "-c", script}); }

    // Reads the terminal until `text` has appeared in what was read (everything read so far is returned), or
    // fails after `limit`. Only for output the program makes before it waits for more: output it makes just before
    // it ends may be read at the end, and is then in the result's captured_stdout instead.
    static std::string read_until(CommandProcess& p, const std::string& text, std::string seen = {},
                                  std::chrono::seconds limit = 20s) {
        auto end = std::chrono::steady_clock::now() + limit;
        while (seen.find(text) == std::string::npos && std::chrono::steady_clock::now() < end)
            seen += p.read_terminal(200ms);
        EXPECT_NE(seen.find(text), std::string::npos) << "waited for '" << text << "', read '" << seen << "'";
        return seen;
    }
};

TEST_F(CommandPtyTest, TheStreamsAreTheProgramsControllingTerminal) {
    // tty_nr (/proc/<pid>/stat field 7) is non-zero only for a process with a controlling terminal; the shell is
    // its session's leader and, as the foreground process group, gets the terminal's SIGWINCH (tested below).
    CommandResult r = sh("test -t 0 && test -t 1 && test -t 2 && echo tty; "
                         "set -- $(cat /proc/$$/stat); [ \"$7\" != 0 ] && echo ctty; "
                         "[ \"$6\" = $$ ] && echo leader; exit 3")
                          .pty()
                          .run(30s);
    EXPECT_EQ(r.exit_code, 3) << r.status_text();
    // The terminal turns "\n" into "\r\n"; nothing of it was read, so all of it is in the result.
    EXPECT_EQ(r.captured_stdout, "tty\r\nctty\r\nleader\r\n");
    EXPECT_FALSE(r.stdout_truncated);
    expect_gone(r.unit);
}

TEST_F(CommandPtyTest, SttySizePrintsTheSizeGiven) {
    CommandResult r = Command({"/bin/stty", "size"}).pty({.rows = 33, .cols = 101}).run(30s);
    EXPECT_TRUE(r.success()) << r.status_text();
    EXPECT_EQ(r.captured_stdout, "33 101\r\n");
    CommandResult plain = Command({"/bin/stty", "size"}).pty().run(30s);
    EXPECT_EQ(plain.captured_stdout, "24 80\r\n");
}

TEST_F(CommandPtyTest, InputWrittenToTheMasterReachesTheProgramAndItsOutputComesBack) {
    CommandProcess p = sh("echo ready; head -n1 | tr a-z A-Z; exit 7").pty().start();
    std::string seen = read_until(p, "ready\r\n");
    p.write_terminal("hello pty\n");
    // The terminal echoes the line as typed; head passes it to tr, whose output comes back too: what was read
    // by the end, and the rest in the result.
    seen += p.read_terminal(10s);
    CommandResult r = p.wait();
    EXPECT_EQ(r.exit_code, 7) << r.status_text();
    EXPECT_EQ(seen + r.captured_stdout, "ready\r\nhello pty\r\nHELLO PTY\r\n");
    expect_gone(r.unit);
}

TEST_F(CommandPtyTest, EndOfFileIsControlDAtTheStartOfALine) {
    CommandProcess p = Command({"/bin/cat"}).pty().start();
    // A line at a time: the terminal echoes a line before cat can read it, but given two lines in one write, cat
    // may copy the first while the second is still being echoed (seen: "one\r\ntwone\r\no\r\n...").
    p.write_terminal("one\n");
    std::string seen = read_until(p, "one\r\none\r\n");
    p.write_terminal("two\n");
    seen = read_until(p, "two\r\ntwo\r\n", seen);
    p.write_terminal("\x04");
    CommandResult r = p.wait();  // cat ends at the end of file
    EXPECT_TRUE(r.success()) << r.status_text();
    // Each line echoed, then cat's copy of it; nothing after the end of file.
    EXPECT_EQ(seen + r.captured_stdout, "one\r\none\r\ntwo\r\ntwo\r\n");
}

TEST_F(CommandPtyTest, AResizeWhileItRunsReachesTheProgram) {
    // The shell's trap runs on SIGWINCH, which the kernel sends to the foreground process group of a controlling
    // terminal only; stty reads the new size.
    CommandProcess p = sh("trap 'stty size; exit 4' WINCH; stty size; while :; do sleep 0.05; done")
                           .pty({.rows = 10, .cols = 20})
                           .start();
    read_until(p, "10 20\r\n");
    p.resize_terminal({.rows = 50, .cols = 132});
    std::string seen = p.read_terminal(10s);
    CommandResult r = p.wait();
    EXPECT_EQ(r.exit_code, 4) << r.status_text();
    EXPECT_EQ(seen + r.captured_stdout, "50 132\r\n");
}

TEST_F(CommandPtyTest, ATerminalServedFromAnotherThreadWhileWaitRuns) {
    CommandProcess p = sh("read -r line; echo \"got:$line\"; read -r line; echo \"got:$line\"").pty().start();
    std::thread waiter;
    std::optional<CommandResult> result;
    waiter = std::thread([&] { result = p.wait(); });
    p.write_terminal("first\n");
    std::string seen = read_until(p, "got:first\r\n");
    p.write_terminal("second\n");
    waiter.join();
    ASSERT_TRUE(result.has_value());
    EXPECT_TRUE(result->success()) << result->status_text();
    EXPECT_EQ(seen + result->captured_stdout, "first\r\ngot:first\r\nsecond\r\ngot:second\r\n");
    // After the end: nothing more to read, and writing or resizing does nothing.
    EXPECT_EQ(p.read_terminal(10ms), "");
    p.write_terminal("ignored\n");
    p.resize_terminal({.rows = 1, .cols = 1});
}

TEST_F(CommandPtyTest, LargeOutputComesBackWhole) {
    CommandResult r = Command({"/usr/bin/seq", "1", "200000"}).pty().run(60s);
    ASSERT_TRUE(r.success()) << r.status_text();
    std::string expected;
    for (int i = 1; i <= 200000; ++i) expected += std::to_string(i) + "\r\n";
    EXPECT_EQ(r.captured_stdout.size(), expected.size());
    EXPECT_TRUE(r.captured_stdout == expected);
}

TEST_F(CommandPtyTest, AStoppedCommandLeavesNothingBehind) {
    CommandProcess p = Command({"/bin/sleep", "30"}).pty().start();
    p.stop();
    CommandResult r = p.wait();
    EXPECT_TRUE(r.stopped);
    expect_gone(r.unit);
    // And a handle dropped while it runs: the unit is stopped without waiting, then collected.
    const std::string name = testing::unique_unit_name();
    { CommandProcess dropped = Command({"/bin/sleep", "30"}).pty().unit_name(name).start(); }
    auto end = std::chrono::steady_clock::now() + 20s;
    while (manager().unit_loaded(name) && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(20ms);
    expect_gone(name);
}

TEST_F(CommandPtyTest, PtyConflictsWithTheStreamSetters) {
    auto expect_conflict = [](auto make, const std::string& property, const std::string& setter) {
        try {
            make();
            ADD_FAILURE() << "accepted pty() with " << setter;
        } catch (const UnsupportedProperty& e) {
            EXPECT_EQ(e.property(), property) << e.what();
            EXPECT_NE(std::string(e.what()).find("pty()"), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find(setter), std::string::npos) << e.what();
        }
    };
    expect_conflict([] { Command({"/bin/true"}).capture_stdout().pty(); }, "StandardOutput", "capture_stdout()");
    expect_conflict([] { Command({"/bin/true"}).stdin_from("x").pty(); }, "StandardInput", "stdin_from()");
    expect_conflict([] { Command({"/bin/true"}).stderr_to_stdout().pty(); }, "StandardError", "stderr_to_stdout()");
    expect_conflict([] { Command({"/bin/true"}).pty().stdin_from_null(); }, "StandardInput", "stdin_from_null()");
    expect_conflict([] { Command({"/bin/true"}).pty().capture_stderr(); }, "StandardError", "capture_stderr()");
    expect_conflict([] { Command({"/bin/true"}).pty().inherit_stdout(); }, "StandardOutput", "inherit_stdout()");
    // Without pty(), the terminal calls are a state error, before anything is asked of systemd.
    CommandProcess p = Command({"/bin/true"}).start();
    EXPECT_THROW(p.read_terminal(10ms), StateError);
    EXPECT_THROW(p.write_terminal("x"), StateError);
    EXPECT_THROW(p.resize_terminal({}), StateError);
    EXPECT_TRUE(p.wait().success());
}

}  // namespace
}  // namespace sdfutures
