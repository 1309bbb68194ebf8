# One helper per kind of target. Every target builds with -Wall -Wextra; warnings are errors
# only with -DCDP_WERROR=ON (CI and developers' builds), so that a user's build with another
# build type or a newer compiler never fails on a new warning.

option(CDP_WERROR "Treat compiler warnings as errors (CI and development)" OFF)
set(CDP_WARNINGS -Wall -Wextra -Wno-missing-field-initializers)
if(CDP_WERROR)
  list(APPEND CDP_WARNINGS -Werror)
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
