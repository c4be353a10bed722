# unprivileged_test: the library used by a real non-root user against that user's own systemd manager
# (docs/unprivileged.md). scripts/with-systemd --as-user runs the binary as SDFUTURES_TEST_USER, under a private
# `systemd --user` of that user in a cgroup subtree delegated to it; the fixture test before it creates the user
# when missing (scripts/ensure-test-user). Both need root, as CI runs the suite.
set(SDFUTURES_TEST_USER sdfutures-test)
add_executable(unprivileged_test unprivileged_test.cpp)
target_link_libraries(unprivileged_test PRIVATE sdfutures_test_support sdfutures_warnings)
target_compile_definitions(unprivileged_test PRIVATE SDFUTURES_TEST_USER="${SDFUTURES_TEST_USER}")

add_test(NAME unprivileged_test_user COMMAND ${PROJECT_SOURCE_DIR}/scripts/ensure-test-user ${SDFUTURES_TEST_USER})
set_tests_properties(unprivileged_test_user PROPERTIES FIXTURES_SETUP sdfutures_test_user TIMEOUT 120 LABELS systemd)

# --copy-command: a build tree the test user cannot enter (a clone under /root) is run from a copy in the private
# manager's state directory, removed with it.
add_test(NAME unprivileged_test
         COMMAND ${PROJECT_SOURCE_DIR}/scripts/with-systemd --as-user ${SDFUTURES_TEST_USER} --copy-command
                 $<TARGET_FILE:unprivileged_test>)
set_tests_properties(unprivileged_test PROPERTIES FIXTURES_REQUIRED sdfutures_test_user TIMEOUT 600 LABELS systemd)
