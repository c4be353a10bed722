// The pool's channel (src/channel.hpp) when the kernel is unkind: every EINTR, EAGAIN and short transfer the
// syscall seam (src/sys.hpp) can inject is either retried without losing or duplicating a record, or reported as
// a broken channel; never read as a message. No manager: socket pairs and pipes of this process.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "channel.hpp"
#include "fd_util.hpp"
#include "sdfutures/error.hpp"
#include "support/syscall_injection.hpp"

namespace sdfutures::testing {
namespace {

using detail::Fd;
using detail::Message;
using detail::MessageReader;
using detail::MessageWriter;

struct SocketPair {
    Fd owner, worker;
    SocketPair() {
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) throw std::system_error(errno, std::generic_category());
        owner = Fd(fds[0]);
        worker = Fd(fds[1]);
    }
};

// A body of `size` bytes in which every position says where it is, so a lost, repeated or reordered record shows.
std::string numbered_body(std::size_t size) {
    std::string body(size, '\0');
    for (std::size_t i = 0; i < size; ++i) body[i] = static_cast<char>(i * 131 + i / 997);
    return body;
}

TEST(ChannelTest, EintrOnEverySecondSendAndReceiveNeitherLosesNorRepeatsARecord) {
    SocketPair pair;
    SyscallInjection injection;
    injection.inject(Call::sendmsg, {.error_number = EINTR, .every = 2});
    // The first three receives, whichever they are: one receive may take all the records waiting.
    injection.inject(Call::recvmsg, {.error_number = EINTR, .times = 3});
    // Five records and a bit: more than the socket buffer, so the sender blocks and the two interleave.
    const std::string body = numbered_body(5 * detail::kRecordBodyBytes + 1234);
    std::thread sender([&] { EXPECT_TRUE(detail::send_message(pair.worker.get(), 42, body)); });
    MessageReader reader(body.size());
    Message got;
    ASSERT_TRUE(detail::receive_message(pair.owner.get(), reader, got));
    sender.join();
    EXPECT_EQ(got.id, 42u);
    EXPECT_TRUE(got.body.view() == body) << "the message arrived changed";
    EXPECT_GE(injection.injected(Call::sendmsg), 3);
    EXPECT_GE(injection.injected(Call::recvmsg), 3);
}

TEST(ChannelTest, EagainOnTheOwnersNonBlockingSendsKeepsTheQueueUntilTheSocketTakesIt) {
    SocketPair pair;
    SyscallInjection injection;
    // The first two sends (each of a batch of records) find the socket full.
    injection.inject(Call::sendmsg, {.error_number = EAGAIN, .only_nonblocking = true, .times = 2});
    MessageWriter writer;
    const std::string first = numbered_body(3 * detail::kRecordBodyBytes / 2), second = "second";
    writer.queue(7, first);
    writer.queue(8, second);
    int blocked = 0;
    MessageWriter::Sent sent;
    while ((sent = writer.flush(pair.owner.get())) == MessageWriter::Sent::blocked) ++blocked;
    EXPECT_EQ(sent, MessageWriter::Sent::all);
    EXPECT_TRUE(writer.empty());
    EXPECT_GE(blocked, 2) << "each injected EAGAIN is a 'blocked' with the rest still queued";
    MessageReader reader(first.size());
    Message got;
    ASSERT_TRUE(detail::receive_message(pair.worker.get(), reader, got));
    EXPECT_EQ(got.id, 7u);
    EXPECT_TRUE(got.body.view() == first);
    ASSERT_TRUE(detail::receive_message(pair.worker.get(), reader, got));
    EXPECT_EQ(got.id, 8u);
    EXPECT_EQ(got.body.view(), second);
}

// A record as a hostile worker may write it: any header, any body.
void send_raw_record(int fd, std::uint64_t id, std::uint64_t total, const std::string& body) {
    std::string record(16, '\0');
    std::memcpy(record.data(), &id, 8);
    std::memcpy(record.data() + 8, &total, 8);
    record += body;
    ASSERT_EQ(::send(fd, record.data(), record.size(), 0), static_cast<ssize_t>(record.size()));
}

TEST(ChannelTest, TheWritersBatchesKeepEveryMessageWholeAndInOrder) {
    SocketPair pair;
    MessageWriter writer;
    // More messages than one sendmmsg takes, a multi-record one among them, and an empty one.
    std::vector<std::string> bodies;
    for (int i = 0; i < 3 * static_cast<int>(MessageReader::kRecordsAhead); ++i)
        bodies.push_back(i == 5 ? numbered_body(detail::kRecordBodyBytes + 100) : i == 9 ? "" : "task " + std::to_string(i));
    for (std::size_t i = 0; i < bodies.size(); ++i) writer.queue(i + 1, bodies[i]);
    std::thread sender([&] {
        MessageWriter::Sent sent;
        while ((sent = writer.flush(pair.owner.get())) == MessageWriter::Sent::blocked) ::usleep(100);
        EXPECT_EQ(sent, MessageWriter::Sent::all);
    });
    MessageReader reader(1 << 20);
    for (std::size_t i = 0; i < bodies.size(); ++i) {
        Message got;
        ASSERT_TRUE(detail::receive_message(pair.worker.get(), reader, got));
        EXPECT_EQ(got.id, i + 1);
        EXPECT_TRUE(got.body.view() == bodies[i]) << "message " << i + 1;
    }
    sender.join();
}

TEST(ChannelTest, SmallMessagesQueuedTogetherTravelPackedInOneRecord) {
    SocketPair pair;
    MessageWriter writer;
    for (std::uint64_t id = 1; id <= 20; ++id) writer.queue(id, "task " + std::to_string(id));
    ASSERT_EQ(writer.flush(pair.owner.get()), MessageWriter::Sent::all);
    // What the kernel carries: one record, not twenty.
    char record[4096];
    ASSERT_GT(::recv(pair.worker.get(), record, sizeof record, MSG_PEEK), 16);
    std::uint64_t id;
    std::memcpy(&id, record, 8);
    EXPECT_EQ(id, detail::kPackedRecordId);
    MessageReader reader(64);
    for (std::uint64_t expected = 1; expected <= 20; ++expected) {
        ASSERT_EQ(reader.read_record(pair.worker.get(), true), MessageReader::Got::message);
        Message got = reader.take();
        EXPECT_EQ(got.id, expected);
        EXPECT_EQ(got.body.view(), "task " + std::to_string(expected));
        EXPECT_EQ(reader.holds_records(), expected < 20) << "the rest of the packed record is the reader's";
    }
    EXPECT_EQ(reader.read_record(pair.worker.get(), true), MessageReader::Got::nothing) << "the socket held one record";
}

// A packed record as a hostile peer may write it, and what the reader must say of it.
struct BadPacked {
    std::string name;
    std::string body;  // the packed record's body; its header says its true size unless `total` does otherwise
    std::string expected;
    std::uint64_t total = ~std::uint64_t{0};
};

std::string entry(std::uint64_t id, std::uint64_t total, const std::string& body) {
    std::string e(16, '\0');
    std::memcpy(e.data(), &id, 8);
    std::memcpy(e.data() + 8, &total, 8);
    return e + body;
}

TEST(ChannelTest, EveryBrokenPackedRecordIsAProtocolErrorSayingWhatWasWrong) {
    const std::vector<BadPacked> cases = {
        {"an entry running past its record", entry(1, 10, "abc"), "a packed entry of 10 bytes with 3 left"},
        {"bytes after the last entry", entry(1, 3, "abc") + "xyz", "3 bytes left, less than an entry's 16-byte header"},
        {"a packed record inside one", entry(detail::kPackedRecordId, 0, "") + entry(1, 0, ""), "inside a packed record"},
        {"a header that lies about the size", entry(1, 3, "abc"), "that says 99", 99},
        {"no entries at all", "", "a packed record of 0 body bytes"},
        {"an entry over the reader's limit", entry(1, 100, std::string(100, 'x')), "more than the limit of 64"},
    };
    for (const auto& c : cases) {
        SocketPair pair;
        send_raw_record(pair.worker.get(), detail::kPackedRecordId, c.total == ~std::uint64_t{0} ? c.body.size() : c.total,
                        c.body);
        MessageReader reader(64);
        try {
            // Entries before the broken one are handed out; the broken one throws.
            while (reader.read_record(pair.owner.get(), true) == MessageReader::Got::message) reader.take();
            ADD_FAILURE() << c.name << ": taken without an error";
        } catch (const ProtocolError& e) {
            EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << c.name << ": " << e.what();
        }
    }
}

TEST(ChannelTest, APackedRecordInTheMiddleOfAMessageIsAProtocolError) {
    SocketPair pair;
    send_raw_record(pair.worker.get(), 4, 10, "123456");
    send_raw_record(pair.worker.get(), detail::kPackedRecordId, 16 + 4, entry(5, 4, "four"));
    MessageReader reader(64);
    EXPECT_EQ(reader.read_record(pair.owner.get(), true), MessageReader::Got::partial);
    EXPECT_THROW(reader.read_record(pair.owner.get(), true), ProtocolError);
}

TEST(ChannelTest, RecordsReceivedAheadAreHandedOutInOrderAndTheReaderSaysWhenItHoldsNone) {
    SocketPair pair;
    for (std::uint64_t id = 1; id <= 5; ++id) ASSERT_TRUE(detail::send_message(pair.worker.get(), id, "reply " + std::to_string(id)));
    MessageReader reader(64);
    EXPECT_FALSE(reader.holds_records());
    for (std::uint64_t id = 1; id <= 5; ++id) {
        ASSERT_EQ(reader.read_record(pair.owner.get(), true), MessageReader::Got::message);
        Message got = reader.take();
        EXPECT_EQ(got.id, id);
        EXPECT_EQ(got.body.view(), "reply " + std::to_string(id));
        // One receive took all five: the other four are the reader's, not the socket's, until handed out.
        EXPECT_EQ(reader.holds_records(), id < 5);
        EXPECT_EQ(reader.drained(), id == 5) << "fewer than kRecordsAhead were waiting, so the socket was empty";
    }
    EXPECT_EQ(reader.read_record(pair.owner.get(), true), MessageReader::Got::nothing);
}

TEST(ChannelTest, AMessageBegunInAReceiveAheadIsCompletedFromItsSlots) {
    SocketPair pair;
    const std::string big = numbered_body(detail::kRecordBodyBytes + 7);  // two records, both waiting with the others
    std::thread sender([&] {
        EXPECT_TRUE(detail::send_message(pair.worker.get(), 1, "small"));
        EXPECT_TRUE(detail::send_message(pair.worker.get(), 2, big));
        EXPECT_TRUE(detail::send_message(pair.worker.get(), 3, "after"));
    });
    sender.join();
    MessageReader reader(big.size());
    std::vector<Message> got;
    while (got.size() < 3) {
        const auto r = reader.read_record(pair.owner.get(), false);
        ASSERT_NE(r, MessageReader::Got::end);
        if (r == MessageReader::Got::message) got.push_back(reader.take());
    }
    EXPECT_EQ(got[0].body.view(), "small");
    EXPECT_EQ(got[1].id, 2u);
    EXPECT_TRUE(got[1].body.view() == big);
    EXPECT_EQ(got[2].body.view(), "after");
}

TEST(ChannelTest, AReceivedAheadRecordRunningPastItsMessageIsAProtocolError) {
    SocketPair pair;
    // Both records land in one receive's slots, where the kernel cannot say MSG_TRUNC for the second.
    send_raw_record(pair.worker.get(), 4, 10, "123456");
    send_raw_record(pair.worker.get(), 4, 10, "78901234");
    MessageReader reader(64);
    EXPECT_EQ(reader.read_record(pair.owner.get(), true), MessageReader::Got::partial);
    try {
        reader.read_record(pair.owner.get(), true);
        FAIL() << "a record past the end of its message was taken";
    } catch (const ProtocolError& e) {
        EXPECT_NE(std::string(e.what()).find("runs past the 10-byte message"), std::string::npos) << e.what();
    }
}

TEST(ChannelTest, AShortSendInAWritersBatchIsABrokenChannel) {
    SocketPair pair;
    SyscallInjection injection;
    injection.inject(Call::sendmsg, {.short_transfer = true, .only_nonblocking = true});
    MessageWriter writer;
    writer.queue(1, "first");
    writer.queue(2, "second");
    errno = 0;
    EXPECT_EQ(writer.flush(pair.owner.get()), MessageWriter::Sent::broken);
    EXPECT_EQ(errno, EPIPE);
    MessageReader reader(64);
    EXPECT_THROW(reader.read_record(pair.worker.get(), true), ProtocolError) << "the cut record is never a message";
}

TEST(ChannelTest, EagainOnANonBlockingReadIsNothingAndTheRecordComesOnTheNextRead) {
    SocketPair pair;
    ASSERT_TRUE(detail::send_message(pair.worker.get(), 5, "five"));
    SyscallInjection injection;
    injection.inject(Call::recvmsg, {.error_number = EAGAIN, .only_nonblocking = true, .every = 2});
    MessageReader reader(64);
    EXPECT_EQ(reader.read_record(pair.owner.get(), true), MessageReader::Got::message);  // call 1: real
    EXPECT_EQ(reader.take().body.view(), "five");
    ASSERT_TRUE(detail::send_message(pair.worker.get(), 6, "six"));
    EXPECT_EQ(reader.read_record(pair.owner.get(), true), MessageReader::Got::nothing);  // call 2: injected
    EXPECT_EQ(reader.read_record(pair.owner.get(), true), MessageReader::Got::message);
    Message got = reader.take();
    EXPECT_EQ(got.id, 6u);
    EXPECT_EQ(got.body.view(), "six");
}

TEST(ChannelTest, AShortSendIsABrokenChannelAndTheCutRecordIsAProtocolErrorForThePeer) {
    SocketPair pair;
    SyscallInjection injection;
    injection.inject(Call::sendmsg, {.short_transfer = true});
    errno = 0;
    EXPECT_FALSE(detail::send_message(pair.worker.get(), 9, "0123456789"));
    EXPECT_EQ(errno, EPIPE);
    MessageReader reader(64);
    EXPECT_THROW(reader.read_record(pair.owner.get(), true), ProtocolError)  // 13 bytes: less than a header
        << "a record cut short must never be taken for a message";
}

TEST(ChannelTest, AShortSendInTheMiddleOfAMessageLeavesThePeerMidMessageAtTheEnd) {
    SocketPair pair;
    const std::string body = numbered_body(2 * detail::kRecordBodyBytes);
    {
        SyscallInjection injection;
        injection.inject(Call::sendmsg, {.short_transfer = true});
        EXPECT_FALSE(detail::send_message(pair.worker.get(), 3, body));
    }
    pair.worker.reset();
    MessageReader reader(body.size());
    EXPECT_EQ(reader.read_record(pair.owner.get(), true), MessageReader::Got::partial);
    EXPECT_EQ(reader.read_record(pair.owner.get(), true), MessageReader::Got::end);
    EXPECT_TRUE(reader.mid_message()) << "the pool calls this a violation and kills the worker";
}

TEST(ChannelTest, WriteAllSurvivesShortWritesAndEintrWithEveryByteInOrder) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    Fd read_end(fds[0]), write_end(fds[1]);
    const std::string data = numbered_body(1 << 20);
    std::string received;
    std::thread reader([&] {
        char buffer[65536];
        ssize_t n;
        while ((n = ::read(read_end.get(), buffer, sizeof buffer)) > 0) received.append(buffer, static_cast<std::size_t>(n));
    });
    {
        SyscallInjection injection;
        injection.inject(Call::write, {.short_transfer = true});  // every write: half of what is left
        EXPECT_TRUE(detail::write_all(write_end.get(), data.data(), data.size()));
        EXPECT_GE(injection.injected(Call::write), 10);
        injection.inject(Call::write, {.error_number = EINTR, .every = 2});
        EXPECT_TRUE(detail::write_all(write_end.get(), data.data(), data.size()));
    }
    write_end.reset();
    reader.join();
    EXPECT_TRUE(received == data + data);
}

// A pipe holding `data`, its write end closed: what read_to_end reads to its end.
Fd pipe_holding(const std::string& data) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category());
    Fd read_end(fds[0]), write_end(fds[1]);
    ::fcntl(write_end.get(), F_SETPIPE_SZ, static_cast<int>(std::max<std::size_t>(data.size(), 4096)));
    if (!detail::write_all(write_end.get(), data.data(), data.size())) throw std::runtime_error("write_all");
    return read_end;
}

TEST(ChannelTest, ReadToEndSurvivesEintrWithEveryByteInOrder) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    Fd read_end(fds[0]), write_end(fds[1]);
    const std::string data = numbered_body(1 << 20);  // far more than a pipe holds: many reads, the writer waits
    std::thread writer([&] {
        EXPECT_TRUE(detail::write_all(write_end.get(), data.data(), data.size()));
        write_end.reset();
    });
    SyscallInjection injection;
    injection.inject(Call::read, {.error_number = EINTR, .every = 2});
    std::optional<std::string> got = detail::read_to_end(read_end.get(), data.size());
    writer.join();
    ASSERT_TRUE(got.has_value()) << std::strerror(errno);
    EXPECT_TRUE(*got == data);
    EXPECT_GE(injection.injected(Call::read), 100);
}

TEST(ChannelTest, ReadToEndTakesUpToItsBoundAndNoMore) {
    const std::string data = numbered_body(10000);
    EXPECT_EQ(detail::read_to_end(pipe_holding(data).get(), data.size()), data) << "exactly the bound";
    EXPECT_EQ(detail::read_to_end(pipe_holding(data).get(), 1 << 20), data) << "less than the bound";
    EXPECT_EQ(detail::read_to_end(pipe_holding("").get(), 16), std::string()) << "nothing is no error";
    errno = 0;
    EXPECT_EQ(detail::read_to_end(pipe_holding(data).get(), data.size() - 1), std::nullopt) << "one byte too many";
    EXPECT_EQ(errno, EFBIG);
    errno = 0;
    EXPECT_EQ(detail::read_to_end(pipe_holding("x").get(), 0), std::nullopt);
    EXPECT_EQ(errno, EFBIG);
}

TEST(ChannelTest, ReadToEndReportsAFailedReadWithItsErrno) {
    const std::string data = numbered_body(10000);
    {
        SyscallInjection injection;
        injection.inject(Call::read, {.error_number = EIO, .every = 2});  // the second read fails
        errno = 0;
        EXPECT_EQ(detail::read_to_end(pipe_holding(data).get(), data.size()), std::nullopt);
        EXPECT_EQ(errno, EIO);
        EXPECT_EQ(injection.injected(Call::read), 1);
    }
    Fd closed = pipe_holding(data);
    const int stale = closed.get();
    closed.reset();
    errno = 0;
    EXPECT_EQ(detail::read_to_end(stale, data.size()), std::nullopt);
    EXPECT_EQ(errno, EBADF);
}

TEST(ChannelTest, AFailingReadIsASystemErrorThatKeepsItsErrorCode) {
    MessageReader reader(64);
    Fd closed;
    {
        SocketPair pair;
        closed = std::move(pair.owner);
    }
    const int stale = closed.get();
    closed.reset();  // a descriptor number that is not open now
    try {
        reader.read_record(stale, true);
        FAIL() << "a read of a closed descriptor succeeded";
    } catch (const SystemError& e) {
        EXPECT_EQ(e.call(), "recvmmsg");
        EXPECT_EQ(e.code(), std::errc::bad_file_descriptor);
        EXPECT_EQ(e.code().value(), EBADF);
        EXPECT_NE(std::string(e.what()).find("EBADF"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace sdfutures::testing
