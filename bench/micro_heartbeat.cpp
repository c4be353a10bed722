// The cost of sdfutures::this_task::heartbeat() in a task, beside its floors: a relaxed atomic store (what the
// call does to the shared page) and a steady-clock read (what it stores). Measured in this process with the stamp
// pointed at a page of its own (src/heartbeat_page.hpp), as a worker has it, and with none, as outside a pool.
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstdint>

#include "heartbeat_page.hpp"
#include "sdfutures/this_task.hpp"

namespace {

using sdfutures::detail::HeartbeatStamp;

void BM_FloorRelaxedAtomicStore(benchmark::State& state) {
    HeartbeatStamp stamp{0};
    std::int64_t value = 0;
    for (auto _ : state) {
        stamp.store(++value, std::memory_order_relaxed);
        benchmark::ClobberMemory();
    }
    benchmark::DoNotOptimize(stamp.load());
}
BENCHMARK(BM_FloorRelaxedAtomicStore);

void BM_FloorSteadyClockNow(benchmark::State& state) {
    for (auto _ : state) benchmark::DoNotOptimize(std::chrono::steady_clock::now());
}
BENCHMARK(BM_FloorSteadyClockNow);

void BM_HeartbeatInAWorker(benchmark::State& state) {
    alignas(4096) static HeartbeatStamp page{0};
    HeartbeatStamp* before = sdfutures::detail::heartbeat_target();
    sdfutures::detail::set_heartbeat_target(&page);
    for (auto _ : state) {
        sdfutures::this_task::heartbeat();
        benchmark::ClobberMemory();
    }
    sdfutures::detail::set_heartbeat_target(before);
    benchmark::DoNotOptimize(page.load());
}
BENCHMARK(BM_HeartbeatInAWorker);

void BM_HeartbeatOutsideAPool(benchmark::State& state) {
    for (auto _ : state) {
        sdfutures::this_task::heartbeat();
        benchmark::ClobberMemory();
    }
}
BENCHMARK(BM_HeartbeatOutsideAPool);

}  // namespace
