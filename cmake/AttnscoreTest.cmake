include(GoogleTest)

# attnscore_test(NAME SOURCES a.cc [b.cc ...] LIBS lib... [LABELS label] [TIMEOUT s]
#                [MATCHED_KERNELS])
# One executable per test file group, linked against only what it tests, discovered by ctest.
# MATCHED_KERNELS: tests that compute start like the server, on the matrix kernels matched to the
# CPU (server/cpu/matched_kernels.h: re-executed once with OPENBLAS_CORETYPE and
# ATEN_CPU_CAPABILITY chosen from cpuid unless the environment sets them).
function(attnscore_test name)
  cmake_parse_arguments(T "MATCHED_KERNELS" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  list(LENGTH T_LABELS label_count)
  if(label_count GREATER 1)
    # gtest_discover_tests flattens its PROPERTIES list, so a second label would
    # silently become a property name: refuse instead of mislabelling.
    message(FATAL_ERROR "attnscore_test(${name}): one label per test, got ${T_LABELS}")
  endif()
  add_executable(${name} ${T_SOURCES})
  if(T_MATCHED_KERNELS)
    target_link_libraries(${name} PRIVATE ${T_LIBS} attnscore_matched_gmock_main)
  else()
    target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gmock_main)
  endif()
  target_compile_definitions(${name} PRIVATE
    ATTNSCORE_GOLDEN_DIR="${ATTNSCORE_GOLDEN_DIR}"
    ATTNSCORE_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
    ATTNSCORE_BINARY_DIR="${CMAKE_BINARY_DIR}"
    ATTNSCORE_VENV_PYTHON="${ATTNSCORE_VENV_PYTHON}")
  gtest_discover_tests(${name}
    DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${T_TIMEOUT} LABELS "${T_LABELS}")
endfunction()
