# Install rules (SDFUTURES_INSTALL): the headers, the library (static, or shared with BUILD_SHARED_LIBS=ON), the
# CMake package (find_package(sdfutures), target sdfutures::sdfutures) and a pkg-config file (sdfutures.pc).
include(CMakePackageConfigHelpers)

set(SDFUTURES_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/sdfutures)
install(TARGETS sdfutures EXPORT sdfuturesTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/sdfutures DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT sdfuturesTargets NAMESPACE sdfutures:: DESTINATION ${SDFUTURES_CMAKE_DIR})
if(TARGET sdfutures_boost)
  install(TARGETS sdfutures_boost EXPORT sdfuturesBoostTargets)
  install(EXPORT sdfuturesBoostTargets NAMESPACE sdfutures:: DESTINATION ${SDFUTURES_CMAKE_DIR})
endif()
configure_package_config_file(cmake/sdfuturesConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/sdfuturesConfig.cmake
                              INSTALL_DESTINATION ${SDFUTURES_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/sdfuturesConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/sdfuturesConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/sdfuturesConfigVersion.cmake
        DESTINATION ${SDFUTURES_CMAKE_DIR})

# pkg-config. sdbus-c++ has a .pc file of its own (Requires:); msgpack-cxx does not, so what its CMake target asks
# of a compiler (MSGPACK_DEFAULT_API_VERSION, and include directories, its own and Boost's, when they are not the
# compiler's) is copied into Cflags. Paths are relative to the .pc file's own directory, so the file stays right
# wherever `cmake --install --prefix` puts it.
function(sdfutures_header_only_cflags out)
  set(flags "")
  set(pending ${ARGN})
  set(seen "")
  while(pending)
    list(POP_FRONT pending target)
    if(NOT TARGET ${target} OR target IN_LIST seen)
      continue()
    endif()
    list(APPEND seen ${target})
    get_target_property(definitions ${target} INTERFACE_COMPILE_DEFINITIONS)
    foreach(definition IN LISTS definitions)
      if(definition AND NOT definition MATCHES "\\$<")
        list(APPEND flags -D${definition})
      endif()
    endforeach()
    get_target_property(directories ${target} INTERFACE_INCLUDE_DIRECTORIES)
    foreach(directory IN LISTS directories)
      if(directory AND NOT directory MATCHES "\\$<" AND NOT directory IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
        list(APPEND flags -I${directory})
      endif()
    endforeach()
    get_target_property(links ${target} INTERFACE_LINK_LIBRARIES)
    if(links)
      list(APPEND pending ${links})
    endif()
  endwhile()
  list(REMOVE_DUPLICATES flags)
  list(JOIN flags " " flags)
  set(${out} "${flags}" PARENT_SCOPE)
endfunction()
sdfutures_header_only_cflags(SDFUTURES_PC_MSGPACK_CFLAGS msgpackc-cxx)

if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(SDFUTURES_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(SDFUTURES_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(SDFUTURES_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH SDFUTURES_PC_PREFIX "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
  string(REGEX REPLACE "/$" "" SDFUTURES_PC_PREFIX "${SDFUTURES_PC_PREFIX}")
  set(SDFUTURES_PC_PREFIX "\${pcfiledir}/${SDFUTURES_PC_PREFIX}")
  set(SDFUTURES_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(SDFUTURES_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(cmake/sdfutures.pc.in ${CMAKE_CURRENT_BINARY_DIR}/sdfutures.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/sdfutures.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
