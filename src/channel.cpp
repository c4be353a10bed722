#include "channel.hpp"
#include "sys.hpp"

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <new>

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

// The record of the body `head` then `tail` that starts at `offset` of it, as the first `count` iovecs of
// `parts` (header first): whatever part of which piece the record carries, a body given in two pieces is never
// joined into one. `length` is the body bytes it carries.
struct OutgoingRecord {
    RecordHeader header;
    iovec parts[3];
    std::size_t count = 0;
    std::size_t length = 0;

    OutgoingRecord(std::uint64_t id, std::string_view head, std::string_view tail, std::size_t offset) noexcept
        : header{id, head.size() + tail.size()} {
        length = std::min(header.total - offset, kRecordBodyBytes);
        parts[count++] = {&header, sizeof header};
        if (offset < head.size()) {
            const std::size_t from_head = std::min(head.size() - offset, length);
            parts[count++] = {const_cast<char*>(head.data() + offset), from_head};
            if (from_head < length) parts[count++] = {const_cast<char*>(tail.data()), length - from_head};
        } else {
            parts[count++] = {const_cast<char*>(tail.data() + (offset - head.size())), length};
        }
    }
    OutgoingRecord(const OutgoingRecord&) = delete;  // parts[0] points at its own header
    OutgoingRecord& operator=(const OutgoingRecord&) = delete;

    std::size_t bytes() const noexcept { return sizeof header + length; }
};

// A SOCK_SEQPACKET record is sent whole or not at all; a short count (which only the syscall seam produces) means
// the peer got a broken record, so the channel is as good as gone.
bool sent_whole(std::size_t sent, const OutgoingRecord& record) noexcept {
    if (sent == record.bytes()) return true;
    errno = EPIPE;
    return false;
}

// Sends one record (see OutgoingRecord). Returns the body bytes it carried, or -1 with errno.
ssize_t send_record(int fd, std::uint64_t id, std::string_view head, std::string_view tail, std::size_t offset,
                    int flags) noexcept {
    OutgoingRecord record(id, head, tail, offset);
    msghdr msg{};
    msg.msg_iov = record.parts;
    msg.msg_iovlen = record.count;
    ssize_t n;
    do n = sys::sendmsg(fd, &msg, flags | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0 || !sent_whole(static_cast<std::size_t>(n), record)) return -1;
    return static_cast<ssize_t>(record.length);
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

// The slots a receive fills between messages: each takes a record of any size a record may have.
struct MessageReader::Ahead {
    std::array<RecordHeader, kRecordsAhead> headers{};
    std::array<std::array<iovec, 2>, kRecordsAhead> parts{};
    std::array<mmsghdr, kRecordsAhead> records{};
    // kRecordsAhead bodies of kRecordBodyBytes, mapped rather than allocated so that only the pages records land
    // in are ever touched (a small record touches one page of its slot).
    char* bodies = nullptr;
    unsigned received = 0;  // slots the latest receive filled
    unsigned next = 0;      // the next one to hand out

    static constexpr std::size_t kBodiesBytes = std::size_t{kRecordsAhead} * kRecordBodyBytes;

    Ahead() {
        void* p = ::mmap(nullptr, kBodiesBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
        bodies = static_cast<char*>(p);
    }
    ~Ahead() { ::munmap(bodies, kBodiesBytes); }
    Ahead(const Ahead&) = delete;
    Ahead& operator=(const Ahead&) = delete;

    char* body(unsigned slot) const noexcept { return bodies + std::size_t{slot} * kRecordBodyBytes; }
    // Ready for the next receive (recvmmsg writes each slot's length and flags back).
    void arm() noexcept {
        for (unsigned i = 0; i < kRecordsAhead; ++i) {
            parts[i] = {iovec{&headers[i], sizeof(RecordHeader)}, iovec{body(i), kRecordBodyBytes}};
            records[i] = {};
            records[i].msg_hdr.msg_iov = parts[i].data();
            records[i].msg_hdr.msg_iovlen = 2;
        }
        received = next = 0;
    }
};

MessageReader::MessageReader(std::size_t max_message_bytes) : max_message_bytes_(max_message_bytes) {}
MessageReader::~MessageReader() = default;
MessageReader::MessageReader(MessageReader&&) noexcept = default;
MessageReader& MessageReader::operator=(MessageReader&&) noexcept = default;

bool MessageReader::holds_records() const noexcept {
    return !packed_.empty() || (ahead_ && ahead_->next < ahead_->received);
}

bool MessageReader::drained() const noexcept { return socket_emptied_ && !holds_records(); }

MessageReader::Got MessageReader::read_record(int fd, bool nonblocking) {
    if (!packed_.empty()) return next_packed();
    if (!holds_records()) {
        if (in_message_) return receive_into_message(fd, nonblocking);
        if (!receive_ahead(fd, nonblocking)) return Got::nothing;
    }
    const unsigned slot = ahead_->next++;
    const mmsghdr& record = ahead_->records[slot];
    const RecordHeader& header = ahead_->headers[slot];
    return accept_record(fd, header.id, header.total, ahead_->body(slot), record.msg_len, record.msg_hdr.msg_flags);
}

namespace {

// The errors a receive retries. ECONNRESET: the peer ended with messages of ours unread. Kernels report that
// once, and may do so before the records the peer sent while it lived, which are still to be read (its last
// replies among them).
bool retry_receive(int error) { return error == EINTR || error == ECONNRESET; }

}  // namespace

// Between messages: every record waiting, up to kRecordsAhead, into the slots. False when there was none.
bool MessageReader::receive_ahead(int fd, bool nonblocking) {
    if (!ahead_) ahead_ = std::make_unique<Ahead>();
    ahead_->arm();
    // Descriptors a worker sends along are not wanted: without a control buffer the kernel closes them.
    // Blocking, MSG_WAITFORONE waits for the first record and takes the others only if they are there.
    int n;
    do n = sys::recvmmsg(fd, ahead_->records.data(), kRecordsAhead, nonblocking ? MSG_DONTWAIT : MSG_WAITFORONE);
    while (n < 0 && retry_receive(errno));
    socket_emptied_ = false;
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
        throw SystemError("recvmmsg", errno, "reading the worker's channel");
    }
    // 0 only when asked for no record; at end of stream the kernel fills slots with empty records.
    if (n == 0) return false;
    ahead_->received = static_cast<unsigned>(n);
    socket_emptied_ = ahead_->received < kRecordsAhead;
    return true;
}

// Inside a message: its next record straight into its body.
MessageReader::Got MessageReader::receive_into_message(int fd, bool nonblocking) {
    RecordHeader header{};
    const std::size_t room = std::min(partial_.body.size() - received_, kRecordBodyBytes);
    iovec parts[2] = {{&header, sizeof header}, {partial_.body.room(received_, room), room}};
    msghdr msg{};
    msg.msg_iov = parts;
    msg.msg_iovlen = 2;
    socket_emptied_ = false;  // one record was asked for: what else is there is unknown
    ssize_t n;
    do n = sys::recvmsg(fd, &msg, nonblocking ? MSG_DONTWAIT : 0);
    while (n < 0 && retry_receive(errno));
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return Got::nothing;
        throw SystemError("recvmsg", errno, "reading the worker's channel");
    }
    return accept_record(fd, header.id, header.total, nullptr, static_cast<std::size_t>(n), msg.msg_flags);
}

// Checks one received record of `length` bytes (header included) and adds its body to the message: from
// `staged_body` (a receive-ahead slot), or already in place when that is null.
MessageReader::Got MessageReader::accept_record(int fd, std::uint64_t id, std::uint64_t total,
                                                const char* staged_body, std::size_t length, int flags) {
    if (length == 0) {
        // End of stream and an empty record both read as 0 bytes; only the first comes with a hang-up. Slots
        // that might follow are not looked at: nothing more is read after either.
        if (ahead_) ahead_->next = ahead_->received;
        if (sys::poll_now(fd, POLLRDHUP) & (POLLHUP | POLLRDHUP)) return Got::end;
        broken("an empty record (every record has a 16-byte header)");
    }
    if (flags & MSG_TRUNC)
        broken(in_message_ ? "a record whose body runs past the " + std::to_string(partial_.body.size()) +
                                 "-byte message it belongs to"
                           : "a record larger than " + std::to_string(kRecordHeaderBytes + kRecordBodyBytes) + " bytes");
    if (length < kRecordHeaderBytes)
        broken("a record of " + std::to_string(length) + " bytes, shorter than its 16-byte header");
    const std::size_t body = length - kRecordHeaderBytes;
    if (id == kPackedRecordId) {
        // Only between messages, and only in a slot: a record read straight into a message's body is part of it.
        if (in_message_ || !staged_body)
            broken("a packed record in the middle of message " + std::to_string(partial_.id));
        if (total != body || body == 0)
            broken("a packed record of " + std::to_string(body) + " body bytes that says " + std::to_string(total));
        packed_ = {staged_body, body};
        return next_packed();
    }
    if (!in_message_) {
        if (total > max_message_bytes_)
            broken("a message of " + std::to_string(total) + " bytes, more than the limit of " +
                   std::to_string(max_message_bytes_) + " (max_result_bytes)");
        if (body > total)
            broken("a record of " + std::to_string(body) + " body bytes in a message of " + std::to_string(total));
        partial_.id = id;
        partial_.body = MessageBody(static_cast<std::size_t>(total));
        if (body) std::memcpy(partial_.body.room(0, body), staged_body, body);
        received_ = body;
        in_message_ = true;
    } else {
        if (id != partial_.id || total != partial_.body.size())
            broken("a record of message " + std::to_string(id) + " (" + std::to_string(total) + " bytes) while message " +
                   std::to_string(partial_.id) + " had " + std::to_string(received_) + " of its " +
                   std::to_string(partial_.body.size()) + " bytes");
        if (body == 0) broken("an empty record in the middle of message " + std::to_string(partial_.id));
        // A slot takes any whole record, so the kernel's MSG_TRUNC cannot say that one runs past its message,
        // as it does for a record received straight into the body: checked here.
        if (staged_body) {
            if (body > partial_.body.size() - received_)
                broken("a record whose body runs past the " + std::to_string(partial_.body.size()) +
                       "-byte message it belongs to");
            std::memcpy(partial_.body.room(received_, body), staged_body, body);
        }
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

// The next entry of a packed record, a whole message: it stays in the slot until handed out, and is checked then.
MessageReader::Got MessageReader::next_packed() {
    if (packed_.size() < kRecordHeaderBytes)
        broken("a packed record with " + std::to_string(packed_.size()) +
               " bytes left, less than an entry's 16-byte header");
    RecordHeader entry;
    std::memcpy(&entry, packed_.data(), sizeof entry);
    packed_.remove_prefix(sizeof entry);
    if (entry.id == kPackedRecordId) broken("a packed record inside a packed record");
    if (entry.total > packed_.size())
        broken("a packed entry of " + std::to_string(entry.total) + " bytes with " + std::to_string(packed_.size()) +
               " left in its record");
    if (entry.total > max_message_bytes_)
        broken("a message of " + std::to_string(entry.total) + " bytes, more than the limit of " +
               std::to_string(max_message_bytes_) + " (max_result_bytes)");
    const auto size = static_cast<std::size_t>(entry.total);
    complete_.id = entry.id;
    complete_.body = MessageBody(size);
    if (size) std::memcpy(complete_.body.room(0, size), packed_.data(), size);
    packed_.remove_prefix(size);
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

// The records of one sendmmsg: each is part of one message (plain) or several whole ones (packed), its iovecs
// pointing into the queued bodies.
struct MessageWriter::Batch {
    static constexpr unsigned kRecords = MessageReader::kRecordsAhead;
    // Enough for a window of small tasks in one record; bounded so the iovecs stay far below UIO_MAXIOV.
    static constexpr std::size_t kEntriesPerRecord = 64;

    struct Record {
        RecordHeader header;
        std::array<RecordHeader, kEntriesPerRecord> entries;
        std::array<iovec, 1 + 2 * kEntriesPerRecord> parts;
        std::size_t parts_used = 0;
        std::size_t bytes = 0;       // the whole record, header included
        std::size_t messages = 0;    // packed: the whole messages it carries; plain: 0
        std::size_t body_bytes = 0;  // plain: the bytes of the front message's body it carries

        // Packs the whole messages from `first` on that fit in one record (at most kEntriesPerRecord): how many
        // it packed, or 0 when fewer than two fit (one goes as a plain record: nothing is gained by packing it).
        template <typename Queue>
        std::size_t pack(const Queue& queue, std::size_t first) noexcept {
            std::size_t room = kRecordBodyBytes, n = 0, part = 1;
            for (; first + n < queue.size() && n < kEntriesPerRecord; ++n) {
                const auto& message = queue[first + n];
                const std::size_t size = message.body.size();
                if (kRecordHeaderBytes + size > room) break;
                room -= kRecordHeaderBytes + size;
                entries[n] = {message.id, size};
                parts[part++] = {&entries[n], kRecordHeaderBytes};
                if (size) parts[part++] = {const_cast<char*>(message.body.data()), size};
            }
            if (n < 2) return 0;
            header = {kPackedRecordId, kRecordBodyBytes - room};
            parts[0] = {&header, sizeof header};
            parts_used = part;
            bytes = sizeof header + header.total;
            messages = n;
            body_bytes = 0;
            return n;
        }

        // The record of `body` that starts at `offset`.
        void plain(std::uint64_t id, const std::string& body, std::size_t offset) noexcept {
            const std::size_t length = std::min(body.size() - offset, kRecordBodyBytes);
            header = {id, body.size()};
            parts[0] = {&header, sizeof header};
            parts[1] = {const_cast<char*>(body.data() + offset), length};
            parts_used = 2;
            bytes = sizeof header + length;
            messages = 0;
            body_bytes = length;
        }
    };
    std::array<Record, kRecords> records;
    std::array<mmsghdr, kRecords> headers;
    unsigned count = 0;
};

MessageWriter::MessageWriter() : batch_(std::make_unique<Batch>()) {}
MessageWriter::~MessageWriter() = default;
MessageWriter::MessageWriter(MessageWriter&&) noexcept = default;
MessageWriter& MessageWriter::operator=(MessageWriter&&) noexcept = default;

// The next records in order: the rest of the front message, then the messages behind it, small ones packed.
void MessageWriter::build(Batch& batch) const noexcept {
    batch.count = 0;
    std::size_t m = 0, offset = offset_;
    while (batch.count < Batch::kRecords && m < queue_.size()) {
        Batch::Record& r = batch.records[batch.count];
        if (const std::size_t packed = offset == 0 ? r.pack(queue_, m) : 0) {
            m += packed;
        } else {
            r.plain(queue_[m].id, queue_[m].body, offset);
            offset += r.body_bytes;
            if (offset >= queue_[m].body.size()) ++m, offset = 0;
        }
        mmsghdr& h = batch.headers[batch.count++];
        h = {};
        h.msg_hdr.msg_iov = r.parts.data();
        h.msg_hdr.msg_iovlen = r.parts_used;
    }
}

// Drops what the first `sent` records of the batch carried. False (errno EPIPE) for a record the kernel took
// only in part, which a SOCK_SEQPACKET socket never does but the syscall seam may: the peer got a broken record.
bool MessageWriter::advance(const Batch& batch, unsigned sent) noexcept {
    for (unsigned i = 0; i < sent; ++i) {
        const Batch::Record& r = batch.records[i];
        if (batch.headers[i].msg_len != r.bytes) {
            errno = EPIPE;
            return false;
        }
        if (r.messages) {
            for (std::size_t k = 0; k < r.messages; ++k) queue_.pop_front();
            continue;
        }
        offset_ += r.body_bytes;
        if (offset_ >= queue_.front().body.size()) {
            queue_.pop_front();
            offset_ = 0;
        }
    }
    return true;
}

MessageWriter::Sent MessageWriter::flush(int fd) noexcept {
    while (!queue_.empty()) {
        build(*batch_);
        int n;
        do n = sys::sendmmsg(fd, batch_->headers.data(), batch_->count, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? Sent::blocked : Sent::broken;
        if (!advance(*batch_, static_cast<unsigned>(n))) return Sent::broken;
    }
    return Sent::all;
}

}  // namespace sdfutures::detail
