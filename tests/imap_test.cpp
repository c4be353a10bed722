// imap() and imap_unordered() against a real manager: lazy, bounded, input or completion order, each element's
// own exception, and what leaving early does.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "sdfutures/imap.hpp"
#include "sdfutures/pool.hpp"
#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;

constexpr int kFailing = 777'777;

std::int64_t twice_except_one(std::int64_t x) {
    if (x == kFailing) throw std::domain_error("no " + std::to_string(x));
    return 2 * x;
}

int sleep_then_return(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
}

int square(int x) { return x * x; }

class ImapTest : public SystemdTest, public ::testing::WithParamInterface<StartMethod> {};

TEST_P(ImapTest, AMillionIntsInChunksComeBackInInputOrderAndOneFailingElementFailsOnlyItself) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2, .start_method = GetParam()});
    std::int64_t expected = 0;
    std::size_t failures = 0;
    auto results = pool.imap(&twice_except_one, std::views::iota(std::int64_t{0}, std::int64_t{1'000'000}),
                             {.chunksize = 1000});
    for (auto it = results.begin(); it != std::default_sentinel; ++it, ++expected) {
        ASSERT_EQ(it.index(), static_cast<std::size_t>(expected));
        if (expected == kFailing) {
            EXPECT_THROW(
                {
                    try {
                        (void)*it;
                    } catch (const std::domain_error& e) {
                        EXPECT_STREQ(e.what(), "no 777777");
                        throw;
                    }
                },
                std::domain_error);
            ++failures;
            continue;
        }
        ASSERT_EQ(*it, 2 * expected);
    }
    EXPECT_EQ(expected, 1'000'000);
    EXPECT_EQ(failures, 1u);
    pool.shutdown();  // the counts are final
    EXPECT_EQ(pool.stats().completed, 1000u) << "one task per chunk";
}

INSTANTIATE_TEST_SUITE_P(StartMethods, ImapTest, ::testing::Values(StartMethod::fork, StartMethod::exec),
                         [](const auto& info) { return info.param == StartMethod::fork ? "fork" : "exec"; });

class LazyMapTest : public SystemdTest {};

TEST_F(LazyMapTest, InputsAreTakenOnlyAsResultsAreConsumedEvenFromAnEndlessRange) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    std::size_t taken = 0;
    auto counted = std::views::iota(0) | std::views::transform([&taken](int x) {
                       ++taken;
                       return x;
                   });
    constexpr std::size_t buffer = 8;
    {
        auto results = pool.imap(&square, counted, {.chunksize = 2, .buffersize = buffer});
        auto it = results.begin();
        EXPECT_LE(taken, buffer) << "begin() sends no more than the buffer holds";
        for (int i = 0; i < 100; ++i, ++it) {
            ASSERT_EQ(*it, i * i);
            ASSERT_LE(taken, static_cast<std::size_t>(i) + 1 + buffer) << "at element " << i;
        }
    }  // leaves an endless range early: what it sent and did not yield is cancelled
    EXPECT_LE(taken, 100 + buffer);
    EXPECT_EQ(pool.submit(&square, 9).get(), 81);
}

TEST_F(LazyMapTest, UnorderedYieldsFastResultsBeforeASlowOneEachOnceWithItsIndex) {
    // A window of one: no short task is sent ahead to wait behind the long one.
    TransientUnitPoolExecutor pool({}, {.max_workers = 2, .max_window = 1});
    const std::vector<int> inputs{1500, 10, 20, 30, 40, 50};
    std::vector<std::size_t> order;
    std::set<std::size_t> seen;
    auto results = pool.imap_unordered(&sleep_then_return, inputs);
    for (auto it = results.begin(); it != std::default_sentinel; ++it) {
        EXPECT_EQ(*it, inputs.at(it.index())) << "index() names the input of the result";
        EXPECT_TRUE(seen.insert(it.index()).second) << "yielded twice: " << it.index();
        order.push_back(it.index());
    }
    ASSERT_EQ(order.size(), inputs.size());
    EXPECT_EQ(order.back(), 0u) << "the 1.5 s task, running beside five short ones on the other worker, is last";
}

TEST_F(LazyMapTest, LeavingEarlyCancelsWhatWasSentAndNotYielded) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    const std::vector<int> inputs{0, 600'000, 600'000, 600'000, 600'000, 600'000};
    {
        auto results = pool.imap(&sleep_then_return, inputs, {.buffersize = 4});
        auto it = results.begin();
        EXPECT_EQ(*it, 0);
    }  // left with four sent and one yielded
    // Returned at once: two running ten-minute tasks were killed, and what was queued never runs.
    EXPECT_EQ(pool.submit(&square, 7).get(), 49);
    pool.shutdown();  // the counts are final
    const PoolStats stats = pool.stats();
    EXPECT_EQ(stats.completed, 2u);
    EXPECT_EQ(stats.cancelled, 3u) << "four sent (buffersize), one yielded";
}

TEST_F(LazyMapTest, AResultNotThereInTimeThrowsWaitTimeoutWhenReached) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    const std::vector<int> inputs{0, 600'000};
    auto results = pool.imap(&sleep_then_return, inputs, {.timeout = 300ms});
    auto it = results.begin();
    EXPECT_EQ(*it, 0);
    const auto before = std::chrono::steady_clock::now();
    EXPECT_THROW(++it, WaitTimeout);
    EXPECT_LT(std::chrono::steady_clock::now() - before, 10s);
}

TEST_F(LazyMapTest, AnEmptyRangeYieldsNothing) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    auto results = pool.imap(&square, std::vector<int>{});
    EXPECT_TRUE(results.begin() == std::default_sentinel);
    auto unordered = pool.imap_unordered(&square, std::vector<int>{}, {.chunksize = 4});
    EXPECT_TRUE(unordered.begin() == std::default_sentinel);
}

}  // namespace
}  // namespace sdfutures
