// The wire format: round trips of every Serializable kind, exceptions across the process boundary, framing, and
// hostile input, which must surface as sdfutures::ProtocolError and nothing else.

#include <gtest/gtest.h>

#include <cxxabi.h>

#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <string_view>
#include <system_error>
#include <typeindex>
#include <unordered_set>

#include "sdfutures/detail/chunks.hpp"
#include "sdfutures/detail/wire.hpp"
#include "sdfutures/error.hpp"
#include "sdfutures/serialization.hpp"

// ---------------------------------------------------------------------------------------------------------------
// Allocation probe: records the largest single allocation request while armed. It interposes malloc (msgpack-cxx's
// zone allocates with malloc, not operator new); sanitizers interpose malloc themselves, so there it is off.

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define WIRE_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define WIRE_TEST_SANITIZED 1
#endif

namespace {
std::atomic<bool> probe_armed{false};
std::atomic<std::size_t> probe_largest{0};

// The largest allocation request `operation` makes (0 where the probe is unavailable).
template <class F>
std::size_t largest_allocation_during(F&& operation) {
    probe_largest = 0;
    probe_armed = true;
    try {
        operation();
    } catch (...) {
        probe_armed = false;
        throw;
    }
    probe_armed = false;
    return probe_largest;
}
}  // namespace

#ifndef WIRE_TEST_SANITIZED
constexpr bool allocation_probe_available = true;
namespace {
void note_allocation(std::size_t size) noexcept {
    if (!probe_armed.load(std::memory_order_relaxed)) return;
    std::size_t seen = probe_largest.load(std::memory_order_relaxed);
    while (size > seen && !probe_largest.compare_exchange_weak(seen, size, std::memory_order_relaxed)) {
    }
}
}  // namespace
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* malloc(std::size_t size) noexcept {
    note_allocation(size);
    return __libc_malloc(size);
}
void* calloc(std::size_t count, std::size_t size) noexcept {
    note_allocation(count * size);
    return __libc_calloc(count, size);
}
void* realloc(void* pointer, std::size_t size) noexcept {
    note_allocation(size);
    return __libc_realloc(pointer, size);
}
}
#else
constexpr bool allocation_probe_available = false;
#endif

// ---------------------------------------------------------------------------------------------------------------
// User types

namespace wire_test_types {

enum Colour : short { red = -3, green = 0, blue = 7 };
enum Legacy { legacy_a, legacy_b = 1000 };
enum class Priority : std::uint8_t { low = 0, high = 200 };
enum class Offset : std::int64_t { minimum = std::numeric_limits<std::int64_t>::min(), zero = 0 };

struct Job {
    std::string name;
    std::vector<int> steps;
    Priority priority = Priority::low;
    std::optional<std::chrono::milliseconds> timeout;
    std::variant<int, std::string> tag;
    bool operator==(const Job&) const = default;
    MSGPACK_DEFINE(name, steps, priority, timeout, tag);
};

struct Batch {
    std::vector<Job> jobs;
    std::map<std::string, Job> by_name;
    bool operator==(const Batch&) const = default;
    MSGPACK_DEFINE(jobs, by_name);
};

// Opted in through enable_serialization with hand-written adaptors: travels as a decimal string of cents.
struct Money {
    std::int64_t cents = 0;
    bool operator==(const Money&) const = default;
};

struct NotSerializable {
    int value;
};

struct DiskFull : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct PlainError {
    int code;
};

inline auto make_capturing_lambda(int count) {
    return [count] { return count; };
}

}  // namespace wire_test_types

template <>
struct sdfutures::enable_serialization<wire_test_types::Money> : std::true_type {};

namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
namespace adaptor {
template <>
struct convert<wire_test_types::Money> {
    const msgpack::object& operator()(const msgpack::object& o, wire_test_types::Money& money) const {
        if (o.type != msgpack::type::STR) throw msgpack::type_error();
        const char* end = o.via.str.ptr + o.via.str.size;
        const auto [parsed_to, error] = std::from_chars(o.via.str.ptr, end, money.cents);
        if (error != std::errc() || parsed_to != end) throw msgpack::type_error();
        return o;
    }
};
template <>
struct pack<wire_test_types::Money> {
    template <class Stream>
    msgpack::packer<Stream>& operator()(msgpack::packer<Stream>& o, const wire_test_types::Money& money) const {
        o.pack(std::to_string(money.cents));
        return o;
    }
};
}  // namespace adaptor
}  // MSGPACK_API_VERSION_NAMESPACE
}  // namespace msgpack

// ---------------------------------------------------------------------------------------------------------------
// What Serializable admits, checked at compile time.

namespace {
using sdfutures::Serializable;
using namespace wire_test_types;

static_assert(Serializable<int> && Serializable<bool> && Serializable<double> && Serializable<char>);
static_assert(Serializable<std::int8_t> && Serializable<std::uint64_t> && Serializable<float>);
static_assert(Serializable<Colour> && Serializable<Priority> && Serializable<std::byte>);
static_assert(Serializable<std::string> && Serializable<std::vector<std::byte>> && Serializable<std::monostate>);
static_assert(Serializable<std::vector<std::map<std::string, std::optional<std::pair<int, double>>>>>);
static_assert(Serializable<std::tuple<>> && Serializable<std::tuple<int, std::string, std::set<long>>>);
static_assert(Serializable<std::array<std::unordered_map<int, std::string>, 2>>);
static_assert(Serializable<std::variant<std::monostate, int, std::string>>);
static_assert(Serializable<std::chrono::nanoseconds> && Serializable<std::chrono::duration<double>>);
static_assert(Serializable<Job> && Serializable<Batch> && Serializable<std::vector<Job>>);
static_assert(Serializable<Money> && Serializable<std::optional<Money>>);

static_assert(!Serializable<int*>);
static_assert(!Serializable<const char*>);
static_assert(!Serializable<std::function<void()>>);
static_assert(!Serializable<NotSerializable>);
static_assert(!Serializable<std::vector<NotSerializable>>);
static_assert(!Serializable<int[3]>);
static_assert(!Serializable<int&>);
static_assert(!Serializable<const int>);
static_assert(!Serializable<void>);
static_assert(!Serializable<std::string_view>);
static_assert(!Serializable<std::unique_ptr<int>>);
static_assert(!Serializable<std::tuple<int, int*>>);
static_assert(!Serializable<std::map<int, void*>>);
static_assert(!Serializable<std::optional<std::optional<int>>>);
static_assert(!Serializable<long double>);
static_assert(!Serializable<char32_t>);
static_assert(!Serializable<std::chrono::duration<bool>>);
static_assert(!Serializable<decltype(make_capturing_lambda(1))>);

// ---------------------------------------------------------------------------------------------------------------
// Helpers

using sdfutures::ProtocolError;
using sdfutures::detail::decode_reply;
using sdfutures::detail::encode_exception_reply;
using sdfutures::detail::encode_setup_failure;
using sdfutures::detail::encode_value_reply;
using sdfutures::detail::encode_void_reply;
using sdfutures::detail::frame_header;
using sdfutures::detail::FrameReader;
using sdfutures::detail::make_frame;
using sdfutures::detail::pack_value;
using sdfutures::detail::unpack_value;
using sdfutures::detail::WireLimits;

std::string type_name_of(const std::type_info& type) {
    int status = 0;
    std::unique_ptr<char, decltype(&std::free)> name(abi::__cxa_demangle(type.name(), nullptr, nullptr, &status),
                                                     &std::free);
    return status == 0 ? name.get() : type.name();
}

// The ProtocolError message `operation` throws; fails the test if it throws anything else or nothing.
template <class F>
std::string protocol_error_from(F&& operation) {
    try {
        operation();
    } catch (const ProtocolError& e) {
        return e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "expected ProtocolError, got " << type_name_of(typeid(e)) << ": " << e.what();
        return {};
    } catch (...) {
        ADD_FAILURE() << "expected ProtocolError, got a non-std exception";
        return {};
    }
    ADD_FAILURE() << "expected ProtocolError, nothing was thrown";
    return {};
}

// Passes when `operation` throws a ProtocolError whose message contains `text`, and nothing else.
template <class F>
::testing::AssertionResult protocol_error_mentioning(F&& operation, std::string_view text) {
    try {
        operation();
    } catch (const ProtocolError& e) {
        if (std::string_view(e.what()).find(text) != std::string_view::npos) return ::testing::AssertionSuccess();
        return ::testing::AssertionFailure() << "the ProtocolError \"" << e.what() << "\" does not mention \"" << text
                                             << "\"";
    } catch (const std::exception& e) {
        return ::testing::AssertionFailure() << "expected ProtocolError, got " << type_name_of(typeid(e)) << ": "
                                             << e.what();
    } catch (...) {
        return ::testing::AssertionFailure() << "expected ProtocolError, got a non-std exception";
    }
    return ::testing::AssertionFailure() << "expected ProtocolError, nothing was thrown";
}

#define EXPECT_PROTOCOL_ERROR(statement) EXPECT_TRUE(protocol_error_mentioning([&] { (void)(statement); }, ""))
#define EXPECT_PROTOCOL_ERROR_MENTIONS(statement, text) \
    EXPECT_TRUE(protocol_error_mentioning([&] { (void)(statement); }, text))

template <class T>
T round_trip(const T& value) {
    return unpack_value<T>(pack_value(value));
}

template <class T>
T reply_round_trip(const T& value) {
    return decode_reply<T>(encode_value_reply(value));
}

template <class T>
void expect_round_trip(const T& value) {
    EXPECT_EQ(round_trip(value), value);
    EXPECT_EQ(reply_round_trip(value), value);
}

// The exception a decoded reply raises.
template <class T = int>
std::exception_ptr decode_failure(std::string_view payload) {
    try {
        (void)decode_reply<T>(payload);
    } catch (...) {
        return std::current_exception();
    }
    return nullptr;
}

template <class E>
std::string exception_reply_for(E&& error) {
    return encode_exception_reply(std::make_exception_ptr(std::forward<E>(error)));
}

std::string bytes(std::initializer_list<unsigned char> list) { return std::string(list.begin(), list.end()); }

// ---------------------------------------------------------------------------------------------------------------
// Round trips

template <class T>
class IntegerRoundTrip : public ::testing::Test {};
using IntegerTypes = ::testing::Types<std::int8_t, std::uint8_t, std::int16_t, std::uint16_t, std::int32_t,
                                      std::uint32_t, std::int64_t, std::uint64_t, char, signed char, unsigned char,
                                      short, long, unsigned long, long long, unsigned long long, wchar_t>;
TYPED_TEST_SUITE(IntegerRoundTrip, IntegerTypes);

TYPED_TEST(IntegerRoundTrip, LimitsAndSmallValuesSurvive) {
    using T = TypeParam;
    for (T value : {std::numeric_limits<T>::min(), std::numeric_limits<T>::max(), T{0}, T{1}, T{127},
                    static_cast<T>(std::numeric_limits<T>::max() / 2)}) {
        expect_round_trip(value);
    }
    if constexpr (std::is_signed_v<T>) expect_round_trip(static_cast<T>(-1));
}

TYPED_TEST(IntegerRoundTrip, OneBeyondTheRangeIsRejected) {
    using T = TypeParam;
    if constexpr (sizeof(T) < sizeof(std::int64_t)) {
        const auto above = static_cast<std::int64_t>(std::numeric_limits<T>::max()) + 1;
        EXPECT_PROTOCOL_ERROR_MENTIONS(unpack_value<T>(pack_value(above)), "expected an integer in");
        const auto below = static_cast<std::int64_t>(std::numeric_limits<T>::min()) - 1;
        EXPECT_PROTOCOL_ERROR(unpack_value<T>(pack_value(below)));
    } else if constexpr (std::is_signed_v<T>) {
        EXPECT_PROTOCOL_ERROR(unpack_value<T>(pack_value(std::numeric_limits<std::uint64_t>::max())));
    } else {
        EXPECT_PROTOCOL_ERROR(unpack_value<T>(pack_value(std::int64_t{-1})));
    }
}

TEST(RoundTrip, FloatingPointKeepsExtremesAndSpecialValues) {
    for (double value : {0.0, -0.0, 1.5, -2.25e-300, std::numeric_limits<double>::max(),
                         std::numeric_limits<double>::lowest(), std::numeric_limits<double>::denorm_min(),
                         std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()}) {
        expect_round_trip(value);
    }
    EXPECT_TRUE(std::signbit(round_trip(-0.0)));
    EXPECT_TRUE(std::signbit(round_trip(-0.0f)));
    // 2^64 and 2^63: integral values at the edge of the integer range that msgpack-cxx itself would pack as integers.
    expect_round_trip(18446744073709551616.0);
    expect_round_trip(-9223372036854775808.0);
    expect_round_trip(18446744073709551616.0f);
    EXPECT_EQ(unpack_value<double>(pack_value(std::int64_t{-3})), -3.0);
    EXPECT_TRUE(std::isnan(round_trip(std::numeric_limits<double>::quiet_NaN())));
    for (float value : {0.5f, std::numeric_limits<float>::max(), std::numeric_limits<float>::lowest(),
                        std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::infinity()}) {
        expect_round_trip(value);
    }
    EXPECT_TRUE(std::isnan(round_trip(std::numeric_limits<float>::quiet_NaN())));
}

TEST(RoundTrip, Booleans) {
    expect_round_trip(true);
    expect_round_trip(false);
}

TEST(RoundTrip, EnumsOfEveryKind) {
    for (Colour c : {red, green, blue}) expect_round_trip(c);
    expect_round_trip(legacy_b);
    expect_round_trip(Priority::high);
    expect_round_trip(Offset::minimum);
    expect_round_trip(std::byte{0xFE});
    // Values outside the enumerators are legal for an enum with a fixed underlying type.
    expect_round_trip(static_cast<Priority>(77));
}

TEST(RoundTrip, Strings) {
    expect_round_trip(std::string());
    expect_round_trip(std::string("plain"));
    expect_round_trip(std::string("embedded\0nul\0bytes", 18));
    expect_round_trip(std::string("\xff\xfe not UTF-8 \x80"));
    std::string large(1u << 20, '\0');
    for (std::size_t i = 0; i < large.size(); ++i) large[i] = static_cast<char>(i * 31 + i / 7);
    expect_round_trip(large);
}

TEST(RoundTrip, SequenceContainers) {
    expect_round_trip(std::vector<int>{});
    expect_round_trip(std::vector<int>{1, -2, 3, std::numeric_limits<int>::min()});
    expect_round_trip(std::vector<std::string>{"a", "", std::string(300, 'x')});
    expect_round_trip(std::vector<bool>{true, false, true});
    expect_round_trip(std::vector<char>{'a', '\0', 'z'});
    expect_round_trip(std::vector<unsigned char>{0, 255, 7});
    expect_round_trip(std::vector<std::int8_t>{-128, 0, 127});
    expect_round_trip(std::vector<std::byte>{std::byte{0}, std::byte{0xff}, std::byte{0x10}});
    expect_round_trip(std::vector<std::byte>{});
}

TEST(RoundTrip, FixedSizeArrays) {
    expect_round_trip(std::array<int, 3>{1, 2, 3});
    expect_round_trip(std::array<int, 0>{});
    expect_round_trip(std::array<char, 4>{'a', '\0', 'b', 'c'});
    expect_round_trip(std::array<unsigned char, 2>{0, 200});
    expect_round_trip(std::array<std::byte, 3>{std::byte{1}, std::byte{2}, std::byte{3}});
    expect_round_trip(std::array<std::string, 2>{"x", "y"});
}

TEST(RoundTrip, AssociativeContainers) {
    expect_round_trip(std::map<std::string, std::vector<int>>{{"a", {1, 2}}, {"", {}}, {"z", {-1}}});
    expect_round_trip(std::unordered_map<int, std::string>{{1, "one"}, {-2, "minus two"}});
    expect_round_trip(std::set<std::string>{"b", "a", ""});
    expect_round_trip(std::map<int, int>{});
}

TEST(RoundTrip, Optionals) {
    expect_round_trip(std::optional<int>(5));
    expect_round_trip(std::optional<int>());
    expect_round_trip(std::optional<std::string>(""));
    expect_round_trip(std::optional<std::string>());
    // monostate is not nil on the wire, so an engaged optional of it stays engaged.
    expect_round_trip(std::optional<std::monostate>(std::monostate{}));
    expect_round_trip(std::optional<std::monostate>());
    expect_round_trip(std::vector<std::optional<double>>{1.0, std::nullopt, 3.0});
}

TEST(RoundTrip, PairsAndTuples) {
    expect_round_trip(std::pair<int, std::string>{4, "four"});
    expect_round_trip(std::tuple<int, std::string, double>{1, "x", 2.5});
    expect_round_trip(std::tuple<>{});
    expect_round_trip(std::tuple<std::pair<bool, char>, std::tuple<int>>{{true, 'c'}, {9}});
}

TEST(RoundTrip, VariantsKeepTheirAlternative) {
    using V = std::variant<int, std::string, std::vector<int>, std::monostate>;
    expect_round_trip(V(std::in_place_index<0>, 42));
    expect_round_trip(V(std::in_place_index<1>, "text"));
    expect_round_trip(V(std::in_place_index<2>, std::vector<int>{1, 2}));
    expect_round_trip(V(std::in_place_index<3>));
    // Identical alternative types are told apart by index, not by shape.
    using Twin = std::variant<int, int>;
    EXPECT_EQ(round_trip(Twin(std::in_place_index<1>, 7)).index(), 1u);
    EXPECT_EQ(round_trip(Twin(std::in_place_index<0>, 7)).index(), 0u);
}

TEST(RoundTrip, Durations) {
    using namespace std::chrono;
    expect_round_trip(nanoseconds(std::numeric_limits<nanoseconds::rep>::max()));
    expect_round_trip(nanoseconds(-1));
    expect_round_trip(milliseconds(1500));
    expect_round_trip(seconds(-86400));
    expect_round_trip(hours(24 * 365));
    expect_round_trip(minutes(0));
    expect_round_trip(duration<double>(2.5));
    expect_round_trip(duration<std::uint16_t, std::milli>(65535));
}

TEST(RoundTrip, NestedCombinations) {
    using Nested = std::map<std::string, std::vector<std::optional<std::variant<int, std::string>>>>;
    expect_round_trip(Nested{{"k", {1, std::nullopt, std::string("s")}}, {"empty", {}}});
    using Table = std::vector<std::tuple<std::chrono::seconds, std::set<int>, std::array<std::byte, 2>>>;
    expect_round_trip(Table{{std::chrono::seconds(3), {1, 2}, {std::byte{9}, std::byte{8}}}});
    expect_round_trip(std::unordered_map<std::string, std::pair<Priority, std::optional<std::vector<Colour>>>>{
        {"a", {Priority::high, std::vector<Colour>{red, blue}}}, {"b", {Priority::low, std::nullopt}}});
}

TEST(RoundTrip, StructWithMsgpackDefine) {
    const Job job{"build", {1, 2, 3}, Priority::high, std::chrono::milliseconds(250), std::string("tag")};
    expect_round_trip(job);
    expect_round_trip(Job{});
    expect_round_trip(Batch{{job, Job{}}, {{"build", job}}});
}

TEST(RoundTrip, OptedInTypeUsesItsOwnAdaptors) {
    expect_round_trip(Money{-12345});
    expect_round_trip(std::vector<Money>{{1}, {std::numeric_limits<std::int64_t>::max()}});
    EXPECT_EQ(pack_value(Money{42}), pack_value(std::string("42")));
    // Its adaptor's own type_error still comes out as a ProtocolError.
    EXPECT_PROTOCOL_ERROR_MENTIONS(unpack_value<Money>(pack_value(std::string("4x2"))), "Money");
}

TEST(RoundTrip, VoidReply) {
    EXPECT_NO_THROW(decode_reply<void>(encode_void_reply()));
}

TEST(RoundTrip, PackValueAppendsToExistingBytes) {
    std::string out = "prefix";
    pack_value(out, 7);
    EXPECT_EQ(out.substr(0, 6), "prefix");
    EXPECT_EQ(unpack_value<int>(std::string_view(out).substr(6)), 7);
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding failures on the child side

struct ThrowsOnCopy {
    int value = 0;
    ThrowsOnCopy() = default;
    ThrowsOnCopy(const ThrowsOnCopy&) { throw std::runtime_error("copy"); }
    ThrowsOnCopy& operator=(const ThrowsOnCopy&) = default;
    MSGPACK_DEFINE(value);
};

TEST(Encoding, ValuelessVariantIsRefusedAndTheBufferRolledBack) {
    using V = std::variant<int, ThrowsOnCopy>;
    std::vector<V> values(2);
    const ThrowsOnCopy source;
    EXPECT_THROW(values[1].emplace<1>(source), std::runtime_error);
    ASSERT_TRUE(values[1].valueless_by_exception());
    // The first element is already written when the second one fails: all of it must be taken back.
    std::string out = "keep";
    EXPECT_THROW(pack_value(out, values), std::invalid_argument);
    EXPECT_EQ(out, "keep");
}

TEST(Encoding, ReplyAboveTheFrameLimitIsALengthError) {
    WireLimits small;
    small.max_frame_bytes = 1000;
    EXPECT_NO_THROW(encode_value_reply(std::string(900, 'x'), small));
    EXPECT_THROW(encode_value_reply(std::string(1000, 'x'), small), std::length_error);
}

// ---------------------------------------------------------------------------------------------------------------
// Exceptions across the boundary

template <class E>
class StandardExceptionWithMessage : public ::testing::Test {};
using MessageExceptionTypes =
    ::testing::Types<std::logic_error, std::invalid_argument, std::domain_error, std::length_error,
                     std::out_of_range, std::runtime_error, std::range_error, std::overflow_error,
                     std::underflow_error>;
TYPED_TEST_SUITE(StandardExceptionWithMessage, MessageExceptionTypes);

TYPED_TEST(StandardExceptionWithMessage, IsRethrownAsItselfWithItsMessage) {
    const std::exception_ptr error = decode_failure(exception_reply_for(TypeParam("the message\nwith a newline")));
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        EXPECT_EQ(std::type_index(typeid(e)), std::type_index(typeid(TypeParam))) << type_name_of(typeid(e));
        EXPECT_STREQ(e.what(), "the message\nwith a newline");
    }
}

template <class E>
class StandardExceptionWithoutMessage : public ::testing::Test {};
using FixedMessageExceptionTypes = ::testing::Types<std::bad_alloc, std::bad_cast, std::exception>;
TYPED_TEST_SUITE(StandardExceptionWithoutMessage, FixedMessageExceptionTypes);

TYPED_TEST(StandardExceptionWithoutMessage, IsRethrownAsItself) {
    const std::exception_ptr error = decode_failure<std::string>(exception_reply_for(TypeParam()));
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        EXPECT_EQ(std::type_index(typeid(e)), std::type_index(typeid(TypeParam))) << type_name_of(typeid(e));
        EXPECT_STREQ(e.what(), TypeParam().what());
    }
}

TEST(Exceptions, VoidTaskExceptionsAreRethrownToo) {
    EXPECT_THROW(decode_reply<void>(exception_reply_for(std::out_of_range("idx"))), std::out_of_range);
}

TEST(Exceptions, SystemErrorKeepsCodeCategoryAndMessage) {
    const std::system_error original(std::make_error_code(std::errc::no_such_file_or_directory), "opening /x");
    try {
        decode_reply<int>(exception_reply_for(original));
        FAIL() << "nothing thrown";
    } catch (const std::system_error& e) {
        EXPECT_EQ(std::type_index(typeid(e)), std::type_index(typeid(std::system_error)));
        EXPECT_EQ(e.code(), original.code());
        EXPECT_STREQ(e.what(), original.what());
    }
    const std::system_error without_text(std::error_code(EACCES, std::system_category()));
    try {
        decode_reply<int>(exception_reply_for(without_text));
        FAIL() << "nothing thrown";
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code(), without_text.code());
        EXPECT_STREQ(e.what(), without_text.what());
    }
}

TEST(Exceptions, SystemErrorOfAnotherCategoryBecomesRemoteError) {
    const std::system_error original(std::make_error_code(std::future_errc::broken_promise), "promise");
    try {
        decode_reply<int>(exception_reply_for(original));
        FAIL() << "nothing thrown";
    } catch (const sdfutures::RemoteError& e) {
        EXPECT_EQ(e.type_name(), "std::system_error");
        EXPECT_EQ(e.remote_what(), original.what());
    }
}

TEST(Exceptions, UserExceptionBecomesRemoteErrorWithDemangledName) {
    try {
        decode_reply<int>(exception_reply_for(DiskFull("/var is full")));
        FAIL() << "nothing thrown";
    } catch (const sdfutures::RemoteError& e) {
        EXPECT_EQ(e.type_name(), "wire_test_types::DiskFull");
        EXPECT_EQ(e.remote_what(), "/var is full");
        EXPECT_NE(std::string(e.what()).find("wire_test_types::DiskFull"), std::string::npos);
    }
}

TEST(Exceptions, DerivedStandardExceptionIsNotSlicedIntoItsBase) {
    // A subclass of std::runtime_error must not come back as a plain runtime_error: that would lose its type.
    EXPECT_THROW(decode_reply<int>(exception_reply_for(DiskFull("x"))), sdfutures::RemoteError);
    EXPECT_THROW(decode_reply<int>(exception_reply_for(sdfutures::ProtocolError("inner"))), sdfutures::RemoteError);
}

TEST(Exceptions, NonStdExceptionsAreNamedByType) {
    const auto remote = [](std::exception_ptr error) -> std::pair<std::string, std::string> {
        try {
            decode_reply<int>(encode_exception_reply(error));
        } catch (const sdfutures::RemoteError& e) {
            return {e.type_name(), e.remote_what()};
        }
        return {};
    };
    EXPECT_EQ(remote(std::make_exception_ptr(42)), (std::pair<std::string, std::string>{"int", ""}));
    EXPECT_EQ(remote(std::make_exception_ptr(PlainError{3})).first, "wire_test_types::PlainError");
    EXPECT_EQ(remote(std::make_exception_ptr("literal")),
              (std::pair<std::string, std::string>{"char const*", "literal"}));
    EXPECT_EQ(remote(std::make_exception_ptr(std::string("as string"))).second, "as string");
    EXPECT_EQ(remote(nullptr).first, "(no exception)");
}

TEST(Exceptions, EncodingWorksInsideAndOutsideACatchBlock) {
    const std::exception_ptr error = std::make_exception_ptr(7L);
    std::string inside;
    try {
        std::rethrow_exception(error);
    } catch (...) {
        inside = encode_exception_reply(std::current_exception());
    }
    EXPECT_EQ(inside, encode_exception_reply(error));
    try {
        throw std::runtime_error("other");
    } catch (...) {
        // Inside an unrelated catch block the description still follows the pointer passed in.
        EXPECT_EQ(encode_exception_reply(error), inside);
    }
}

TEST(Exceptions, HugeMessagesAreTruncatedByTheChild) {
    std::string what(1u << 20, 'a');
    what.replace(sdfutures::detail::max_reply_text_bytes - 14, 4, "\xF0\x9F\x98\x80");  // a 4-byte UTF-8 character
    try {
        decode_reply<int>(exception_reply_for(DiskFull(what)));
        FAIL() << "nothing thrown";
    } catch (const sdfutures::RemoteError& e) {
        EXPECT_LE(e.remote_what().size(), sdfutures::detail::max_reply_text_bytes);
        EXPECT_NE(e.remote_what().find("[truncated]"), std::string::npos);
        // The character straddling the cut is dropped whole, never split.
        EXPECT_EQ(e.remote_what().find('\xF0'), std::string::npos);
    }
}

TEST(Exceptions, SetupFailureBecomesSetupError) {
    try {
        decode_reply<std::string>(encode_setup_failure("move to cgroup", EACCES, "cannot write cgroup.procs"));
        FAIL() << "nothing thrown";
    } catch (const sdfutures::SetupError& e) {
        EXPECT_EQ(e.step(), "move to cgroup");
        EXPECT_EQ(e.error_number(), EACCES);
        EXPECT_NE(std::string(e.what()).find("cannot write cgroup.procs"), std::string::npos);
    }
    try {
        decode_reply<void>(encode_setup_failure("prctl", -5, "bad"));
        FAIL() << "nothing thrown";
    } catch (const sdfutures::SetupError& e) {
        EXPECT_EQ(e.error_number(), 0) << "an invalid errno is not sent as one";
        EXPECT_NE(std::string(e.what()).find("invalid errno -5"), std::string::npos);
    }
}

TEST(Exceptions, LostExceptionReplyMeansTheChildRanOutOfMemory) {
    EXPECT_THROW(decode_reply<int>(bytes({0x91, 0x03})), std::bad_alloc);
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(bytes({0x92, 0x03, 0x00})));
}

// ---------------------------------------------------------------------------------------------------------------
// Malformed replies and values

TEST(Hostile, ReplyOfTheWrongKindOrShape) {
    EXPECT_PROTOCOL_ERROR_MENTIONS(decode_reply<int>(encode_void_reply()), "void");
    EXPECT_PROTOCOL_ERROR_MENTIONS(decode_reply<void>(encode_value_reply(1)), "value");
    EXPECT_PROTOCOL_ERROR_MENTIONS(decode_reply<int>(pack_value(std::tuple<int, int>{9, 1})), "unknown reply kind");
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(pack_value(std::tuple<int, int>{-1, 1})));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(pack_value(std::tuple<>{})));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(pack_value(7)));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(pack_value(std::tuple<int, int, int>{0, 1, 2})));
}

TEST(Hostile, MalformedExceptionAndSetupReplies) {
    using Text = std::string;
    EXPECT_PROTOCOL_ERROR_MENTIONS(decode_reply<int>(pack_value(std::tuple<int, int, Text>{1, 5, "x"})),
                                   "exception type name");
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(pack_value(std::tuple<int, Text>{1, "std::runtime_error"})));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(pack_value(std::tuple<int, Text, Text, int>{1, "a", "b", 3})));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(
        pack_value(std::tuple<int, Text, Text, Text, Text>{1, "std::system_error", "w", "2", "generic"})));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(pack_value(std::tuple<int, Text, std::vector<char>>{1, "a", {'b'}})));
    EXPECT_PROTOCOL_ERROR_MENTIONS(decode_reply<int>(pack_value(std::tuple<int, Text, int, Text>{2, "s", 5000, "d"})),
                                   "errno");
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(pack_value(std::tuple<int, Text, int, Text>{2, "s", -1, "d"})));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(pack_value(std::tuple<int, Text, int>{2, "s", 1})));
}

TEST(Hostile, OversizedReplyTextsAreRejected) {
    const std::string huge(sdfutures::detail::max_reply_text_bytes + 1, 'w');
    EXPECT_PROTOCOL_ERROR_MENTIONS(
        decode_reply<int>(pack_value(std::tuple<int, std::string, std::string>{1, "std::runtime_error", huge})),
        "above the limit");
    EXPECT_PROTOCOL_ERROR(
        decode_reply<int>(pack_value(std::tuple<int, std::string, std::string>{1, huge, "what"})));
    EXPECT_PROTOCOL_ERROR(
        decode_reply<int>(pack_value(std::tuple<int, std::string, int, std::string>{2, huge, 1, "d"})));
    EXPECT_PROTOCOL_ERROR(
        decode_reply<int>(pack_value(std::tuple<int, std::string, int, std::string>{2, "s", 1, huge})));
}

TEST(Hostile, TypeMismatchNamesWhatWasExpected) {
    const std::string message =
        protocol_error_from([] { (void)decode_reply<int>(encode_value_reply(std::string("text"))); });
    EXPECT_NE(message.find("expected an integer"), std::string::npos) << message;
    EXPECT_NE(message.find("a string of 4 bytes"), std::string::npos) << message;
    EXPECT_PROTOCOL_ERROR(decode_reply<std::string>(encode_value_reply(5)));
    EXPECT_PROTOCOL_ERROR(decode_reply<bool>(encode_value_reply(1)));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(encode_value_reply(3.5)));
    EXPECT_PROTOCOL_ERROR(decode_reply<std::vector<int>>(encode_value_reply(std::map<int, int>{{1, 2}})));
    EXPECT_PROTOCOL_ERROR((decode_reply<std::map<int, int>>(encode_value_reply(std::vector<int>{1, 2}))));
    EXPECT_PROTOCOL_ERROR(decode_reply<Job>(encode_value_reply(5)));
    EXPECT_PROTOCOL_ERROR(decode_reply<std::vector<std::byte>>(encode_value_reply(std::vector<int>{1})));
}

TEST(Hostile, OutOfRangeNumbersAreRejected) {
    const std::string message = protocol_error_from([] { (void)decode_reply<std::uint8_t>(encode_value_reply(300)); });
    EXPECT_NE(message.find("[0, 255]"), std::string::npos) << message;
    EXPECT_NE(message.find("300"), std::string::npos) << message;
    EXPECT_PROTOCOL_ERROR(decode_reply<unsigned>(encode_value_reply(-1)));
    EXPECT_PROTOCOL_ERROR(decode_reply<float>(encode_value_reply(1e300)));
    EXPECT_PROTOCOL_ERROR(decode_reply<Priority>(encode_value_reply(256)));
    EXPECT_PROTOCOL_ERROR(
        decode_reply<std::chrono::duration<std::int8_t>>(encode_value_reply(std::chrono::seconds(200))));
    EXPECT_EQ(decode_reply<float>(encode_value_reply(std::numeric_limits<double>::infinity())),
              std::numeric_limits<float>::infinity());
}

TEST(Hostile, MismatchDeepInsideAValueNamesItsPath) {
    const auto reply = encode_value_reply(std::map<std::string, std::vector<int>>{{"a", {1, 2}}, {"b", {3, -4}}});
    const std::string message =
        protocol_error_from([&] { (void)decode_reply<std::map<std::string, std::vector<unsigned>>>(reply); });
    EXPECT_NE(message.find("reply value{value #1}[1]"), std::string::npos) << message;
}

TEST(Hostile, ShapesMsgpackWouldAcceptLaxlyAreRejected) {
    // msgpack-cxx fills missing tuple and std::array elements with defaults, and reads past the end of a short str
    // into std::array<char, N>; the shape check rejects all of these first.
    EXPECT_PROTOCOL_ERROR((unpack_value<std::tuple<int, int, int>>(pack_value(std::tuple<int, int>{1, 2}))));
    EXPECT_PROTOCOL_ERROR(unpack_value<std::tuple<int>>(pack_value(std::tuple<int, int>{1, 2})));
    EXPECT_PROTOCOL_ERROR((unpack_value<std::array<int, 3>>(pack_value(std::vector<int>{1, 2}))));
    EXPECT_PROTOCOL_ERROR((unpack_value<std::array<char, 8>>(pack_value(std::string("ab")))));
    EXPECT_PROTOCOL_ERROR((unpack_value<std::array<std::byte, 2>>(pack_value(std::vector<std::byte>(3)))));
    EXPECT_PROTOCOL_ERROR((unpack_value<std::pair<int, int>>(pack_value(std::vector<int>{1, 2, 3}))));
    EXPECT_PROTOCOL_ERROR(unpack_value<std::monostate>(pack_value(std::vector<int>{1})));
    EXPECT_PROTOCOL_ERROR(unpack_value<std::optional<int>>(pack_value(std::string("x"))));
}

TEST(Hostile, VariantIndexIsChecked) {
    using V = std::variant<int, std::string>;
    EXPECT_PROTOCOL_ERROR_MENTIONS(unpack_value<V>(pack_value(std::tuple<int, int>{2, 5})), "[0, 1]");
    EXPECT_PROTOCOL_ERROR(unpack_value<V>(pack_value(std::tuple<int, int>{-1, 5})));
    EXPECT_PROTOCOL_ERROR(unpack_value<V>(pack_value(std::tuple<std::string, int>{"0", 5})));
    EXPECT_PROTOCOL_ERROR(unpack_value<V>(pack_value(std::tuple<int, int>{1, 5})));
    EXPECT_PROTOCOL_ERROR(unpack_value<V>(pack_value(std::tuple<int>{0})));
    EXPECT_PROTOCOL_ERROR(unpack_value<V>(pack_value(std::tuple<int, int, int>{0, 1, 2})));
}

TEST(Hostile, TrailingBytesAreRejected) {
    std::string reply = encode_value_reply(5);
    reply.push_back('\x00');
    EXPECT_PROTOCOL_ERROR_MENTIONS(decode_reply<int>(reply), "1 trailing bytes");
    EXPECT_PROTOCOL_ERROR_MENTIONS(unpack_value<int>(pack_value(5) + pack_value(6)), "offset 1");
}

TEST(Hostile, EmptyAndGarbageInput) {
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(""));
    EXPECT_PROTOCOL_ERROR(unpack_value<int>(""));
    EXPECT_PROTOCOL_ERROR_MENTIONS(decode_reply<int>(bytes({0x92, 0x00, 0xc1})), "0xc1 at offset 2");
    EXPECT_PROTOCOL_ERROR_MENTIONS(unpack_value<int>(bytes({0xc1})), "0xc1 at offset 0");
    EXPECT_PROTOCOL_ERROR(decode_reply<int>("hello world"));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(std::string(100, '\xff')));
    EXPECT_PROTOCOL_ERROR(decode_reply<std::string>(bytes({0x92, 0x00, 0xdb, 0xff, 0xff, 0xff, 0xff, 'a'})));
    EXPECT_PROTOCOL_ERROR(decode_reply<int>(bytes({0x92, 0x00, 0xd4, 0x01, 0x02})));  // an ext value
}

TEST(Hostile, TruncatedRepliesAtEveryCutPoint) {
    const std::vector<std::string> replies = {
        encode_value_reply(std::map<std::string, std::vector<int>>{{"key", {1, 1000, -70000, 1 << 30}}}),
        encode_value_reply(std::tuple<std::string, double, std::optional<std::int64_t>>{"x", 1.5, -5}),
        exception_reply_for(std::invalid_argument("bad argument")),
        exception_reply_for(std::system_error(std::make_error_code(std::errc::timed_out), "wait")),
        encode_setup_failure("setns", EPERM, "detail"),
        encode_void_reply(),
    };
    for (const std::string& reply : replies) {
        for (std::size_t cut = 0; cut < reply.size(); ++cut) {
            const std::string_view prefix(reply.data(), cut);
            EXPECT_PROTOCOL_ERROR((decode_reply<std::map<std::string, std::vector<int>>>(prefix))) << "cut " << cut;
            EXPECT_PROTOCOL_ERROR(decode_reply<void>(prefix)) << "cut " << cut;
        }
        // And framed: every cut leaves the reader without a frame and mid-frame.
        const std::string frame = make_frame(reply);
        for (std::size_t cut = 1; cut < frame.size(); ++cut) {
            FrameReader reader;
            reader.feed(frame.data(), cut);
            EXPECT_FALSE(reader.next().has_value()) << "cut " << cut;
            EXPECT_TRUE(reader.mid_frame()) << "cut " << cut;
        }
    }
}

TEST(Hostile, HugeClaimedArrayInATinyBufferAllocatesNothingLarge) {
    // array32 claiming 2^32-1 elements, then a few bytes: 10 bytes in all.
    const std::string claim = bytes({0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02, 0x03, 0x04, 0x05});
    const std::size_t largest = largest_allocation_during([&] {
        EXPECT_PROTOCOL_ERROR_MENTIONS(unpack_value<std::vector<int>>(claim), "4294967295 elements");
        EXPECT_PROTOCOL_ERROR(decode_reply<std::vector<int>>(bytes({0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x01})));
        EXPECT_PROTOCOL_ERROR((unpack_value<std::map<int, int>>(bytes({0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02}))));
        EXPECT_PROTOCOL_ERROR(unpack_value<std::string>(bytes({0xdb, 0xff, 0xff, 0xff, 0xff, 0x01})));
        EXPECT_PROTOCOL_ERROR(unpack_value<std::vector<std::byte>>(bytes({0xc6, 0xff, 0xff, 0xff, 0xff, 0x01})));
    });
    if (!allocation_probe_available) GTEST_SKIP() << "allocation probe unavailable under sanitizers";
    EXPECT_LT(largest, 4096u);
}

TEST(Hostile, NestedClaimsCannotAddUpBeyondTheInput) {
    // Each level claims almost the whole input; every claim alone would fit, together they cannot.
    std::string nested;
    const std::uint32_t size = 1u << 16;
    for (int level = 0; level < 8; ++level) {
        const std::uint32_t claim = size - 5 * (level + 1);
        nested += bytes({0xdd, static_cast<unsigned char>(claim >> 24), static_cast<unsigned char>(claim >> 16),
                         static_cast<unsigned char>(claim >> 8), static_cast<unsigned char>(claim)});
    }
    nested.resize(size, '\x01');
    const std::size_t largest = largest_allocation_during(
        [&] { EXPECT_PROTOCOL_ERROR_MENTIONS(unpack_value<std::vector<std::vector<int>>>(nested), "can hold"); });
    if (!allocation_probe_available) GTEST_SKIP() << "allocation probe unavailable under sanitizers";
    EXPECT_LT(largest, 4096u);
}

TEST(Hostile, DeepNestingIsRejected) {
    WireLimits shallow;
    shallow.max_depth = 3;
    using ThreeLevels = std::vector<std::vector<std::vector<int>>>;
    using FourLevels = std::vector<ThreeLevels>;
    EXPECT_EQ(unpack_value<ThreeLevels>(pack_value(ThreeLevels{{{1}}}), shallow).at(0).at(0).at(0), 1);
    const std::string four_levels = pack_value(FourLevels{{{{1}}}});
    EXPECT_PROTOCOL_ERROR_MENTIONS(unpack_value<FourLevels>(four_levels, shallow), "nested deeper than the limit of 3");
    // A million nested arrays must neither recurse nor allocate per level.
    const std::string deep = std::string(1'000'000, '\x91') + '\x01';
    EXPECT_PROTOCOL_ERROR_MENTIONS(decode_reply<int>(deep), "nested deeper than the limit of 64");
}

TEST(Hostile, ValueLargerThanTheLimitIsRejected) {
    WireLimits tiny;
    tiny.max_frame_bytes = 8;
    EXPECT_PROTOCOL_ERROR(unpack_value<std::string>(pack_value(std::string(20, 'x')), tiny));
}

// The exceptions decoding `payload` may legitimately raise, found by parsing it independently of the decoder.
::testing::AssertionResult decode_outcome_is_legitimate(std::string_view payload, const std::function<void()>& decode) {
    std::optional<std::uint64_t> kind;
    try {
        const std::size_t n = payload.size();
        const auto handle =
            msgpack::unpack(payload.data(), n, nullptr, nullptr, msgpack::unpack_limit(n, n, n, n, n, 64));
        const msgpack::object& o = handle.get();
        if (o.type == msgpack::type::ARRAY && o.via.array.size > 0 &&
            o.via.array.ptr[0].type == msgpack::type::POSITIVE_INTEGER) {
            kind = o.via.array.ptr[0].via.u64;
        }
    } catch (...) {
    }
    static const std::set<std::type_index> rethrown_std_types = {
        typeid(std::logic_error),    typeid(std::invalid_argument), typeid(std::domain_error),
        typeid(std::length_error),   typeid(std::out_of_range),     typeid(std::runtime_error),
        typeid(std::range_error),    typeid(std::overflow_error),   typeid(std::underflow_error),
        typeid(std::bad_alloc),      typeid(std::bad_cast),         typeid(std::exception),
        typeid(std::system_error),   typeid(sdfutures::RemoteError)};
    try {
        decode();
    } catch (const ProtocolError&) {
    } catch (const sdfutures::SetupError&) {
        if (kind != 2u) return ::testing::AssertionFailure() << "SetupError from a reply of kind " << kind.value_or(99);
    } catch (const std::exception& e) {
        const bool legitimate = (kind == 1u || kind == 3u) && rethrown_std_types.count(typeid(e));
        if (!legitimate) {
            return ::testing::AssertionFailure() << "escaped: " << type_name_of(typeid(e)) << ": " << e.what();
        }
    } catch (...) {
        return ::testing::AssertionFailure() << "a non-std exception escaped";
    }
    return ::testing::AssertionSuccess();
}

template <class T>
::testing::AssertionResult decodes_or_fails_cleanly(std::string_view payload) {
    return decode_outcome_is_legitimate(payload, [&] { (void)decode_reply<T>(payload); });
}

::testing::AssertionResult all_decodes_fail_cleanly(std::string_view payload) {
    for (auto result : {decodes_or_fails_cleanly<int>(payload), decodes_or_fails_cleanly<void>(payload),
                        decodes_or_fails_cleanly<std::string>(payload),
                        decodes_or_fails_cleanly<std::vector<std::string>>(payload),
                        decodes_or_fails_cleanly<std::map<std::string, std::vector<int>>>(payload),
                        decodes_or_fails_cleanly<std::variant<int, std::string>>(payload),
                        decodes_or_fails_cleanly<std::optional<double>>(payload),
                        decodes_or_fails_cleanly<std::tuple<int, std::string>>(payload),
                        decodes_or_fails_cleanly<Job>(payload), decodes_or_fails_cleanly<Money>(payload)}) {
        if (!result) return result;
    }
    return ::testing::AssertionSuccess();
}

TEST(Hostile, RandomBuffersOnlyEverRaiseProtocolError) {
    std::mt19937_64 random(20240611);
    for (int round = 0; round < 4000; ++round) {
        std::string buffer(random() % 48, '\0');
        for (char& c : buffer) c = static_cast<char>(random());
        // Bias half of the buffers towards the reply envelope so that the decoders behind it are reached.
        if (round % 2 == 0 && !buffer.empty()) buffer[0] = static_cast<char>(0x90 + random() % 6);
        if (round % 4 == 0 && buffer.size() > 1) buffer[1] = static_cast<char>(random() % 4);
        ASSERT_TRUE(all_decodes_fail_cleanly(buffer)) << "round " << round;
    }
}

TEST(Hostile, MutatedRealRepliesOnlyEverRaiseProtocolError) {
    const std::vector<std::string> seeds = {
        encode_value_reply(std::map<std::string, std::vector<int>>{{"k", {1, 2, 300}}, {"other", {}}}),
        encode_value_reply(std::variant<int, std::string>(std::string("alt"))),
        encode_value_reply(Job{"j", {1}, Priority::high, std::chrono::milliseconds(5), 3}),
        encode_value_reply(std::tuple<int, std::string>{1, "two"}),
        exception_reply_for(std::overflow_error("big")),
        exception_reply_for(std::system_error(std::make_error_code(std::errc::io_error))),
        encode_setup_failure("step", 2, "detail"),
    };
    std::mt19937_64 random(77);
    for (int round = 0; round < 3000; ++round) {
        std::string buffer = seeds[random() % seeds.size()];
        for (int edits = 1 + static_cast<int>(random() % 3); edits > 0; --edits) {
            const std::size_t at = random() % buffer.size();
            switch (random() % 3) {
            case 0: buffer[at] = static_cast<char>(random()); break;
            case 1: buffer[at] = static_cast<char>(buffer[at] ^ (1 << (random() % 8))); break;
            default: buffer.erase(at, 1 + random() % 3); break;
            }
            if (buffer.empty()) break;
        }
        ASSERT_TRUE(all_decodes_fail_cleanly(buffer)) << "round " << round;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Frames

std::vector<std::string> drain(FrameReader& reader) {
    std::vector<std::string> frames;
    while (auto frame = reader.next()) frames.push_back(std::move(*frame));
    return frames;
}

TEST(Frames, HeaderIsLittleEndian) {
    const auto header = frame_header(0x01020304);
    EXPECT_EQ(std::string(header.data(), header.size()), bytes({0x04, 0x03, 0x02, 0x01}));
    EXPECT_EQ(make_frame("ab"), bytes({0x02, 0x00, 0x00, 0x00, 'a', 'b'}));
    EXPECT_THROW(frame_header(std::size_t{1} << 32), std::length_error);
}

TEST(Frames, FedOneByteAtATime) {
    const std::vector<std::string> payloads = {encode_value_reply(std::string("first")), "", std::string(1000, 'z'),
                                               encode_void_reply()};
    std::string stream;
    for (const auto& p : payloads) stream += make_frame(p);
    std::set<std::size_t> frame_ends;
    std::size_t end = 0;
    for (const auto& p : payloads) frame_ends.insert(end += sdfutures::detail::frame_header_bytes + p.size());
    FrameReader reader;
    std::vector<std::string> frames;
    for (std::size_t i = 0; i < stream.size(); ++i) {
        reader.feed(stream.data() + i, 1);
        while (auto frame = reader.next()) frames.push_back(std::move(*frame));
        EXPECT_EQ(reader.mid_frame(), frame_ends.count(i + 1) == 0) << "after byte " << i;
    }
    EXPECT_EQ(frames, payloads);
}

TEST(Frames, FedInOneBigChunkAndInRandomPieces) {
    std::vector<std::string> payloads;
    std::string stream;
    for (int i = 0; i < 200; ++i) {
        payloads.push_back(std::string(static_cast<std::size_t>(i * 37 % 5000), static_cast<char>(i)));
        stream += make_frame(payloads.back());
    }
    FrameReader whole;
    whole.feed(stream.data(), stream.size());
    EXPECT_FALSE(whole.mid_frame());
    EXPECT_EQ(drain(whole), payloads);

    std::mt19937 random(5);
    FrameReader pieces;
    std::vector<std::string> frames;
    for (std::size_t at = 0; at < stream.size();) {
        const std::size_t n = std::min<std::size_t>(1 + random() % 9000, stream.size() - at);
        pieces.feed(stream.data() + at, n);
        at += n;
        for (auto& f : drain(pieces)) frames.push_back(std::move(f));
    }
    EXPECT_EQ(frames, payloads);
}

TEST(Frames, LargeFrameThroughWriteAreaIsReceivedInPlace) {
    const std::size_t size = 64u << 20;
    std::string payload(size, '\0');
    for (std::size_t i = 0; i < size; i += 4096) payload[i] = static_cast<char>(i >> 12);
    const std::string stream = make_frame(payload) + make_frame("tail");

    FrameReader reader;
    std::mt19937 random(9);
    std::vector<std::pair<std::uintptr_t, std::size_t>> areas;
    for (std::size_t at = 0; at < stream.size();) {
        const std::span<char> area = reader.write_area(1u << 20);
        ASSERT_FALSE(area.empty());
        // Like a nonblocking read(): anything from one byte up to the area.
        const std::size_t n = std::min({area.size(), stream.size() - at, std::size_t{1} + random() % (1u << 20)});
        std::memcpy(area.data(), stream.data() + at, n);
        reader.commit(n);
        areas.emplace_back(reinterpret_cast<std::uintptr_t>(area.data()), n);
        at += n;
    }
    const auto frames = drain(reader);
    ASSERT_EQ(frames.size(), 2u);
    EXPECT_TRUE(frames[0] == payload);
    EXPECT_EQ(frames[1], "tail");
    // All but the head and tail of the payload (read through the staging buffer) went straight into the final one.
    const auto begin = reinterpret_cast<std::uintptr_t>(frames[0].data());
    std::size_t in_place = 0;
    for (const auto& [address, n] : areas) {
        if (address >= begin && address + n <= begin + frames[0].size()) in_place += n;
    }
    EXPECT_GE(in_place, size - 2 * FrameReader::default_read_bytes);
}

TEST(Frames, WriteAreaAndFeedCanBeMixed) {
    // Reads that fill only part of a large write area, followed by fed bytes that must land in the part the
    // area exposed but the read did not fill.
    std::string payload(1u << 20, '\0');
    for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i % 251);
    const std::string stream = make_frame(payload) + make_frame("b");
    FrameReader reader;
    std::size_t at = 0;
    for (int step = 0; at < stream.size(); ++step) {
        if (step % 2 == 0) {
            const std::size_t n = std::min<std::size_t>(5000, stream.size() - at);
            reader.feed(stream.data() + at, n);
            at += n;
        } else {
            const std::span<char> area = reader.write_area(1u << 16);
            const std::size_t n = std::min(area.size() / 3 + 1, stream.size() - at);
            std::memcpy(area.data(), stream.data() + at, n);
            reader.commit(n);
            at += n;
        }
    }
    const auto frames = drain(reader);
    ASSERT_EQ(frames.size(), 2u);
    EXPECT_TRUE(frames[0] == payload);
    EXPECT_EQ(frames[1], "b");
}

TEST(Frames, OversizedHeaderIsRejectedOnItsFourthByte) {
    WireLimits limits;
    limits.max_frame_bytes = 1u << 20;
    FrameReader reader(limits);
    const std::string ok = make_frame("fine");
    reader.feed(ok.data(), ok.size());
    const auto too_big = frame_header((1u << 20) + 1);
    reader.feed(too_big.data(), 3);
    const std::size_t largest = largest_allocation_during(
        [&] { EXPECT_PROTOCOL_ERROR_MENTIONS(reader.feed(too_big.data() + 3, 1), "1048577 payload bytes"); });
    if (allocation_probe_available) {
        EXPECT_LT(largest, 4096u);
    }
    // The stream cannot be resynchronized, but what arrived before stays available.
    EXPECT_PROTOCOL_ERROR(reader.feed("x", 1));
    EXPECT_PROTOCOL_ERROR(reader.write_area());
    EXPECT_EQ(reader.next(), std::optional<std::string>("fine"));

    FrameReader at_limit(limits);
    const auto exact = frame_header(1u << 20);
    EXPECT_NO_THROW(at_limit.feed(exact.data(), exact.size()));
    EXPECT_TRUE(at_limit.mid_frame());
}

TEST(Frames, DefaultLimitRejectsTheLargestHeader) {
    FrameReader reader;
    const std::size_t largest = largest_allocation_during(
        [&] { EXPECT_PROTOCOL_ERROR(reader.feed(bytes({0xff, 0xff, 0xff, 0xff}).data(), 4)); });
    if (allocation_probe_available) {
        EXPECT_LT(largest, 4096u);
    }
}

TEST(Frames, CommitWithoutAreaIsAProgrammingError) {
    FrameReader reader;
    EXPECT_THROW(reader.commit(1), std::logic_error);
    const auto area = reader.write_area(16);
    EXPECT_LE(area.size(), 16u);
    EXPECT_THROW(reader.commit(area.size() + 1), std::logic_error);
    EXPECT_THROW(reader.write_area(0), std::invalid_argument);
}

TEST(Frames, DecodingFramedRandomStreamsOnlyRaisesProtocolError) {
    WireLimits limits;
    limits.max_frame_bytes = 4096;
    std::mt19937_64 random(31337);
    for (int round = 0; round < 1000; ++round) {
        std::string stream(random() % 64, '\0');
        for (char& c : stream) c = static_cast<char>(random());
        if (stream.size() >= 4 && round % 2 == 0) {
            const auto header = frame_header(random() % (stream.size() - 3));
            stream.replace(0, 4, header.data(), 4);
        }
        FrameReader reader(limits);
        try {
            reader.feed(stream.data(), stream.size());
        } catch (const ProtocolError&) {
        }
        while (auto frame = reader.next()) ASSERT_TRUE(all_decodes_fail_cleanly(*frame)) << "round " << round;
    }
}

}  // namespace

// A map() chunk's reply, as a hostile worker may shape it: the counts must match the chunk, or it is a
// ProtocolError of the whole chunk, never a short or padded result.
namespace sdfutures::detail {
namespace {

TEST(ChunkReply, AllValuesOrOneReplyPerElementAndNothingElse) {
    using Body = ChunkReplyBody<int>;
    auto ints = [](std::vector<int> v) { return to_chunk_values(std::move(v)); };
    auto elements = decode_chunk<int>(encode_value_reply(Body{ints({1, 2, 3}), {}}), 3, {});
    ASSERT_EQ(elements.size(), 3u);
    EXPECT_EQ(*elements[2].value, 3);

    Body mixed{{}, {encode_value_reply(7), encode_exception_reply(std::make_exception_ptr(std::out_of_range("x")))}};
    elements = decode_chunk<int>(encode_value_reply(mixed), 2, {});
    EXPECT_EQ(*elements[0].value, 7);
    EXPECT_THROW(std::rethrow_exception(elements[1].error), std::out_of_range);

    EXPECT_THROW(decode_chunk<int>(encode_value_reply(Body{ints({1, 2}), {}}), 3, {}), ProtocolError);
    EXPECT_THROW(decode_chunk<int>(encode_value_reply(Body{ints({1, 2, 3, 4}), {}}), 3, {}), ProtocolError);
    EXPECT_THROW(decode_chunk<int>(encode_value_reply(Body{ints({1}), {encode_value_reply(2)}}), 2, {}), ProtocolError);
    EXPECT_THROW(decode_chunk<int>(encode_value_reply(Body{{}, {"garbage", "garbage"}}), 2, {}), ProtocolError);
    EXPECT_THROW(decode_chunk<int>(encode_value_reply(std::string("not a chunk")), 1, {}), ProtocolError);
    // Raw elements: a blob that is no whole number of ints.
    EXPECT_THROW(decode_chunk<int>(encode_value_reply(Body{std::vector<char>(7), {}}), 2, {}), ProtocolError);
}

TEST(ChunkReply, ArithmeticElementsTravelAsTheirBytesAndOthersAsValues) {
    static_assert(std::is_same_v<ChunkValues<double>, std::vector<char>>);
    static_assert(std::is_same_v<ChunkValues<bool>, std::vector<bool>>);
    static_assert(std::is_same_v<ChunkValues<std::string>, std::vector<std::string>>);
    const std::vector<double> doubles{0.5, -0.0, std::numeric_limits<double>::infinity(), 1e-310};
    auto back = from_chunk_values<double>(to_chunk_values(doubles), "test");
    ASSERT_EQ(back.size(), doubles.size());
    for (std::size_t i = 0; i < doubles.size(); ++i) EXPECT_EQ(std::memcmp(&back[i], &doubles[i], sizeof(double)), 0);
    using Body = ChunkReplyBody<std::string>;
    auto elements = decode_chunk<std::string>(encode_value_reply(Body{{"a", "bc"}, {}}), 2, {});
    EXPECT_EQ(*elements[1].value, "bc");
}

}  // namespace
}  // namespace sdfutures::detail
