# Configure-time checks that keep the build's explicit lists and the suite's labels honest.

# sdfutures_check_listed(PATTERN FILE...): the build names its files explicitly (no globs); this fails the configure
# when a file matching PATTERN (relative to the current source directory) is missing from the list, so that a new
# source or test list cannot be left out of the build without anyone noticing.
function(sdfutures_check_listed pattern)
  file(GLOB present RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/${pattern})
  set(missing "")
  foreach(file ${present})
    if(NOT file IN_LIST ARGN)
      list(APPEND missing ${file})
    endif()
  endforeach()
  if(missing)
    list(JOIN missing ", " missing)
    message(FATAL_ERROR "not listed in ${CMAKE_CURRENT_LIST_FILE}, which names its files: ${missing}")
  endif()
endfunction()

# sdfutures_check_test_labels(): every test of the current directory carries exactly one of the labels unit,
# systemd and soak (tests/CMakeLists.txt says what each means), so that `ctest -L unit` and friends select the
# whole suite between them. Call it at the end of a directory's CMakeLists.txt.
function(sdfutures_check_test_labels)
  get_directory_property(tests TESTS)
  foreach(test ${tests})
    get_test_property(${test} LABELS labels)
    if(NOT labels)
      set(labels "")
    endif()
    set(tiers "")
    foreach(label ${labels})
      if(label MATCHES "^(unit|systemd|soak)$")
        list(APPEND tiers ${label})
      endif()
    endforeach()
    list(LENGTH tiers count)
    if(NOT count EQUAL 1)
      message(FATAL_ERROR "test ${test} has the labels '${labels}': it needs exactly one of unit, systemd, soak")
    endif()
  endforeach()
endfunction()
