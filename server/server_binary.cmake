# attnscore-server: flags, gRPC server set-up, health, reflection, metrics endpoint, signals.
# Included from server/CMakeLists.txt; the binary lands at ${CMAKE_BINARY_DIR}/server/.

# main.cc reaches LibTorch only through attnscore_scoring's LibTorch-free headers (aten_scorer.h,
# model_loader.h); it includes no ATen header.
add_executable(attnscore-server main.cc)
target_link_libraries(attnscore-server PRIVATE
  attnscore_service attnscore_scoring attnscore_observability attnscore_security attnscore_proto
  attnscore_cpu_aten
  attnscore_version
  gRPC::grpc++ gRPC::grpc++_reflection CLI11::CLI11 spdlog::spdlog
  absl::status absl::statusor absl::strings absl::synchronization)

# The example relative-position parameter set that `make serve` serves (random, labelled as an
# example in its metadata). 8 MiB of float32 (P=2048 H=8 D=64), so it is generated
# deterministically into the build tree rather than committed.
set(ATTNSCORE_EXAMPLE_MODEL_DIR "${CMAKE_BINARY_DIR}/examples/models")
add_custom_command(
  OUTPUT "${ATTNSCORE_EXAMPLE_MODEL_DIR}/example_relative.safetensors"
  COMMAND "${ATTNSCORE_VENV_PYTHON}" "${CMAKE_SOURCE_DIR}/examples/models/make_example.py"
          "${ATTNSCORE_EXAMPLE_MODEL_DIR}"
  DEPENDS "${CMAKE_SOURCE_DIR}/examples/models/make_example.py"
  COMMENT "examples/models/make_example.py: example relative-position parameter set"
  VERBATIM)
add_custom_target(attnscore_example_models ALL
  DEPENDS "${ATTNSCORE_EXAMPLE_MODEL_DIR}/example_relative.safetensors")
