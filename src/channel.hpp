#pragma once
// The pool's channel between the owner and a worker: messages over a SOCK_SEQPACKET socket pair, each message
// split into records. Private to the library.
//
// Why records and not a byte stream: whatever runs in a worker may write to the channel's descriptor itself. On a
// stream, a task that wrote half a frame and returned would have the library's own reply swallowed into that half
// frame, and the owner would wait forever for bytes nobody sends. The kernel keeps SOCK_SEQPACKET records apart,
// so every write a task makes is a record of its own, and the library's reply that follows cannot merge with it:
// the owner sees a record that breaks the layout, or a message that does not decode, or one with the wrong id —
// and in each case kills that worker at once (see pool.cpp).
//
// Layout (little-endian):
//
//     record  := header body
//     header  := id total          16 bytes
//     id      := u64               the message's id: the task it carries or answers; 0 for bootstrap messages
//     total   := u64               the whole message's body size, the same in each of its records
//     body    := 0 .. kRecordBodyBytes bytes, the next part of the message's body
//
// A message is the records with one id, in order, until their bodies add up to `total` (a message of 0 bytes is
// one record with an empty body). Records of two messages never interleave.
//
// A packed record (id kPackedRecordId, `total` its own body size) carries two or more whole messages, each as
// an entry := id total body, the entries filling the body exactly. The owner packs the small tasks it sends a
// worker at once: each record costs the kernel an allocation, a copy and a wake-up whatever its size, which is
// most of what a trivial task costs the dispatcher. Replies are never packed: a worker sends each as its task
// returns (fork_server.cpp says why). A reader takes packed records from either side.
//
// The message bodies are those of wire.hpp: task messages [invoker, function, arguments] owner → worker; reply
// payloads worker → owner, whose id is that of the task they answer.
//
// Bootstrap on the same channel, before any task (the protocol, shared with TransientUnitProcess, is
// bootstrap.hpp's): the owner's release message (id 0, body: the unit's main pid as a 4-byte pid_t) lets the worker
// enter the unit; the worker answers with a reply payload (id 0): void for "entered and initialized", or the setup
// failure. An exec'd pool's workers, born in the unit, get no release and send the same answer.

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>

namespace sdfutures::detail {

inline constexpr std::size_t kRecordHeaderBytes = 16;
inline constexpr std::uint64_t kPackedRecordId = ~std::uint64_t{0};
// Well inside the default socket send buffer (net.core.wmem_default, 208 KiB), which a record must fit whole.
inline constexpr std::size_t kRecordBodyBytes = 64u << 10;

// A received message's body. Its bytes are a std::string so that a reply can become a std::string result without
// a copy (blob_reply.hpp); the string grows a record at a time as records arrive, so each byte is zeroed only just
// before the kernel writes it, while it is in the cache, and a 64 MiB body is never zero-filled in one go. A large
// body's memory is reserved at once and advised for huge pages (huge_pages.hpp): receiving into 4 KiB faults is
// what a large message costs most.
class MessageBody {
public:
    MessageBody() = default;
    // A body of `size` bytes to come (address space only: nothing is touched until room() asks for it).
    explicit MessageBody(std::size_t size);
    // `count` writable bytes at `offset`, for recvmsg to fill; the bytes beyond `offset` received before are
    // dropped. offset + count must not exceed size().
    char* room(std::size_t offset, std::size_t count);
    // The bytes received: the first `received` of them count, the rest of the last room() is dropped.
    void keep(std::size_t received) { bytes_.resize(received); }
    std::string_view view() const noexcept { return bytes_; }
    std::size_t size() const noexcept { return size_; }
    // The whole body, for a reader that keeps it (the body is left empty).
    std::string take() && noexcept { return std::move(bytes_); }

private:
    std::string bytes_;
    std::size_t size_ = 0;
};

struct Message {
    std::uint64_t id = 0;
    MessageBody body;
};

// Reassembles messages from records. Every check a hostile sender could fail throws ProtocolError saying what
// was wrong; after one, the channel cannot be trusted and the reader must not be used again.
//
// Between messages the reader receives ahead: one recvmmsg(2) takes every record waiting, up to kRecordsAhead
// (a worker's replies to its window of tasks, or the tasks sent to a worker), and read_record() hands them out
// one a call before the socket is read again. The records of a message already begun go straight into its body
// instead, one recvmsg each, so a large body is not copied.
class MessageReader {
public:
    explicit MessageReader(std::size_t max_message_bytes);
    ~MessageReader();
    MessageReader(MessageReader&&) noexcept;
    MessageReader& operator=(MessageReader&&) noexcept;

    // Records one receive takes at most: PoolOptions::max_window's default, so a worker's answers to a full
    // window, or a window of tasks, come in one call.
    static constexpr unsigned kRecordsAhead = 8;

    enum class Got { message, partial, nothing, end };
    // The next record: one received ahead, or else from the socket (MSG_DONTWAIT when `nonblocking`; blocking,
    // it waits for the first record only). `message` when that record completed a message (take it with
    // take()), `partial` when it did not, `nothing` when no record was there (EAGAIN), `end` at end of stream.
    // Throws ProtocolError (a broken record) or Error (the receive failed otherwise).
    Got read_record(int fd, bool nonblocking);
    Message take() noexcept { return std::move(complete_); }
    // True while part of a message has arrived: at end of stream, the peer stopped in the middle of one.
    bool mid_message() const noexcept { return in_message_; }
    // Records received ahead and not handed out yet. The socket may be empty while the reader holds some: a
    // caller that waits for POLLIN before reading must read these first.
    bool holds_records() const noexcept;  // or messages of a packed record
    // The latest receive took fewer records than it had room for and all of them were handed out: the socket
    // was empty then, and a nonblocking caller may stop without another receive that would say EAGAIN (it polls
    // before reading again, so a record that came meanwhile is not missed).
    bool drained() const noexcept;

private:
    struct Ahead;  // the receive-ahead slots (channel.cpp)
    Got receive_into_message(int fd, bool nonblocking);
    bool receive_ahead(int fd, bool nonblocking);
    Got accept_record(int fd, std::uint64_t id, std::uint64_t total, const char* staged_body, std::size_t length,
                      int flags);
    Got next_packed();

    std::size_t max_message_bytes_;
    bool in_message_ = false;
    std::size_t received_ = 0;
    Message partial_;
    Message complete_;
    std::unique_ptr<Ahead> ahead_;  // allocated on the first receive
    bool socket_emptied_ = false;   // the latest receive took fewer records than it had room for
    std::string_view packed_;       // the entries of a packed record still to hand out (in a receive-ahead slot)
};

// Sends one message, record by record, blocking; its body is `head` then `tail`, sent from where they are (a
// worker's reply and the large result it keeps by reference, see blob_reply.hpp). False with errno set when the
// socket fails (the peer is gone).
bool send_message(int fd, std::uint64_t id, std::string_view head, std::string_view tail = {}) noexcept;

// Blocking: reads records until a whole message has arrived. False at end of stream (or on a failing read);
// throws ProtocolError for a broken record.
bool receive_message(int fd, MessageReader& reader, Message& out);

// The owner's side of sending: messages queued in order and sent as the socket takes them, never blocking.
class MessageWriter {
public:
    MessageWriter();
    ~MessageWriter();
    MessageWriter(MessageWriter&&) noexcept;
    MessageWriter& operator=(MessageWriter&&) noexcept;

    void queue(std::uint64_t id, std::string body);
    enum class Sent { all, blocked, broken };
    // Sends records until the queue is empty (`all`), the socket is full (`blocked`: wait for POLLOUT), or the
    // socket failed (`broken`: the peer is gone; errno says why). Up to MessageReader::kRecordsAhead records
    // go in one sendmmsg(2), and small messages queued together go packed, several to a record.
    Sent flush(int fd) noexcept;
    bool empty() const noexcept { return queue_.empty(); }
    void clear() noexcept { queue_.clear(), offset_ = 0; }

private:
    struct Pending {
        std::uint64_t id;
        std::string body;
    };
    struct Batch;  // the records of one sendmmsg (channel.cpp)
    void build(Batch& batch) const noexcept;
    bool advance(const Batch& batch, unsigned sent) noexcept;

    std::deque<Pending> queue_;
    std::size_t offset_ = 0;  // bytes of the front message's body already sent
    std::unique_ptr<Batch> batch_;  // allocated on the first flush, reused
};

}  // namespace sdfutures::detail
