# LibTorch, as the INTERFACE target attnscore_libtorch, from one of two sources:
#
#   ATTNSCORE_TORCH=system (default): Debian's CPU build (LibTorch 1.13, libtorch-dev). Only
#     torch_cpu and c10 are linked: the `torch` umbrella target drags in CUDA discovery the CPU
#     build does not need.
#   ATTNSCORE_TORCH=python: find_package(Torch) from the LibTorch inside python3's torch package
#     (`torch.utils.cmake_prefix_path`; ATTNSCORE_TORCH_PYTHON picks the interpreter), or from
#     ATTNSCORE_TORCH_DIR (a directory holding TorchConfig.cmake) when that is set. This is the
#     LibTorch 2.x with CUDA of a GPU machine; CUDA is used when that LibTorch has it.
#
# Results, for server/scoring and the benchmarks:
#   ATTNSCORE_TORCH_VERSION   "1.13.1", "2.11.0", ... (also the compile definition of that name)
#   ATTNSCORE_TORCH_HAS_SDPA  LibTorch >= 2.1: scaled_dot_product_attention with a scale
#   ATTNSCORE_TORCH_HAS_CUDA  the LibTorch was built with CUDA (torch_cuda exists)
#   ATTNSCORE_COMPILE_CUDA    the project's CUDA kernels compile (ATTNSCORE_CUDA_KERNELS below)
#   ATTNSCORE_USE_CUDA_KERNELS  ... and the scoring library uses them
#   ATTNSCORE_TORCH_SHARES_LIBGOMP  the LibTorch runs at::parallel_for on OpenMP, on a libgomp
#     loaded as libgomp.so.1 (GCC's soname): code compiled with GCC's -fopenmp then shares its
#     runtime and thread pool (server/scoring/CMakeLists.txt)
#
# The C++ ABI must match Debian's gRPC, protobuf and absl (built with _GLIBCXX_USE_CXX11_ABI=1):
# a LibTorch built with the old ABI (=0, PyTorch wheels before 2.7) stops the configure step.
set(ATTNSCORE_TORCH "system" CACHE STRING
    "LibTorch to build against: system (Debian's, CPU) or python (find_package(Torch))")
set_property(CACHE ATTNSCORE_TORCH PROPERTY STRINGS system python)
set(ATTNSCORE_TORCH_PYTHON "python3" CACHE STRING
    "The python whose torch package provides LibTorch when ATTNSCORE_TORCH=python")
set(ATTNSCORE_TORCH_DIR "" CACHE PATH
    "Directory with TorchConfig.cmake (ATTNSCORE_TORCH=python); empty: ask ATTNSCORE_TORCH_PYTHON")
# The Hopper target of the GPU machine (H100, H200), read by LibTorch's CUDA CMake code.
set(TORCH_CUDA_ARCH_LIST "9.0" CACHE STRING "CUDA architectures for LibTorch's CMake code")

# The version from torch/version.h under `include_dir` (both LibTorch layouts have it; from 2.9
# on it only includes torch/headeronly/version.h, which holds the numbers).
function(attnscore_torch_version_from_header include_dir out_var)
  find_file(ATTNSCORE_TORCH_VERSION_H NAMES torch/headeronly/version.h torch/version.h
    PATHS "${include_dir}/torch/csrc/api/include" "${include_dir}"
    NO_DEFAULT_PATH REQUIRED)
  file(STRINGS "${ATTNSCORE_TORCH_VERSION_H}" lines REGEX "#define TORCH_VERSION_(MAJOR|MINOR|PATCH) ")
  foreach(line IN LISTS lines)
    if(line MATCHES "TORCH_VERSION_(MAJOR|MINOR|PATCH) ([0-9]+)")
      set(v_${CMAKE_MATCH_1} ${CMAKE_MATCH_2})
    endif()
  endforeach()
  if(NOT DEFINED v_MAJOR OR NOT DEFINED v_MINOR OR NOT DEFINED v_PATCH)
    message(FATAL_ERROR "No TORCH_VERSION_MAJOR/MINOR/PATCH in ${ATTNSCORE_TORCH_VERSION_H}")
  endif()
  set(${out_var} "${v_MAJOR}.${v_MINOR}.${v_PATCH}" PARENT_SCOPE)
endfunction()

add_library(attnscore_libtorch INTERFACE)
if(ATTNSCORE_TORCH STREQUAL "system")
  find_library(TORCH_CPU_LIBRARY torch_cpu REQUIRED)
  find_library(C10_LIBRARY c10 REQUIRED)
  target_link_libraries(attnscore_libtorch INTERFACE ${TORCH_CPU_LIBRARY} ${C10_LIBRARY})
  target_compile_definitions(attnscore_libtorch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
  # find_library gives paths, not an imported target, so nothing marks the headers SYSTEM by
  # itself: say so explicitly, or -Werror would fail on LibTorch's own warnings wherever its
  # headers are not under a compiler default directory. (Debian's are in /usr/include, which
  # CMake drops as an implicit directory; -isystem there would also break #include_next.)
  find_path(TORCH_INCLUDE_DIR ATen/ATen.h REQUIRED)
  target_include_directories(attnscore_libtorch SYSTEM INTERFACE "${TORCH_INCLUDE_DIR}")
  attnscore_torch_version_from_header("${TORCH_INCLUDE_DIR}" ATTNSCORE_TORCH_VERSION)
  set(ATTNSCORE_TORCH_HAS_CUDA OFF)
  get_filename_component(torch_lib_dir "${TORCH_CPU_LIBRARY}" DIRECTORY)
  set(torch_include "${TORCH_INCLUDE_DIR}")
elseif(ATTNSCORE_TORCH STREQUAL "python")
  if(NOT ATTNSCORE_TORCH_DIR)
    execute_process(
      COMMAND ${ATTNSCORE_TORCH_PYTHON} -c "import torch; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
      ERROR_VARIABLE torch_error RESULT_VARIABLE torch_rc)
    if(NOT torch_rc EQUAL 0 OR NOT IS_DIRECTORY "${torch_prefix}/Torch")
      message(FATAL_ERROR "ATTNSCORE_TORCH=python: '${ATTNSCORE_TORCH_PYTHON}' gave no LibTorch "
        "CMake directory (torch.utils.cmake_prefix_path='${torch_prefix}'): ${torch_error}. "
        "Install PyTorch for that python or set ATTNSCORE_TORCH_DIR.")
    endif()
    set(ATTNSCORE_TORCH_DIR "${torch_prefix}/Torch" CACHE PATH "" FORCE)
  endif()
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(ENV{TORCH_CUDA_ARCH_LIST} "${TORCH_CUDA_ARCH_LIST}")
  endif()
  # TorchConfig.cmake searches the default paths before its own directory (Caffe2's config,
  # torch, c10, ...): on a machine that also has Debian's libtorch-dev it would mix the two.
  # Its own directory only, for the duration of the search.
  set(Caffe2_DIR "${ATTNSCORE_TORCH_DIR}/../Caffe2" CACHE PATH "" FORCE)
  set(CMAKE_FIND_USE_CMAKE_SYSTEM_PATH OFF)
  find_package(Torch CONFIG REQUIRED PATHS "${ATTNSCORE_TORCH_DIR}" NO_DEFAULT_PATH)
  unset(CMAKE_FIND_USE_CMAKE_SYSTEM_PATH)
  list(GET TORCH_INCLUDE_DIRS 0 torch_include)
  get_filename_component(torch_lib_dir "${TORCH_LIBRARY}" DIRECTORY)
  attnscore_torch_version_from_header("${torch_include}" ATTNSCORE_TORCH_VERSION)
  # The ABI LibTorch was built with, from the flags its config hands to dependents. From
  # PyTorch 2.9 on there is only the C++11 ABI and the config no longer names it.
  if(TORCH_CXX_FLAGS MATCHES "_GLIBCXX_USE_CXX11_ABI=([01])")
    set(torch_abi ${CMAKE_MATCH_1})
  elseif(ATTNSCORE_TORCH_VERSION VERSION_GREATER_EQUAL 2.9)
    set(torch_abi 1)
  else()
    message(FATAL_ERROR "LibTorch ${ATTNSCORE_TORCH_VERSION} at ${ATTNSCORE_TORCH_DIR}: "
      "TORCH_CXX_FLAGS ('${TORCH_CXX_FLAGS}') does not say which C++ ABI it was built with")
  endif()
  if(NOT torch_abi EQUAL 1)
    message(FATAL_ERROR "LibTorch at ${ATTNSCORE_TORCH_DIR} was built with the pre-C++11 "
      "libstdc++ ABI (_GLIBCXX_USE_CXX11_ABI=0), but Debian's gRPC, protobuf and absl use the "
      "C++11 ABI (=1): std::string crosses both, so the build could not link or would crash. "
      "Use a LibTorch built with the C++11 ABI (PyTorch >= 2.7 wheels, or the cxx11-abi "
      "LibTorch archive).")
  endif()
  target_link_libraries(attnscore_libtorch INTERFACE ${TORCH_LIBRARIES})
  target_compile_options(attnscore_libtorch INTERFACE ${TORCH_CXX_FLAGS})
  # Imported targets' headers are SYSTEM already; TORCH_INCLUDE_DIRS are not always on them.
  target_include_directories(attnscore_libtorch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
  if(TARGET torch_cuda)
    set(ATTNSCORE_TORCH_HAS_CUDA ON)
  else()
    set(ATTNSCORE_TORCH_HAS_CUDA OFF)
  endif()
else()
  message(FATAL_ERROR "ATTNSCORE_TORCH: expected system or python, got '${ATTNSCORE_TORCH}'")
endif()

# Whether code compiled with GCC's -fopenmp shares the LibTorch's OpenMP runtime. It does when
# the LibTorch's parallel backend is OpenMP and its libgomp is loaded under GCC's soname,
# libgomp.so.1: the loader keeps one library per soname, so the process has one runtime and one
# pool whichever copy it finds first (Debian's LibTorch uses the system's; PyTorch wheels from
# 2.x bundle theirs under that name). Older wheels renamed theirs (libgomp-<hash>.so.1): a second
# runtime with threads of its own beside LibTorch's, so not there.
set(ATTNSCORE_TORCH_SHARES_LIBGOMP OFF)
file(STRINGS "${torch_include}/ATen/Config.h" torch_openmp REGEX "#define AT_PARALLEL_OPENMP 1")
file(GLOB torch_renamed_libgomp "${torch_lib_dir}/libgomp-*.so*")
if(torch_openmp AND NOT torch_renamed_libgomp)
  set(ATTNSCORE_TORCH_SHARES_LIBGOMP ON)
endif()

# The project's own CUDA kernels (server/scoring/*.cu). ATTNSCORE_CUDA_KERNELS:
#   auto (default): compiled and used where the LibTorch has CUDA;
#   on: compiled in a CPU build too, alone (nothing links them): the device check's dry run does,
#     wherever nvcc exists, so that they cannot rot between GPU runs;
#   off: not compiled; a CUDA build then keeps the library's products (the device check falls
#     back to it when a kernel does not build there, so that the rest still runs).
set(ATTNSCORE_CUDA_KERNELS "auto" CACHE STRING "The project's CUDA kernels: auto, on or off")
set_property(CACHE ATTNSCORE_CUDA_KERNELS PROPERTY STRINGS auto on off)
string(TOLOWER "${ATTNSCORE_CUDA_KERNELS}" cuda_kernels)
if(NOT cuda_kernels MATCHES "^(auto|on|off)$")
  message(FATAL_ERROR "ATTNSCORE_CUDA_KERNELS: expected auto, on or off, got '${ATTNSCORE_CUDA_KERNELS}'")
endif()
set(ATTNSCORE_COMPILE_CUDA OFF)  # the CUDA language is on: the kernels compile
set(ATTNSCORE_USE_CUDA_KERNELS OFF)  # ... and the scoring library links and uses them
if(cuda_kernels STREQUAL "on" OR (cuda_kernels STREQUAL "auto" AND ATTNSCORE_TORCH_HAS_CUDA))
  set(ATTNSCORE_COMPILE_CUDA ON)
  set(ATTNSCORE_USE_CUDA_KERNELS ${ATTNSCORE_TORCH_HAS_CUDA})
endif()
if(ATTNSCORE_COMPILE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    string(REPLACE "." "" cuda_arch "${TORCH_CUDA_ARCH_LIST}")
    set(CMAKE_CUDA_ARCHITECTURES ${cuda_arch})
  endif()
  # No CUDA runtime of the project's own: the kernels' launches go through the LibTorch's
  # (torch_cuda links it), so that one runtime serves the process and its streams.
  set(CMAKE_CUDA_RUNTIME_LIBRARY None)
  enable_language(CUDA)
endif()

if(ATTNSCORE_TORCH_VERSION VERSION_GREATER_EQUAL 2.1)
  set(ATTNSCORE_TORCH_HAS_SDPA ON)
else()
  set(ATTNSCORE_TORCH_HAS_SDPA OFF)
endif()
target_compile_definitions(attnscore_libtorch INTERFACE
  ATTNSCORE_TORCH_VERSION="${ATTNSCORE_TORCH_VERSION}")
message(STATUS "LibTorch ${ATTNSCORE_TORCH_VERSION} (${ATTNSCORE_TORCH}): "
  "CUDA ${ATTNSCORE_TORCH_HAS_CUDA}, scaled_dot_product_attention ${ATTNSCORE_TORCH_HAS_SDPA}, "
  "own CUDA kernels compiled ${ATTNSCORE_COMPILE_CUDA}, used ${ATTNSCORE_USE_CUDA_KERNELS}, "
  "OpenMP runtime shared ${ATTNSCORE_TORCH_SHARES_LIBGOMP}")
