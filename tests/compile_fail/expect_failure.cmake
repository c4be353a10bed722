# Compiles SOURCE and passes only if compilation fails with the message its first line names:
#   // expect: <text>
file(STRINGS ${SOURCE} first_line LIMIT_COUNT 1)
string(REGEX REPLACE "^// expect: " "" expected "${first_line}")
execute_process(COMMAND ${COMPILER} -std=c++20 -fsyntax-only -I${INCLUDES} ${SOURCE}
                RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(result EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must not")
endif()
string(FIND "${err}" "${expected}" found)
if(found EQUAL -1)
  message(FATAL_ERROR "${SOURCE} failed to compile without the message '${expected}':\n${err}")
endif()
message(STATUS "rejected as expected: ${expected}")
