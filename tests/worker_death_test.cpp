// What a worker's death means for its task (src/worker_death.hpp), without a pool: which deaths wait for the
// manager's word on the unit, which error the task gets, and how the cgroup's OOM kills are accounted for. No
// manager, no processes: the facts a dispatcher would gather, given directly.

#include <gtest/gtest.h>

#include <signal.h>

#include <cstdint>
#include <exception>
#include <string>

#include "worker_death.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures::testing {
namespace {

using detail::WorkerDeath;

template <class E>
E error_of(const std::exception_ptr& error) {
    try {
        std::rethrow_exception(error);
    } catch (const E& e) {
        return e;
    }
}

TEST(WorkerDeath, OnlySigtermAndSigkillLookLikeAStoppedUnit) {
    EXPECT_TRUE(detail::ends_like_a_stopped_unit(-SIGTERM));
    EXPECT_TRUE(detail::ends_like_a_stopped_unit(-SIGKILL));
    EXPECT_FALSE(detail::ends_like_a_stopped_unit(-SIGSEGV));
    EXPECT_FALSE(detail::ends_like_a_stopped_unit(0));
    EXPECT_FALSE(detail::ends_like_a_stopped_unit(SIGTERM)) << "exit code 15 is not the signal";
}

TEST(WorkerDeath, ASigtermWithTheUnitStillThereWaitsForTheManager) {
    const WorkerDeath death{.pid = 7, .exit_status = -SIGTERM};
    EXPECT_TRUE(detail::needs_unit_verdict(death, 0));
}

TEST(WorkerDeath, NoVerdictIsNeededOnceTheAnswerIsKnown) {
    EXPECT_FALSE(detail::needs_unit_verdict({.exit_status = -SIGTERM, .unit_gone_verdict = false}, 0));
    EXPECT_FALSE(detail::needs_unit_verdict({.exit_status = -SIGTERM, .main_process_gone = true}, 0));
    EXPECT_FALSE(detail::needs_unit_verdict({.exit_status = 3}, 0)) << "an exit code is the worker's own doing";
    EXPECT_FALSE(detail::needs_unit_verdict({.exit_status = -SIGSEGV}, 0));
}

TEST(WorkerDeath, ASigkillTheOomCountExplainsNeedsNoVerdict) {
    EXPECT_FALSE(detail::needs_unit_verdict({.exit_status = -SIGKILL, .oom_kills = 1}, 0));
    EXPECT_TRUE(detail::needs_unit_verdict({.exit_status = -SIGKILL, .oom_kills = 1}, 1)) << "that kill is accounted for";
    EXPECT_TRUE(detail::needs_unit_verdict({.exit_status = -SIGTERM, .oom_kills = 1}, 0)) << "a SIGTERM is never the OOM killer's";
}

TEST(WorkerDeath, ATaskWhoseWorkerExitedGetsProcessDiedSayingHow) {
    std::uint64_t seen = 0;
    auto verdict = detail::classify_death({.pid = 42, .exit_status = 3}, "pool.service", seen);
    EXPECT_FALSE(verdict.unit_stopped);
    auto e = error_of<ProcessDied>(verdict.error);
    EXPECT_EQ(e.exit_status(), 3);
    EXPECT_NE(std::string(e.what()).find("pid 42"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("exited with code 3"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("OOM"), std::string::npos) << e.what();
}

TEST(WorkerDeath, ASignalIsNamed) {
    std::uint64_t seen = 0;
    auto e = error_of<ProcessDied>(detail::classify_death({.pid = 5, .exit_status = -SIGSEGV}, "u", seen).error);
    EXPECT_EQ(e.exit_status(), -SIGSEGV);
    EXPECT_NE(std::string(e.what()).find("SIGSEGV"), std::string::npos) << e.what();
}

TEST(WorkerDeath, EachOomKillExplainsOneSigkilledWorker) {
    std::uint64_t seen = 0;
    auto first = error_of<ProcessDied>(detail::classify_death({.pid = 1, .exit_status = -SIGKILL, .oom_kills = 1}, "u", seen).error);
    EXPECT_NE(std::string(first.what()).find("OOM killer"), std::string::npos) << first.what();
    EXPECT_EQ(seen, 1u);
    auto second = error_of<ProcessDied>(detail::classify_death({.pid = 2, .exit_status = -SIGKILL, .oom_kills = 1}, "u", seen).error);
    EXPECT_EQ(std::string(second.what()).find("OOM"), std::string::npos) << "the one kill is used up: " << second.what();
    EXPECT_EQ(seen, 1u);
}

TEST(WorkerDeath, AnotherDeathDoesNotUseAnOomKillUp) {
    std::uint64_t seen = 0;
    detail::classify_death({.pid = 1, .exit_status = -SIGSEGV, .oom_kills = 1}, "u", seen);
    detail::classify_death({.pid = 2, .exit_status = 1, .oom_kills = 1}, "u", seen);
    EXPECT_EQ(seen, 0u) << "left for the SIGKILLed victim, whose exit may come later";
}

TEST(WorkerDeath, AStoppedUnitFailsTheTaskWithUnitStopped) {
    std::uint64_t seen = 0;
    for (const WorkerDeath& death : {WorkerDeath{.exit_status = -SIGTERM, .main_process_gone = true},
                                     WorkerDeath{.exit_status = -SIGKILL, .unit_gone_verdict = true, .oom_kills = 1}}) {
        auto verdict = detail::classify_death(death, "pool-x.service", seen);
        EXPECT_TRUE(verdict.unit_stopped);
        EXPECT_EQ(error_of<UnitStopped>(verdict.error).unit(), "pool-x.service");
    }
    EXPECT_EQ(seen, 0u) << "a stopped unit's SIGKILL uses no OOM kill up";
}

TEST(WorkerDeath, TheManagerSayingTheUnitStayedMeansTheWorkerAloneWasKilled) {
    std::uint64_t seen = 0;
    auto verdict = detail::classify_death({.pid = 9, .exit_status = -SIGTERM, .unit_gone_verdict = false}, "u", seen);
    EXPECT_FALSE(verdict.unit_stopped);
    EXPECT_EQ(error_of<ProcessDied>(verdict.error).exit_status(), -SIGTERM);
}

TEST(WorkerDeath, AReplacementThatCouldNotEnterAStoppedUnitFailsWithTheStop) {
    auto own = std::make_exception_ptr(SetupError("enter the unit", 0, "why"));
    EXPECT_EQ(error_of<UnitStopped>(detail::failed_entry_error(true, "u.service", own)).unit(), "u.service");
    EXPECT_EQ(detail::failed_entry_error(false, "u.service", own), own);
}

}  // namespace
}  // namespace sdfutures::testing
