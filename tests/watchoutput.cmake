sdfutures_add_test(watchoutput_test watchoutput_test.cpp)
# The test runs examples/watchoutput itself. Where the examples are not built (scripts/sanitize-tsan), the same
# source is built here under another name (examples/CMakeLists.txt owns the name watchoutput).
if(SDFUTURES_BUILD_EXAMPLES)
  set(sdfutures_watchoutput watchoutput)
else()
  find_package(Boost 1.74 REQUIRED COMPONENTS filesystem)
  add_executable(watchoutput_example ${PROJECT_SOURCE_DIR}/examples/watchoutput.cpp)
  target_link_libraries(watchoutput_example PRIVATE sdfutures Boost::filesystem sdfutures_warnings)
  set(sdfutures_watchoutput watchoutput_example)
endif()
add_dependencies(watchoutput_test ${sdfutures_watchoutput})
target_compile_definitions(watchoutput_test PRIVATE SDFUTURES_WATCHOUTPUT="$<TARGET_FILE:${sdfutures_watchoutput}>")
