# consumer_package: installs this build into a directory of its own and builds and runs tests/consumer against it
# with find_package(sdfutures REQUIRED), so that `ctest` alone proves the installed CMake package works.
add_test(NAME consumer_package
         COMMAND ${CMAKE_COMMAND}
                 -DSDFUTURES_SOURCE_DIR=${PROJECT_SOURCE_DIR}
                 -DSDFUTURES_BINARY_DIR=${PROJECT_BINARY_DIR}
                 -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/consumer_package
                 -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
                 -DBUILD_TYPE=$<CONFIG>
                 -DSANITIZE=${SDFUTURES_SANITIZE}
                 -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/check.cmake)
set_tests_properties(consumer_package PROPERTIES TIMEOUT 600 LABELS "systemd;consumer")
