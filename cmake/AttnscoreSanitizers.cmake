# Sanitizer and fuzzer builds (`make test-asan`, `make test-tsan`, `make fuzz`; docs/testing.md).
#
#   ATTNSCORE_SANITIZE=address  ASan + UBSan (-fno-sanitize-recover=undefined: a UB report fails the
#                               test instead of scrolling past), GCC or clang.
#   ATTNSCORE_SANITIZE=thread   TSan. Only the batcher and service tests are meant to run under it:
#                               they use a fake scorer and link no LibTorch, whose uninstrumented
#                               OpenMP pool TSan cannot see into.
#   ATTNSCORE_FUZZ=ON           clang only: every project target gets -fsanitize=fuzzer-no-link plus
#                               ASan + UBSan, and fuzz/ adds the libFuzzer executables
#                               (-fsanitize=fuzzer links libFuzzer's main).
#
# The flags go on every target the project compiles, generated proto code included (a heap
# overflow there is as fatal as one in ours). Prebuilt Debian libraries (LibTorch, gRPC) are not
# instrumented: ASan still checks every access our code makes into their memory, and their own
# reports are silenced by the suppression files in tools/sanitizers/.
include_guard(GLOBAL)

set(ATTNSCORE_SANITIZE "" CACHE STRING "Sanitizer build: empty, address (ASan+UBSan) or thread")
set_property(CACHE ATTNSCORE_SANITIZE PROPERTY STRINGS "" address thread)
option(ATTNSCORE_FUZZ "Build the libFuzzer targets in fuzz/ (clang; implies ASan+UBSan)" OFF)

set(_attnscore_sanitize_flags "")
if(ATTNSCORE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "ATTNSCORE_FUZZ needs clang (libFuzzer), got ${CMAKE_CXX_COMPILER_ID}: "
                        "configure with -DCMAKE_CXX_COMPILER=clang++")
  endif()
  if(ATTNSCORE_SANITIZE)
    message(FATAL_ERROR "ATTNSCORE_FUZZ already implies ASan+UBSan; leave ATTNSCORE_SANITIZE empty")
  endif()
  set(_attnscore_sanitize_flags
    -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined)
elseif(ATTNSCORE_SANITIZE STREQUAL "address")
  set(_attnscore_sanitize_flags -fsanitize=address,undefined -fno-sanitize-recover=undefined)
elseif(ATTNSCORE_SANITIZE STREQUAL "thread")
  set(_attnscore_sanitize_flags -fsanitize=thread)
elseif(ATTNSCORE_SANITIZE)
  message(FATAL_ERROR "ATTNSCORE_SANITIZE=${ATTNSCORE_SANITIZE}: expected address or thread")
endif()

if(_attnscore_sanitize_flags)
  # Frame pointers make the reports' stacks complete at -O1; -g gives them file:line.
  add_compile_options(${_attnscore_sanitize_flags} -fno-omit-frame-pointer -g)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # The instrumentation defeats GCC's flow analysis: -Wmaybe-uninitialized then fires inside
    # libstdc++ itself (std::regex's std::function moves). The normal build keeps the warning
    # as an error; an explicit -Wno-X survives the later -Wall.
    add_compile_options(-Wno-maybe-uninitialized)
  endif()
  # The same -fsanitize flags at link time pull in the runtimes. fuzzer-no-link does not link
  # libFuzzer: the fuzz targets add -fsanitize=fuzzer themselves.
  add_link_options(${_attnscore_sanitize_flags})
  message(STATUS "attnscore: sanitizer build (${_attnscore_sanitize_flags})")
endif()
