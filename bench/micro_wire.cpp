// sdfutures_micro_bench: the CPU cost of what the library does in one process, without systemd or a second
// process — encoding and decoding replies, reassembling frames, building a task's message, parsing unit
// properties. Loops over a cheap body are what Google Benchmark's iteration model is made for; the end-to-end
// figures (pool start, throughput through workers, CPU quotas) stay in sdfutures_bench, which interleaves each
// figure with its floor (bench/README.md says why).
//
//     build/bench/sdfutures_micro_bench --benchmark_repetitions=7 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sdfutures/detail/wire.hpp"
#include "sdfutures/pool.hpp"
#include "sdfutures/properties.hpp"

namespace {

using sdfutures::detail::decode_reply;
using sdfutures::detail::encode_value_reply;
using sdfutures::detail::FrameReader;
using sdfutures::detail::make_frame;

int square(int x) { return x * x; }

std::string bytes_of(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i * 131 + 7);
    return s;
}

// A worker's side of a std::string result: the value into a reply payload.
void EncodeStringReply(benchmark::State& state) {
    const std::string value = bytes_of(static_cast<std::size_t>(state.range(0)));
    for (auto _ : state) {
        std::string reply = encode_value_reply(value);
        benchmark::DoNotOptimize(reply.data());
    }
    state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(EncodeStringReply)->Arg(64)->Arg(64 << 10)->Arg(64 << 20)->Unit(benchmark::kMicrosecond);

// The owner's side: a reply payload back into the value, validated.
void DecodeStringReply(benchmark::State& state) {
    const std::string reply = encode_value_reply(bytes_of(static_cast<std::size_t>(state.range(0))));
    for (auto _ : state) {
        std::string value = decode_reply<std::string>(reply);
        benchmark::DoNotOptimize(value.data());
    }
    state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(DecodeStringReply)->Arg(64)->Arg(64 << 10)->Arg(64 << 20)->Unit(benchmark::kMicrosecond);

// A structured result: every element is type-checked and converted.
void DecodeMapReply(benchmark::State& state) {
    std::map<std::string, std::vector<int>> value;
    for (int i = 0; i < state.range(0); ++i) value["key-" + std::to_string(i)] = {i, i + 1, i + 2, i + 3};
    const std::string reply = encode_value_reply(value);
    for (auto _ : state) {
        auto back = decode_reply<std::map<std::string, std::vector<int>>>(reply);
        benchmark::DoNotOptimize(back.size());
    }
    state.SetItemsProcessed(state.iterations() * state.range(0));
    state.counters["reply_bytes"] = static_cast<double>(reply.size());
}
BENCHMARK(DecodeMapReply)->Arg(16)->Arg(4096)->Unit(benchmark::kMicrosecond);

// Frames of small replies arriving in 64 KiB reads, as the pool's dispatcher receives them.
void ReassembleSmallFrames(benchmark::State& state) {
    std::string stream;
    const std::string frame = make_frame(encode_value_reply(12345));
    while (stream.size() + frame.size() <= (64u << 10)) stream += frame;
    const std::size_t frames = stream.size() / frame.size();
    FrameReader reader;
    for (auto _ : state) {
        reader.feed(stream.data(), stream.size());
        while (auto payload = reader.next()) benchmark::DoNotOptimize(payload->data());
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(frames));
}
BENCHMARK(ReassembleSmallFrames);

// One trivial task through the codec: the owner packs the arguments, the worker unpacks them, calls, and encodes
// the reply, the owner decodes it. The per-task CPU cost of the protocol, with no I/O (the task message's
// three-element envelope around the arguments is left out: it is private to the pool).
void TrivialTaskThroughTheCodec(benchmark::State& state) {
    const sdfutures::detail::WireLimits limits;
    const auto invoker = &sdfutures::detail::invoke_task<int, int (*)(int), int>;
    const auto function = reinterpret_cast<std::uintptr_t>(&square);
    int x = 0;
    for (auto _ : state) {
        std::string arguments = sdfutures::detail::pack_value(std::tuple<int>{++x & 0xffff});
        std::string reply = invoker(function, arguments, limits).joined();
        benchmark::DoNotOptimize(decode_reply<int>(reply, limits));
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(TrivialTaskThroughTheCodec);

// Unit-file syntax to D-Bus values for the properties of the README's three uses.
void ParseTypicalProperties(benchmark::State& state) {
    for (auto _ : state) {
        sdfutures::Properties p{{"CPUQuota", "25%"},   {"MemoryMax", "512M"},      {"TasksMax", "64"},
                                {"User", "nobody"},    {"PrivateNetwork", "yes"},  {"NoNewPrivileges", "yes"},
                                {"RuntimeMaxSec", "30s"}, {"Environment", "A=1 B=2"}, {"LimitNOFILE", "1024:4096"}};
        auto dbus = p.to_dbus();
        benchmark::DoNotOptimize(dbus.size());
    }
    state.SetItemsProcessed(state.iterations() * 9);
}
BENCHMARK(ParseTypicalProperties)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
