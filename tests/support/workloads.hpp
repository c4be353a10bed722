#pragma once
// Work the tests run inside units: CPU burners for quota checks and a memory hog for MemoryMax checks.

#include <signal.h>
#include <time.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "sdfutures/error.hpp"

namespace sdfutures::testing {

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
