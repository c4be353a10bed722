#include <gtest/gtest.h>

#include "support/manager_environment.hpp"

int main(int argc, char** argv) {
    // Before GoogleTest parses anything, so that a re-run under with-systemd sees the original arguments.
    sdfutures::testing::ensure_manager(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
