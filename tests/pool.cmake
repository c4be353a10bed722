sdfutures_add_test(pool_test pool_test.cpp TIMEOUT 900)
add_dependencies(pool_test owner_helper)
target_compile_definitions(pool_test PRIVATE SDFUTURES_OWNER_HELPER="$<TARGET_FILE:owner_helper>")

# Misuse that must not compile, with a message that says what to do instead.
foreach(case capturing_lambda exec_closure exec_process_closure unserializable_argument)
  add_test(NAME compile_fail_${case}
           COMMAND ${CMAKE_COMMAND} -DCOMPILER=${CMAKE_CXX_COMPILER} -DSOURCE=${CMAKE_CURRENT_SOURCE_DIR}/compile_fail/${case}.cpp
                   -DINCLUDES=${PROJECT_SOURCE_DIR}/include -P ${CMAKE_CURRENT_SOURCE_DIR}/compile_fail/expect_failure.cmake)
  set_tests_properties(compile_fail_${case} PROPERTIES LABELS unit)
endforeach()
