// Large blob results without copies (include/sdfutures/detail/blob_reply.hpp), on both sides of the wire and
// through the two ways a reply is sent: the pool's channel (a head and a tail in records) and a process's reply
// pipe (one writev, through the syscall seam, interrupted and cut short on purpose). No manager.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

#include "channel.hpp"
#include "fd_util.hpp"
#include "fork_server.hpp"
#include "sdfutures/detail/blob_reply.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/process.hpp"
#include "support/syscall_injection.hpp"

namespace sdfutures::testing {
namespace {

using detail::decode_reply;
using detail::encode_reply;
using detail::encode_value_reply;
using detail::EncodedReply;
using detail::Fd;

// Every position says where it is, so a lost, repeated or shifted byte shows.
template <class Blob>
Blob numbered(std::size_t size) {
    Blob blob(size, typename Blob::value_type{});
    for (std::size_t i = 0; i < size; ++i) blob[i] = static_cast<typename Blob::value_type>(i * 131 + i / 997);
    return blob;
}

std::string joined(const EncodedReply& reply) { return std::string(reply.head()) + std::string(reply.blob()); }

// Around the str8/str16/str32 headers and around the size from which a value is kept by reference.
const std::size_t sizes[] = {0,     1,     31,    32,    255,   256,   65535, detail::blob_reply_bytes - 1,
                             detail::blob_reply_bytes,  detail::blob_reply_bytes + 1, (1u << 20) + 3, (5u << 20) + 1};

template <class T>
class BlobReplyTest : public ::testing::Test {};
using BlobTypes = ::testing::Types<std::string, std::vector<char>, std::vector<unsigned char>, std::vector<std::byte>>;
TYPED_TEST_SUITE(BlobReplyTest, BlobTypes);

TYPED_TEST(BlobReplyTest, TheBytesSentAreExactlyThoseOfTheCopyingEncoder) {
    for (std::size_t size : sizes) {
        const auto value = numbered<TypeParam>(size);
        const EncodedReply reply = encode_reply(value);
        EXPECT_EQ(joined(reply), encode_value_reply(value)) << size << " bytes";
        EXPECT_EQ(reply.size(), encode_value_reply(value).size());
        if (size >= detail::blob_reply_bytes) {
            EXPECT_EQ(reply.blob().size(), size) << "a large value must be kept, not copied";
            EXPECT_LE(reply.head().size(), 7u) << "the head is the envelope and the blob header, nothing more";
        } else {
            EXPECT_TRUE(reply.blob().empty()) << size << " bytes: a small value is copied into the reply";
        }
    }
}

TYPED_TEST(BlobReplyTest, TheKeptBytesAreTheValuesOwnAndSurviveMovingTheReply) {
    auto value = numbered<TypeParam>(detail::blob_reply_bytes * 3);
    const auto copy = value;
    const void* where = value.data();
    EncodedReply reply = encode_reply(std::move(value));
    EncodedReply moved = std::move(reply);
    EXPECT_EQ(static_cast<const void*>(moved.blob().data()), where);
    EXPECT_EQ(joined(moved), encode_value_reply(copy));
    EXPECT_EQ(std::move(moved).joined(), encode_value_reply(copy));
}

TYPED_TEST(BlobReplyTest, DecodingATakenPayloadGivesWhatDecodingAViewGives) {
    for (std::size_t size : sizes) {
        const auto value = numbered<TypeParam>(size);
        const std::string payload = encode_value_reply(value);
        EXPECT_EQ(decode_reply<TypeParam>(std::string(payload)), value) << size << " bytes";
        EXPECT_EQ(decode_reply<TypeParam>(std::string_view(payload)), value) << size << " bytes";
    }
}

TYPED_TEST(BlobReplyTest, AHostilePayloadIsAProtocolErrorWhenTaken) {
    const std::string good = encode_value_reply(numbered<TypeParam>(detail::blob_reply_bytes + 10));
    const std::vector<std::string> hostile = {
        "",
        good.substr(0, good.size() - 10),                  // the header's length lies: the blob is cut short
        good + "x",                                        // a byte after the value
        std::string("\x92\x00\xdb\xff\xff\xff\xff", 7) + "abc",  // a str32 of 4 GiB - 1 in a few bytes
        std::string("\x92\x00\xc6\x7f\xff\xff\xff", 7) + "abc",  // a bin32 of 2 GiB
        std::string("\x93\x00\xa1x\x00", 5),               // a value reply of three elements
        std::string("\x92\x07\xa1x", 4),                   // an unknown reply kind
        encode_value_reply(5),                             // not a blob
        encode_value_reply(std::vector<int>{1, 2, 3}),     // an array of integers, not a blob
        std::string("\xc1", 1),                            // not MessagePack
    };
    for (const std::string& payload : hostile) {
        EXPECT_THROW((void)decode_reply<TypeParam>(std::string(payload)), ProtocolError) << payload.size() << " bytes";
    }
}

TEST(BlobReplyStringTest, AStringResultIsThePayloadItselfNotACopy) {
    std::string payload = encode_value_reply(numbered<std::string>(3u << 20));
    const char* buffer = payload.data();
    const std::string value = decode_reply<std::string>(std::move(payload));
    EXPECT_EQ(value.data(), buffer) << "the payload's memory was not reused: the result was copied";
    EXPECT_EQ(value, numbered<std::string>(3u << 20));
}

TEST(BlobReplyStringTest, ATasksExceptionIsRethrownFromATakenPayload) {
    const std::string payload = detail::encode_exception_reply(std::make_exception_ptr(std::out_of_range("gone")));
    EXPECT_THROW((void)decode_reply<std::string>(std::string(payload)), std::out_of_range);
    EXPECT_THROW((void)decode_reply<std::vector<std::byte>>(std::string(payload)), std::out_of_range);
}

TEST(BlobReplyStringTest, AResultAboveTheFrameLimitIsALengthErrorBeforeAnythingIsKept) {
    detail::WireLimits small;
    small.max_frame_bytes = detail::blob_reply_bytes * 2;
    EXPECT_NO_THROW(encode_reply(std::string(detail::blob_reply_bytes * 2 - 7, 'x'), small));
    EXPECT_THROW(encode_reply(std::string(detail::blob_reply_bytes * 2, 'x'), small), std::length_error);
    EXPECT_THROW(encode_reply(std::vector<char>(detail::blob_reply_bytes * 2), small), std::length_error);
}

TEST(TaskArgumentsTest, AWorkerReadsALargeArgumentWhereItArrivedNotFromACopy) {
    const std::string arguments = detail::pack_value(std::tuple<std::string>(numbered<std::string>(5u << 20)));
    const std::string body = detail::encode_task(0x1234, 0x5678, arguments);
    const detail::TaskMessage task = detail::decode_task(body, {});
    EXPECT_EQ(task.invoker, 0x1234u);
    EXPECT_EQ(task.function, 0x5678u);
    EXPECT_TRUE(task.arguments == arguments);
    EXPECT_GE(task.arguments.data(), body.data());
    EXPECT_LE(task.arguments.data() + task.arguments.size(), body.data() + body.size()) << "a copy, not the body";
    for (const std::string& garbage : {std::string(), body.substr(0, body.size() - 1), body + "x",
                                        detail::pack_value(std::tuple<int, int>(1, 2)),
                                        detail::pack_value(std::tuple<int, int, int>(1, 2, 3)),
                                        detail::pack_value(std::tuple<int, std::string, std::string>(1, "f", "a"))}) {
        EXPECT_THROW(detail::decode_task(garbage, {}), ProtocolError) << garbage.size() << " bytes";
    }
}

// ---- sending ----

struct SocketPair {
    Fd owner, worker;
    SocketPair() {
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0)
            throw std::system_error(errno, std::generic_category());
        owner = Fd(fds[0]);
        worker = Fd(fds[1]);
    }
};

TEST(BlobChannelTest, AHeadAndATailArriveAsOneBodyWhereverTheRecordsCutThem) {
    SyscallInjection injection;
    injection.inject(Call::sendmsg, {.error_number = EINTR, .every = 2});
    const std::size_t record = detail::kRecordBodyBytes;
    for (std::size_t head_size : {std::size_t{0}, std::size_t{7}, record - 3, record, record + 5}) {
        for (std::size_t tail_size : {std::size_t{0}, std::size_t{1}, 3 * record + 17}) {
            SocketPair pair;
            const std::string body = numbered<std::string>(head_size + tail_size);
            const std::string_view head = std::string_view(body).substr(0, head_size);
            const std::string_view tail = std::string_view(body).substr(head_size);
            std::thread sender([&] { EXPECT_TRUE(detail::send_message(pair.worker.get(), 9, head, tail)); });
            detail::MessageReader reader(body.size());
            detail::Message got;
            ASSERT_TRUE(detail::receive_message(pair.owner.get(), reader, got));
            sender.join();
            EXPECT_EQ(got.id, 9u);
            EXPECT_TRUE(got.body.view() == body) << head_size << " + " << tail_size << " bytes arrived changed";
        }
    }
    EXPECT_GE(injection.injected(Call::sendmsg), 10);
}

// A process's reply pipe: write_reply_frame's one writev of frame header, reply head and kept value, read back as
// the parent reads it (FrameReader) and decoded by taking the payload.
void expect_whole_reply_through_a_pipe(Call call, Injected how) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    Fd read_end(fds[0]), write_end(fds[1]);
    const auto value = numbered<std::string>(64u << 20);
    std::optional<std::string> frame;
    std::thread parent([&] {
        detail::FrameReader reader;
        for (;;) {
            const std::span<char> area = reader.write_area(1u << 20);
            const ssize_t n = ::read(read_end.get(), area.data(), area.size());
            if (n <= 0) break;
            reader.commit(static_cast<std::size_t>(n));
        }
        frame = reader.next();
    });
    {
        SyscallInjection injection;
        injection.inject(call, how);
        detail::write_reply_frame(write_end.get(), encode_reply(value));
        EXPECT_GE(injection.injected(call), 1) << "the writev was never interfered with";
    }
    write_end.reset();
    parent.join();
    ASSERT_TRUE(frame.has_value()) << "no whole frame arrived";
    EXPECT_TRUE(decode_reply<std::string>(std::move(*frame)) == value) << "the reply arrived changed";
}

TEST(ReplyFrameTest, AWritevCutShortStillDeliversTheWhole64MiBReply) {
    expect_whole_reply_through_a_pipe(Call::writev, {.short_transfer = true, .times = 5});
}

TEST(ReplyFrameTest, AnInterruptedWritevStillDeliversTheWhole64MiBReply) {
    expect_whole_reply_through_a_pipe(Call::writev, {.error_number = EINTR, .times = 3});
}

TEST(ReplyFrameTest, AWritevRefusedForNowStillDeliversTheWhole64MiBReply) {
    expect_whole_reply_through_a_pipe(Call::writev, {.error_number = EAGAIN, .times = 3});
}

}  // namespace
}  // namespace sdfutures::testing
