# cmake -DMODE=... -P tests/consumer/check.cmake: proves that another project can use sdfutures, in one of three ways.
#   MODE=package       `cmake --install` the build directory SDFUTURES_BINARY_DIR into WORK_DIR/prefix, then build
#                      tests/consumer/main.cpp against that prefix alone, twice: as the CMake project tests/consumer
#                      (find_package(sdfutures REQUIRED)) and with `c++ ... $(pkg-config --cflags --libs sdfutures)`.
#   MODE=shared        the same, with the library configured and built by itself with -DBUILD_SHARED_LIBS=ON (in
#                      WORK_DIR/library): both programs must load libsdfutures.so from the prefix.
#   MODE=subdirectory  the CMake project tests/consumer/subdirectory, which add_subdirectory()s the source tree: it must
#                      bring the library target alone (no test, example, benchmark target, no install rule).
# The library builds of the last two use CMAKE_BUILD_TYPE=None (no optimisation, no debug information): what they
# test is the packaging, and that halves their compile time. The consumer of MODE=shared keeps BUILD_TYPE, so the
# package's imported configuration is also mapped across build types, as with Debian's own CMake packages.
# Each program is run under scripts/with-systemd (a private systemd manager when none runs) and must print that
# sdfutures::run returned 42; readelf shows whether it links libsdfutures statically or dynamically, as it should.
#
# Variables (-D...): MODE, SDFUTURES_SOURCE_DIR, WORK_DIR (required); for MODE=package, SDFUTURES_BINARY_DIR and
# LIBRARY_TYPE (its sdfutures target's TYPE; by default, whichever kind of library it installs); CXX_COMPILER,
# BUILD_TYPE, SANITIZE (the -fsanitize= list the library is built with, which the consumer must link with too).
# Environment: SDFUTURES_JOBS, parallel compile jobs for the library builds of MODE=shared and MODE=subdirectory
# (default: the number of cores).
cmake_minimum_required(VERSION 3.22)

foreach(var MODE SDFUTURES_SOURCE_DIR WORK_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "consumer check: -D${var}=... is required")
  endif()
endforeach()
if(NOT MODE MATCHES "^(package|shared|subdirectory)$")
  message(FATAL_ERROR "consumer check: MODE is '${MODE}'; it must be package, shared or subdirectory")
endif()
if(MODE STREQUAL "package" AND NOT SDFUTURES_BINARY_DIR)
  message(FATAL_ERROR "consumer check: MODE=package needs -DSDFUTURES_BINARY_DIR=...")
endif()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE RelWithDebInfo)
endif()
if(NOT CXX_COMPILER)
  set(CXX_COMPILER c++)
endif()
if(DEFINED ENV{SDFUTURES_JOBS} AND NOT "$ENV{SDFUTURES_JOBS}" STREQUAL "")
  set(jobs $ENV{SDFUTURES_JOBS})
else()
  cmake_host_system_information(RESULT jobs QUERY NUMBER_OF_LOGICAL_CORES)
endif()

function(step title)
  message(STATUS "consumer check (${MODE}): ${title}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer check (${MODE}): ${title} failed (${result}):\n${output}")
  endif()
  set(step_output "${output}" PARENT_SCOPE)
endfunction()

function(fail what)
  message(FATAL_ERROR "consumer check (${MODE}): ${what}")
endfunction()

# What every build here shares: the compiler of the suite's build, its sanitizers, and no package registry (only
# the given prefix may provide sdfutures).
set(common_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
                -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
set(consumer_args ${common_args})
set(sanitize_flags "")
if(SANITIZE)
  set(sanitize_flags "-fsanitize=${SANITIZE} -fno-omit-frame-pointer")
  list(APPEND consumer_args "-DCMAKE_CXX_FLAGS=${sanitize_flags}" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${SANITIZE}")
endif()

# run(APP TITLE): APP runs sdfutures::run under a systemd manager.
function(run app title)
  step("run ${title} under scripts/with-systemd" ${SDFUTURES_SOURCE_DIR}/scripts/with-systemd ${app})
  message("${step_output}")
  if(NOT step_output MATCHES "sdfutures::run returned 42")
    fail("${title} did not run sdfutures::run")
  endif()
endfunction()

# expect_linkage(APP TITLE TYPE [PREFIX]): APP needs libsdfutures.so, found in PREFIX, for TYPE SHARED_LIBRARY, and
# does not need it for STATIC_LIBRARY (the archive is in the executable).
function(expect_linkage app title type)
  step("readelf -d ${title}" readelf -d ${app})
  if(type STREQUAL "SHARED_LIBRARY")
    if(NOT step_output MATCHES "\\(NEEDED\\)[^\n]*\\[libsdfutures\\.so[.0-9]*\\]")
      fail("${title} does not link libsdfutures.so dynamically:\n${step_output}")
    endif()
    step("ldd ${title}" ldd ${app})
    if(NOT step_output MATCHES "libsdfutures\\.so[.0-9]* => ([^ \n]+)")
      fail("${title}: the dynamic loader does not find libsdfutures.so:\n${step_output}")
    endif()
    file(REAL_PATH "${CMAKE_MATCH_1}" loaded)
    file(REAL_PATH "${ARGV3}" prefix_real)
    string(FIND "${loaded}" "${prefix_real}/" at)
    if(NOT at EQUAL 0)
      fail("${title} loads ${loaded}, not the library installed in ${ARGV3}")
    endif()
    message(STATUS "consumer check (${MODE}): ${title} loads ${loaded}")
  elseif(step_output MATCHES "\\(NEEDED\\)[^\n]*libsdfutures")
    fail("${title} needs a shared libsdfutures, but the library is static:\n${step_output}")
  else()
    message(STATUS "consumer check (${MODE}): ${title} has libsdfutures linked in statically")
  endif()
endfunction()

# consume_installed(PREFIX TYPE): the CMake package and the pkg-config file installed in PREFIX work, alone.
function(consume_installed prefix type)
  set(build ${WORK_DIR}/find_package)
  step("configure tests/consumer with find_package(sdfutures)" ${CMAKE_COMMAND}
       -S ${SDFUTURES_SOURCE_DIR}/tests/consumer -B ${build} -DCMAKE_PREFIX_PATH=${prefix}
       -DCMAKE_BUILD_TYPE=${BUILD_TYPE} ${consumer_args})
  file(STRINGS ${build}/CMakeCache.txt found REGEX "^sdfutures_DIR:")
  string(REGEX REPLACE "^[^=]*=" "" found "${found}")
  file(REAL_PATH "${found}" found_real)
  file(REAL_PATH "${prefix}" prefix_real)
  string(FIND "${found_real}/" "${prefix_real}/" at)
  if(NOT at EQUAL 0)
    fail("sdfutures was found in '${found}', not in the installed prefix ${prefix}")
  endif()
  message(STATUS "consumer check (${MODE}): found sdfutures in ${found}")
  step("build the find_package consumer" ${CMAKE_COMMAND} --build ${build} --config ${BUILD_TYPE})
  expect_linkage(${build}/app "the find_package consumer" ${type} ${prefix})
  run(${build}/app "the find_package consumer")

  file(GLOB_RECURSE pc_files ${prefix}/sdfutures.pc)
  list(LENGTH pc_files count)
  if(NOT count EQUAL 1)
    fail("expected one sdfutures.pc in ${prefix}, found: ${pc_files}")
  endif()
  get_filename_component(pc_dir ${pc_files} DIRECTORY)
  set(ENV{PKG_CONFIG_PATH} ${pc_dir})
  step("pkg-config --variable=pcfiledir sdfutures" pkg-config --variable=pcfiledir sdfutures)
  string(STRIP "${step_output}" used)
  if(NOT used STREQUAL pc_dir)
    fail("pkg-config uses the sdfutures.pc in '${used}', not the one installed in ${pc_dir}")
  endif()
  step("pkg-config --cflags --libs sdfutures" pkg-config --cflags --libs sdfutures)
  message(STATUS "consumer check (${MODE}): pkg-config: ${step_output}")
  # What a user's Makefile would do; the rpath because the prefix is not one the dynamic loader searches.
  set(app ${WORK_DIR}/pkg-config-app)
  set(command "'${CXX_COMPILER}' -std=c++20 ${sanitize_flags} -o '${app}'"
              " '${SDFUTURES_SOURCE_DIR}/tests/consumer/main.cpp' $(pkg-config --cflags --libs sdfutures)"
              " -Wl,-rpath,$(pkg-config --variable=libdir sdfutures)")
  string(JOIN "" command ${command})
  message(STATUS "consumer check (${MODE}): ${command}")
  step("build main.cpp with pkg-config" sh -c "${command}")
  expect_linkage(${app} "the pkg-config consumer" ${type} ${prefix})
  run(${app} "the pkg-config consumer")
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)

if(MODE STREQUAL "package")
  step("install ${SDFUTURES_BINARY_DIR} into ${prefix}"
       ${CMAKE_COMMAND} --install ${SDFUTURES_BINARY_DIR} --prefix ${prefix} --config ${BUILD_TYPE})
  if(NOT LIBRARY_TYPE) # not told: what was installed
    file(GLOB_RECURSE shared_objects ${prefix}/libsdfutures.so)
    if(shared_objects)
      set(LIBRARY_TYPE SHARED_LIBRARY)
    else()
      set(LIBRARY_TYPE STATIC_LIBRARY)
    endif()
  endif()
  consume_installed(${prefix} ${LIBRARY_TYPE})

elseif(MODE STREQUAL "shared")
  set(library ${WORK_DIR}/library)
  step("configure the library alone with BUILD_SHARED_LIBS=ON" ${CMAKE_COMMAND} -S ${SDFUTURES_SOURCE_DIR} -B ${library}
       ${common_args} -DCMAKE_BUILD_TYPE=None -DBUILD_SHARED_LIBS=ON -DSDFUTURES_SANITIZE=${SANITIZE}
       -DSDFUTURES_BUILD_TESTS=OFF -DSDFUTURES_BUILD_EXAMPLES=OFF -DSDFUTURES_BUILD_BENCH=OFF -DSDFUTURES_BUILD_FUZZERS=OFF)
  step("build libsdfutures.so (-j ${jobs})" ${CMAKE_COMMAND} --build ${library} -j ${jobs})
  step("install it into ${prefix}" ${CMAKE_COMMAND} --install ${library} --prefix ${prefix})
  file(GLOB_RECURSE shared_objects ${prefix}/libsdfutures.so*)
  file(GLOB_RECURSE archives ${prefix}/libsdfutures.a)
  if(NOT shared_objects OR archives)
    fail("the install has no libsdfutures.so, or has libsdfutures.a as well: ${shared_objects} ${archives}")
  endif()
  consume_installed(${prefix} SHARED_LIBRARY)

else() # subdirectory
  set(build ${WORK_DIR}/build)
  # The file API's code model lists every target that the configure defined, whichever directory defined it.
  file(WRITE ${build}/.cmake/api/v1/query/codemodel-v2 "")
  step("configure tests/consumer/subdirectory, which add_subdirectory()s ${SDFUTURES_SOURCE_DIR}" ${CMAKE_COMMAND}
       -S ${SDFUTURES_SOURCE_DIR}/tests/consumer/subdirectory -B ${build} -DSDFUTURES_SOURCE_DIR=${SDFUTURES_SOURCE_DIR}
       -DCMAKE_BUILD_TYPE=None -DSDFUTURES_SANITIZE=${SANITIZE} ${consumer_args})

  foreach(option SDFUTURES_INSTALL SDFUTURES_BUILD_TESTS SDFUTURES_BUILD_EXAMPLES SDFUTURES_BUILD_BENCH)
    file(STRINGS ${build}/CMakeCache.txt value REGEX "^${option}:BOOL=")
    if(NOT value STREQUAL "${option}:BOOL=OFF")
      fail("${option} should default to OFF in a subdirectory; the cache has '${value}'")
    endif()
  endforeach()
  file(GLOB index ${build}/.cmake/api/v1/reply/index-*.json)
  file(READ "${index}" json)
  string(JSON codemodel GET "${json}" reply codemodel-v2 jsonFile)
  file(READ ${build}/.cmake/api/v1/reply/${codemodel} json)
  string(JSON targets GET "${json}" configurations 0 targets)
  string(JSON count LENGTH "${targets}")
  set(names "")
  math(EXPR last "${count} - 1")
  foreach(i RANGE ${last})
    string(JSON name GET "${targets}" ${i} name)
    list(APPEND names ${name})
  endforeach()
  list(SORT names)
  if(NOT names STREQUAL "app;sdfutures")
    fail("add_subdirectory() brought targets besides the library: ${names} (expected app;sdfutures)")
  endif()
  file(GLOB_RECURSE test_files ${build}/CTestTestfile.cmake)
  if(test_files)
    fail("add_subdirectory() brought tests: ${test_files}")
  endif()
  step("cmake --install (nothing to install)" ${CMAKE_COMMAND} --install ${build} --prefix ${prefix})
  file(GLOB_RECURSE installed ${prefix}/*)
  if(installed)
    fail("add_subdirectory() brought install rules, which installed: ${installed}")
  endif()
  message(STATUS "consumer check (${MODE}): targets ${names}, no test, no install rule")

  step("build the consumer and the library (-j ${jobs})" ${CMAKE_COMMAND} --build ${build} -j ${jobs})
  expect_linkage(${build}/app "the add_subdirectory consumer" STATIC_LIBRARY)
  run(${build}/app "the add_subdirectory consumer")
endif()
message(STATUS "consumer check (${MODE}): passed")
