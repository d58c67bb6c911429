// The LibTorch part of the kernel report: which vectorised kernels ATen runs.
// The header is LibTorch-free, so that main() and the benchmarks can call it
// without ATen headers.
//
// Thread safety: any thread. Errors: an unknown capability is "".
#ifndef ATTNSCORE_SERVER_CPU_ATEN_CAPABILITY_H_
#define ATTNSCORE_SERVER_CPU_ATEN_CAPABILITY_H_

#include <string>

#include "server/cpu/kernel_info.h"

namespace attnscore::cpu {

// ATen's CPU capability in use: "AVX512", "AVX2", "NO AVX" (from
// at::show_config(), which LibTorch 1.13 has no other public query for).
std::string AtenCpuCapability();

// DescribeKernels(AtenCpuCapability()): the full report.
KernelInfo CurrentKernelInfo();

// One line for logs and benchmark headers, e.g. "cpu AMD EPYC 9B45, isa
// avx512_bf16, BLAS core Cooperlake (cpuid), ATen AVX512 (cpuid)".
std::string KernelInfoLine(const KernelInfo& info);

}  // namespace attnscore::cpu

#endif  // ATTNSCORE_SERVER_CPU_ATEN_CAPABILITY_H_
