sdfutures_add_test(start_failure_test start_failure_test.cpp)
# It drives the library's own pieces for anchored units (src/anchored_unit.hpp) directly: the pre-check, the
# decode of a failed start and the reference that keeps a failed unit readable.
target_include_directories(start_failure_test PRIVATE ${PROJECT_SOURCE_DIR}/src)
