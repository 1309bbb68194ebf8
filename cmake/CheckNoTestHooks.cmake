# cmake -DEXECUTABLES="a|b|..." -P CheckNoTestHooks.cmake: fails, naming the binary and the
# string, if any of the executables contains the name of a test hook. Registered as the ctest
# no_test_hooks_in_binaries of a build without CDP_TEST_HOOKS (cmake/CdpHelpers.cmake).
cmake_minimum_required(VERSION 3.25)

set(forbidden CDP_AGENT_TEST CDP_TEST_KILL_POINT CDP_TEST_SYNC_POINT)
string(REPLACE "|" ";" executables "${EXECUTABLES}")
list(LENGTH executables count)
if(count EQUAL 0)
  message(FATAL_ERROR "no_test_hooks_in_binaries: no executables to check (EXECUTABLES is empty)")
endif()

list(JOIN forbidden "|" pattern)
set(found "")
foreach(exe IN LISTS executables)
  if(NOT EXISTS "${exe}")
    message(FATAL_ERROR "no_test_hooks_in_binaries: ${exe} is missing; build everything first")
  endif()
  file(STRINGS "${exe}" hits REGEX "${pattern}")
  foreach(word IN LISTS forbidden)
    foreach(hit IN LISTS hits)
      if(hit MATCHES "${word}")
        list(APPEND found "${exe} contains \"${word}\" (in the string \"${hit}\")")
        break()
      endif()
    endforeach()
  endforeach()
endforeach()

if(found)
  list(JOIN found "\n  " lines)
  message(FATAL_ERROR "no_test_hooks_in_binaries: a build without CDP_TEST_HOOKS carries test "
                      "hooks; guard them with #if CDP_TEST_HOOKS (docs/testing.md):\n  ${lines}")
endif()
message(STATUS "no_test_hooks_in_binaries: ${count} executables, none contains any of: "
               "${forbidden}")
