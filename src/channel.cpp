#include "channel.hpp"
#include "sys.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "sdfutures/detail/huge_pages.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures::detail {
namespace {

static_assert(std::endian::native == std::endian::little, "the record header is written as the machine's words");

struct RecordHeader {
    std::uint64_t id;
    std::uint64_t total;
};
static_assert(sizeof(RecordHeader) == kRecordHeaderBytes);

[[noreturn]] void broken(const std::string& what) { throw ProtocolError("the worker's channel: " + what); }

// Sends the record of the body `head` then `tail` that starts at `offset` of it: one sendmsg whatever part of
// which piece the record carries, so a body given in two pieces is never joined into one. Returns the body bytes
// it carried, or -1 with errno.
ssize_t send_record(int fd, std::uint64_t id, std::string_view head, std::string_view tail, std::size_t offset,
                    int flags) noexcept {
    const std::size_t total = head.size() + tail.size();
    RecordHeader header{id, total};
    const std::size_t length = std::min(total - offset, kRecordBodyBytes);
    iovec parts[3] = {{&header, sizeof header}, {}, {}};
    std::size_t count = 1;
    if (offset < head.size()) {
        const std::size_t from_head = std::min(head.size() - offset, length);
        parts[count++] = {const_cast<char*>(head.data() + offset), from_head};
        if (from_head < length) parts[count++] = {const_cast<char*>(tail.data()), length - from_head};
    } else {
        parts[count++] = {const_cast<char*>(tail.data() + (offset - head.size())), length};
    }
    msghdr msg{};
    msg.msg_iov = parts;
    msg.msg_iovlen = count;
    ssize_t n;
    do n = sys::sendmsg(fd, &msg, flags | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    // A SOCK_SEQPACKET record is sent whole or not at all; a short count (which only the syscall seam produces)
    // means the peer got a broken record, so the channel is as good as gone.
    if (static_cast<std::size_t>(n) != sizeof header + length) {
        errno = EPIPE;
        return -1;
    }
    return static_cast<ssize_t>(length);
}

}  // namespace

MessageBody::MessageBody(std::size_t size) : size_(size) {
    bytes_.reserve(size);
    advise_huge_pages(bytes_.data(), size);
}

char* MessageBody::room(std::size_t offset, std::size_t count) {
    bytes_.resize(offset + count);
    return bytes_.data() + offset;
}

MessageReader::Got MessageReader::read_record(int fd, bool nonblocking) {
    RecordHeader header{};
    iovec parts[2] = {{&header, sizeof header}, {}};
    if (in_message_) {  // straight into the message's own buffer: a large body is never copied
        const std::size_t room = std::min(partial_.body.size() - received_, kRecordBodyBytes);
        parts[1] = {partial_.body.room(received_, room), room};
    } else {
        if (!staging_) staging_.reset(new char[kRecordBodyBytes]);
        parts[1] = {staging_.get(), kRecordBodyBytes};
    }
    msghdr msg{};
    msg.msg_iov = parts;
    msg.msg_iovlen = 2;
    ssize_t n;
    // Descriptors a worker sends along are not wanted: without a control buffer the kernel closes them.
    // ECONNRESET: the peer ended with messages of ours unread. Kernels report that once, and may do so before the
    // records the peer sent while it lived, which are still to be read (its last replies among them).
    do n = sys::recvmsg(fd, &msg, nonblocking ? MSG_DONTWAIT : 0);
    while (n < 0 && (errno == EINTR || errno == ECONNRESET));
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return Got::nothing;
        throw SystemError("recvmsg", errno, "reading the worker's channel");
    }
    if (n == 0) {
        // End of stream and an empty record both read as 0 bytes; only the first comes with a hang-up.
        if (sys::poll_now(fd, POLLRDHUP) & (POLLHUP | POLLRDHUP)) return Got::end;
        broken("an empty record (every record has a 16-byte header)");
    }
    const auto length = static_cast<std::size_t>(n);
    if (msg.msg_flags & MSG_TRUNC)
        broken(in_message_ ? "a record whose body runs past the " + std::to_string(partial_.body.size()) +
                                 "-byte message it belongs to"
                           : "a record larger than " + std::to_string(kRecordHeaderBytes + kRecordBodyBytes) + " bytes");
    if (length < kRecordHeaderBytes)
        broken("a record of " + std::to_string(length) + " bytes, shorter than its 16-byte header");
    const std::size_t body = length - kRecordHeaderBytes;
    if (!in_message_) {
        if (header.total > max_message_bytes_)
            broken("a message of " + std::to_string(header.total) + " bytes, more than the limit of " +
                   std::to_string(max_message_bytes_) + " (max_result_bytes)");
        if (body > header.total)
            broken("a record of " + std::to_string(body) + " body bytes in a message of " +
                   std::to_string(header.total));
        partial_.id = header.id;
        partial_.body = MessageBody(static_cast<std::size_t>(header.total));
        if (body) std::memcpy(partial_.body.room(0, body), staging_.get(), body);
        received_ = body;
        in_message_ = true;
    } else {
        if (header.id != partial_.id || header.total != partial_.body.size())
            broken("a record of message " + std::to_string(header.id) + " (" + std::to_string(header.total) +
                   " bytes) while message " + std::to_string(partial_.id) + " had " + std::to_string(received_) +
                   " of its " + std::to_string(partial_.body.size()) + " bytes");
        if (body == 0) broken("an empty record in the middle of message " + std::to_string(partial_.id));
        received_ += body;
        partial_.body.keep(received_);
    }
    if (received_ < partial_.body.size()) return Got::partial;
    in_message_ = false;
    received_ = 0;
    complete_ = std::move(partial_);
    partial_ = Message{};
    return Got::message;
}

bool send_message(int fd, std::uint64_t id, std::string_view head, std::string_view tail) noexcept {
    const std::size_t total = head.size() + tail.size();
    std::size_t offset = 0;
    do {
        ssize_t sent = send_record(fd, id, head, tail, offset, 0);
        if (sent < 0) return false;
        offset += static_cast<std::size_t>(sent);
    } while (offset < total);
    return true;
}

bool receive_message(int fd, MessageReader& reader, Message& out) {
    for (;;) {
        MessageReader::Got got;
        try {
            got = reader.read_record(fd, false);
        } catch (const ProtocolError&) {
            throw;
        } catch (const Error&) {
            return false;
        }
        if (got == MessageReader::Got::end) return false;
        if (got == MessageReader::Got::message) {
            out = reader.take();
            return true;
        }
    }
}

void MessageWriter::queue(std::uint64_t id, std::string body) { queue_.push_back({id, std::move(body)}); }

MessageWriter::Sent MessageWriter::flush(int fd) noexcept {
    while (!queue_.empty()) {
        Pending& front = queue_.front();
        ssize_t sent = send_record(fd, front.id, front.body, {}, offset_, MSG_DONTWAIT);
        if (sent < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? Sent::blocked : Sent::broken;
        offset_ += static_cast<std::size_t>(sent);
        if (offset_ >= front.body.size()) {
            queue_.pop_front();
            offset_ = 0;
        }
    }
    return Sent::all;
}

}  // namespace sdfutures::detail
