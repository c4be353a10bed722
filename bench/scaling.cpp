// Figure 9, scaling: how pool start-up and worker memory grow with the pool (1 to 64 workers), how the trivial
// task rate grows with workers (1 to 8, next to the pipelined raw floor with as many workers), and what a
// long-lived owner keeps after a million tasks.
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <numeric>
#include <thread>
#include <vector>

#include "figures.hpp"

namespace bench {

using sdfutures::TransientUnitPoolExecutor;

namespace {

std::string workers_label(std::size_t n) { return std::to_string(n) + " worker" + (n > 1 ? "s" : ""); }

void pool_size(Context& c, std::size_t workers) {
    std::vector<double> uss, pss;
    auto sdf = [&] {
        auto t0 = Clock::now();
        TransientUnitPoolExecutor pool({}, pool_options(c, workers));
        check(pool.submit(&trivial, 1).get() == 2, "scaling: pool ready");
        const double elapsed = seconds_between(t0, Clock::now());
        double u = 0, p = 0;
        for (pid_t worker : pool.worker_pids()) {
            const Memory m = memory_of(worker);
            u += m.uss;
            p += m.pss;
        }
        uss.push_back(u / static_cast<double>(workers));
        pss.push_back(p / static_cast<double>(workers));
        return elapsed;
    };
    auto floor = [&] { return floor_pool_ready(&c.raw, c.bus_spec, workers); };
    // Big pools are slow to make: fewer repetitions, still interleaved with their floor.
    const int reps = workers >= 16 ? std::max(3, c.config.reps / 2) : c.config.reps;
    auto [s, f] = interleave(reps, sdf, floor);
    const double ratio = median(s) / median(f);
    c.report.add(row("9 pool ready, " + workers_label(workers), format_time(median(s)), format_time(median(f)),
                     format_ratio(ratio), workers == 8 ? "<= 1.30x" : "",
                     workers == 8 ? at_most(ratio, 1.3) : Verdict::info));
    c.report.add(row("9   (memory per worker: USS, PSS), " + workers_label(workers), format_bytes(median(uss)),
                     format_bytes(median(pss)) + " PSS", "", "", Verdict::info));
    c.report.samples("scaling ready " + workers_label(workers) + " sdfutures", s, "s");
    c.report.samples("scaling ready " + workers_label(workers) + " floor", f, "s");
}

void task_rate(Context& c, std::size_t workers) {
    const std::size_t k = c.config.tasks;
    std::vector<int> inputs(k);
    std::iota(inputs.begin(), inputs.end(), 0);
    TransientUnitPoolExecutor pool({}, pool_options(c, workers));
    RawWorkers raw(workers);
    auto map = [&] {
        auto t0 = Clock::now();
        std::vector<int> results = pool.map(&trivial, inputs);
        const double rate = static_cast<double>(k) / seconds_between(t0, Clock::now());
        check(results.size() == k && results.back() == static_cast<int>(k), "scaling: map");
        return rate;
    };
    auto pipelined = [&] { return static_cast<double>(k) / raw.run(k, 8); };
    auto [m, p] = interleave(c.config.reps, map, pipelined);
    c.report.add(row("9 trivial tasks/s, map, " + workers_label(workers), format_rate(median(m)),
                     format_rate(median(p)) + " pipelined", format_ratio(median(m) / median(p)), "", Verdict::info));
    c.report.samples("scaling map " + workers_label(workers), m, "tasks/s");
    c.report.samples("scaling pipelined " + workers_label(workers), p, "tasks/s");
}

// The owner's RSS before and after `total` trivial tasks through one pool, in maps of 100,000: what a service
// that keeps a pool for days holds. Measured after malloc_trim, so that freed heap the allocator keeps does not
// count (the untrimmed figure is in the notes).
void long_lived_owner(Context& c) {
    const std::size_t total = c.config.short_mode ? 200'000 : 1'000'000;
    const std::size_t batch = 100'000;
    std::vector<int> inputs(batch, 1);
    TransientUnitPoolExecutor pool({}, pool_options(c, 2));
    pool.map(&trivial, inputs);  // the pool's own steady state: its buffers and threads exist
    ::malloc_trim(0);
    const double before = memory_of(::getpid()).rss;
    for (std::size_t done = 0; done < total; done += batch) {
        std::vector<int> results = pool.map(&trivial, inputs);
        check(results.size() == batch && results.front() == 2, "scaling: a million tasks");
    }
    const double untrimmed = memory_of(::getpid()).rss;
    ::malloc_trim(0);
    const double after = memory_of(::getpid()).rss;
    c.report.add(row("9 owner RSS after " + std::to_string(total / 1000) + " k tasks (2 workers)",
                     format_bytes(after), format_bytes(before) + " before", format_ratio(after / before), "",
                     Verdict::info));
    c.report.note("9 owner RSS after " + std::to_string(total / 1000) + " k tasks, before malloc_trim: " +
                  format_bytes(untrimmed));
}

}  // namespace

void figure_scaling(Context& c) {
    const std::vector<std::size_t> sizes = c.config.short_mode ? std::vector<std::size_t>{1, 2}
                                                                : std::vector<std::size_t>{1, 2, 4, 8, 16, 32, 64};
    for (std::size_t workers : sizes) pool_size(c, workers);
    const std::vector<std::size_t> rates = c.config.short_mode ? std::vector<std::size_t>{1, 2}
                                                                : std::vector<std::size_t>{1, 2, 4, 8};
    for (std::size_t workers : rates) task_rate(c, workers);
    long_lived_owner(c);
}

}  // namespace bench
