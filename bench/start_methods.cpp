// Figure 8: the three start methods side by side — pool ready (hot and after an idle pause) and a busy pool's
// trivial task rate — each next to the same floor, measured interleaved in the same run; and where exec's extra
// time goes: one execution of this program up to sdfutures::init(), measured on its own.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <numeric>
#include <thread>

#include "figures.hpp"

extern char** environ;

namespace bench {
namespace {

using sdfutures::StartMethod;
using sdfutures::TransientUnitPoolExecutor;

const char* name_of(StartMethod m) {
    switch (m) {
        case StartMethod::fork: return "fork";
        case StartMethod::forkserver: return "forkserver";
        case StartMethod::exec: return "exec";
    }
    return "?";
}

std::function<double()> pool_ready(Context& c, StartMethod method, std::size_t workers) {
    return [&c, method, workers] {
        auto options = pool_options(c, workers);
        options.start_method = method;
        auto t0 = Clock::now();
        TransientUnitPoolExecutor pool({}, options);
        check(pool.submit(&trivial, 1).get() == 2, "pool ready");
        return seconds_between(t0, Clock::now());  // its shutdown is not part of "ready"
    };
}

std::function<double()> after_pause(std::function<double()> measure) {
    return [measure] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        return measure();
    };
}

// posix_spawn of this very program with --exit-after-init: execve, dynamic loading, static constructors and
// init() — what an exec'd fork server costs before it can answer, without systemd's part.
double execution_to_init() {
    char self[] = "/proc/self/exe";
    char flag[] = "--exit-after-init";
    char* argv[] = {self, flag, nullptr};
    auto t0 = Clock::now();
    pid_t pid = -1;
    if (::posix_spawn(&pid, self, nullptr, nullptr, argv, environ) != 0) throw std::runtime_error("posix_spawn");
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "--exit-after-init");
    return seconds_between(t0, Clock::now());
}

}  // namespace

void figure_start_methods(Context& c) {
    const StartMethod methods[] = {StartMethod::fork, StartMethod::forkserver, StartMethod::exec};
    for (std::size_t workers : {std::size_t{1}, std::size_t{2}, std::size_t{8}}) {
        std::vector<std::function<double()>> measures;
        for (StartMethod m : methods) measures.push_back(pool_ready(c, m, workers));
        measures.push_back([&c, workers] { return floor_pool_ready(&c.raw, c.bus_spec, workers); });
        auto samples = interleave(c.config.reps, measures);
        const double floor = median(samples[3]), fork = median(samples[0]);
        for (std::size_t i = 0; i < 3; ++i) {
            const double s = median(samples[i]);
            const bool exec = methods[i] == StartMethod::exec;
            c.report.add(row("8 pool ready, " + std::string(name_of(methods[i])) + ", " + std::to_string(workers) +
                                 " worker" + (workers > 1 ? "s" : ""),
                             format_time(s), format_time(floor), format_ratio(s / floor),
                             exec ? "<= 1.50x fork's" : "", exec ? at_most(s / fork, 1.5) : Verdict::info));
            c.report.samples("pool ready " + std::to_string(workers) + " " + name_of(methods[i]), samples[i], "s");
        }
        c.report.samples("pool ready " + std::to_string(workers) + " floor (fig 8)", samples[3], "s");
    }
    {
        std::vector<std::function<double()>> measures;
        for (StartMethod m : methods) measures.push_back(after_pause(pool_ready(c, m, 2)));
        measures.push_back(after_pause([&c] { return floor_pool_ready(&c.raw, c.bus_spec, 2); }));
        auto samples = interleave(c.config.reps, measures);
        for (std::size_t i = 0; i < 3; ++i)
            c.report.add(row("8   (pool ready, " + std::string(name_of(methods[i])) + ", 2 workers, after 300 ms idle)",
                             format_time(median(samples[i])), format_time(median(samples[3])),
                             format_ratio(median(samples[i]) / median(samples[3])), "", Verdict::info));
    }
    auto exec_cost = repeat(c.config.reps, execution_to_init);
    c.report.add(row("8   (one execution of this program up to init(), for exec)", format_time(median(exec_cost)), "",
                     "", "", Verdict::info));

    const std::size_t k = c.config.tasks;
    std::vector<int> inputs(k);
    std::iota(inputs.begin(), inputs.end(), 0);
    const long long expected = static_cast<long long>(k) * static_cast<long long>(k + 1) / 2;
    RawWorkers raw(2);
    std::vector<std::unique_ptr<TransientUnitPoolExecutor>> pools;
    std::vector<std::function<double()>> measures;
    for (StartMethod m : methods) {
        auto options = pool_options(c, 2);
        options.start_method = m;
        pools.push_back(std::make_unique<TransientUnitPoolExecutor>(sdfutures::Properties{}, options));
        measures.push_back([&, pool = pools.back().get()] {
            auto t0 = Clock::now();
            std::vector<int> results = pool->map(&trivial, inputs);
            double rate = static_cast<double>(k) / seconds_between(t0, Clock::now());
            check(std::accumulate(results.begin(), results.end(), 0LL) == expected, "map");
            return rate;
        });
    }
    measures.push_back([&] { return static_cast<double>(k) / raw.run(k, 8); });
    auto samples = interleave(c.config.reps, measures);
    const double fork_rate = median(samples[0]);
    for (std::size_t i = 0; i < 3; ++i) {
        const double r = median(samples[i]);
        c.report.add(row("8 trivial tasks/s, map, 2 workers, " + std::string(name_of(methods[i])), format_rate(r),
                         format_rate(median(samples[3])) + " pipelined", format_ratio(r / median(samples[3])),
                         i == 2 ? "within 10% of fork's" : "",
                         i == 2 ? at_least(r / fork_rate, 0.9) : Verdict::info));
    }
}

}  // namespace bench
