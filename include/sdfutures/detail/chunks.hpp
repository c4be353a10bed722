#pragma once
// map() with MapOptions::chunksize > 1, the owner's side: one pool task per chunk of inputs (run by
// invoke_chunk in <sdfutures/pool.hpp>), whose reply carries one reply per element. Each element's reply is
// encoded in the worker exactly as a single task's reply is, so an exception an element throws comes back as that
// element's, with its type, and the other elements of its chunk keep their values. A fault of the chunk as a
// whole (its worker crashed or ran over task_timeout, a cancellation) is every one of its elements' error.

#include <cstddef>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
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

// What a chunk's reply holds: every element's value (`values`, when none threw), or every element's own reply
// (`replies`, encoded like a single task's) once one threw. Exactly one of them has the chunk's size.
template <class R>
using ChunkReplyBody = std::pair<std::vector<R>, std::vector<std::string>>;

// Decodes a chunk's reply in the owner: the chunk's own exception (from the worker, or ProtocolError for a
// malformed reply) is thrown; an element's is kept with it.
template <class R>
std::vector<ChunkElement<R>> decode_chunk(std::string_view reply, std::size_t expected, const WireLimits& limits) {
    auto [values, replies] = decode_reply<ChunkReplyBody<R>>(reply, limits);
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
