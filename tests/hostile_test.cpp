// What a task that controls its worker can do to the owner, and what it cannot: the channel is hostile input, a
// worker that neither replies nor dies holds only its own future, and the owner's signal setup does not matter.
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/manager_environment.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::SystemdTest;

// The library's channel in a worker (and in a TransientUnitProcess child).
constexpr int kChannel = 3;

int square(int x) { return x * x; }

// Writes `bytes` to the channel behind the library's back, then returns normally.
int write_to_channel_then_return(std::string bytes, int x) {
    [[maybe_unused]] ssize_t n = ::send(kChannel, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    return x;
}

int write_raw_then_return(std::size_t size, int x) {
    std::string junk(size, '\x7f');
    [[maybe_unused]] ssize_t n = ::write(kChannel, junk.data(), junk.size());
    return x;
}

// A record header of the pool's channel (src/channel.hpp): 8-byte id, 8-byte total, then body bytes.
std::string record(std::uint64_t id, std::uint64_t total, const std::string& body) {
    std::string r(16, '\0');
    std::memcpy(r.data(), &id, 8);
    std::memcpy(r.data() + 8, &total, 8);
    return r + body;
}

// A well-formed reply payload for the value 1 (wire.hpp: [0, value]).
const std::string kReplyOfOne = std::string("\x92\x00\x01", 3);

int stop_myself(int x) {
    ::raise(SIGSTOP);
    return x;
}

int write_partial_then_hang(int x) {
    std::string r = record(12345, 1000, "0123456789");
    [[maybe_unused]] ssize_t n = ::send(kChannel, r.data(), r.size(), MSG_NOSIGNAL);
    for (;;) ::pause();
    return x;
}

int exit_with(int code) {
    std::exit(code);  // NOLINT(concurrency-mt-unsafe): what a hostile task does
}

int crash_segv(int) {
    ::raise(SIGSEGV);
    return 0;
}

// Each pool test runs for fork (the default, whose workers enter the unit themselves) and exec (whose workers are
// born in it, forks of the program systemd executed): the channel and the dispatcher are the same.
class HostileTest : public SystemdTest, public ::testing::WithParamInterface<StartMethod> {
protected:
    PoolOptions with_method(PoolOptions options) const {
        options.start_method = GetParam();
        return options;
    }
};
class ForkserverTest : public SystemdTest {};

// Runs `hostile` among innocent squares on one worker with a deep window, and checks that every innocent task
// gets its own value and that the pool goes on afterwards. Returns how the hostile future ended.
template <class F>
std::exception_ptr hostile_among_innocents(TransientUnitPoolExecutor& pool, F submit_hostile) {
    std::vector<std::future<int>> before, after;
    for (int i = 0; i < 20; ++i) before.push_back(pool.submit(&square, i));
    std::future<int> hostile = submit_hostile();
    for (int i = 0; i < 20; ++i) after.push_back(pool.submit(&square, 100 + i));
    for (int i = 0; i < 20; ++i) EXPECT_EQ(before[i].get(), i * i) << "innocent task " << i << " before";
    for (int i = 0; i < 20; ++i) EXPECT_EQ(after[i].get(), (100 + i) * (100 + i)) << "innocent task " << i << " after";
    EXPECT_EQ(hostile.wait_for(30s), std::future_status::ready);
    std::exception_ptr error;
    try {
        hostile.get();
    } catch (...) {
        error = std::current_exception();
    }
    EXPECT_EQ(pool.submit(&square, 7).get(), 49) << "the pool goes on";
    return error;
}

template <class E>
void expect_error(const std::exception_ptr& error, const std::string& mentions) {
    ASSERT_TRUE(error) << "expected " << typeid(E).name();
    try {
        std::rethrow_exception(error);
    } catch (const E& e) {
        EXPECT_NE(std::string(e.what()).find(mentions), std::string::npos) << e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "expected " << typeid(E).name() << ", got " << typeid(e).name() << ": " << e.what();
    }
}

TEST_P(HostileTest, AnOversizedFrameHeaderFailsOnlyThatTaskWithProtocolError) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    auto error = hostile_among_innocents(pool, [&] {
        return pool.submit(&write_to_channel_then_return, std::string("\xff\xff\xff\xff", 4), 5);
    });
    expect_error<ProtocolError>(error, "shorter than its 16-byte header");
}

TEST_P(HostileTest, ARawTwoMebibyteWriteCannotReachTheOwner) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    auto error = hostile_among_innocents(pool, [&] { return pool.submit(&write_raw_then_return, std::size_t{2} << 20, 5); });
    // The kernel refuses a record larger than the socket's buffer: the task's write fails and its own reply is
    // intact, so it gets its value.
    EXPECT_FALSE(error);
}

TEST_P(HostileTest, GarbageOnTheChannelFailsOnlyThatTask) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    std::string garbage(100, '\0');
    for (std::size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>(i * 37 + 11);
    auto error = hostile_among_innocents(pool, [&] { return pool.submit(&write_to_channel_then_return, garbage, 5); });
    expect_error<ProtocolError>(error, "broke the channel protocol");
}

TEST_P(HostileTest, APartialMessageFailsThatTaskAtOnceWithoutATimeout) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    auto start = std::chrono::steady_clock::now();
    auto error = hostile_among_innocents(
        pool, [&] { return pool.submit(&write_to_channel_then_return, record(777, 1000, "0123456789"), 5); });
    expect_error<ProtocolError>(error, "while message 777 had 10 of its 1000 bytes");
    EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
}

TEST_P(HostileTest, APartialMessageFromATaskThatThenHangsEndsAtTheTaskTimeout) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1, .task_timeout = 500ms}));
    auto error = hostile_among_innocents(pool, [&] { return pool.submit(&write_partial_then_hang, 5); });
    expect_error<TaskTimeout>(error, "task_timeout of 500 ms");
}

TEST_P(HostileTest, AForgedReplyWithTwentyTasksQueuedBehindItMisleadsNoOtherTask) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    // A well-formed reply for a task id the hostile task does not know (ids are keyed), and the stream framing
    // of earlier versions: neither can be taken for another task's answer.
    auto error = hostile_among_innocents(
        pool, [&] { return pool.submit(&write_to_channel_then_return, record(1, kReplyOfOne.size(), kReplyOfOne), 5); });
    expect_error<ProtocolError>(error, "a reply for task id 1 while task id");
    auto stream_error = hostile_among_innocents(pool, [&] {
        return pool.submit(&write_to_channel_then_return, std::string("\x03\x00\x00\x00", 4) + kReplyOfOne, 5);
    });
    expect_error<ProtocolError>(stream_error, "broke the channel protocol");
}

TEST_P(HostileTest, ExitInAPoolTaskIsReportedAsThatExitCode) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    for (int code : {0, 3}) {
        auto f = pool.submit(&exit_with, code);
        try {
            f.get();
            ADD_FAILURE() << "exit(" << code << ") returned a value";
        } catch (const ProcessDied& e) {
            EXPECT_EQ(e.exit_status(), code) << e.what();
        }
        EXPECT_EQ(pool.submit(&square, 4).get(), 16);
    }
}

TEST_P(HostileTest, ExitInAProcessIsReportedAsThatExitCode) {
    for (int code : {0, 3}) {
        TransientUnitProcess p({}, [code] { return exit_with(code); });
        p.start();
        try {
            p.result();
            ADD_FAILURE() << "exit(" << code << ") returned a value";
        } catch (const ProcessDied& e) {
            EXPECT_EQ(e.exit_status(), code) << e.what();
        }
        EXPECT_EQ(p.exit_status(), code);
    }
}

TEST_P(HostileTest, AStoppedTaskIsEndedByKillWorkersAndThePoolIsShutDown) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
    auto stopped = pool.submit(&stop_myself, 1);
    auto queued = pool.submit(&stop_myself, 2);
    EXPECT_EQ(stopped.wait_for(300ms), std::future_status::timeout);
    auto start = std::chrono::steady_clock::now();
    pool.kill_workers();
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    for (auto* f : {&stopped, &queued}) {
        ASSERT_EQ(f->wait_for(0s), std::future_status::ready);
        EXPECT_THROW(f->get(), TaskCancelled);
    }
    EXPECT_THROW(pool.submit(&square, 2), StateError);
}

TEST_P(HostileTest, TheDestructorEndsAStoppedTaskAfterTheShutdownTimeout) {
    std::future<int> stopped;
    auto start = std::chrono::steady_clock::now();
    {
        TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1, .shutdown_timeout = 500ms}));
        stopped = pool.submit(&stop_myself, 1);
        std::this_thread::sleep_for(100ms);
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
    EXPECT_THROW(stopped.get(), TaskCancelled);
}

TEST_P(HostileTest, CancellingARunningTaskKillsOnlyItsWorker) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
    auto task = pool.schedule(&stop_myself, 1);
    auto other = pool.submit(&square, 3);
    EXPECT_EQ(other.get(), 9);
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(task.cancel());
    EXPECT_THROW(task.future().get(), TaskCancelled);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(pool.submit(&square, i).get(), i * i);
    EXPECT_FALSE(task.cancel()) << "already finished";
}

TEST_P(HostileTest, AWorkerLostDuringShutdownIsReplacedUntilEveryTaskHasRun) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    auto crashed = pool.submit(&crash_segv, 0);
    std::vector<std::future<int>> queued;
    for (int i = 0; i < 10; ++i) queued.push_back(pool.submit(&square, i));
    auto shutdown = std::async(std::launch::async, [&] { pool.shutdown(true); });
    ASSERT_EQ(shutdown.wait_for(30s), std::future_status::ready) << "shutdown() hangs on the tasks after a crash";
    EXPECT_THROW(crashed.get(), ProcessDied);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(queued[i].get(), i * i);
}

TEST_P(HostileTest, AnIdleWorkerThatIsStoppedIsReplacedAndGetsNoTask) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    EXPECT_EQ(pool.submit(&square, 2).get(), 4);
    const pid_t stopped = pool.worker_pids().at(0);
    ASSERT_EQ(::kill(stopped, SIGSTOP), 0);
    // The fork server reports the stop; the pool ends the idle worker and forks another. (A task submitted before
    // the report arrives may still go to the stopped worker: it then waits for it, like any task it runs.)
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline &&
           (pool.worker_pids().size() != 1 || pool.worker_pids().front() == stopped))
        std::this_thread::sleep_for(5ms);
    ASSERT_EQ(pool.worker_pids().size(), 1u);
    EXPECT_NE(pool.worker_pids().front(), stopped);
    auto f = pool.submit(&square, 3);
    ASSERT_EQ(f.wait_for(20s), std::future_status::ready);
    EXPECT_EQ(f.get(), 9);
}

// The owner's SIGCHLD setup, set for one test and restored after it.
class SigchldTest : public SystemdTest {
protected:
    void TearDown() override {
        ::sigaction(SIGCHLD, &saved_, nullptr);
        ::pthread_sigmask(SIG_SETMASK, &saved_mask_, nullptr);
        SystemdTest::TearDown();
    }
    void set_disposition(void (*handler)(int)) {
        struct sigaction action {};
        action.sa_handler = handler;
        sigemptyset(&action.sa_mask);
        action.sa_flags = SA_RESTART;
        ::sigaction(SIGCHLD, &action, &saved_);
        ::pthread_sigmask(SIG_SETMASK, nullptr, &saved_mask_);
    }
    void block_sigchld() {
        ::sigaction(SIGCHLD, nullptr, &saved_);
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        ::pthread_sigmask(SIG_BLOCK, &chld, &saved_mask_);
    }
    static void reap_everything(int) {
        int saved = errno;
        while (::waitpid(-1, nullptr, WNOHANG) > 0) {
        }
        errno = saved;
    }

    // Exit statuses and no hang, from a process and from a pool, whatever the owner does with SIGCHLD.
    void check_exit_statuses() {
        {
            TransientUnitProcess p({}, &crash_segv, 0);
            p.start();
            EXPECT_THROW(p.result(), ProcessDied);
            EXPECT_EQ(p.exit_status(), -SIGSEGV);
        }
        {
            TransientUnitProcess p({}, [] { return exit_with(3); });
            p.start();
            p.join();
            EXPECT_EQ(p.exit_status(), 3);
        }
        TransientUnitPoolExecutor pool({}, {.max_workers = 1});
        EXPECT_EQ(pool.submit(&square, 5).get(), 25);
        auto crashed = pool.submit(&crash_segv, 0);
        ASSERT_EQ(crashed.wait_for(30s), std::future_status::ready);
        try {
            crashed.get();
            ADD_FAILURE() << "a crash returned a value";
        } catch (const ProcessDied& e) {
            EXPECT_EQ(e.exit_status(), -SIGSEGV) << e.what();
        }
        EXPECT_EQ(pool.submit(&square, 6).get(), 36);
    }

private:
    struct sigaction saved_ {};
    sigset_t saved_mask_{};
};

TEST_F(SigchldTest, AnOwnerThatIgnoresSigchldGetsExitStatusesAndNoHang) {
    set_disposition(SIG_IGN);
    check_exit_statuses();
}

TEST_F(SigchldTest, AnOwnerThatReapsEveryChildItselfGetsExitStatusesAndNoHang) {
    set_disposition(&reap_everything);
    check_exit_statuses();
}

TEST_F(SigchldTest, AnOwnerThatBlocksSigchldGetsExitStatusesAndNoHang) {
    block_sigchld();
    check_exit_statuses();
}

TEST_P(HostileTest, APoolGoesOnThroughACrashWhileItsBusIsStoppedForThreeSeconds) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
    const uint32_t dbus_pid = Unit(bus(), "dbus.service").main_pid();
    ASSERT_GT(dbus_pid, 0u) << "the private manager's dbus-daemon";
    ASSERT_EQ(::kill(static_cast<pid_t>(dbus_pid), SIGSTOP), 0);
    auto resume = std::async(std::launch::async, [&] {
        std::this_thread::sleep_for(3s);
        ::kill(static_cast<pid_t>(dbus_pid), SIGCONT);
    });
    auto crashed = pool.submit(&crash_segv, 0);
    // The other worker answers while the bus is silent: the dispatcher does not wait on D-Bus.
    auto start = std::chrono::steady_clock::now();
    std::vector<std::future<int>> during;
    for (int i = 0; i < 10; ++i) during.push_back(pool.submit(&square, i));
    for (int i = 0; i < 10; ++i) EXPECT_EQ(during[i].get(), i * i);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s) << "tasks waited for the stopped bus";
    try {
        crashed.get();
        ADD_FAILURE() << "a crash returned a value";
    } catch (const ProcessDied& e) {
        EXPECT_EQ(e.exit_status(), -SIGSEGV) << e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "a crash while the bus was stopped came back as " << typeid(e).name() << ": " << e.what();
    }
    resume.get();
    // The replacement worker was attached once the bus answered again: the pool has both workers.
    std::vector<std::future<int>> after;
    for (int i = 0; i < 20; ++i) after.push_back(pool.submit(&square, i));
    for (int i = 0; i < 20; ++i) EXPECT_EQ(after[i].get(), i * i);
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (pool.worker_pids().size() < 2 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    EXPECT_EQ(pool.worker_pids().size(), 2u);
}

TEST_F(ForkserverTest, AForkserverPoolRunsTasksFromTheZygote) {
    ASSERT_TRUE(initialized());
    TransientUnitPoolExecutor pool({}, {.max_workers = 2, .start_method = StartMethod::forkserver});
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 100; ++i) futures.push_back(pool.submit(&square, i));
    for (int i = 0; i < 100; ++i) EXPECT_EQ(futures[i].get(), i * i);
    EXPECT_EQ(pool.submit(&crash_segv, 0).wait_for(30s), std::future_status::ready);
    EXPECT_EQ(pool.submit(&square, 9).get(), 81);
}

TEST_F(ForkserverTest, AForkserverPoolRefusesAClosureInitializerBeforeStartingAnything) {
    int captured = 1;
    EXPECT_THROW(TransientUnitPoolExecutor({}, {.initializer = [captured] { (void)captured; },
                                                .start_method = StartMethod::forkserver}),
                 StateError);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, HostileTest, ::testing::Values(StartMethod::fork, StartMethod::exec),
                         [](const ::testing::TestParamInfo<StartMethod>& info) {
                             return std::string(info.param == StartMethod::exec ? "exec" : "fork");
                         });

}  // namespace
}  // namespace sdfutures
