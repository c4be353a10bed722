// A service for tests/daemon_test.cpp, run by the private manager in a transient unit (Type=notify,
// NotifyAccess=main): it uses <sdfutures/daemon.hpp> the way a service would, and tells the test what it saw
// through its STATUS= text, or through the FIFOs of a directory the test made (DIR/started it writes one byte
// to at each step, DIR/go it reads one byte from before the next). It ends when the test stops its unit.
//
//   notify_helper ready-when-told DIR   STATUS=waiting, then started, then waits for go; READY=1 STATUS=serving
//   notify_helper report                READY=1 with STATUS=watchdog=<usec or none> booted=<yes|no>
//   notify_helper keep-pinging          a Watchdog, READY=1
//   notify_helper stall                 a Watchdog, READY=1, then stall()
//   notify_helper stall-resume DIR      a Watchdog, READY=1, stall(), started, waits for go, resume(), started
//   notify_helper serve                 answers one connection on its socket named "greeting" with what
//                                       listen_fds() gave: "<name>:<fd> ...\n"
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <string>

#include "sdfutures/daemon.hpp"

// As a user would write it: `daemon::` then names sdfutures::daemon, never libc's daemon(3), since a name before
// `::` is looked up among namespaces and types only.
using namespace sdfutures;  // NOLINT(google-build-using-namespace)

namespace {

[[noreturn]] void fail(const std::string& why) {
    // The test reads it from the unit's StatusText, or sees the unit fail.
    try {
        daemon::notify_status("helper failed: " + why);
        daemon::notify_barrier();
    } catch (...) {
    }
    std::fprintf(stderr, "notify_helper: %s\n", why.c_str());
    std::_Exit(1);
}

void write_byte(const std::string& fifo) {
    int fd = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 || ::write(fd, "x", 1) != 1) fail("cannot write " + fifo);
    ::close(fd);
}

// Opens DIR/go once, before the first step, so that a byte the test writes is never lost.
int open_go(const std::string& dir) {
    int fd = ::open((dir + "/go").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open " + dir + "/go");
    return fd;
}

void read_byte(int fd) {
    char c = 0;
    if (::read(fd, &c, 1) != 1) fail("the test closed DIR/go");
}

[[noreturn]] void wait_to_be_stopped() {
    for (;;) ::pause();
}

[[noreturn]] void ready_when_told(const std::string& dir) {
    int go = open_go(dir);
    daemon::notify_status("waiting");
    daemon::notify_barrier();  // the manager has the status before the test looks for it
    write_byte(dir + "/started");
    read_byte(go);
    daemon::notify(daemon::Notification().ready().status("serving"));
    wait_to_be_stopped();
}

[[noreturn]] void report() {
    auto interval = daemon::watchdog_enabled();
    std::string status = "watchdog=" + (interval ? std::to_string(interval->count()) : std::string("none"));
    status += std::string(" booted=") + (daemon::booted() ? "yes" : "no");
    daemon::notify_ready(status);
    wait_to_be_stopped();
}

[[noreturn]] void watchdog(const char* mode, const std::string& dir) {
    daemon::Watchdog watchdog;
    if (!watchdog.active()) fail("no watchdog: WATCHDOG_USEC is not set for this process");
    daemon::notify_ready("pinging every " + std::to_string(watchdog.interval()->count() / 2) + " us");
    if (std::string(mode) == "stall") watchdog.stall();
    if (std::string(mode) == "stall-resume") {
        int go = open_go(dir);
        watchdog.stall();
        daemon::notify_barrier();  // every ping sent before stall() has reached the manager
        write_byte(dir + "/started");
        read_byte(go);
        watchdog.resume();
        daemon::notify_barrier();
        write_byte(dir + "/started");
    }
    wait_to_be_stopped();
}

[[noreturn]] void serve() {
    auto passed = daemon::listen_fds();
    std::string answer;
    for (const auto& fd : passed) answer += fd.name + ":" + std::to_string(fd.fd) + " ";
    if (!answer.empty()) answer.back() = '\n';
    auto greeting = daemon::listen_fds_named("greeting");
    if (greeting.size() != 1) fail("no single socket named greeting; passed: " + answer);
    int client = ::accept4(greeting.front(), nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0 || ::write(client, answer.data(), answer.size()) != static_cast<ssize_t>(answer.size()))
        fail("cannot answer the test's connection");
    ::close(client);
    wait_to_be_stopped();
}

}  // namespace

int main(int argc, char** argv) {
    std::string mode = argc > 1 ? argv[1] : "";
    std::string dir = argc > 2 ? argv[2] : "";
    try {
        if (mode == "ready-when-told") ready_when_told(dir);
        if (mode == "report") report();
        if (mode == "keep-pinging" || mode == "stall" || mode == "stall-resume") watchdog(mode.c_str(), dir);
        if (mode == "serve") serve();
    } catch (const std::exception& e) {
        fail(e.what());
    }
    fail("unknown mode '" + mode + "'");
}
