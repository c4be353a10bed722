#pragma once
// What may cross the process boundary: the Serializable concept and the MessagePack adaptors it relies on.
//
// Arguments and results travel between a parent and a child forked from the same binary, so the encoding only has
// to round-trip within one build: no schema evolution, no portability between compilers.
//
// Serializable is deliberately a closed list (see below) rather than "whatever msgpack-cxx can pack": msgpack-cxx
// also packs things that cannot come back (raw pointers as strings, string_view into a buffer that is gone) and
// things whose decoding is lax (short std::tuple arrays keep default values). The decoder in detail/wire.hpp checks
// the shape of every listed type before handing it to msgpack-cxx, so each type on the list decodes strictly.
//
// User types join in one of two ways:
//   * members declared with MSGPACK_DEFINE(...) (detected automatically), or
//   * msgpack adaptor specializations written by the user plus
//       template <> struct sdfutures::enable_serialization<MyType> : std::true_type {};
// The decoder cannot look inside user types; it relies on their adaptors throwing on malformed input (msgpack's
// own MSGPACK_DEFINE adaptor does). Every exception from them still surfaces as sdfutures::ProtocolError.
//
// Known gaps, by design:
//   * std::optional<std::optional<T>> is not Serializable: msgpack encodes an empty optional as nil, so an engaged
//     outer optional holding an empty inner one would come back as an empty outer one.
//   * long double and char8_t/char16_t/char32_t are not Serializable: msgpack-cxx has no adaptor for them.
//   * cv-qualified types and references are not Serializable; callers decay result types first.

#include <array>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstddef>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <msgpack/object.hpp>
#include <msgpack/pack.hpp>
#include <msgpack/adaptor/adaptor_base.hpp>
#include <msgpack/adaptor/bool.hpp>
#include <msgpack/adaptor/define.hpp>
#include <msgpack/adaptor/float.hpp>
#include <msgpack/adaptor/int.hpp>
#include <msgpack/adaptor/map.hpp>
#include <msgpack/adaptor/pair.hpp>
#include <msgpack/adaptor/set.hpp>
#include <msgpack/adaptor/string.hpp>
#include <msgpack/adaptor/vector.hpp>
#include <msgpack/adaptor/vector_bool.hpp>
#include <msgpack/adaptor/vector_char.hpp>
#include <msgpack/adaptor/vector_unsigned_char.hpp>
#include <msgpack/adaptor/cpp11/array.hpp>
#include <msgpack/adaptor/cpp11/array_char.hpp>
#include <msgpack/adaptor/cpp11/array_unsigned_char.hpp>
#include <msgpack/adaptor/cpp11/tuple.hpp>
#include <msgpack/adaptor/cpp11/unordered_map.hpp>
#include <msgpack/adaptor/cpp17/array_byte.hpp>
#include <msgpack/adaptor/cpp17/byte.hpp>
#include <msgpack/adaptor/cpp17/optional.hpp>
#include <msgpack/adaptor/cpp17/vector_byte.hpp>

namespace sdfutures {

// Opt-in for a user type whose msgpack adaptors (convert and pack) the user has specialized.
template <class T>
struct enable_serialization : std::false_type {};

namespace detail {

// The byte sink every packer in sdfutures writes to; appending to a std::string keeps growth amortized.
struct StringSink {
    std::string* out;
    void write(const char* data, std::size_t size) { out->append(data, size); }
};

}  // namespace detail
}  // namespace sdfutures

// msgpack-cxx 4.1 packs a float or double with an integral value as an integer. That loses the sign of -0.0, and
// for 2^64 itself it converts a value outside uint64_t's range, which is undefined behaviour. The packer sdfutures
// uses (the one over StringSink) always writes float32/float64 instead; the decoder accepts either form.
namespace msgpack {
namespace v1 {
template <>
inline packer<sdfutures::detail::StringSink>& packer<sdfutures::detail::StringSink>::pack_float(float value) {
    const auto bits = std::bit_cast<std::uint32_t>(value);
    const char bytes[5] = {static_cast<char>(0xca), static_cast<char>(bits >> 24), static_cast<char>(bits >> 16),
                           static_cast<char>(bits >> 8), static_cast<char>(bits)};
    append_buffer(bytes, sizeof bytes);
    return *this;
}

template <>
inline packer<sdfutures::detail::StringSink>& packer<sdfutures::detail::StringSink>::pack_double(double value) {
    const auto bits = std::bit_cast<std::uint64_t>(value);
    char bytes[9] = {static_cast<char>(0xcb)};
    for (int i = 0; i < 8; ++i) bytes[1 + i] = static_cast<char>(bits >> (56 - 8 * i));
    append_buffer(bytes, sizeof bytes);
    return *this;
}
}  // namespace v1
}  // namespace msgpack

namespace sdfutures {
namespace detail {

template <class T>
inline constexpr bool is_wire_arithmetic_v =
    std::is_arithmetic_v<T> && !std::is_same_v<T, long double> && !std::is_same_v<T, char8_t> &&
    !std::is_same_v<T, char16_t> && !std::is_same_v<T, char32_t>;

// The members MSGPACK_DEFINE(...) generates; their presence is what "has MSGPACK_DEFINE" means.
template <class T>
concept has_msgpack_define = std::is_class_v<T> &&
    requires(T& value, const T& const_value, const msgpack::object& object, msgpack::packer<StringSink>& packer) {
        value.msgpack_unpack(object);
        const_value.msgpack_pack(packer);
    };

// Class templates recognised by structure, shared by the concept and the decoder's shape check.
template <class T> struct is_std_vector : std::false_type {};
template <class T, class A> struct is_std_vector<std::vector<T, A>> : std::true_type {};
template <class T> struct is_std_set : std::false_type {};
template <class K, class C, class A> struct is_std_set<std::set<K, C, A>> : std::true_type {};
template <class T> struct is_std_array : std::false_type {};
template <class T, std::size_t N> struct is_std_array<std::array<T, N>> : std::true_type {};
template <class T> struct is_std_map : std::false_type {};
template <class K, class V, class C, class A> struct is_std_map<std::map<K, V, C, A>> : std::true_type {};
template <class K, class V, class H, class E, class A>
struct is_std_map<std::unordered_map<K, V, H, E, A>> : std::true_type {};
template <class T> struct is_std_optional : std::false_type {};
template <class T> struct is_std_optional<std::optional<T>> : std::true_type {};
template <class T> struct is_std_pair : std::false_type {};
template <class A, class B> struct is_std_pair<std::pair<A, B>> : std::true_type {};
template <class T> struct is_std_tuple : std::false_type {};
template <class... Ts> struct is_std_tuple<std::tuple<Ts...>> : std::true_type {};
template <class T> struct is_std_variant : std::false_type {};
template <class... Ts> struct is_std_variant<std::variant<Ts...>> : std::true_type {};
template <class T> struct is_duration : std::false_type {};
template <class R, class P> struct is_duration<std::chrono::duration<R, P>> : std::true_type {};

// msgpack-cxx packs these element types as one binary blob rather than an array of integers.
template <class T>
inline constexpr bool is_blob_element_v =
    std::is_same_v<T, char> || std::is_same_v<T, unsigned char> || std::is_same_v<T, std::byte>;

template <class T> struct is_blob_container : std::false_type {};
template <class T, class A> struct is_blob_container<std::vector<T, A>> : std::bool_constant<is_blob_element_v<T>> {};
template <class T, std::size_t N>
struct is_blob_container<std::array<T, N>> : std::bool_constant<is_blob_element_v<T>> {};

// A trait rather than a concept because it recurses into element types, which a concept may not do.
template <class T>
struct is_serializable
    : std::bool_constant<std::is_same_v<T, std::remove_cv_t<T>> &&
                         (is_wire_arithmetic_v<T> || std::is_enum_v<T> || std::is_same_v<T, std::string> ||
                          std::is_same_v<T, std::monostate> || has_msgpack_define<T> ||
                          enable_serialization<T>::value)> {};

template <class T, class A>
struct is_serializable<std::vector<T, A>> : is_serializable<T> {};
template <class T, std::size_t N>
struct is_serializable<std::array<T, N>> : is_serializable<T> {};
template <class K, class C, class A>
struct is_serializable<std::set<K, C, A>> : is_serializable<K> {};
template <class K, class V, class C, class A>
struct is_serializable<std::map<K, V, C, A>> : std::conjunction<is_serializable<K>, is_serializable<V>> {};
template <class K, class V, class H, class E, class A>
struct is_serializable<std::unordered_map<K, V, H, E, A>>
    : std::conjunction<is_serializable<K>, is_serializable<V>> {};
template <class T>
struct is_serializable<std::optional<T>>
    : std::bool_constant<is_serializable<T>::value && !is_std_optional<T>::value> {};
template <class A, class B>
struct is_serializable<std::pair<A, B>> : std::conjunction<is_serializable<A>, is_serializable<B>> {};
template <class... Ts>
struct is_serializable<std::tuple<Ts...>> : std::conjunction<is_serializable<Ts>...> {};
template <class... Ts>
struct is_serializable<std::variant<Ts...>>
    : std::bool_constant<(sizeof...(Ts) > 0) && std::conjunction_v<is_serializable<Ts>...>> {};
template <class R, class P>
struct is_serializable<std::chrono::duration<R, P>>
    : std::bool_constant<is_wire_arithmetic_v<R> && !std::is_same_v<R, bool>> {};

}  // namespace detail

// A type whose values can be sent between the parent and a child: see the list at the top of this file.
template <class T>
concept Serializable = detail::is_serializable<T>::value;

}  // namespace sdfutures

// Adaptors msgpack-cxx 4.1 lacks. They live in the default API namespace because that is where msgpack's
// dispatch (msgpack::adaptor::convert<T> and friends) looks first.
namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
namespace adaptor {

// Enums travel as their underlying integer. std::byte is an enum too but already has msgpack's own adaptor.
template <class E>
struct convert<E, std::enable_if_t<std::is_enum_v<E> && !std::is_same_v<E, std::byte>>> {
    const msgpack::object& operator()(const msgpack::object& o, E& value) const {
        std::underlying_type_t<E> raw{};
        o.convert(raw);
        value = static_cast<E>(raw);
        return o;
    }
};

template <class E>
struct pack<E, std::enable_if_t<std::is_enum_v<E> && !std::is_same_v<E, std::byte>>> {
    template <class Stream>
    msgpack::packer<Stream>& operator()(msgpack::packer<Stream>& o, const E& value) const {
        o.pack(static_cast<std::underlying_type_t<E>>(value));
        return o;
    }
};

// A duration travels as its count. The period is not sent: both ends are the same binary and the same type.
template <class Rep, class Period>
struct convert<std::chrono::duration<Rep, Period>> {
    const msgpack::object& operator()(const msgpack::object& o, std::chrono::duration<Rep, Period>& value) const {
        Rep count{};
        o.convert(count);
        value = std::chrono::duration<Rep, Period>(count);
        return o;
    }
};

template <class Rep, class Period>
struct pack<std::chrono::duration<Rep, Period>> {
    template <class Stream>
    msgpack::packer<Stream>& operator()(msgpack::packer<Stream>& o,
                                        const std::chrono::duration<Rep, Period>& value) const {
        o.pack(value.count());
        return o;
    }
};

// std::monostate is an empty array rather than nil, so that std::optional<std::monostate> stays unambiguous.
template <>
struct convert<std::monostate> {
    const msgpack::object& operator()(const msgpack::object& o, std::monostate&) const {
        if (o.type != msgpack::type::ARRAY || o.via.array.size != 0) throw msgpack::type_error();
        return o;
    }
};

template <>
struct pack<std::monostate> {
    template <class Stream>
    msgpack::packer<Stream>& operator()(msgpack::packer<Stream>& o, const std::monostate&) const {
        o.pack_array(0);
        return o;
    }
};

// A variant travels as [index, value]: the index, not the value's shape, picks the alternative, so variants with
// repeated or mutually convertible alternative types round-trip exactly.
template <class... Ts>
struct convert<std::variant<Ts...>> {
    const msgpack::object& operator()(const msgpack::object& o, std::variant<Ts...>& value) const {
        if (o.type != msgpack::type::ARRAY || o.via.array.size != 2) throw msgpack::type_error();
        const msgpack::object& index = o.via.array.ptr[0];
        if (index.type != msgpack::type::POSITIVE_INTEGER || index.via.u64 >= sizeof...(Ts)) {
            throw msgpack::type_error();
        }
        emplace_alternative(static_cast<std::size_t>(index.via.u64), o.via.array.ptr[1], value,
                            std::index_sequence_for<Ts...>{});
        return o;
    }

private:
    template <std::size_t I>
    static void emplace_one(const msgpack::object& o, std::variant<Ts...>& value) {
        // Converting before emplacing keeps the old value if the conversion throws.
        value.template emplace<I>(o.as<std::variant_alternative_t<I, std::variant<Ts...>>>());
    }

    template <std::size_t... Is>
    static void emplace_alternative(std::size_t index, const msgpack::object& o, std::variant<Ts...>& value,
                                    std::index_sequence<Is...>) {
        using Emplacer = void (*)(const msgpack::object&, std::variant<Ts...>&);
        static constexpr Emplacer emplacers[] = {&emplace_one<Is>...};
        emplacers[index](o, value);
    }
};

template <class... Ts>
struct pack<std::variant<Ts...>> {
    template <class Stream>
    msgpack::packer<Stream>& operator()(msgpack::packer<Stream>& o, const std::variant<Ts...>& value) const {
        if (value.valueless_by_exception()) {
            throw std::invalid_argument("cannot encode a std::variant that is valueless by exception");
        }
        o.pack_array(2);
        o.pack(static_cast<std::uint64_t>(value.index()));
        std::visit([&o](const auto& alternative) { o.pack(alternative); }, value);
        return o;
    }
};

}  // namespace adaptor
}  // MSGPACK_API_VERSION_NAMESPACE
}  // namespace msgpack
