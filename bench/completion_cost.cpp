// sdfutures_completion_bench: what completion costs per task. The same trivial tasks (int f(int)) through one
// pool, four ways, interleaved (bench::interleave) so that the machine's drifting load lands on all alike:
//
//   plain        schedule() every task, then future().get() each               (the floor: no completion use)
//   on_done      the same with one on_done() callback per task (an atomic increment)
//   as_completed the same, then the results taken through as_completed() instead of in order
//   wait_any     informational: wait_any() over a window of 64 tasks, refilled as each finishes
//
// Prints the median microseconds per task of each, and the difference to `plain`.
//
//   scripts/with-systemd build/bench/sdfutures_completion_bench [--short] [--reps N]
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "sdfutures/sdfutures.hpp"

namespace {

int trivial(int x) { return x + 1; }

using sdfutures::Task;
using sdfutures::TransientUnitPoolExecutor;

std::vector<Task<int>> schedule_all(TransientUnitPoolExecutor& pool, std::size_t n) {
    std::vector<Task<int>> tasks;
    tasks.reserve(n);
    for (std::size_t i = 0; i < n; ++i) tasks.push_back(pool.schedule(&trivial, static_cast<int>(i)));
    return tasks;
}

double per_task_us(bench::Clock::time_point t0, std::size_t n) {
    return bench::seconds_between(t0, bench::Clock::now()) * 1e6 / static_cast<double>(n);
}

double plain(TransientUnitPoolExecutor& pool, std::size_t n) {
    const auto t0 = bench::Clock::now();
    auto tasks = schedule_all(pool, n);
    long sum = 0;
    for (auto& t : tasks) sum += t.future().get();
    if (sum == 0) std::puts("");
    return per_task_us(t0, n);
}

double with_on_done(TransientUnitPoolExecutor& pool, std::size_t n) {
    std::atomic<std::size_t> calls{0};
    const auto t0 = bench::Clock::now();
    auto tasks = schedule_all(pool, n);
    for (auto& t : tasks) t.on_done([&calls] { calls.fetch_add(1, std::memory_order_relaxed); });
    long sum = 0;
    for (auto& t : tasks) sum += t.future().get();
    const double us = per_task_us(t0, n);
    if (sum == 0) std::puts("");
    // A future is ready just before its callbacks run: `calls` must outlive the last of them.
    while (calls.load() < n) std::this_thread::yield();
    return us;
}

double through_as_completed(TransientUnitPoolExecutor& pool, std::size_t n) {
    const auto t0 = bench::Clock::now();
    auto tasks = schedule_all(pool, n);
    long sum = 0;
    for (Task<int>& t : sdfutures::as_completed(tasks)) sum += t.future().get();
    if (sum == 0) std::puts("");
    return per_task_us(t0, n);
}

double through_wait_any(TransientUnitPoolExecutor& pool, std::size_t n) {
    constexpr std::size_t kWindow = 64;
    const auto t0 = bench::Clock::now();
    std::vector<Task<int>> window = schedule_all(pool, kWindow);
    std::size_t submitted = kWindow, finished = 0;
    while (finished < n) {
        auto i = sdfutures::wait_any(window);
        window[*i].future().get();
        ++finished;
        if (submitted < n) {
            window[*i] = pool.schedule(&trivial, static_cast<int>(submitted++));
        } else {
            window.erase(window.begin() + static_cast<std::ptrdiff_t>(*i));
        }
    }
    return per_task_us(t0, n);
}

}  // namespace

int main(int argc, char** argv) {
    bool short_mode = false;
    int reps = 7;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--short") == 0) short_mode = true;
        else if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::stoi(argv[++i]);
    }
    const std::size_t n = short_mode ? 2'000 : 50'000;
    if (short_mode) reps = 1;
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    auto samples = bench::interleave(reps, {[&] { return plain(pool, n); }, [&] { return with_on_done(pool, n); },
                                            [&] { return through_as_completed(pool, n); },
                                            [&] { return through_wait_any(pool, n / 10); }});
    const char* names[] = {"plain (schedule, get)", "one on_done per task", "as_completed", "wait_any, 64 in flight"};
    const double floor = bench::median(samples[0]);
    std::printf("%zu trivial tasks per sample (wait_any: %zu), 1 worker, %d interleaved repetitions\n", n, n / 10, reps);
    std::printf("%-26s %12s %12s\n", "", "us/task", "vs plain");
    for (std::size_t i = 0; i < samples.size(); ++i) {
        const double m = bench::median(samples[i]);
        std::printf("%-26s %12.3f %+11.3f\n", names[i], m, m - floor);
    }
    return 0;
}
