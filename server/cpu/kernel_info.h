// KernelInfo: what this process computes on, as the server reports it (log,
// GetServerInfo's `kernels`, the build-info metric) and the benchmarks print
// it. A plain value, header-only, so that the service can carry it in its
// options without linking anything.
#ifndef ATTNSCORE_SERVER_CPU_KERNEL_INFO_H_
#define ATTNSCORE_SERVER_CPU_KERNEL_INFO_H_

#include <string>

namespace attnscore::cpu {

struct KernelInfo {
  std::string isa;               // IsaName(): "avx512_bf16", "avx2", ...
  std::string blas_core;         // openblas_get_corename(); "" if not OpenBLAS
  std::string blas_core_source;  // "library", "operator" or "cpuid"
  std::string aten_capability;   // "AVX512", "AVX2", "NO AVX"; "" if unknown
  std::string aten_capability_source;  // as blas_core_source
  std::string cpu_model;               // the CPU's brand string
  // How ATen's OpenMP threads wait between parallel regions:
  // "GOMP_SPINCOUNT=1000", "OMP_WAIT_POLICY=passive", ... or "libgomp
  // default"; and who chose it ("library", "operator" or "server").
  std::string omp_wait;
  std::string omp_wait_source;
  // OperatorKernelsBelowCpu(): what the operator's settings cost here; "" when
  // nothing.
  std::string below_cpu;
};

}  // namespace attnscore::cpu

#endif  // ATTNSCORE_SERVER_CPU_KERNEL_INFO_H_
