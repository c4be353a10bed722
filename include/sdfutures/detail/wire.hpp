#pragma once
// Framing and the reply protocol between a child (or pool worker) and its parent.
//
// Everything a child sends is untrusted: it may have been corrupted by the task (memory errors, a stray write to
// the pipe) or be plainly hostile. The parent-side functions here therefore throw sdfutures::ProtocolError for any
// malformed input and never let a msgpack-cxx exception, std::bad_alloc from a claimed size, or undefined behaviour
// through. Both ends are the same binary, so there is no versioning.
//
// Stream layout (one pipe, parent reads):
//
//     frame   := length payload
//     length  := 4 bytes, unsigned, little-endian; the number of payload bytes (at most WireLimits::max_frame_bytes)
//     payload := one MessagePack value
//
// Reply payloads (child -> parent), one frame each; a MessagePack array whose first element is the kind:
//
//     [0, value]                       the task returned `value` (encoded as in serialization.hpp)
//     [0]                              the task returned void
//     [1, type_name, what]             the task threw; type_name is the demangled dynamic type, what its what()
//                                      ("" for exceptions not derived from std::exception)
//     [1, type_name, what, code, cat]  the same for exactly std::system_error: code().value() and the category name,
//                                      so that generic and system errors come back with their error_code
//     [2, step, errno, detail]         the child failed before running the task (SetupError); errno 0..4095
//     [3]                              the task threw but the child ran out of memory while encoding the
//                                      exception; the parent rethrows std::bad_alloc
//
// type_name, what, step and detail are MessagePack str, at most max_reply_text_bytes each: the child truncates,
// the parent rejects longer ones.

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include <msgpack/object.hpp>
#include <msgpack/unpack.hpp>

#include "sdfutures/error.hpp"
#include "sdfutures/serialization.hpp"

namespace sdfutures::detail {

struct WireLimits {
    // Largest frame payload the parent accepts; a header announcing more is rejected before anything is allocated.
    std::size_t max_frame_bytes = 256u << 20;
    // Deepest nesting of arrays and maps accepted; bounds the recursion of decoding.
    std::size_t max_depth = 64;
};

inline constexpr std::size_t frame_header_bytes = 4;
// Bound on each string of an exception or setup-failure reply.
inline constexpr std::size_t max_reply_text_bytes = 64u << 10;

// ---------------------------------------------------------------------------------------------------------------
// Values

// Appends the encoding of `value` to `out`. Throws std::length_error for a string or container above 2^32-1
// elements (the MessagePack maximum) and whatever the value's own adaptors throw; `out` is then left as it was.
template <Serializable T>
void pack_value(std::string& out, const T& value);

template <Serializable T>
std::string pack_value(const T& value) {
    std::string out;
    pack_value(out, value);
    return out;
}

// Decodes exactly one value of type T that must fill `bytes` entirely. Throws ProtocolError and nothing else.
//
// Memory: before msgpack-cxx allocates anything, a structural pass rejects container headers that claim more
// elements than the remaining input could hold, so the intermediate object tree stays within 16 bytes per input
// byte whatever the headers say (strings and blobs point into `bytes` instead of being copied). The result itself
// is then built from that tree.
template <Serializable T>
T unpack_value(std::string_view bytes, const WireLimits& limits = {});

// ---------------------------------------------------------------------------------------------------------------
// Frames

// The 4-byte header for a payload of `payload_bytes`. Writing the header and then the payload itself (writev)
// frames a large payload without copying it. Throws std::length_error above 2^32-1 bytes.
std::array<char, frame_header_bytes> frame_header(std::size_t payload_bytes);

// Header and payload in one buffer; copies the payload, so meant for small replies.
std::string make_frame(std::string_view payload);

// Reassembles frames from a byte stream that arrives in arbitrary pieces (nonblocking reads).
//
// Two ways to put bytes in:
//   * feed(data, size) copies bytes the caller already has;
//   * write_area(n) hands out up to n bytes of the reader's own memory to read(2) into, then commit(k) says how
//     many of them the read filled. While a large payload is being received the area lies inside that payload's
//     final buffer, so a 64 MiB frame is received without copying (except its first and last few KiB); between
//     frames (headers, small payloads) the area is a staging buffer whose bytes are copied, which lets a single
//     read pick up many small frames. A read that fails or hits end of file simply commits nothing:
//
//         std::span<char> area = reader.write_area(1 << 20);
//         ssize_t n = ::read(fd, area.data(), area.size());
//         if (n > 0) reader.commit(static_cast<std::size_t>(n));
//         while (std::optional<std::string> frame = reader.next()) handle(*frame);
//
// Memory: when a header arrives, the announced length (at most max_frame_bytes) is reserved at once so that the
// payload never has to be moved while it grows, and a large one is advised for huge pages (huge_pages.hpp). That
// reservation is address space only; pages are touched as data actually arrives. If even the reservation fails, the buffer grows with the data instead.
//
// A header announcing more than max_frame_bytes throws ProtocolError as soon as its fourth byte is seen. The
// stream cannot be resynchronized after that: feed, write_area and commit keep throwing, while frames completed
// before the bad header can still be taken with next(). std::bad_alloc is possible only when memory runs out for
// data that actually arrived.
class FrameReader {
public:
    static constexpr std::size_t default_read_bytes = 64u << 10;

    explicit FrameReader(WireLimits limits = {});

    void feed(const char* data, std::size_t size);

    // Valid until the next call of any member. The area is never larger than max_bytes (which must be > 0) and
    // never extends past the end of the payload currently being received.
    std::span<char> write_area(std::size_t max_bytes = default_read_bytes);
    // `bytes_written` must not exceed the size of the last write_area; the area is spent afterwards.
    void commit(std::size_t bytes_written);

    // The oldest complete frame's payload, if any.
    std::optional<std::string> next();

    // True while part of a frame (some header bytes, or a header and part of its payload) is buffered: at end of
    // stream this means the peer stopped in the middle of a frame.
    bool mid_frame() const noexcept;

private:
    enum class Area : unsigned char { none, staging, payload };

    void consume(const char* data, std::size_t size);
    void begin_payload(std::size_t length);
    void complete_payload();
    void throw_if_failed() const;
    [[noreturn]] void fail(const std::string& message);

    WireLimits limits_;
    std::array<unsigned char, frame_header_bytes> header_{};
    std::size_t header_filled_ = 0;
    bool in_payload_ = false;
    std::size_t payload_length_ = 0;
    // payload_.size() counts the bytes made writable so far (a write area may run ahead of the data);
    // payload_received_ counts the bytes that actually arrived.
    std::string payload_;
    std::size_t payload_received_ = 0;
    std::string staging_;
    Area area_ = Area::none;
    std::size_t area_size_ = 0;
    std::uint64_t stream_offset_ = 0;
    std::deque<std::string> complete_;
    std::string failure_;
};

// ---------------------------------------------------------------------------------------------------------------
// Replies, child side

// Throws std::length_error when the reply would exceed limits.max_frame_bytes (so the child can report that
// as an exception instead of sending a frame the parent is bound to reject), or what pack_value throws.
template <Serializable T>
std::string encode_value_reply(const T& value, const WireLimits& limits = {});

std::string encode_void_reply();

// Describes `error` by its dynamic type, which works from anywhere (it need not be called inside a catch block):
// the exception is rethrown and caught internally, and for types not derived from std::exception the type comes
// from abi::__cxa_current_exception_type(). A thrown const char* or std::string is sent as the what text.
// Never throws: if memory runs out while encoding, the reply is the allocation-free [3].
std::string encode_exception_reply(const std::exception_ptr& error) noexcept;

// `error_number` must be an errno value (0..4095, 0 for none); anything else is sent as 0 with a note in the detail.
// Never throws: if memory runs out, step and detail are dropped and only errno is kept.
std::string encode_setup_failure(std::string_view step, int error_number, std::string_view detail) noexcept;

// ---------------------------------------------------------------------------------------------------------------
// Replies, parent side

// Returns the task's value (nothing for T = void), or rethrows what the task threw:
//   * std::logic_error, invalid_argument, domain_error, length_error, out_of_range, runtime_error, range_error,
//     overflow_error, underflow_error as themselves with what() preserved;
//   * std::bad_alloc, std::bad_cast and std::exception as themselves (their what() is fixed by the library anyway);
//   * std::system_error as itself with code() and what() preserved when its category is the generic or the system
//     one (other categories cannot be recreated in another process and become RemoteError);
//   * any other type, including classes derived from the types above, as RemoteError(type_name, what);
//   * a setup failure as SetupError(step, errno, detail).
// Every malformed reply throws ProtocolError.
template <class T>
    requires(std::is_void_v<T> || Serializable<T>)
T decode_reply(std::string_view payload, const WireLimits& limits = {});

// ---------------------------------------------------------------------------------------------------------------
// Implementation

// Where in a decoded value a mismatch was found; a chain of stack frames, turned into text only when reporting.
struct ValuePath {
    enum class Step : unsigned char { root, element, map_key, map_value, alternative };
    const ValuePath* parent;
    Step step;
    std::size_t index;
    const char* root_name;  // only for Step::root

    static ValuePath root(const char* name) noexcept { return {nullptr, Step::root, 0, name}; }
    ValuePath child(Step s, std::size_t i) const noexcept { return {this, s, i, nullptr}; }
};

[[noreturn]] void throw_shape_mismatch(const ValuePath& where, std::string_view expected, const msgpack::object& found);
void check_integer_shape(const msgpack::object& o, const ValuePath& where, std::intmax_t min, std::uintmax_t max);
void check_floating_shape(const msgpack::object& o, const ValuePath& where, bool single_precision);
void check_blob_shape(const msgpack::object& o, const ValuePath& where, std::optional<std::size_t> exact_size);
void check_container_shape(const msgpack::object& o, const ValuePath& where, msgpack::type::object_type type,
                           std::optional<std::size_t> exact_size, const char* expected);

// Structural validation of untrusted bytes followed by msgpack's unpack; the handle references `bytes`, which must
// outlive it. `context` names the input in messages ("reply", "value").
msgpack::object_handle parse_untrusted(std::string_view bytes, const WireLimits& limits, const char* context);

// Called from a catch block around a conversion: turns whatever is in flight into a ProtocolError.
[[noreturn]] void rethrow_conversion_failure(const ValuePath& where, const std::type_info& target);

// Checks the reply envelope and rethrows non-value replies. Returns the value object, or nullptr for a void reply.
const msgpack::object* open_reply(const msgpack::object& reply, bool expect_void);

// Strict shape check for the types of the Serializable list, so that msgpack's lax or unsafe conversions (short
// tuples and arrays, std::array<char, N> from a short str) never see a mismatched object. User types are opaque.
template <class T>
void check_shape(const msgpack::object& o, const ValuePath& where) {
    if constexpr (std::is_same_v<T, bool>) {
        if (o.type != msgpack::type::BOOLEAN) throw_shape_mismatch(where, "a boolean", o);
    } else if constexpr (std::is_enum_v<T>) {
        check_shape<std::underlying_type_t<T>>(o, where);
    } else if constexpr (std::is_integral_v<T>) {
        check_integer_shape(o, where, std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
    } else if constexpr (std::is_floating_point_v<T>) {
        check_floating_shape(o, where, std::is_same_v<T, float>);
    } else if constexpr (std::is_same_v<T, std::string>) {
        check_blob_shape(o, where, std::nullopt);
    } else if constexpr (is_blob_container<T>::value) {
        std::optional<std::size_t> exact_size;
        if constexpr (is_std_array<T>::value) exact_size = std::tuple_size_v<T>;
        check_blob_shape(o, where, exact_size);
    } else if constexpr (is_std_vector<T>::value || is_std_set<T>::value || is_std_array<T>::value) {
        std::optional<std::size_t> exact_size;
        if constexpr (is_std_array<T>::value) exact_size = std::tuple_size_v<T>;
        check_container_shape(o, where, msgpack::type::ARRAY, exact_size, "an array");
        for (std::uint32_t i = 0; i < o.via.array.size; ++i) {
            check_shape<typename T::value_type>(o.via.array.ptr[i], where.child(ValuePath::Step::element, i));
        }
    } else if constexpr (is_std_map<T>::value) {
        check_container_shape(o, where, msgpack::type::MAP, std::nullopt, "a map");
        for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
            check_shape<typename T::key_type>(o.via.map.ptr[i].key, where.child(ValuePath::Step::map_key, i));
            check_shape<typename T::mapped_type>(o.via.map.ptr[i].val, where.child(ValuePath::Step::map_value, i));
        }
    } else if constexpr (is_std_optional<T>::value) {
        if (o.type != msgpack::type::NIL) check_shape<typename T::value_type>(o, where);
    } else if constexpr (is_std_pair<T>::value || is_std_tuple<T>::value) {
        check_container_shape(o, where, msgpack::type::ARRAY, std::tuple_size_v<T>, "an array");
        [&]<std::size_t... Is>(std::index_sequence<Is...>) {
            (check_shape<std::tuple_element_t<Is, T>>(o.via.array.ptr[Is], where.child(ValuePath::Step::element, Is)),
             ...);
        }(std::make_index_sequence<std::tuple_size_v<T>>{});
    } else if constexpr (is_std_variant<T>::value) {
        check_container_shape(o, where, msgpack::type::ARRAY, 2, "a variant's [index, value] array");
        constexpr std::size_t alternatives = std::variant_size_v<T>;
        const msgpack::object& index = o.via.array.ptr[0];
        check_integer_shape(index, where.child(ValuePath::Step::element, 0), 0, alternatives - 1);
        const ValuePath alternative_path = where.child(ValuePath::Step::alternative, index.via.u64);
        [&]<std::size_t... Is>(std::index_sequence<Is...>) {
            ((index.via.u64 == Is ? check_shape<std::variant_alternative_t<Is, T>>(o.via.array.ptr[1], alternative_path)
                                  : void()),
             ...);
        }(std::make_index_sequence<alternatives>{});
    } else if constexpr (is_duration<T>::value) {
        check_shape<typename T::rep>(o, where);
    } else if constexpr (std::is_same_v<T, std::monostate>) {
        check_container_shape(o, where, msgpack::type::ARRAY, 0, "an empty array (std::monostate)");
    }
    // Types with MSGPACK_DEFINE or enable_serialization: their own adaptors check them during conversion.
}

template <class T>
T convert_untrusted(const msgpack::object& o, const ValuePath& where) {
    check_shape<T>(o, where);
    try {
        return o.as<T>();
    } catch (...) {
        rethrow_conversion_failure(where, typeid(T));
    }
}

template <Serializable T>
void pack_value(std::string& out, const T& value) {
    const std::size_t original_size = out.size();
    try {
        StringSink sink{&out};
        msgpack::packer<StringSink> packer(sink);
        packer.pack(value);
    } catch (const msgpack::container_size_overflow&) {
        out.resize(original_size);
        throw std::length_error("cannot encode the value: a string or container has more than 2^32-1 elements");
    } catch (...) {
        out.resize(original_size);
        throw;
    }
}

template <Serializable T>
T unpack_value(std::string_view bytes, const WireLimits& limits) {
    const msgpack::object_handle handle = parse_untrusted(bytes, limits, "value");
    return convert_untrusted<T>(handle.get(), ValuePath::root("value"));
}

// Throws std::length_error when a value reply of `size` bytes exceeds the frame limit.
void check_reply_size(std::size_t size, const WireLimits& limits);

template <Serializable T>
std::string encode_value_reply(const T& value, const WireLimits& limits) {
    std::string out{'\x92', '\x00'};  // fixarray of 2, kind 0
    pack_value(out, value);
    check_reply_size(out.size(), limits);
    return out;
}

template <class T>
    requires(std::is_void_v<T> || Serializable<T>)
T decode_reply(std::string_view payload, const WireLimits& limits) {
    const msgpack::object_handle handle = parse_untrusted(payload, limits, "reply");
    const msgpack::object* value = open_reply(handle.get(), std::is_void_v<T>);
    if constexpr (!std::is_void_v<T>) return convert_untrusted<T>(*value, ValuePath::root("reply value"));
}

}  // namespace sdfutures::detail
