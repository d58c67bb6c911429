# Every third-party dependency, found once. All come from Debian packages (scripts/install-deps.sh).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(benchmark CONFIG REQUIRED)
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
# prometheus-cpp::core (registry, text format) and ::pull (the civetweb /metrics server); its
# config finds civetweb::civetweb, whose header declares the callbacks the metrics server sets.
find_package(prometheus-cpp CONFIG REQUIRED)
# Debian builds cpp-httplib as a library (libcpp-httplib.so) whose ABI depends on its
# -DCPPHTTPLIB_*_SUPPORT flags: take them from pkg-config.
find_package(PkgConfig REQUIRED)
pkg_check_modules(CPP_HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)

# LibTorch: Debian's CPU build. Only torch_cpu and c10 are linked: the `torch` umbrella target
# drags in CUDA discovery we do not need for the CPU build.
find_library(TORCH_CPU_LIBRARY torch_cpu REQUIRED)
find_library(C10_LIBRARY c10 REQUIRED)
add_library(attnscore_libtorch INTERFACE)
target_link_libraries(attnscore_libtorch INTERFACE ${TORCH_CPU_LIBRARY} ${C10_LIBRARY})
target_compile_definitions(attnscore_libtorch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
# find_library gives paths, not an imported target, so nothing marks the headers SYSTEM by itself:
# say so explicitly, or -Werror would fail on LibTorch's own warnings wherever its headers are not
# under a compiler default directory. (Debian's are in /usr/include, which CMake drops as an
# implicit directory; -isystem there would also break #include_next.)
find_path(TORCH_INCLUDE_DIR ATen/ATen.h REQUIRED)
target_include_directories(attnscore_libtorch SYSTEM INTERFACE "${TORCH_INCLUDE_DIR}")
