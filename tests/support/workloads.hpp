#pragma once
// Work the tests run inside units: CPU burners for quota checks, a memory hog for MemoryMax checks, a service and
// a forked child that only wait.

#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "sdfutures/error.hpp"
#include "sdfutures/properties.hpp"

namespace sdfutures::testing {

// A transient service that only sleeps, collected when it stops. Type=exec: the start job ends once the main
// process has exec'd sleep, so its command line is real by then.
inline Properties sleeping_service() {
    Properties p;
    p.set("Type", "exec").set("ExecStart", "/bin/sleep infinity").set("CollectMode", "inactive-or-failed");
    return p;
}

// A forked child that waits to be killed. A test that expects it killed reaps it with wait(); otherwise the
// guard kills and reaps it, so that no test leaves a process behind.
class PausedChild {
public:
    PausedChild() : pid_(::fork()) {
        if (pid_ == 0) {
            for (;;) ::pause();
        }
    }
    ~PausedChild() { kill_and_reap(); }
    PausedChild(const PausedChild&) = delete;
    PausedChild& operator=(const PausedChild&) = delete;

    pid_t pid() const { return pid_; }
    uint32_t upid() const { return static_cast<uint32_t>(pid_); }
    // Waits for it to end (killed by someone else) and returns its wait status.
    int wait() {
        if (pid_ <= 0) return -1;  // the fork failed, or it was reaped already: never reap someone else's child
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return status;
    }
    void kill_and_reap() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGKILL);
        wait();
    }

private:
    pid_t pid_;
};

inline double process_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Spins for `wall_ms` of wall-clock time and returns the CPU time it got meanwhile: under a quota, less.
inline double burn(int wall_ms) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(wall_ms);
    double start = process_cpu_seconds();
    volatile uint64_t sink = 0;
    while (std::chrono::steady_clock::now() < end)
        for (int i = 0; i < 10000; ++i) sink = sink + static_cast<uint64_t>(i);
    return process_cpu_seconds() - start;
}

// Touches `mib` MiB one MiB at a time, so a MemoryMax= below that is hit for real.
inline std::size_t hog_memory(int mib) {
    std::vector<std::unique_ptr<char[]>> hog;
    for (int i = 0; i < mib; ++i) {
        hog.emplace_back(new char[1 << 20]);
        std::memset(hog.back().get(), 1, 1 << 20);
    }
    return hog.size();
}

// Starts `process` (whose task hogs memory past its unit's MemoryMax=) and expects the OOM killer's SIGKILL,
// named as such in result()'s error.
template <class Process>
void expect_killed_by_oom(Process& process) {
    process.start();
    try {
        process.result();
        ADD_FAILURE() << "the task allocated past MemoryMax= and survived";
    } catch (const ProcessDied& e) {
        EXPECT_EQ(e.exit_status(), -SIGKILL) << e.what();
        EXPECT_NE(std::string(e.what()).find("SIGKILL"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("OOM"), std::string::npos) << e.what();
    }
    EXPECT_EQ(process.exit_status(), -SIGKILL);
}

}  // namespace sdfutures::testing
