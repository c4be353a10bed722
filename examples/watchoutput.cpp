// A watchdog wrapper: runs a program and tells systemd it is alive each time the program writes output. A program
// that goes silent for longer than WatchdogSec= is then killed by the manager (WatchdogSignal=, SIGABRT by default;
// the unit's Result= is "watchdog") and, with Restart=on-watchdog, started again. The program's stdout and stderr
// go on to the wrapper's own; its exit status becomes the wrapper's.
//
//     systemd-run -p Type=notify -p NotifyAccess=main -p WatchdogSec=30 -p Restart=on-watchdog
//                 build/examples/watchoutput -- /usr/bin/some-chatty-daemon --verbose
//
// The program is spawned and read with Boost.Process; both streams are read by asio on one thread, so neither can
// fill its pipe and block the program while the wrapper waits on the other.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/process.hpp>

#include "sdfutures/daemon.hpp"

namespace {

namespace asio = boost::asio;
namespace bp = boost::process;
namespace daemon = sdfutures::daemon;
using Clock = std::chrono::steady_clock;

// Whether to ping now: a chatty program would otherwise cost a datagram to the manager for every read. A quarter of
// the interval apart leaves the manager's count-down three quarters of it in hand.
class Pinger {
public:
    Pinger() : interval_(daemon::watchdog_enabled()) {}
    void output_seen() {
        const auto now = Clock::now();
        if (!interval_ || (last_ && now - *last_ < *interval_ / 4)) return;
        daemon::notify_watchdog();
        last_ = now;
    }

private:
    std::optional<std::chrono::microseconds> interval_;  // none: nobody watches us, nothing to ping
    std::optional<Clock::time_point> last_;
};

// Everything of `data` to descriptor `fd`. A write that fails (our reader went away) loses only the forwarding:
// the program's output still counts as a sign of life, and its pipe must still be drained.
void write_all(int fd, const char* data, std::size_t size) {
    while (size > 0) {
        const ssize_t n = ::write(fd, data, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        data += n;
        size -= static_cast<std::size_t>(n);
    }
}

// Reads one of the program's streams until its end, forwarding each piece to `fd` and counting it as output.
class Forwarder {
public:
    Forwarder(asio::io_context& io, int fd, Pinger& pinger) : pipe_(io), fd_(fd), pinger_(pinger) {}
    bp::async_pipe& pipe() { return pipe_; }
    void read() {
        pipe_.async_read_some(asio::buffer(buffer_), [this](const boost::system::error_code& error, std::size_t n) {
            if (n > 0) {
                write_all(fd_, buffer_.data(), n);
                pinger_.output_seen();
            }
            if (!error) read();  // the end of the stream (asio::error::eof) ends this chain of reads
        });
    }

private:
    bp::async_pipe pipe_;
    int fd_;
    Pinger& pinger_;
    std::array<char, 4096> buffer_{};
};

// The wrapper's own end, as the program's: its exit code, or death by the same signal (so that the manager reports
// "signal" or "core-dump" as for the program itself).
int end_like(int status) {
    if (WIFSIGNALED(status)) {
        const int signal = WTERMSIG(status);
        ::signal(signal, SIG_DFL);
        ::raise(signal);
        return 128 + signal;  // a signal that does not end a process by default
    }
    return WEXITSTATUS(status);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3 || std::strcmp(argv[1], "--") != 0) {
        std::cerr << "usage: watchoutput -- PROGRAM [ARGUMENT...]\n";
        return 2;
    }
    try {
        const std::string program = argv[2];
        const std::vector<std::string> arguments(argv + 3, argv + argc);
        // A name without '/' is looked up in $PATH, as a shell would.
        const auto path = program.find('/') == std::string::npos ? bp::search_path(program) : boost::filesystem::path(program);
        if (path.empty()) {
            std::cerr << "watchoutput: " << program << ": not found in $PATH\n";
            return 127;
        }

        asio::io_context io;
        Pinger pinger;
        Forwarder out(io, STDOUT_FILENO, pinger), err(io, STDERR_FILENO, pinger);
        bp::child child(path, bp::args(arguments), bp::std_out > out.pipe(), bp::std_err > err.pipe());
        // Ready once the program runs: a Type=notify unit is "active" from here, and the watchdog counts from here.
        daemon::notify_ready();
        out.read();
        err.read();
        io.run();  // until both streams have ended: the program exited (or closed them, and then it is silent)
        child.wait();
        return end_like(child.native_exit_code());
    } catch (const std::exception& e) {  // bp::process_error (the program could not be started), SystemError
        std::cerr << "watchoutput: " << e.what() << "\n";
        return 1;
    }
}
