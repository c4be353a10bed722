#include <gtest/gtest.h>

#include "support/manager_environment.hpp"

// Sanitizer builds: the tests kill workers with real signals and check how they died, so AddressSanitizer must
// not turn a SIGSEGV into its own report and exit code. sd-bus objects that sdbus-c++ (1.2.0) leaves behind
// when a connection attempt fails are not this project's leak.
extern "C" const char* __asan_default_options() { return "handle_segv=0"; }
extern "C" const char* __lsan_default_suppressions() { return "leak:sd_bus_new\n"; }

int main(int argc, char** argv) {
    // First of all: in a process systemd executed for a StartMethod::exec pool this serves the pool and never
    // returns (it must not look for a manager of its own). In the test binary it forks the zygote of
    // StartMethod::forkserver while the binary is still single-threaded; a re-run under with-systemd forks another.
    sdfutures::init(argc, argv);
    // Before GoogleTest parses anything, so that a re-run under with-systemd sees the original arguments.
    sdfutures::testing::ensure_manager(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
