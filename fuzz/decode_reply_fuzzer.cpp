// The parent side of the wire protocol against arbitrary bytes: as one reply payload, as a bare value, and as a
// frame stream arriving in pieces. Decoding may only ever raise ProtocolError, or what the reply legitimately
// carries (a task's exception, a setup failure); anything else aborts, and so does any sanitizer finding.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <typeindex>
#include <typeinfo>
#include <variant>
#include <vector>

#include "sdfutures/detail/blob_reply.hpp"
#include "sdfutures/detail/wire.hpp"
#include "sdfutures/error.hpp"

namespace {

using sdfutures::detail::decode_reply;
using sdfutures::detail::FrameReader;
using sdfutures::detail::unpack_value;
using sdfutures::detail::WireLimits;

// Small enough that claimed sizes inside fuzz inputs never make a frame reservation slow under ASan.
WireLimits fuzz_limits() {
    WireLimits limits;
    limits.max_frame_bytes = 1u << 20;
    return limits;
}

[[noreturn]] void escaped(const char* what, std::string_view input) {
    std::fprintf(stderr, "decode_reply_fuzzer: %s escaped for a %zu-byte input\n", what, input.size());
    std::abort();
}

// The kind of reply `payload` carries, read independently of the code under test; it decides which exceptions
// are legitimate.
std::optional<std::uint64_t> reply_kind(std::string_view payload) {
    try {
        const std::size_t n = payload.size();
        const auto handle =
            msgpack::unpack(payload.data(), n, nullptr, nullptr, msgpack::unpack_limit(n, n / 2, n, n, n, 64));
        const msgpack::object& reply = handle.get();
        if (reply.type == msgpack::type::ARRAY && reply.via.array.size > 0 &&
            reply.via.array.ptr[0].type == msgpack::type::POSITIVE_INTEGER) {
            return reply.via.array.ptr[0].via.u64;
        }
    } catch (...) {
    }
    return std::nullopt;
}

bool is_rethrown_standard_type(const std::exception& e) {
    static const std::set<std::type_index> types = {
        typeid(std::logic_error), typeid(std::invalid_argument), typeid(std::domain_error),
        typeid(std::length_error), typeid(std::out_of_range), typeid(std::runtime_error),
        typeid(std::range_error), typeid(std::overflow_error), typeid(std::underflow_error),
        typeid(std::bad_alloc), typeid(std::bad_cast), typeid(std::exception), typeid(std::system_error)};
    return types.count(typeid(e)) != 0;
}

template <class T>
void decode_as(std::string_view payload, std::optional<std::uint64_t> kind) {
    try {
        if constexpr (std::is_void_v<T>) {
            decode_reply<void>(payload, fuzz_limits());
        } else {
            (void)decode_reply<T>(payload, fuzz_limits());
        }
    } catch (const sdfutures::ProtocolError&) {
    } catch (const sdfutures::RemoteError&) {
        if (kind != 1u) escaped("RemoteError from a reply that is not an exception reply", payload);
    } catch (const sdfutures::SetupError&) {
        if (kind != 2u) escaped("SetupError from a reply that is not a setup failure", payload);
    } catch (const std::exception& e) {
        if (!(kind == 1u || kind == 3u) || !is_rethrown_standard_type(e)) escaped(typeid(e).name(), payload);
    } catch (...) {
        escaped("a non-std exception", payload);
    }
    try {
        if constexpr (!std::is_void_v<T>) (void)unpack_value<T>(payload, fuzz_limits());
    } catch (const sdfutures::ProtocolError&) {
    } catch (const std::exception& e) {
        escaped(typeid(e).name(), payload);
    } catch (...) {
        escaped("a non-std exception from unpack_value", payload);
    }
}

// The payload-taking decode of a blob result (blob_reply.hpp) must agree with the string_view one: the same value,
// or an exception of the same type.
template <class T>
void decode_owned_as(std::string_view payload) {
    std::optional<T> viewed, owned;
    const std::type_info* viewed_error = nullptr;
    const std::type_info* owned_error = nullptr;
    try {
        viewed = decode_reply<T>(payload, fuzz_limits());
    } catch (const std::exception& e) {
        viewed_error = &typeid(e);
    }
    try {
        owned = decode_reply<T>(std::string(payload), fuzz_limits());
    } catch (const std::exception& e) {
        owned_error = &typeid(e);
    }
    const bool same_error = viewed_error == owned_error || (viewed_error && owned_error && *viewed_error == *owned_error);
    if (viewed != owned || !same_error) escaped("a different outcome of the payload-taking decode", payload);
}

void decode_every_way(std::string_view payload) {
    const std::optional<std::uint64_t> kind = reply_kind(payload);
    decode_as<void>(payload, kind);
    decode_as<int>(payload, kind);
    decode_as<std::string>(payload, kind);
    decode_as<std::vector<std::string>>(payload, kind);
    decode_as<std::map<std::string, std::vector<int>>>(payload, kind);
    decode_as<std::variant<int, std::string>>(payload, kind);
    decode_as<std::optional<double>>(payload, kind);
    decode_as<std::tuple<int, std::string>>(payload, kind);
    decode_owned_as<std::string>(payload);
    decode_owned_as<std::vector<char>>(payload);
    decode_owned_as<std::vector<std::byte>>(payload);
}

// Splits the input into reads of a size taken from its first byte, alternating between feed() and the
// write_area()/commit() path that real reads use.
void read_as_stream(std::string_view input) {
    FrameReader reader(fuzz_limits());
    const std::size_t piece = input.empty() ? 1 : 1 + static_cast<unsigned char>(input[0]) % 64;
    try {
        bool use_area = !input.empty() && (input[0] & 0x40) != 0;
        for (std::size_t at = 0; at < input.size(); use_area = !use_area) {
            std::size_t n = std::min(piece, input.size() - at);
            if (use_area) {
                const std::span<char> area = reader.write_area(n);
                n = std::min(n, area.size());
                std::copy_n(input.data() + at, n, area.data());
                reader.commit(n);
            } else {
                reader.feed(input.data() + at, n);
            }
            at += n;
        }
    } catch (const sdfutures::ProtocolError&) {
    } catch (const std::exception& e) {
        escaped(typeid(e).name(), input);
    }
    while (std::optional<std::string> frame = reader.next()) decode_every_way(*frame);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    decode_every_way(input);
    read_as_stream(input);
    return 0;
}
