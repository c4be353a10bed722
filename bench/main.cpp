// sdfutures_bench: every cost of sdfutures next to its physical floor, measured by this binary in the same run.
// Run it where a systemd manager is reachable: scripts/with-systemd build/bench/sdfutures_bench [options].
// See bench/README.md.

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>

#include <sdfutures/bus.hpp>
#include <sdfutures/init.hpp>

#include "figures.hpp"

namespace {

void usage(std::ostream& out) {
    out << "usage: sdfutures_bench [--short] [--reps N] [--only LIST] [--samples] [--spin-us N]\n"
           "  --short      CI mode: 2 repetitions, small sizes, 1 s quota runs; checks only that it completes\n"
           "               (also SDFUTURES_BENCH_SHORT=1)\n"
           "  --reps N     repetitions per figure (default 7; the table shows medians)\n"
           "  --only LIST  figures to run, e.g. 1,3 (1 pool ready, 2 task throughput, 3 result bandwidth,\n"
           "               4 run(), 5 CPU quota, 6 worker memory, 7 Python, 8 start methods,\n"
           "               9 scaling)\n"
           "  --samples    print every sample after the table\n"
           "  --spin-us N  PoolOptions::dispatcher_spin of the measured pools, in µs (default: the library's)\n"
           "Needs SDFUTURES_BUS: run it under scripts/with-systemd.\n";
}

bench::Config parse(int argc, char** argv) {
    bench::Config c;
    bool reps_given = false;
    const char* env = std::getenv("SDFUTURES_BENCH_SHORT");
    c.short_mode = env && *env && std::strcmp(env, "0") != 0;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                usage(std::cerr);
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--short") {
            c.short_mode = true;
        } else if (a == "--reps") {
            c.reps = std::max(1, std::atoi(value().c_str()));
            reps_given = true;
        } else if (a == "--only") {
            std::string list = value();
            for (char ch : list)
                if (ch >= '1' && ch <= '9') c.only.insert(ch - '0');
        } else if (a == "--spin-us") {
            c.dispatcher_spin = std::chrono::microseconds(std::max(0, std::atoi(value().c_str())));
        } else if (a == "--samples") {
            c.show_samples = true;
        } else if (a == "--help" || a == "-h") {
            usage(std::cout);
            std::exit(0);
        } else {
            usage(std::cerr);
            std::exit(2);
        }
    }
    if (c.short_mode) {
        if (!reps_given) c.reps = 2;
        c.tasks = 2'000;
        c.latency_calls = 200;
        c.big_bytes = 4u << 20;
        c.quota_seconds = 1.0;
        c.python_tasks = 300;
        c.chunked_tasks = 20'000;
        c.big_owner_bytes = 64u << 20;
    }
    return c;
}

}  // namespace

int main(int argc, char** argv) {
    // First: the copy of this program systemd executes for a StartMethod::exec pool serves it from here.
    sdfutures::init(argc, argv);
    if (argc == 2 && std::string(argv[1]) == "--exit-after-init") return 0;  // figure 8's cost of an execution
    bench::Config config = parse(argc, argv);
    const char* spec = std::getenv("SDFUTURES_BUS");
    if (!spec || !*spec) {
        std::cerr << "sdfutures_bench: SDFUTURES_BUS is not set; run it as scripts/with-systemd " << argv[0]
                  << " (which finds or starts a systemd manager and sets it)\n";
        return 2;
    }
    try {
        bench::RawSystemd raw(spec);
        bench::Context c{config, {}, spec, sdfutures::Bus::automatic(), raw};

        std::cout << "sdfutures benchmark: medians of " << config.reps << " repetitions per figure"
                  << (config.short_mode ? " (SHORT mode: small sizes, for CI; the numbers mean nothing)" : "")
                  << "\n\n";
        for (auto& [key, value] : bench::machine_description()) std::cout << "  " << key << ": " << value << '\n';
        std::cout << "  systemd: " << raw.version() << " (SDFUTURES_BUS=" << spec << ")\n\n" << std::flush;

        struct Figure {
            int number;
            const char* name;
            void (*run)(bench::Context&);
        };
        const Figure figures[] = {{1, "pool ready", bench::figure_pool_ready},
                                  {2, "trivial task throughput", bench::figure_task_throughput},
                                  {3, "result bandwidth", bench::figure_result_bandwidth},
                                  {4, "run() and TransientUnitProcess", bench::figure_process},
                                  {5, "CPU quota fidelity", bench::figure_cpu_quota},
                                  {6, "idle worker memory", bench::figure_worker_memory},
                                  {7, "Python's ProcessPoolExecutor", bench::figure_python},
                                  {8, "start methods", bench::figure_start_methods},
                                  {9, "scaling", bench::figure_scaling}};
        for (const Figure& f : figures) {
            if (!config.wants(f.number)) continue;
            auto t0 = bench::Clock::now();
            std::cerr << "[" << f.number << "] " << f.name << " ..." << std::flush;
            f.run(c);
            std::cerr << " " << bench::format_time(bench::seconds_between(t0, bench::Clock::now())) << '\n';
        }
        {
            std::ifstream load("/proc/loadavg");
            std::string l1, l5, l15;
            load >> l1 >> l5 >> l15;
            std::cout << "load average at the end: " << l1 << " " << l5 << " " << l15 << "\n";
        }
        std::cout << "floor: the same work with raw sdbus-c++/fork/socketpair calls, measured interleaved with the "
                     "sdfutures figure;\nratio: sdfutures / floor (times), or achieved fraction of the floor "
                     "(rates, bandwidths);\nfigure 7 compares with Python's ProcessPoolExecutor in the floor column."
                     "\n\n";
        c.report.print_table(std::cout);
        c.report.print_notes(std::cout, config.show_samples);
        std::cout << "\n" << c.report.misses() << " target(s) missed"
                  << (config.short_mode ? " (not meaningful in SHORT mode)" : "") << "\n";
    } catch (const std::exception& e) {
        std::cerr << "\nsdfutures_bench: " << e.what() << '\n';
        return 1;
    }
    return 0;
}
