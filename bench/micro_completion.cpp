// The in-process cost of a task's completion (src/task_state.hpp, src/completion.cpp), without a pool: what
// settling a task adds to the dispatcher's work per task, with nothing waiting on it, one on_done() callback, and
// one as_completed()/wait_any() watch (pushed, then popped by the waiting side).
#include <benchmark/benchmark.h>

#include <memory>

#include "task_state.hpp"

namespace {

using sdfutures::detail::TaskState;

void BM_CompleteNothingWaiting(benchmark::State& state) {
    for (auto _ : state) {
        auto task = std::make_shared<TaskState>();
        task->complete(true);
        benchmark::DoNotOptimize(task->done());
    }
}
BENCHMARK(BM_CompleteNothingWaiting);

void BM_CompleteOneCallback(benchmark::State& state) {
    int calls = 0;
    for (auto _ : state) {
        auto task = std::make_shared<TaskState>();
        task->add_callback([&calls] { ++calls; });
        task->complete(true);
    }
    benchmark::DoNotOptimize(calls);
}
BENCHMARK(BM_CompleteOneCallback);

void BM_CompleteOneWatchAndPop(benchmark::State& state) {
    auto queue = sdfutures::detail::make_completion_queue();
    for (auto _ : state) {
        auto task = std::make_shared<TaskState>();
        task->watch(queue, 0);
        task->complete(true);
        benchmark::DoNotOptimize(sdfutures::detail::next_completed(*queue, std::nullopt));
    }
}
BENCHMARK(BM_CompleteOneWatchAndPop);

}  // namespace
