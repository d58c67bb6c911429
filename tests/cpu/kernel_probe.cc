// A stand-in for a binary that computes: matches its kernels like the server
// (EnsureMatchedKernels first), runs one product through ATen, and prints its
// kernel report, one "key=value" per line, for matched_kernels_test.
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>

#include <cstdio>

#include "server/cpu/aten_capability.h"
#include "server/cpu/matched_kernels.h"

int main(int argc, char** argv) {
  attnscore::cpu::EnsureMatchedKernels(argc, argv);
  // A product, so that the BLAS is not only loaded but used.
  const at::Tensor a = at::ones({64, 64});
  const float sum = at::mm(a, a).sum().item<float>();
  const attnscore::cpu::KernelInfo info = attnscore::cpu::CurrentKernelInfo();
  std::printf("isa=%s\nblas_core=%s\nblas_core_source=%s\n", info.isa.c_str(),
              info.blas_core.c_str(), info.blas_core_source.c_str());
  std::printf("aten_capability=%s\naten_capability_source=%s\n",
              info.aten_capability.c_str(),
              info.aten_capability_source.c_str());
  std::printf("omp_wait=%s\nomp_wait_source=%s\n", info.omp_wait.c_str(),
              info.omp_wait_source.c_str());
  std::printf("below=%s\n", info.below_cpu.c_str());
  std::printf("product=%.0f\n", static_cast<double>(sum));
  return 0;
}
