// Unit-file property syntax against arbitrary text. The input is "NAME\nVALUE" (split at the first newline; no
// newline means an empty value). Rejection must be a PropertyError (UnsupportedProperty included); any other
// exception aborts, and so does any sanitizer finding.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string_view>
#include <typeinfo>

#include "sdfutures/error.hpp"
#include "sdfutures/properties.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    const std::size_t newline = input.find('\n');
    const std::string_view name = input.substr(0, newline);
    const std::string_view value = newline == std::string_view::npos ? std::string_view() : input.substr(newline + 1);
    try {
        (void)sdfutures::parse_property(name, value);
    } catch (const sdfutures::PropertyError&) {
    } catch (const std::exception& e) {
        std::fprintf(stderr, "property_parser_fuzzer: %s escaped: %s\n", typeid(e).name(), e.what());
        std::abort();
    } catch (...) {
        std::fprintf(stderr, "property_parser_fuzzer: a non-std exception escaped\n");
        std::abort();
    }
    return 0;
}
