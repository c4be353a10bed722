#include "sdfutures/detail/wire.hpp"

#include <cxxabi.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <system_error>
#include <vector>

#include <msgpack/null_visitor.hpp>
#include <msgpack/parse.hpp>

namespace sdfutures::detail {

namespace {

// errno values are small positive numbers (the kernel's MAX_ERRNO is 4095); anything else is not an errno.
constexpr int max_errno = 4095;
// The largest payload a frame header can announce (wire_frames.cpp), which also bounds a reply.
constexpr std::uint64_t max_header_length = UINT32_MAX;

enum class ReplyKind : std::uint64_t { value = 0, exception = 1, setup_failure = 2, exception_lost = 3 };

// Replies that fit the small-string buffer of std::string, so returning them allocates nothing.
constexpr char void_reply[] = {'\x91', '\x00'};
constexpr char exception_lost_reply[] = {'\x91', '\x03'};

std::string demangled_name(const std::type_info& type) {
    int status = 0;
    const std::unique_ptr<char, decltype(&std::free)> demangled(
        abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), &std::free);
    return status == 0 && demangled ? std::string(demangled.get()) : std::string(type.name());
}

std::string bounded_text(std::string_view text) {
    if (text.size() <= max_reply_text_bytes) return std::string(text);
    static constexpr std::string_view marker = " [truncated]";
    std::size_t cut = max_reply_text_bytes - marker.size();
    // Step back over UTF-8 continuation bytes so that no character is cut in half.
    for (int steps = 0; steps < 3 && cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80; ++steps) {
        --cut;
    }
    std::string bounded;
    bounded.reserve(cut + marker.size());
    bounded.append(text.substr(0, cut)).append(marker);
    return bounded;
}

std::string describe_object(const msgpack::object& o) {
    switch (o.type) {
    case msgpack::type::NIL: return "nil";
    case msgpack::type::BOOLEAN: return o.via.boolean ? "true" : "false";
    case msgpack::type::POSITIVE_INTEGER: return "the integer " + std::to_string(o.via.u64);
    case msgpack::type::NEGATIVE_INTEGER: return "the integer " + std::to_string(o.via.i64);
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: {
        char text[64];
        std::snprintf(text, sizeof text, "the float %g", o.via.f64);
        return text;
    }
    case msgpack::type::STR: return "a string of " + std::to_string(o.via.str.size) + " bytes";
    case msgpack::type::BIN: return "binary data of " + std::to_string(o.via.bin.size) + " bytes";
    case msgpack::type::ARRAY: return "an array of " + std::to_string(o.via.array.size) + " elements";
    case msgpack::type::MAP: return "a map of " + std::to_string(o.via.map.size) + " entries";
    case msgpack::type::EXT: return "an extension value of type " + std::to_string(o.via.ext.type());
    }
    return "an unknown MessagePack object";
}

std::string describe_path(const ValuePath& where) {
    std::vector<const ValuePath*> chain;
    for (const ValuePath* p = &where; p != nullptr; p = p->parent) chain.push_back(p);
    std::string text;
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
        const ValuePath& step = **it;
        const std::string index = std::to_string(step.index);
        switch (step.step) {
        case ValuePath::Step::root: text += step.root_name; break;
        case ValuePath::Step::element: text += "[" + index + "]"; break;
        case ValuePath::Step::map_key: text += "{key #" + index + "}"; break;
        case ValuePath::Step::map_value: text += "{value #" + index + "}"; break;
        case ValuePath::Step::alternative: text += "<alternative " + index + ">"; break;
        }
    }
    return text;
}

// Validates the structure of untrusted MessagePack before msgpack-cxx builds objects from it. Besides catching
// invalid bytes, truncation and excessive nesting with a precise message, it rejects any container header that
// claims more elements than the rest of the input could possibly hold: every element takes at least one byte, so
// (bytes consumed so far) + (elements announced but not yet seen) can never exceed the input size. That bounds
// msgpack-cxx's allocations, which are made per header before the elements are read, to a small multiple of the
// input size however the headers are nested.
class StructureChecker : public msgpack::null_visitor {
public:
    StructureChecker(std::string_view input, std::size_t max_depth) : input_(input), max_depth_(max_depth) {}

    bool visit_nil() { return consume(1); }
    bool visit_boolean(bool) { return consume(1); }
    bool visit_positive_integer(std::uint64_t) { return consume(1); }
    bool visit_negative_integer(std::int64_t) { return consume(1); }
    bool visit_float32(float) { return consume(1); }
    bool visit_float64(double) { return consume(1); }
    bool visit_str(const char*, std::uint32_t size) { return consume(1 + std::uint64_t{size}); }
    bool visit_bin(const char*, std::uint32_t size) { return consume(1 + std::uint64_t{size}); }
    bool visit_ext(const char*, std::uint32_t size) { return consume(1 + std::uint64_t{size}); }

    bool start_array(std::uint32_t elements) { return open_container("an array", elements, elements); }
    bool start_map(std::uint32_t entries) { return open_container("a map", entries, 2 * std::uint64_t{entries}); }
    bool start_array_item() { return fulfil_one(); }
    bool start_map_key() { return fulfil_one(); }
    bool start_map_value() { return fulfil_one(); }
    bool end_array() { return close_container(); }
    bool end_map() { return close_container(); }

    void parse_error(std::size_t, std::size_t error_offset) {
        char text[128];
        std::snprintf(text, sizeof text, "byte 0x%02x at offset %zu is not a MessagePack type",
                      error_offset < input_.size() ? static_cast<unsigned char>(input_[error_offset]) : 0u,
                      error_offset);
        problem_ = text;
    }
    void insufficient_bytes(std::size_t, std::size_t) {
        problem_ = "truncated: the input ends after " + std::to_string(input_.size()) +
                   " bytes in the middle of a value";
    }

    const std::string& problem() const noexcept { return problem_; }

private:
    bool consume(std::uint64_t bytes) {
        consumed_ += bytes;
        return true;
    }
    bool fulfil_one() {
        --announced_;
        return true;
    }
    bool open_container(const char* what, std::uint32_t count, std::uint64_t elements) {
        consume(1);
        if (++depth_ > max_depth_) {
            problem_ = "values are nested deeper than the limit of " + std::to_string(max_depth_) + " levels";
            return false;
        }
        if (consumed_ + announced_ + elements > input_.size()) {
            problem_ = std::string(what) + " header claims " + std::to_string(count) +
                       (elements == count ? " elements" : " entries") + ", more than the " +
                       std::to_string(input_.size()) + "-byte input can hold";
            return false;
        }
        announced_ += elements;
        return true;
    }
    bool close_container() {
        --depth_;
        return true;
    }

    std::string_view input_;
    std::size_t max_depth_;
    std::size_t depth_ = 0;
    std::uint64_t consumed_ = 0;   // a lower bound on the bytes parsed so far
    std::uint64_t announced_ = 0;  // elements announced by open containers and not started yet
    std::string problem_;
};

bool reference_input(msgpack::type::object_type, std::size_t, void*) {
    // Strings and blobs point into the caller's buffer instead of being copied into msgpack's zone.
    return true;
}

std::string malformed(const char* context, const std::string& detail) {
    return std::string("malformed ") + context + ": " + detail;
}

// ---- reply envelope ----

std::string reply_text(const msgpack::object& o, const char* field) {
    if (o.type != msgpack::type::STR) {
        throw ProtocolError(
            malformed("reply", std::string("the ") + field + " should be a string, found " + describe_object(o)));
    }
    if (o.via.str.size > max_reply_text_bytes) {
        throw ProtocolError(malformed("reply", std::string("the ") + field + " is " + std::to_string(o.via.str.size) +
                                                   " bytes long, above the limit of " +
                                                   std::to_string(max_reply_text_bytes)));
    }
    return std::string(o.via.str.ptr, o.via.str.size);
}

std::int64_t reply_integer(const msgpack::object& o, const char* field, std::int64_t min, std::int64_t max) {
    const bool in_range = (o.type == msgpack::type::POSITIVE_INTEGER && o.via.u64 <= static_cast<std::uint64_t>(max)) ||
                          (o.type == msgpack::type::NEGATIVE_INTEGER && o.via.i64 >= min);
    if (!in_range) {
        throw ProtocolError(malformed("reply", std::string("the ") + field + " should be an integer in [" +
                                                   std::to_string(min) + ", " + std::to_string(max) + "], found " +
                                                   describe_object(o)));
    }
    return o.type == msgpack::type::POSITIVE_INTEGER ? static_cast<std::int64_t>(o.via.u64) : o.via.i64;
}

void expect_reply_size(const msgpack::object& reply, std::initializer_list<std::uint32_t> sizes, const char* kind) {
    if (std::find(sizes.begin(), sizes.end(), reply.via.array.size) == sizes.end()) {
        throw ProtocolError(malformed("reply", std::string("a ") + kind + " reply cannot have " +
                                                   std::to_string(reply.via.array.size) + " elements"));
    }
}

// Recreates a standard exception from its what() text; the types whose what() is fixed by the library take none.
template <class E>
[[noreturn]] void rethrow_as(const std::string& what) {
    if constexpr (std::is_constructible_v<E, const std::string&>) throw E(what);
    else throw E();
}

struct StandardException {
    std::string type_name;
    void (*rethrow)(const std::string& what);
};

// Matched against the demangled names the child produces with the same demangler, so spelling never diverges.
const std::vector<StandardException>& standard_exceptions() {
    static const std::vector<StandardException> table = [] {
        const auto entry = []<class E>(std::type_identity<E>) {
            return StandardException{demangled_name(typeid(E)), &rethrow_as<E>};
        };
        std::vector<StandardException> t{
            entry(std::type_identity<std::logic_error>{}),    entry(std::type_identity<std::invalid_argument>{}),
            entry(std::type_identity<std::domain_error>{}),   entry(std::type_identity<std::length_error>{}),
            entry(std::type_identity<std::out_of_range>{}),   entry(std::type_identity<std::runtime_error>{}),
            entry(std::type_identity<std::range_error>{}),    entry(std::type_identity<std::overflow_error>{}),
            entry(std::type_identity<std::underflow_error>{}), entry(std::type_identity<std::bad_alloc>{}),
            entry(std::type_identity<std::bad_cast>{}),       entry(std::type_identity<std::exception>{}),
        };
        return t;
    }();
    return table;
}

[[noreturn]] void rethrow_system_error(std::string type_name, std::string what, int code, const std::string& category) {
    const std::error_category* known = category == std::generic_category().name() ? &std::generic_category()
                                       : category == std::system_category().name() ? &std::system_category()
                                                                                   : nullptr;
    if (known != nullptr) {
        const std::error_code error(code, *known);
        // std::system_error(code, what_arg) reports "what_arg: message"; recover what_arg to rebuild it exactly.
        const std::string message = error.message();
        if (what == message) throw std::system_error(error);
        const std::string suffix = ": " + message;
        if (what.size() >= suffix.size() && what.compare(what.size() - suffix.size(), suffix.size(), suffix) == 0) {
            throw std::system_error(error, what.substr(0, what.size() - suffix.size()));
        }
    }
    throw RemoteError(std::move(type_name), std::move(what));
}

[[noreturn]] void rethrow_task_exception(const msgpack::object& reply) {
    expect_reply_size(reply, {3, 5}, "exception");
    const msgpack::object* items = reply.via.array.ptr;
    std::string type_name = reply_text(items[1], "exception type name");
    std::string what = reply_text(items[2], "exception message");
    if (reply.via.array.size == 5) {
        const auto code = static_cast<int>(reply_integer(items[3], "error code", INT_MIN, INT_MAX));
        const std::string category = reply_text(items[4], "error category");
        if (type_name == demangled_name(typeid(std::system_error))) {
            rethrow_system_error(std::move(type_name), std::move(what), code, category);
        }
    }
    for (const StandardException& known : standard_exceptions()) {
        if (known.type_name == type_name) known.rethrow(what);
    }
    throw RemoteError(std::move(type_name), std::move(what));
}

[[noreturn]] void throw_setup_failure(const msgpack::object& reply) {
    expect_reply_size(reply, {4}, "setup failure");
    const msgpack::object* items = reply.via.array.ptr;
    std::string step = reply_text(items[1], "setup step");
    const auto error_number = static_cast<int>(reply_integer(items[2], "setup errno", 0, max_errno));
    const std::string detail = reply_text(items[3], "setup failure detail");
    throw SetupError(std::move(step), error_number, detail);
}

// ---- child side ----

struct ExceptionReport {
    std::string type_name;
    std::string what;
    bool has_code = false;
    int code = 0;
    std::string category;
};

std::string current_exception_type_name() {
    const std::type_info* type = abi::__cxa_current_exception_type();
    return type != nullptr ? bounded_text(demangled_name(*type)) : std::string("(unknown type)");
}

ExceptionReport describe_exception(const std::exception_ptr& error) {
    ExceptionReport report;
    if (!error) {
        report.type_name = "(no exception)";
        return report;
    }
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        report.type_name = bounded_text(demangled_name(typeid(e)));
        const char* what = e.what();
        report.what = bounded_text(what != nullptr ? what : "");
        if (typeid(e) == typeid(std::system_error)) {
            const auto& system_error = static_cast<const std::system_error&>(e);
            report.has_code = true;
            report.code = system_error.code().value();
            report.category = bounded_text(system_error.code().category().name());
        }
    } catch (const char* text) {
        report.type_name = current_exception_type_name();
        report.what = bounded_text(text != nullptr ? text : "");
    } catch (const std::string& text) {
        report.type_name = current_exception_type_name();
        report.what = bounded_text(text);
    } catch (...) {
        report.type_name = current_exception_type_name();
    }
    return report;
}

// Writes into a fixed buffer, for the fallback replies that must not allocate.
struct FixedSink {
    char* data;
    std::size_t capacity;
    std::size_t size = 0;
    void write(const char* bytes, std::size_t count) {
        const std::size_t take = std::min(count, capacity - size);
        std::memcpy(data + size, bytes, take);
        size += take;
    }
};

}  // namespace

// ---- shape checks ----

void throw_shape_mismatch(const ValuePath& where, std::string_view expected, const msgpack::object& found) {
    throw ProtocolError("wrong data at " + describe_path(where) + ": expected " + std::string(expected) + ", found " +
                        describe_object(found));
}

void check_integer_shape(const msgpack::object& o, const ValuePath& where, std::intmax_t min, std::uintmax_t max) {
    const bool fits = (o.type == msgpack::type::POSITIVE_INTEGER && o.via.u64 <= max) ||
                      (o.type == msgpack::type::NEGATIVE_INTEGER && o.via.i64 >= min);
    if (!fits) {
        throw_shape_mismatch(where, "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]", o);
    }
}

void check_floating_shape(const msgpack::object& o, const ValuePath& where, bool single_precision) {
    switch (o.type) {
    case msgpack::type::POSITIVE_INTEGER:
    case msgpack::type::NEGATIVE_INTEGER: return;
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
        // Narrowing a finite double outside float's range is undefined behaviour, not just a loss of precision.
        if (single_precision && std::isfinite(o.via.f64) && std::fabs(o.via.f64) > FLT_MAX) {
            throw_shape_mismatch(where, "a number within the range of float", o);
        }
        return;
    default: throw_shape_mismatch(where, "a number", o);
    }
}

void check_blob_shape(const msgpack::object& o, const ValuePath& where, std::optional<std::size_t> exact_size) {
    const bool blob = o.type == msgpack::type::STR || o.type == msgpack::type::BIN;
    // str and bin share their layout in msgpack::object.
    if (!blob || (exact_size && o.via.bin.size != *exact_size)) {
        throw_shape_mismatch(where,
                             exact_size ? "a string or binary data of exactly " + std::to_string(*exact_size) + " bytes"
                                        : std::string("a string or binary data"),
                             o);
    }
}

void check_container_shape(const msgpack::object& o, const ValuePath& where, msgpack::type::object_type type,
                           std::optional<std::size_t> exact_size, const char* expected) {
    const std::size_t size = type == msgpack::type::MAP ? o.via.map.size : o.via.array.size;
    if (o.type != type || (exact_size && size != *exact_size)) {
        throw_shape_mismatch(where,
                             exact_size ? std::string(expected) + " of " + std::to_string(*exact_size) + " elements"
                                        : std::string(expected),
                             o);
    }
}

void rethrow_conversion_failure(const ValuePath& where, const std::type_info& target) {
    const std::string prefix = "cannot decode " + describe_path(where) + " as " + demangled_name(target) + ": ";
    try {
        throw;
    } catch (const ProtocolError&) {
        throw;
    } catch (const msgpack::type_error&) {
        throw ProtocolError(prefix + "the data does not have that type");
    } catch (const std::bad_alloc&) {
        throw ProtocolError(prefix + "out of memory");
    } catch (const std::exception& e) {
        throw ProtocolError(prefix + e.what());
    } catch (...) {
        throw ProtocolError(prefix + "the conversion threw an exception of type " + current_exception_type_name());
    }
}

// ---- parsing ----

msgpack::object_handle parse_untrusted(std::string_view bytes, const WireLimits& limits, const char* context) {
    if (bytes.empty()) throw ProtocolError(malformed(context, "no bytes where a MessagePack value was expected"));
    if (bytes.size() > limits.max_frame_bytes) {
        throw ProtocolError(malformed(context, std::to_string(bytes.size()) + " bytes, above the limit of " +
                                                   std::to_string(limits.max_frame_bytes)));
    }
    StructureChecker checker(bytes, limits.max_depth);
    std::size_t end = 0;
    bool complete = false;
    try {
        complete = msgpack::parse(bytes.data(), bytes.size(), end, checker);
    } catch (const std::exception& e) {
        throw ProtocolError(malformed(context, std::string("cannot be parsed: ") + e.what()));
    }
    if (!complete) {
        const std::string& problem = checker.problem();
        throw ProtocolError(malformed(context, problem.empty() ? "not valid MessagePack" : problem));
    }
    if (end != bytes.size()) {
        throw ProtocolError(malformed(context, std::to_string(bytes.size() - end) +
                                                   " trailing bytes after the value that ends at offset " +
                                                   std::to_string(end)));
    }
    // The checker already enforced these; they stay as a second line of defence inside msgpack-cxx itself.
    const std::size_t n = bytes.size();
    const msgpack::unpack_limit unpack_limits(n, n / 2, n, n, n, limits.max_depth);
    try {
        std::size_t offset = 0;
        bool referenced = false;
        return msgpack::unpack(bytes.data(), n, offset, referenced, &reference_input, nullptr, unpack_limits);
    } catch (const std::bad_alloc&) {
        throw ProtocolError(malformed(context, "out of memory while decoding " + std::to_string(n) + " bytes"));
    } catch (const std::exception& e) {
        throw ProtocolError(malformed(context, std::string("cannot be decoded: ") + e.what()));
    }
}

// ---- replies ----

void check_reply_size(std::size_t size, const WireLimits& limits) {
    const std::size_t limit = std::min<std::size_t>(limits.max_frame_bytes, max_header_length);
    if (size > limit) {
        throw std::length_error("the result encodes to " + std::to_string(size) +
                                " bytes, more than the frame limit of " + std::to_string(limit) + " bytes");
    }
}

std::string encode_void_reply() { return std::string(void_reply, sizeof void_reply); }

std::string encode_exception_reply(const std::exception_ptr& error) noexcept {
    try {
        const ExceptionReport report = describe_exception(error);
        std::string out;
        StringSink sink{&out};
        msgpack::packer<StringSink> packer(sink);
        packer.pack_array(report.has_code ? 5 : 3);
        packer.pack(static_cast<std::uint64_t>(ReplyKind::exception));
        packer.pack(report.type_name);
        packer.pack(report.what);
        if (report.has_code) {
            packer.pack(report.code);
            packer.pack(report.category);
        }
        return out;
    } catch (...) {
        return std::string(exception_lost_reply, sizeof exception_lost_reply);
    }
}

std::string encode_setup_failure(std::string_view step, int error_number, std::string_view detail) noexcept {
    const bool valid_errno = error_number >= 0 && error_number <= max_errno;
    try {
        std::string out;
        StringSink sink{&out};
        msgpack::packer<StringSink> packer(sink);
        packer.pack_array(4);
        packer.pack(static_cast<std::uint64_t>(ReplyKind::setup_failure));
        packer.pack(bounded_text(step));
        packer.pack(valid_errno ? error_number : 0);
        packer.pack(valid_errno ? bounded_text(detail)
                                : bounded_text(std::string(detail) + " (invalid errno " +
                                               std::to_string(error_number) + ")"));
        return out;
    } catch (...) {
        // [2, "", errno, ""] is at most 9 bytes: it fits std::string's inline buffer.
        char buffer[16];
        FixedSink sink{buffer, sizeof buffer};
        msgpack::packer<FixedSink> packer(sink);
        packer.pack_array(4);
        packer.pack(static_cast<std::uint64_t>(ReplyKind::setup_failure));
        packer.pack_str(0);
        packer.pack(valid_errno ? error_number : 0);
        packer.pack_str(0);
        return std::string(buffer, sink.size);
    }
}

const msgpack::object* open_reply(const msgpack::object& reply, bool expect_void) {
    if (reply.type != msgpack::type::ARRAY || reply.via.array.size == 0) {
        throw ProtocolError(malformed("reply", "expected an array that starts with the reply kind, found " +
                                                   describe_object(reply)));
    }
    const msgpack::object& kind = reply.via.array.ptr[0];
    if (kind.type != msgpack::type::POSITIVE_INTEGER ||
        kind.via.u64 > static_cast<std::uint64_t>(ReplyKind::exception_lost)) {
        throw ProtocolError(malformed("reply", "unknown reply kind: " + describe_object(kind)));
    }
    switch (static_cast<ReplyKind>(kind.via.u64)) {
    case ReplyKind::value:
        switch (reply.via.array.size) {
        case 1:
            if (expect_void) return nullptr;
            throw ProtocolError(malformed("reply", "the task returned void where a value was expected"));
        case 2:
            if (!expect_void) return &reply.via.array.ptr[1];
            throw ProtocolError(malformed("reply", "the task returned a value where void was expected"));
        default: expect_reply_size(reply, {1, 2}, "value");
        }
        break;
    case ReplyKind::exception: rethrow_task_exception(reply);
    case ReplyKind::setup_failure: throw_setup_failure(reply);
    case ReplyKind::exception_lost:
        expect_reply_size(reply, {1}, "lost-exception");
        throw std::bad_alloc();
    }
    throw ProtocolError(malformed("reply", "unknown reply kind"));
}

}  // namespace sdfutures::detail
