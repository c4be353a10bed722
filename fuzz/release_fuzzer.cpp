// The child side of bootstrap.hpp's release against arbitrary bytes: decode_entry_plan either refuses them or
// returns a plan whose encoding is exactly those bytes (nothing read past the end, nothing left unread, no field
// out of range slipping through). Anything else aborts, and so does any sanitizer finding.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "entry_plan.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    auto plan = sdfutures::detail::decode_entry_plan(input);
    if (!plan) return 0;
    if (sdfutures::detail::encode_entry_plan(*plan) != input) {
        std::fprintf(stderr, "release_fuzzer: a %zu-byte release decoded to a plan that encodes otherwise\n", size);
        std::abort();
    }
    if (plan->main_pid <= 0 || plan->nice < -20 || plan->nice > 19 || plan->umask > 0777) {
        std::fprintf(stderr, "release_fuzzer: an out-of-range field decoded\n");
        std::abort();
    }
    return 0;
}
