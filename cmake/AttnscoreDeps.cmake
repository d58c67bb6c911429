# Every third-party dependency, found once. All come from Debian packages (scripts/install-deps.sh).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(benchmark CONFIG REQUIRED)

# LibTorch: Debian's CPU build. Only torch_cpu and c10 are linked: the `torch` umbrella target
# drags in CUDA discovery we do not need for the CPU build.
find_library(TORCH_CPU_LIBRARY torch_cpu REQUIRED)
find_library(C10_LIBRARY c10 REQUIRED)
add_library(attnscore_libtorch INTERFACE)
target_link_libraries(attnscore_libtorch INTERFACE ${TORCH_CPU_LIBRARY} ${C10_LIBRARY})
target_compile_definitions(attnscore_libtorch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
