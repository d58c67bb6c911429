// What the CPU this process runs on can execute: the vector instruction sets
// that both the CPU (cpuid) and the operating system (the register state it
// saves, XCR0) support. LibTorch-free, BLAS-free; x86-64 only (elsewhere every
// flag is false and the ISA is "none").
//
// Thread safety: DetectCpuFeatures() is a pure query and may be called from any
// thread. Errors: none (a feature that cannot be confirmed is reported absent).
#ifndef ATTNSCORE_SERVER_CPU_CPU_FEATURES_H_
#define ATTNSCORE_SERVER_CPU_CPU_FEATURES_H_

#include <string>

namespace attnscore::cpu {

struct CpuFeatures {
  bool x86_64 = false;
  // AVX, FMA3 and F16C (float16 conversions) with YMM state enabled by the OS.
  bool avx = false;
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  // AVX-512 foundation and the subsets OpenBLAS's SkylakeX kernels and ATen's
  // AVX512 kernels need, with ZMM state enabled by the OS.
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512_bf16 = false;
  // The brand string from cpuid, e.g. "AMD EPYC 9B45"; "" when unavailable.
  std::string model_name;
};

// The features of the CPU this process runs on.
CpuFeatures DetectCpuFeatures();

// AVX-512 F, BW, VL and DQ: what SkylakeX-class kernels require.
bool HasAvx512Core(const CpuFeatures& features);
// AVX2 and FMA3: what Haswell-class kernels require.
bool HasAvx2Fma(const CpuFeatures& features);

// The widest instruction set usable: "avx512_bf16", "avx512", "avx2", "avx",
// "sse" (any x86-64), or "none" (not x86-64).
std::string IsaName(const CpuFeatures& features);

}  // namespace attnscore::cpu

#endif  // ATTNSCORE_SERVER_CPU_CPU_FEATURES_H_
