#pragma once
// The small pieces of unit-file syntax the property parsers share: trimming, numbers, percentages, and the
// PropertyError every parser throws. Private to the library.

#include <cctype>
#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "sdfutures/error.hpp"

namespace sdfutures::detail {

inline constexpr uint64_t kInfinity = std::numeric_limits<uint64_t>::max();
inline constexpr uint64_t kUsecPerSec = 1'000'000;

inline std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

[[noreturn]] inline void invalid(std::string_view property, std::string_view value, const std::string& expected) {
    throw PropertyError(std::string(property), std::string(value), expected);
}

// A non-negative decimal with an optional fraction, the number part of "1.5G" or "12.5%".
inline std::optional<long double> decimal(std::string_view s) {
    if (s.empty() || !(std::isdigit(static_cast<unsigned char>(s.front())) || s.front() == '.')) return std::nullopt;
    long double whole = 0, scale = 1;
    bool seen_dot = false, seen_digit = false;
    for (char c : s) {
        if (c == '.' && !seen_dot) {
            seen_dot = true;
        } else if (std::isdigit(static_cast<unsigned char>(c))) {
            seen_digit = true;
            if (seen_dot) {
                scale /= 10;
                whole += (c - '0') * scale;
            } else {
                whole = whole * 10 + (c - '0');
            }
        } else {
            return std::nullopt;
        }
    }
    if (!seen_digit) return std::nullopt;
    return whole;
}

template <class Int>
std::optional<Int> integer(std::string_view s) {
    s = trim(s);
    Int out{};
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
    return out;
}

// "25%" → 25.0; nullopt when the value is not a percentage.
inline std::optional<long double> percentage(std::string_view value) {
    value = trim(value);
    if (value.empty() || value.back() != '%') return std::nullopt;
    return decimal(value.substr(0, value.size() - 1));
}

}  // namespace sdfutures::detail
