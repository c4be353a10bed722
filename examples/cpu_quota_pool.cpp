// Six CPU burners in a pool whose unit has CPUQuota=25%: however many workers burn, the unit as a whole gets
// a quarter of one CPU. Prints the unit's CPU share live.
//
//     sudo scripts/with-systemd build/examples/cpu_quota_pool
#include <sys/types.h>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

#include "sdfutures/sdfutures.hpp"

namespace {

double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Burns `cpu_seconds` of CPU time (not wall time: under the quota that takes four times as long).
double burn(double cpu_seconds) {
    double start = thread_cpu_seconds();
    volatile unsigned long sink = 0;
    while (thread_cpu_seconds() - start < cpu_seconds)
        for (int i = 0; i < 100000; ++i) sink = sink + static_cast<unsigned long>(i);
    return thread_cpu_seconds() - start;
}

// Nanoseconds a process has run on a CPU, from the scheduler's own accounting.
uint64_t schedstat_ns(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/schedstat");
    uint64_t ns = 0;
    in >> ns;
    return ns;
}

}  // namespace

int main() {
    try {
        sdfutures::TransientUnitPoolExecutor pool({{"CPUQuota", "25%"}, {"Description", "sdfutures demo: six burners"}},
                                                  {.max_workers = 2});
        std::cout << "unit " << pool.unit().name() << " (CPUQuota=25%), " << pool.max_workers() << " workers\n";

        // CPUUsageNSec is systemd's figure; with cgroup v1 and cpuacct mounted apart from cpu, systemd 252
        // reports it as not set. The workers' own scheduler time is exact either way.
        bool systemd_counts = pool.unit().cpu_usage_nsec().has_value();
        std::cout << "CPU usage from: "
                  << (systemd_counts ? "systemd's CPUUsageNSec"
                                     : "the workers' /proc/PID/schedstat (this manager reports CPUUsageNSec as not set)")
                  << "\n";

        std::vector<std::future<double>> burners;
        for (int i = 0; i < 6; ++i) burners.push_back(pool.submit(&burn, 0.25));

        auto usage = [&]() -> uint64_t {
            if (systemd_counts) return pool.unit().cpu_usage_nsec().value_or(0);
            uint64_t total = 0;
            for (pid_t pid : pool.worker_pids()) total += schedstat_ns(pid);
            return total;
        };
        auto all_done = [&] {
            for (auto& f : burners)
                if (f.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return false;
            return true;
        };
        auto t0 = std::chrono::steady_clock::now();
        uint64_t cpu0 = usage();
        auto last = t0;
        uint64_t last_cpu = cpu0;
        while (!all_done()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1000));
            auto now = std::chrono::steady_clock::now();
            uint64_t cpu = usage();
            double wall = std::chrono::duration<double>(now - last).count();
            double share = static_cast<double>(cpu - last_cpu) / 1e9 / wall;
            std::printf("t=%4.1fs  unit CPU share %5.1f%% of one CPU\n",
                        std::chrono::duration<double>(now - t0).count(), 100 * share);
            std::fflush(stdout);
            last = now;
            last_cpu = cpu;
        }
        double burned = 0;
        for (auto& f : burners) burned += f.get();
        double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("six burners used %.2f s of CPU in %.2f s: %.1f%% of one CPU overall (quota 25%%)\n", burned, wall,
                    100 * burned / wall);
    } catch (const sdfutures::Error& e) {
        std::cerr << "cpu_quota_pool: " << e.what() << "\n";
        return 1;
    }
}
