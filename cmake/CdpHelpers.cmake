# One helper per kind of target. Every target builds with -Wall -Wextra; warnings are errors
# only with -DCDP_WERROR=ON (CI and developers' builds), so that a user's build with another
# build type or a newer compiler never fails on a new warning.

option(CDP_WERROR "Treat compiler warnings as errors (CI and development)" OFF)
set(CDP_WARNINGS -Wall -Wextra -Wno-missing-field-initializers)
if(CDP_WERROR)
  list(APPEND CDP_WARNINGS -Werror)
endif()

# Test-only hooks (environment hooks such as CDP_AGENT_TEST_FREEZE_HOLD_MS, and the named points
# of cdp/core/test_hooks.h) exist only in the test build: deploy/build.sh's build/ turns this on;
# a user's build has none of them, and a ctest of such a build checks its binaries' strings
# (docs/testing.md). Code tests `#if CDP_TEST_HOOKS`.
option(CDP_TEST_HOOKS "Compile test-only hooks: the test build (deploy/build.sh)" OFF)
if(CDP_TEST_HOOKS)
  add_compile_definitions(CDP_TEST_HOOKS=1)
endif()

# cdp_library(NAME SOURCES ... DEPS ...): a static library with public headers in include/.
function(cdp_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
  target_compile_options(${name} PRIVATE ${CDP_WARNINGS})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()

# cdp_executable(NAME SOURCES ... DEPS ...): a program (a thin main.cc over libraries).
function(cdp_executable name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE ${CDP_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
endfunction()

# cdp_test(NAME SOURCES ... DEPS ...): a GoogleTest unit test registered with ctest.
function(cdp_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE ${CDP_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "unit;${ARG_LABELS}" TIMEOUT 300)
endfunction()

# cdp_check_no_test_hooks(): in a build without CDP_TEST_HOOKS, a unit test that fails naming
# every executable of the build that contains a test hook's name. Call it after every
# add_subdirectory, so that it sees every executable.
function(cdp_check_no_test_hooks)
  set(executables "")
  set(dirs ${CMAKE_SOURCE_DIR})
  while(dirs)
    list(POP_FRONT dirs dir)
    get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
    list(APPEND dirs ${subdirs})
    get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
    foreach(target IN LISTS targets)
      get_target_property(type ${target} TYPE)
      if(type STREQUAL "EXECUTABLE")
        list(APPEND executables "$<TARGET_FILE:${target}>")
      endif()
    endforeach()
  endwhile()
  list(JOIN executables "|" joined)
  add_test(NAME no_test_hooks_in_binaries
    COMMAND ${CMAKE_COMMAND} "-DEXECUTABLES=${joined}" -P
            ${CMAKE_SOURCE_DIR}/cmake/CheckNoTestHooks.cmake)
  set_tests_properties(no_test_hooks_in_binaries PROPERTIES LABELS unit TIMEOUT 300)
endfunction()
