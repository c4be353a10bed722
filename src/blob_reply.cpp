// The parent's half of <sdfutures/detail/blob_reply.hpp>: where a blob result lies in its reply payload.
#include "sdfutures/detail/blob_reply.hpp"

#include <optional>

namespace sdfutures::detail {

BlobPlace locate_blob_reply(std::string_view payload, const WireLimits& limits) {
    // The same checks as decode_reply<std::string>: the whole payload parsed, its envelope opened (a task's
    // exception rethrown), the value's shape a str or bin.
    const msgpack::object_handle handle = parse_untrusted(payload, limits, "reply");
    const msgpack::object* value = open_reply(handle.get(), false);
    check_blob_shape(*value, ValuePath::root("reply value"), std::nullopt);
    const std::size_t size = value->via.bin.size;  // str and bin share their layout in msgpack::object
    if (size == 0) return {payload.size(), 0};
    // parse_untrusted makes blobs point into the payload rather than copying them; checked all the same, as the
    // caller is about to take these bytes in place.
    const char* data = value->via.bin.ptr;
    if (data < payload.data() || static_cast<std::size_t>(data - payload.data()) > payload.size() - size) {
        throw ProtocolError("malformed reply: its blob value does not lie inside the payload");
    }
    return {static_cast<std::size_t>(data - payload.data()), size};
}

}  // namespace sdfutures::detail
