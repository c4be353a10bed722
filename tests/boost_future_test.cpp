// boost::future results of pool tasks (<sdfutures/boost_future.hpp>, target sdfutures::boost) against a real
// manager: continuations and when_any/when_all/wait_for_any across a task whose worker crashes.
#include <csignal>
#include <cstdlib>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "sdfutures/boost_future.hpp"
#include "support/gates.hpp"
#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using testing::SystemdTest;

class BoostFutureTest : public SystemdTest {};

int square(int x) { return x * x; }
int crash_abort(int) { std::abort(); }

TEST_F(BoostFutureTest, AThenChainRunsOnTheResult) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    boost::future<int> chained = boost_submit(pool, &square, 6)
                                     .then([](boost::future<int> f) { return f.get() + 1; })
                                     .then([](boost::future<int> f) { return f.get() * 2; });
    EXPECT_EQ(chained.get(), 74);
    boost::future<void> done = boost_submit(pool, +[] {});
    done.get();
}

TEST_F(BoostFutureTest, ACrashReachesTheContinuationAsProcessDied) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 1});
    boost::future<int> status = boost_submit(pool, &crash_abort, 0).then([](boost::future<int> f) {
        try {
            f.get();
            return 0;
        } catch (const ProcessDied& e) {
            return e.exit_status();
        }
    });
    EXPECT_EQ(status.get(), -SIGABRT);
    try {
        boost_submit(pool, &crash_abort, 1).get();
        FAIL() << "survived";
    } catch (const ProcessDied& e) {
        EXPECT_EQ(e.exit_status(), -SIGABRT);
        EXPECT_NE(std::string(e.what()).find("SIGABRT"), std::string::npos) << e.what();
    }
    EXPECT_EQ(boost_submit(pool, &square, 3).get(), 9) << "the pool goes on";
}

TEST_F(BoostFutureTest, WhenAnyAndWaitForAnySeeTheCrashFirstAndWhenAllGetsEveryOutcome) {
    TransientUnitPoolExecutor pool({}, {.max_workers = 2});
    testing::Gates gates(1);
    Task<int> gated = pool.schedule(&testing::wait_for_gate, gates.path(0), 5);
    boost::future<int> slow = to_boost_future(gated);
    boost::future<int> crashing = boost_submit(pool, &crash_abort, 0);

    auto any = boost::when_any(std::move(crashing), std::move(slow)).get();
    auto& [crashed, still_slow] = any;
    ASSERT_TRUE(crashed.is_ready());
    EXPECT_FALSE(still_slow.is_ready());
    EXPECT_THROW(crashed.get(), ProcessDied);
    EXPECT_TRUE(gated.running());

    boost::future<int> quick = boost_submit(pool, &square, 4);
    EXPECT_EQ(boost::wait_for_any(still_slow, quick), 1u);
    EXPECT_EQ(quick.get(), 16);

    std::vector<boost::future<int>> all;
    all.push_back(boost_submit(pool, &square, 2));
    all.push_back(boost_submit(pool, &crash_abort, 0));
    all.push_back(boost_submit(pool, &square, 3));
    auto every = boost::when_all(all.begin(), all.end());
    gates.open(0);
    EXPECT_EQ(still_slow.get(), 5);
    auto outcomes = every.get();
    ASSERT_EQ(outcomes.size(), 3u);
    EXPECT_EQ(outcomes[0].get(), 4);
    EXPECT_THROW(outcomes[1].get(), ProcessDied);
    EXPECT_EQ(outcomes[2].get(), 9);
}

}  // namespace
}  // namespace sdfutures
