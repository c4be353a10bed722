#pragma once
// map() with MapOptions::chunksize > 1, the owner's side: one pool task per chunk of inputs (run by
// invoke_chunk in <sdfutures/pool.hpp>), whose reply carries one reply per element. Each element's reply is
// encoded in the worker exactly as a single task's reply is, so an exception an element throws comes back as that
// element's, with its type, and the other elements of its chunk keep their values. A fault of the chunk as a
// whole (its worker crashed or ran over task_timeout, a cancellation) is every one of its elements' error.

#include <cstddef>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "sdfutures/detail/wire.hpp"
#include "sdfutures/error.hpp"

namespace sdfutures::detail {

// One element's outcome, in the owner.
template <class R>
struct ChunkElement {
    std::optional<R> value;
    std::exception_ptr error;
};

// Arithmetic elements (int, double, ...) of a chunk travel as their bytes in one blob instead of an array of
// MessagePack numbers: the owner and its workers are the same program on the same machine, and a chunk of
// 125,000 ints then costs a memcpy each way rather than 125,000 encodings and checked decodings.
template <class T>
inline constexpr bool raw_chunk_element_v = std::is_arithmetic_v<T> && !std::is_same_v<T, bool>;

// How a chunk's elements of type T travel.
template <class T>
using ChunkValues = std::conditional_t<raw_chunk_element_v<T>, std::vector<char>, std::vector<T>>;

template <class T>
ChunkValues<T> to_chunk_values(std::vector<T> values) {
    if constexpr (raw_chunk_element_v<T>) {
        std::vector<char> bytes(values.size() * sizeof(T));
        if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
        return bytes;
    } else {
        return values;
    }
}

// `what` names the values for the error a blob of a size no whole number of elements makes.
template <class T>
std::vector<T> from_chunk_values(ChunkValues<T> travelled, const char* what) {
    if constexpr (raw_chunk_element_v<T>) {
        if (travelled.size() % sizeof(T) != 0)
            throw ProtocolError(std::string(what) + ": " + std::to_string(travelled.size()) +
                                " bytes are no whole number of " + std::to_string(sizeof(T)) + "-byte elements");
        std::vector<T> values(travelled.size() / sizeof(T));
        if (!values.empty()) std::memcpy(values.data(), travelled.data(), travelled.size());
        return values;
    } else {
        return travelled;
    }
}

// What a chunk's reply holds: every element's value (`values`, when none threw), or every element's own reply
// (`replies`, encoded like a single task's) once one threw. Exactly one of them has the chunk's size.
template <class R>
using ChunkReplyBody = std::pair<ChunkValues<R>, std::vector<std::string>>;

// Decodes a chunk's reply in the owner: the chunk's own exception (from the worker, or ProtocolError for a
// malformed reply) is thrown; an element's is kept with it.
template <class R>
std::vector<ChunkElement<R>> decode_chunk(std::string_view reply, std::size_t expected, const WireLimits& limits) {
    auto [travelled, replies] = decode_reply<ChunkReplyBody<R>>(reply, limits);
    std::vector<R> values = from_chunk_values<R>(std::move(travelled), "a map() chunk's values");
    const bool all_values = replies.empty() && values.size() == expected;
    if (!all_values && !(values.empty() && replies.size() == expected))
        throw ProtocolError("a chunk of " + std::to_string(expected) + " map() inputs came back with " +
                            std::to_string(values.size()) + " values and " + std::to_string(replies.size()) +
                            " replies");
    std::vector<ChunkElement<R>> elements(expected);
    if (all_values) {
        for (std::size_t i = 0; i < expected; ++i) elements[i].value.emplace(std::move(values[i]));
        return elements;
    }
    for (std::size_t i = 0; i < replies.size(); ++i) {
        try {
            elements[i].value.emplace(decode_reply<R>(replies[i], limits));
        } catch (const ProtocolError&) {
            throw;  // not an element's exception: the reply was malformed
        } catch (...) {
            elements[i].error = std::current_exception();
        }
    }
    return elements;
}

}  // namespace sdfutures::detail
