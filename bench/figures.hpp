#pragma once
// The nine figures of the benchmark. Each measures sdfutures and its floor in the same process, interleaved,
// and adds its rows (and breakdown notes) to the report.

#include <sys/types.h>

#include <string>

#include <sdfutures/bus.hpp>
#include <sdfutures/pool.hpp>

#include "floors.hpp"
#include "harness.hpp"

namespace bench {

struct Context {
    Config config;
    Report report;
    std::string bus_spec;     // SDFUTURES_BUS
    sdfutures::Bus bus;       // shared by the measurements that pass ProcessOptions/PoolOptions::bus
    RawSystemd& raw;          // the floors' own connection
};

void figure_pool_ready(Context& c);       // 1
void figure_task_throughput(Context& c);  // 2
void figure_result_bandwidth(Context& c); // 3
void figure_process(Context& c);          // 4
void figure_cpu_quota(Context& c);        // 5
void figure_worker_memory(Context& c);    // 6
void figure_python(Context& c);           // 7
void figure_start_methods(Context& c);    // 8 (start_methods.cpp)
void figure_scaling(Context& c);          // 9 (scaling.cpp)

// What the figures share.
Row row(std::string figure, std::string sdf, std::string floor, std::string ratio, std::string target, Verdict v);
Verdict at_most(double ratio, double limit);
Verdict at_least(double value, double limit);
sdfutures::PoolOptions pool_options(Context& c, std::size_t workers);
void check(bool ok, const char* what);
int trivial(int x);

// A process's memory from /proc/PID/smaps_rollup and status, in bytes.
struct Memory {
    double uss = 0;  // Private_Clean + Private_Dirty + Private_Hugetlb
    double rss = 0;
    double pss = 0;
    double page_tables = 0;
};
Memory memory_of(pid_t pid);

}  // namespace bench
