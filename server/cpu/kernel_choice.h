// The choice of matrix kernels for this CPU, as a pure function of (CPU
// features, the core the loaded OpenBLAS reports, the environment), so that
// every case is unit-tested without the CPU it describes.
//
// Why: OpenBLAS picks its kernels from the CPU model when it is loaded, before
// main. A release that does not know a CPU model (Debian bookworm's 0.3.21 on
// Emerald Rapids, OpenBLAS issue 4267) falls back to its generic Prescott
// kernels, 3-5x slower than the CPU allows; and ATen 1.13 runs its vectorised
// kernels at AVX2 on AVX-512 CPUs unless told otherwise. Both read an
// environment variable at load time (OPENBLAS_CORETYPE, ATEN_CPU_CAPABILITY),
// so the remedy is to set it and re-execute the binary once (see
// matched_kernels.h). An operator's own setting of either always wins.
//
// Thread safety: pure functions. Errors: none.
#ifndef ATTNSCORE_SERVER_CPU_KERNEL_CHOICE_H_
#define ATTNSCORE_SERVER_CPU_KERNEL_CHOICE_H_

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "server/cpu/cpu_features.h"
#include "server/cpu/kernel_info.h"

namespace attnscore::cpu {

// Read by OpenBLAS and ATen at load time.
inline constexpr const char* kOpenblasCoretypeEnv = "OPENBLAS_CORETYPE";
inline constexpr const char* kAtenCapabilityEnv = "ATEN_CPU_CAPABILITY";
// Read by libgomp (the OpenMP runtime of ATen's intra-op threads) at load
// time. After a parallel region its threads spin GOMP_SPINCOUNT times before
// sleeping: 300,000 by default, which on a machine of few cores takes the CPU
// from the gRPC threads receiving and sending the next requests' bytes
// (measured, 2 cores: decode preset at c=64 437-467 req/s as loaded, 604-623
// with 1,000 spins; 0 spins, OMP_WAIT_POLICY=passive, made small requests
// 0.1 ms slower). The server asks for kServerSpinCount unless the operator set
// either variable.
inline constexpr const char* kOmpWaitPolicyEnv = "OMP_WAIT_POLICY";
inline constexpr const char* kGompSpinCountEnv = "GOMP_SPINCOUNT";
inline constexpr const char* kServerSpinCount = "1000";
// Set by the re-execution itself: "matched:<what was set>" or "simulated". Its
// presence means "do not re-execute again" (except after "simulated"), so the
// process can never loop.
inline constexpr const char* kReexecMarkerEnv = "ATTNSCORE_KERNELS_REEXEC";
// Test-only: makes the loaded OpenBLAS detect this core (as it would on a CPU
// it does not know, e.g. "Prescott") without the value counting as the
// operator's choice. The process re-executes once with OPENBLAS_CORETYPE set to
// it, then chooses as usual. Ignored when the operator set OPENBLAS_CORETYPE.
inline constexpr const char* kSimulateLibraryCoreEnv =
    "ATTNSCORE_SIMULATE_LIBRARY_CORE";

// The environment variables the choice reads; nullopt when unset.
struct KernelEnv {
  std::optional<std::string> openblas_coretype;
  std::optional<std::string> aten_cpu_capability;
  std::optional<std::string> reexec_marker;
  std::optional<std::string> simulate_library_core;
  std::optional<std::string> omp_wait_policy;
  std::optional<std::string> gomp_spincount;
};

// Who chose a kernel set.
enum class ChoiceSource {
  kLibrary,   // the library's own detection, left as is
  kOperator,  // the operator's environment variable
  kCpuid,     // this code, from the CPU's feature flags
  kServer,    // this code's default, whatever the CPU (the OpenMP wait)
};
std::string_view ChoiceSourceName(ChoiceSource source);

struct KernelDecision {
  // Set `set_env` and re-execute the binary; otherwise go on as loaded.
  bool reexec = false;
  std::vector<std::pair<std::string, std::string>> set_env;
  ChoiceSource blas_source = ChoiceSource::kLibrary;
  ChoiceSource aten_source = ChoiceSource::kLibrary;
  ChoiceSource omp_source = ChoiceSource::kLibrary;
  // One line for the log: what was chosen and why.
  std::string reason;
};

// The OpenBLAS core whose kernels fit `features` best: "Cooperlake" (AVX-512
// with BF16: the SkylakeX kernels plus BF16 ones, measured equal on sgemm),
// "SkylakeX" (AVX-512 F/BW/VL/DQ), "Haswell" (AVX2+FMA), or "" (nothing better
// than the generic kernels to ask for).
std::string BlasCoreFor(const CpuFeatures& features);

// The instruction-set level of an OpenBLAS core name (case-insensitive): 0 SSE
// generation (Prescott, Core2, Nehalem, "Unknown", ...), 1 AVX (Sandybridge,
// Bulldozer, ...), 2 AVX2 (Haswell, Zen), 3 AVX-512 (SkylakeX, Cooperlake,
// SapphireRapids); nullopt for a name this table does not know (a newer
// library's: left alone).
std::optional<int> BlasCoreLevel(std::string_view core);

// The decision for a process whose loaded OpenBLAS reports `library_core` (""
// when the BLAS is not OpenBLAS). Re-executes only to raise a kernel set the
// operator did not choose: OpenBLAS when the library's core is below the
// level of BlasCoreFor(features); ATen to "avx512" on CPUs with AVX-512 F, BW,
// VL and DQ (ATen 1.13 defaults to AVX2 there; measured 2-3.5x faster softmax
// on AVX-512); the OpenMP wait to kServerSpinCount spins (see
// kGompSpinCountEnv). Never after a "matched" marker.
KernelDecision ChooseKernels(const CpuFeatures& features,
                             std::string_view library_core,
                             const KernelEnv& env);

// What the operator's own settings cost on this CPU: one sentence per setting
// that keeps a library below the kernels the CPU runs best, "" when none does.
// `info` is what runs (DescribeKernels, which puts it in KernelInfo::below_cpu
// for the log, GetServerInfo and the benchmarks' headers). The setting still
// wins; this says what it costs, because it is easy to miss: an
// environment that pins OPENBLAS_CORETYPE=Haswell for older machines runs
// AVX2 kernels on an AVX-512 CPU (sgemm 1024^3 on 2 threads: 237 against
// 427 GFLOP/s with Cooperlake's, AMD EPYC family 26 model 2).
std::string OperatorKernelsBelowCpu(const CpuFeatures& features,
                                    const KernelInfo& info);

}  // namespace attnscore::cpu

#endif  // ATTNSCORE_SERVER_CPU_KERNEL_CHOICE_H_
