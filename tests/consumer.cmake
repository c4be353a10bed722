# The consumer checks (tests/consumer/check.cmake): another project builds and runs tests/consumer/main.cpp against
# sdfutures, so that `ctest` alone proves each way a user may consume the library works.
#   consumer_package       this build, installed into a directory of its own: find_package(sdfutures) and pkg-config;
#   consumer_shared        the library built by itself with BUILD_SHARED_LIBS=ON, installed, consumed the same two
#                          ways; the programs load its libsdfutures.so;
#   consumer_subdirectory  add_subdirectory() of the source tree, which brings the library target and nothing else.
# The last two compile the library once more each (SDFUTURES_JOBS jobs; by default one per core).
foreach(mode package shared subdirectory)
  add_test(NAME consumer_${mode}
           COMMAND ${CMAKE_COMMAND}
                   -DMODE=${mode}
                   -DSDFUTURES_SOURCE_DIR=${PROJECT_SOURCE_DIR}
                   -DSDFUTURES_BINARY_DIR=${PROJECT_BINARY_DIR}
                   -DLIBRARY_TYPE=$<TARGET_PROPERTY:sdfutures,TYPE>
                   -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/consumer_${mode}
                   -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
                   -DBUILD_TYPE=$<CONFIG>
                   -DSANITIZE=${SDFUTURES_SANITIZE}
                   -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/check.cmake)
  set_tests_properties(consumer_${mode} PROPERTIES TIMEOUT 600 LABELS "systemd;consumer")
endforeach()
