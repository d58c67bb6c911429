include(GoogleTest)

# attnscore_test(NAME SOURCES a.cc [b.cc ...] LIBS lib... [LABELS l...] [TIMEOUT s])
# One executable per test file group, linked against only what it tests, discovered by ctest.
function(attnscore_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gmock_main)
  target_compile_definitions(${name} PRIVATE
    ATTNSCORE_GOLDEN_DIR="${ATTNSCORE_GOLDEN_DIR}"
    ATTNSCORE_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
    ATTNSCORE_BINARY_DIR="${CMAKE_BINARY_DIR}"
    ATTNSCORE_VENV_PYTHON="${ATTNSCORE_VENV_PYTHON}")
  gtest_discover_tests(${name}
    DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${T_TIMEOUT} LABELS "${T_LABELS}")
endfunction()
