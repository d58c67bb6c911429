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

# LibTorch: Debian's CPU build by default, or a LibTorch 2.x (CUDA) with -DATTNSCORE_TORCH=python.
include(AttnscoreTorch)
