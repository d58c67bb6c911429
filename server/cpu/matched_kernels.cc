#include "server/cpu/matched_kernels.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace attnscore::cpu {
namespace {

std::optional<std::string> GetEnv(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

// The decision taken at start, for DescribeKernels.
std::mutex& DecisionMutex() {
  static std::mutex mu;
  return mu;
}
std::optional<KernelDecision>& StartDecision() {
  static std::optional<KernelDecision> decision;
  return decision;
}

// The OpenMP wait variables as the process runs with them.
std::string OmpWait(const KernelEnv& env) {
  std::string wait;
  for (const auto& [name, value] :
       {std::pair{kOmpWaitPolicyEnv, env.omp_wait_policy},
        std::pair{kGompSpinCountEnv, env.gomp_spincount}}) {
    if (!value.has_value()) continue;
    if (!wait.empty()) wait += " ";
    wait += std::string(name) + "=" + *value;
  }
  return wait.empty() ? "libgomp default" : wait;
}

// The running binary's path, or "" when /proc cannot say.
std::string OwnPath() {
  std::string path(PATH_MAX, '\0');
  const ssize_t length = readlink("/proc/self/exe", path.data(), path.size());
  if (length <= 0 || static_cast<size_t>(length) >= path.size()) return "";
  path.resize(static_cast<size_t>(length));
  return path;
}

}  // namespace

KernelEnv ReadKernelEnv() {
  KernelEnv env;
  env.openblas_coretype = GetEnv(kOpenblasCoretypeEnv);
  env.aten_cpu_capability = GetEnv(kAtenCapabilityEnv);
  env.reexec_marker = GetEnv(kReexecMarkerEnv);
  env.simulate_library_core = GetEnv(kSimulateLibraryCoreEnv);
  env.omp_wait_policy = GetEnv(kOmpWaitPolicyEnv);
  env.gomp_spincount = GetEnv(kGompSpinCountEnv);
  return env;
}

std::string LoadedBlasCore() {
  using CoreNameFn = char* (*)();
  // RTLD_DEFAULT: whatever OpenBLAS the process loaded (through LibTorch);
  // none in binaries that do not link it.
  void* symbol = dlsym(RTLD_DEFAULT, "openblas_get_corename");
  if (symbol == nullptr) return "";
  const char* name = reinterpret_cast<CoreNameFn>(symbol)();
  return name == nullptr ? "" : std::string(name);
}

void EnsureMatchedKernels(int argc, char** argv) {
  (void)argc;
  const KernelDecision decision =
      ChooseKernels(DetectCpuFeatures(), LoadedBlasCore(), ReadKernelEnv());
  {
    std::lock_guard<std::mutex> lock(DecisionMutex());
    StartDecision() = decision;
  }
  if (!decision.reexec || argv == nullptr || argv[0] == nullptr) return;
  for (const auto& [name, value] : decision.set_env) {
    setenv(name.c_str(), value.c_str(), /*overwrite=*/1);
  }
  // The binary's own path, not /proc/self/exe: the kernel names a process
  // after the file it executes, and "exe" would hide the server from `ps`,
  // `top` and `pkill attnscore-server`. /proc/self/exe still serves when the
  // path is gone (a binary replaced or deleted since it started).
  const std::string self = OwnPath();
  if (!self.empty()) execv(self.c_str(), argv);
  execv("/proc/self/exe", argv);
  // Only reached when the exec failed: run on as loaded, and say so. The
  // variables stay set, so a child process gets the matched kernels.
  std::fprintf(stderr,
               "attnscore: could not re-execute to match kernels to the CPU "
               "(%s): %s; running on the kernels as loaded\n",
               decision.reason.c_str(), std::strerror(errno));
}

KernelInfo DescribeKernels(const std::string& aten_capability) {
  const CpuFeatures features = DetectCpuFeatures();
  KernelInfo info;
  info.isa = IsaName(features);
  info.cpu_model = features.model_name;
  info.blas_core = LoadedBlasCore();
  info.aten_capability = aten_capability;
  std::optional<KernelDecision> decision;
  {
    std::lock_guard<std::mutex> lock(DecisionMutex());
    decision = StartDecision();
  }
  if (!decision.has_value()) {
    decision = ChooseKernels(features, info.blas_core, ReadKernelEnv());
  }
  // A decision to re-execute that is still current means the exec failed (or
  // was never tried): the library's own kernels run.
  info.blas_core_source = std::string(ChoiceSourceName(
      decision->reexec ? ChoiceSource::kLibrary : decision->blas_source));
  info.aten_capability_source = std::string(ChoiceSourceName(
      decision->reexec ? ChoiceSource::kLibrary : decision->aten_source));
  const KernelEnv env = ReadKernelEnv();
  info.omp_wait = OmpWait(env);
  info.omp_wait_source = std::string(ChoiceSourceName(
      decision->reexec ? ChoiceSource::kLibrary : decision->omp_source));
  info.below_cpu = OperatorKernelsBelowCpu(features, info);
  return info;
}

}  // namespace attnscore::cpu
