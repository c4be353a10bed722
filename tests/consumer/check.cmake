# cmake -P tests/consumer/check.cmake: proves the installed sdfutures package is usable by another project.
#   1. `cmake --install` the build directory into WORK_DIR/prefix;
#   2. configure tests/consumer against that prefix only (find_package(sdfutures REQUIRED)) and build it;
#   3. run the consumer under scripts/with-systemd (a private systemd manager when none runs), which must
#      print that sdfutures::run returned 42.
#
# Variables (-D...): SDFUTURES_SOURCE_DIR, SDFUTURES_BINARY_DIR, WORK_DIR (required); CXX_COMPILER, BUILD_TYPE,
# SANITIZE (the -fsanitize= list the library was built with, which the consumer must link with too).
cmake_minimum_required(VERSION 3.22)

foreach(var SDFUTURES_SOURCE_DIR SDFUTURES_BINARY_DIR WORK_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "consumer check: -D${var}=... is required")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE RelWithDebInfo)
endif()

function(step title)
  message(STATUS "consumer check: ${title}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer check: ${title} failed (${result}):\n${output}")
  endif()
  set(step_output "${output}" PARENT_SCOPE)
endfunction()

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/build)
file(REMOVE_RECURSE ${WORK_DIR})

step("install ${SDFUTURES_BINARY_DIR} into ${prefix}"
     ${CMAKE_COMMAND} --install ${SDFUTURES_BINARY_DIR} --prefix ${prefix} --config ${BUILD_TYPE})

set(configure_args -S ${SDFUTURES_SOURCE_DIR}/tests/consumer -B ${build}
    -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
    -DCMAKE_PREFIX_PATH=${prefix}
    # Only the prefix may provide sdfutures: no user or system package registry.
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if(CXX_COMPILER)
  list(APPEND configure_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
if(SANITIZE)
  list(APPEND configure_args "-DCMAKE_CXX_FLAGS=-fsanitize=${SANITIZE} -fno-omit-frame-pointer"
                             "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${SANITIZE}")
endif()
step("configure tests/consumer with find_package(sdfutures)" ${CMAKE_COMMAND} ${configure_args})

file(STRINGS ${build}/CMakeCache.txt found REGEX "^sdfutures_DIR:")
string(REGEX REPLACE "^[^=]*=" "" found "${found}")
file(REAL_PATH "${found}" found_real)
file(REAL_PATH "${prefix}" prefix_real)
string(FIND "${found_real}/" "${prefix_real}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "consumer check: sdfutures was found in '${found}', not in the installed prefix ${prefix}")
endif()
message(STATUS "consumer check: found sdfutures in ${found}")

step("build the consumer" ${CMAKE_COMMAND} --build ${build} --config ${BUILD_TYPE})

step("run the consumer under scripts/with-systemd" ${SDFUTURES_SOURCE_DIR}/scripts/with-systemd ${build}/app)
message("${step_output}")
if(NOT step_output MATCHES "sdfutures::run returned 42")
  message(FATAL_ERROR "consumer check: the consumer did not run sdfutures::run")
endif()
message(STATUS "consumer check: passed")
