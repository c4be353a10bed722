// The pool's owner side when its system calls are interrupted, refused for now or cut short: the dispatcher's
// poll, its wake-up reads and writes, the channel's sendmsg and recvmsg all go through the syscall seam
// (src/sys.hpp), and here they fail on purpose. Every result must still arrive, exactly once and right; a record
// cut short costs only the task it carried.

#include <gtest/gtest.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <chrono>
#include <future>
#include <string>
#include <vector>

#include "sdfutures/command.hpp"
#include "sdfutures/pool.hpp"
#include "support/manager_environment.hpp"
#include "support/syscall_injection.hpp"

namespace sdfutures {
namespace {

using namespace std::chrono_literals;
using testing::Call;
using testing::Injected;
using testing::SyscallInjection;
using testing::SystemdTest;

int square(int x) { return x * x; }
std::size_t length_of(std::string s) { return s.size(); }

// Large blob results, sent by the worker from the value itself (blob_reply.hpp); every byte says where it is.
template <class Blob>
Blob numbered_blob(std::uint64_t size) {
    Blob blob(size, typename Blob::value_type{});
    for (std::uint64_t i = 0; i < size; ++i) blob[i] = static_cast<typename Blob::value_type>(i * 131 + i / 997);
    return blob;
}

class SyscallSeamTest : public testing::StartMethodTest {};

TEST_P(SyscallSeamTest, EintrOnEverySecondCallOfTheOwnerLosesAndRepeatsNoResult) {
    SyscallInjection injection;  // before the pool: its construction (and, forked, its workers) meet it too
    for (Call call : {Call::read, Call::write, Call::sendmsg, Call::recvmsg, Call::poll})
        injection.inject(call, {.error_number = EINTR, .every = 2});
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
    std::vector<std::future<int>> singles;
    for (int i = 0; i < 300; ++i) singles.push_back(pool.submit(&square, i));
    std::vector<int> inputs(5000);
    for (int i = 0; i < 5000; ++i) inputs[i] = i;
    std::vector<int> mapped = pool.map(&square, inputs, {.chunksize = 64});
    for (int i = 0; i < 300; ++i) EXPECT_EQ(singles[i].get(), i * i) << "task " << i;
    ASSERT_EQ(mapped.size(), inputs.size());
    for (int i = 0; i < 5000; ++i) ASSERT_EQ(mapped[i], i * i) << "element " << i;
    EXPECT_GE(injection.injected(Call::poll), 10) << "the dispatcher's poll was not interrupted";
    EXPECT_GE(injection.injected(Call::sendmsg), 10);
    EXPECT_GE(injection.injected(Call::recvmsg), 10);
    EXPECT_GE(injection.injected(Call::write), 1) << "no wake-up write was interrupted";
}

TEST_P(SyscallSeamTest, EagainOnEverySecondNonBlockingSendStillDeliversLargeArgumentsWhole) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
    SyscallInjection injection;
    injection.inject(Call::sendmsg, {.error_number = EAGAIN, .only_nonblocking = true, .every = 2});
    injection.inject(Call::recvmsg, {.error_number = EAGAIN, .only_nonblocking = true, .every = 3});
    std::vector<std::future<std::size_t>> lengths;
    for (std::size_t i = 0; i < 20; ++i) lengths.push_back(pool.submit(&length_of, std::string((1u << 20) + i, 'x')));
    for (std::size_t i = 0; i < 20; ++i) EXPECT_EQ(lengths[i].get(), (1u << 20) + i) << "task " << i;
    EXPECT_GE(injection.injected(Call::sendmsg), 20);
    EXPECT_GE(injection.injected(Call::recvmsg), 5);
}

TEST_P(SyscallSeamTest, EintrOnEverySecondSendAndReceiveStillDeliversLargeBlobResultsWhole) {
    SyscallInjection injection;  // before the pool: its workers' sends meet it too
    injection.inject(Call::sendmsg, {.error_number = EINTR, .every = 2});
    injection.inject(Call::recvmsg, {.error_number = EINTR, .every = 2});
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 2}));
    const std::uint64_t size = (9u << 20) + 5;  // records of 64 KiB, and a last one cut short
    auto text = pool.submit(&numbered_blob<std::string>, size);
    auto chars = pool.submit(&numbered_blob<std::vector<char>>, size);
    auto bytes = pool.submit(&numbered_blob<std::vector<std::byte>>, size);
    auto length = pool.submit(&length_of, numbered_blob<std::string>(size));
    EXPECT_TRUE(text.get() == numbered_blob<std::string>(size)) << "the std::string arrived changed";
    EXPECT_TRUE(chars.get() == numbered_blob<std::vector<char>>(size)) << "the std::vector<char> arrived changed";
    EXPECT_TRUE(bytes.get() == numbered_blob<std::vector<std::byte>>(size)) << "the std::vector<std::byte> arrived changed";
    EXPECT_EQ(length.get(), size);
    EXPECT_GE(injection.injected(Call::recvmsg), 100);
}

TEST_P(SyscallSeamTest, ARecordCutShortCostsOnlyTheTaskItCarried) {
    TransientUnitPoolExecutor pool({}, with_method({.max_workers = 1}));
    EXPECT_EQ(pool.submit(&square, 3).get(), 9);
    std::future<int> cut;
    {
        SyscallInjection injection;  // the owner's next non-blocking send: this task's record
        injection.inject(Call::sendmsg, {.short_transfer = true, .only_nonblocking = true, .times = 1});
        cut = pool.submit(&square, 4);
        ASSERT_EQ(cut.wait_for(30s), std::future_status::ready);
        EXPECT_EQ(injection.injected(Call::sendmsg), 1);
    }
    EXPECT_THROW(cut.get(), Error) << "a task whose message was cut short must fail, not return a value";
    for (int i = 0; i < 10; ++i) EXPECT_EQ(pool.submit(&square, i).get(), i * i) << "after the cut, task " << i;
}

// A Command's serving loop (its bus poll, the wake-ups between the threads that wait on it, the reads of its
// output, the writes of its input) under EINTR on every second call and writes cut to half: the program gets its
// whole input and the caller its whole output, unchanged.
class CommandSeamTest : public SystemdTest {};

TEST_F(CommandSeamTest, InterruptedAndShortCallsLoseNoByteOfACommandsInputOrOutput) {
    std::string input(3u << 20, '\0');
    for (std::size_t i = 0; i < input.size(); ++i) input[i] = static_cast<char>('a' + i % 23);
    SyscallInjection injection;
    injection.inject(Call::read, {.error_number = EINTR, .every = 2});
    injection.inject(Call::poll, {.error_number = EINTR, .every = 2});
    injection.inject(Call::write, {.short_transfer = true, .every = 2});
    auto result = Command({"/bin/cat"}).stdin_from(input).capture_stdout().run(120s);
    EXPECT_TRUE(result.success()) << result.status_text();
    ASSERT_EQ(result.captured_stdout.size(), input.size());
    EXPECT_TRUE(result.captured_stdout == input) << "the bytes came back changed";
    EXPECT_GE(injection.injected(Call::read), 10);
    EXPECT_GE(injection.injected(Call::poll), 3);
    EXPECT_GE(injection.injected(Call::write), 1) << "no write of the program's input was cut short";
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SyscallSeamTest,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::exec),
                         testing::start_method_name);

}  // namespace
}  // namespace sdfutures
