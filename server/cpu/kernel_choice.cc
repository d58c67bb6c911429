#include "server/cpu/kernel_choice.h"

#include <array>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnscore::cpu {
namespace {

constexpr char kMatchedPrefix[] = "matched:";
constexpr char kSimulated[] = "simulated";

struct CoreLevel {
  std::string_view name;
  int level;
};

// OpenBLAS 0.3.x x86-64 core names (openblas_get_corename), by the widest
// instruction set their kernels use.
constexpr std::array<CoreLevel, 27> kCoreLevels = {{
    {"unknown", 0},    {"katmai", 0},        {"coppermine", 0},
    {"northwood", 0},  {"prescott", 0},      {"banias", 0},
    {"atom", 0},       {"core2", 0},         {"penryn", 0},
    {"dunnington", 0}, {"nehalem", 0},       {"athlon", 0},
    {"opteron", 0},    {"opteron(sse3)", 0}, {"barcelona", 0},
    {"nano", 0},       {"bobcat", 0},        {"sandybridge", 1},
    {"bulldozer", 1},  {"piledriver", 1},    {"steamroller", 1},
    {"excavator", 1},  {"haswell", 2},       {"zen", 2},
    {"skylakex", 3},   {"cooperlake", 3},    {"sapphirerapids", 3},
}};

// The ATen decision for a process the operator did not configure.
bool WantsAtenAvx512(const CpuFeatures& features) {
  return HasAvx512Core(features);
}

bool OperatorOmp(const KernelEnv& env) {
  return env.omp_wait_policy.has_value() || env.gomp_spincount.has_value();
}

// After our own re-execution: who chose what, from the marker's list.
// `openblas`: the loaded BLAS is OpenBLAS (another reads no
// OPENBLAS_CORETYPE, so an operator's value chose nothing).
KernelDecision AfterMatched(const std::string& marker, const KernelEnv& env,
                            bool openblas) {
  KernelDecision d;
  const std::string what = marker.substr(sizeof(kMatchedPrefix) - 1);
  d.blas_source = absl::StrContains(what, "blas")     ? ChoiceSource::kCpuid
                  : openblas && env.openblas_coretype ? ChoiceSource::kOperator
                                                      : ChoiceSource::kLibrary;
  d.aten_source = absl::StrContains(what, "aten") ? ChoiceSource::kCpuid
                  : env.aten_cpu_capability       ? ChoiceSource::kOperator
                                                  : ChoiceSource::kLibrary;
  d.omp_source = absl::StrContains(what, "omp") ? ChoiceSource::kServer
                 : OperatorOmp(env)             ? ChoiceSource::kOperator
                                                : ChoiceSource::kLibrary;
  d.reason =
      absl::StrCat("re-executed with kernels matched to the CPU (", what, ")");
  return d;
}

}  // namespace

std::string_view ChoiceSourceName(ChoiceSource source) {
  switch (source) {
    case ChoiceSource::kLibrary:
      return "library";
    case ChoiceSource::kOperator:
      return "operator";
    case ChoiceSource::kCpuid:
      return "cpuid";
    case ChoiceSource::kServer:
      return "server";
  }
  return "library";
}

std::string BlasCoreFor(const CpuFeatures& features) {
  if (HasAvx512Core(features)) {
    return features.avx512_bf16 ? "Cooperlake" : "SkylakeX";
  }
  if (HasAvx2Fma(features)) return "Haswell";
  return "";
}

std::optional<int> BlasCoreLevel(std::string_view core) {
  const std::string lower = absl::AsciiStrToLower(std::string(core));
  for (const CoreLevel& entry : kCoreLevels) {
    if (entry.name == lower) return entry.level;
  }
  return std::nullopt;
}

KernelDecision ChooseKernels(const CpuFeatures& features,
                             std::string_view library_core,
                             const KernelEnv& env) {
  const std::string marker = env.reexec_marker.value_or("");
  const std::string core(library_core);
  // Another BLAS (a pip LibTorch's MKL, which dispatches on the CPU itself)
  // reads no OPENBLAS_CORETYPE: no core to correct, simulate or keep.
  const bool openblas = !core.empty();
  if (absl::StartsWith(marker, kMatchedPrefix)) {
    return AfterMatched(marker, env, openblas);
  }
  KernelDecision d;
  // After the simulation step, OPENBLAS_CORETYPE is ours, not the operator's.
  const bool simulated = marker == kSimulated;
  const bool operator_blas =
      openblas && env.openblas_coretype.has_value() && !simulated;
  if (!marker.empty() && !simulated) {
    // A marker this code did not write: never risk a loop.
    d.blas_source =
        operator_blas ? ChoiceSource::kOperator : ChoiceSource::kLibrary;
    d.aten_source = env.aten_cpu_capability ? ChoiceSource::kOperator
                                            : ChoiceSource::kLibrary;
    d.omp_source =
        OperatorOmp(env) ? ChoiceSource::kOperator : ChoiceSource::kLibrary;
    d.reason = absl::StrCat("unrecognised ", kReexecMarkerEnv, "=", marker,
                            ": kernels left as loaded");
    return d;
  }
  if (openblas && !simulated && !operator_blas &&
      env.simulate_library_core.has_value()) {
    d.reexec = true;
    d.set_env = {{kOpenblasCoretypeEnv, *env.simulate_library_core},
                 {kReexecMarkerEnv, kSimulated}};
    d.reason = absl::StrCat("simulating a BLAS that detects ",
                            *env.simulate_library_core);
    return d;
  }
  std::vector<std::string> chosen;
  std::vector<std::string> why;
  const std::string target = BlasCoreFor(features);
  const std::optional<int> library_level = BlasCoreLevel(core);
  if (operator_blas) {
    d.blas_source = ChoiceSource::kOperator;
    why.push_back(absl::StrCat("BLAS core ", core, " from the operator's ",
                               kOpenblasCoretypeEnv));
  } else if (!target.empty() && library_level.has_value() &&
             *library_level < *BlasCoreLevel(target)) {
    d.blas_source = ChoiceSource::kCpuid;
    d.set_env.emplace_back(kOpenblasCoretypeEnv, target);
    chosen.push_back("blas");
    why.push_back(absl::StrCat("BLAS core ", core, " -> ", target));
  } else if (!openblas) {
    why.push_back(absl::StrCat(
        "BLAS not OpenBLAS (its own dispatch)",
        env.openblas_coretype
            ? absl::StrCat("; ", kOpenblasCoretypeEnv, " has no effect on it")
            : ""));
  } else {
    why.push_back(absl::StrCat("BLAS core ", core, " as detected"));
  }
  if (env.aten_cpu_capability.has_value()) {
    d.aten_source = ChoiceSource::kOperator;
    why.push_back(absl::StrCat("ATen ", *env.aten_cpu_capability,
                               " from the operator's ", kAtenCapabilityEnv));
  } else if (WantsAtenAvx512(features)) {
    d.aten_source = ChoiceSource::kCpuid;
    d.set_env.emplace_back(kAtenCapabilityEnv, "avx512");
    chosen.push_back("aten");
    why.push_back("ATen -> avx512");
  }
  if (OperatorOmp(env)) {
    d.omp_source = ChoiceSource::kOperator;
    why.push_back("OpenMP wait from the operator's environment");
  } else {
    d.omp_source = ChoiceSource::kServer;
    d.set_env.emplace_back(kGompSpinCountEnv, kServerSpinCount);
    chosen.push_back("omp");
    why.push_back(absl::StrCat("OpenMP spin count -> ", kServerSpinCount));
  }
  if (!chosen.empty()) {
    d.reexec = true;
    d.set_env.emplace_back(
        kReexecMarkerEnv,
        absl::StrCat(kMatchedPrefix, absl::StrJoin(chosen, ",")));
  }
  d.reason =
      absl::StrCat("isa ", IsaName(features), ": ", absl::StrJoin(why, "; "));
  return d;
}

std::string OperatorKernelsBelowCpu(const CpuFeatures& features,
                                    const KernelInfo& info) {
  const std::string operator_source(ChoiceSourceName(ChoiceSource::kOperator));
  std::vector<std::string> below;
  const std::string target = BlasCoreFor(features);
  const std::optional<int> running = BlasCoreLevel(info.blas_core);
  if (info.blas_core_source == operator_source && !target.empty() &&
      running.has_value() && *running < *BlasCoreLevel(target)) {
    below.push_back(absl::StrCat(kOpenblasCoretypeEnv,
                                 " (the operator's) runs ", info.blas_core,
                                 " kernels on a CPU with ", IsaName(features),
                                 ": unset it for ", target, "'s"));
  }
  if (info.aten_capability_source == operator_source &&
      WantsAtenAvx512(features) && !info.aten_capability.empty() &&
      info.aten_capability != "AVX512") {
    below.push_back(absl::StrCat(kAtenCapabilityEnv,
                                 " (the operator's) runs ATen's ",
                                 info.aten_capability,
                                 " kernels on a CPU with AVX-512: unset it "
                                 "for its AVX512 ones"));
  }
  return absl::StrJoin(below, "; ");
}

}  // namespace attnscore::cpu
