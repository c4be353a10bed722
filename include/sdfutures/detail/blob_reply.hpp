#pragma once
// Large blob results without copies: a task's std::string, std::vector<char>, std::vector<unsigned char> or
// std::vector<std::byte> result of blob_reply_bytes or more travels from the value itself to the caller's value.
//
// The bytes on the wire are exactly those of encode_value_reply (wire.hpp): [0, value], a MessagePack str (for
// std::string) or bin (for the vectors). What changes is who copies them:
//   * child side: encode_reply keeps the value alive beside the few bytes of envelope and blob header instead of
//     copying it into the reply, and the sender writes both with one writev/sendmsg;
//   * parent side: decode_reply(std::string&& payload) turns the payload itself into a std::string result (its
//     envelope erased in place), and builds a blob vector in memory advised for huge pages.
// Everything else about a reply (its checks, its errors, the hostile-child rule of wire.hpp) is unchanged: the
// rvalue decode_reply parses and checks the payload exactly as the string_view one before it takes anything.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "sdfutures/detail/huge_pages.hpp"
#include "sdfutures/detail/wire.hpp"

namespace sdfutures::detail {

// Smaller values are copied into the reply: below this the copy costs less than keeping the value apart.
inline constexpr std::size_t blob_reply_bytes = 64u << 10;

// The result types whose encoding is one str or bin: the value's own bytes, in one piece.
template <class T>
inline constexpr bool is_blob_value_v =
    std::is_same_v<T, std::string> || (is_std_vector<T>::value && is_blob_container<T>::value);

// A reply payload as the child sends it: the encoded bytes, then (for a large blob result) the result's own bytes,
// held here until they are sent. head() then blob() is the payload.
class EncodedReply {
public:
    EncodedReply() = default;
    // A reply that is all encoded bytes: void, exceptions, setup failures, small or structured values.
    EncodedReply(std::string bytes) noexcept : head_(std::move(bytes)) {}  // NOLINT(*-explicit-*): every reply is one

    // `head` is the envelope and blob header that `value`'s bytes complete.
    template <class Blob>
        requires is_blob_value_v<Blob>
    static EncodedReply with_blob(std::string head, Blob value) {
        // On the heap and shared, so that the view stays valid however the reply is moved (a short std::string's
        // bytes would move with it).
        auto held = std::make_shared<const Blob>(std::move(value));
        EncodedReply reply(std::move(head));
        reply.blob_ = {reinterpret_cast<const char*>(held->data()), held->size()};
        reply.blob_owner_ = std::move(held);
        return reply;
    }

    std::string_view head() const noexcept { return head_; }
    std::string_view blob() const noexcept { return blob_; }
    std::size_t size() const noexcept { return head_.size() + blob_.size(); }

    // The payload in one string (copies the blob, if any): for a reply nested in another one.
    std::string joined() && {
        std::string bytes = std::move(head_);
        bytes.append(blob_);
        *this = EncodedReply();
        return bytes;
    }

private:
    std::string head_;
    std::shared_ptr<const void> blob_owner_;
    std::string_view blob_;
};

// encode_value_reply's payload, with a large blob value kept by reference (see above). Throws what
// encode_value_reply throws, and std::bad_alloc.
template <Serializable T>
EncodedReply encode_reply(T value, const WireLimits& limits = {}) {
    if constexpr (is_blob_value_v<T>) {
        if (value.size() >= blob_reply_bytes) {
            std::string head{'\x92', '\x00'};  // fixarray of 2, kind 0, as encode_value_reply
            check_reply_size(head.size() + 5 + value.size(), limits);  // 5: a str32/bin32 header, the largest
            StringSink sink{&head};
            msgpack::packer<StringSink> packer(sink);
            // The frame limit (at most 2^32-1) was checked above, so the size fits the header's 32 bits. The same
            // header msgpack-cxx's adaptors write before the body: str for std::string, bin for the vectors.
            const auto size = static_cast<std::uint32_t>(value.size());
            if constexpr (std::is_same_v<T, std::string>) packer.pack_str(size);
            else packer.pack_bin(size);
            return EncodedReply::with_blob(std::move(head), std::move(value));
        }
    }
    return encode_value_reply(value, limits);
}

// Where a checked reply's blob value lies in its payload; throws ProtocolError as decode_reply does.
struct BlobPlace {
    std::size_t offset;
    std::size_t size;
};
BlobPlace locate_blob_reply(std::string_view payload, const WireLimits& limits);

// decode_reply for a payload the caller gives up: a std::string result is the payload itself, its envelope erased
// (no copy into fresh memory, and the caller's memory peak is the value once); a blob vector is built in memory
// advised for huge pages without being zero-filled first; any other type is decoded as from a string_view.
// Throws what decode_reply(std::string_view) throws; the payload is then unspecified.
template <class T>
    requires(std::is_void_v<T> || Serializable<T>)
T decode_reply(std::string&& payload, const WireLimits& limits = {}) {
    if constexpr (is_blob_value_v<T>) {
        const BlobPlace place = locate_blob_reply(payload, limits);
        if constexpr (std::is_same_v<T, std::string>) {
            payload.erase(0, place.offset);
            payload.resize(place.size);
            return std::move(payload);
        } else {
            using Element = typename T::value_type;
            const auto* first = reinterpret_cast<const Element*>(payload.data() + place.offset);
            T value;
            value.reserve(place.size);
            advise_huge_pages(value.data(), place.size);
            value.assign(first, first + place.size);
            return value;
        }
    } else {
        return decode_reply<T>(std::string_view(payload), limits);
    }
}

}  // namespace sdfutures::detail
