// The owner's side of a worker's channel (channel.hpp) against whatever records a hostile worker writes: the input
// is split into records (each a 2-byte little-endian length, then that many bytes), sent over a SOCK_SEQPACKET
// pair, and read back with the dispatcher's nonblocking reads until the channel ends. The reader may only hand
// out messages within its limit or throw ProtocolError; anything else that escapes aborts, and so does any
// sanitizer finding.

#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "channel.hpp"
#include "sdfutures/error.hpp"

namespace {

constexpr std::size_t kLimit = 1024;

struct Pair {
    int owner = -1, worker = -1;
    Pair() {
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) std::abort();
        owner = fds[0];
        worker = fds[1];
    }
    ~Pair() {
        ::close(owner);
        if (worker >= 0) ::close(worker);
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Pair pair;
    std::size_t at = 0;
    while (at + 2 <= size) {
        std::size_t length = data[at] | (std::size_t{data[at + 1]} << 8);
        at += 2;
        length = std::min(length, size - at);
        // Small inputs only (libFuzzer's default -max_len): every record fits the socket buffer.
        if (::send(pair.worker, data + at, length, MSG_DONTWAIT) != static_cast<ssize_t>(length)) break;
        at += length;
    }
    ::close(pair.worker);
    pair.worker = -1;
    sdfutures::detail::MessageReader reader(kLimit);
    try {
        for (;;) {
            const auto got = reader.read_record(pair.owner, true);
            if (got == sdfutures::detail::MessageReader::Got::end || got == sdfutures::detail::MessageReader::Got::nothing)
                break;
            if (got != sdfutures::detail::MessageReader::Got::message) continue;
            const auto message = reader.take();
            if (message.body.view().size() > kLimit || message.body.view().size() != message.body.size()) {
                std::fprintf(stderr, "channel_fuzzer: a message of %zu bytes came out of a reader limited to %zu\n",
                             message.body.view().size(), kLimit);
                std::abort();
            }
        }
    } catch (const sdfutures::ProtocolError&) {
    }
    return 0;
}
