#include "server/cpu/aten_capability.h"

#include <ATen/Version.h>

#include "absl/strings/str_cat.h"
#include "server/cpu/matched_kernels.h"

namespace attnscore::cpu {

std::string AtenCpuCapability() {
  static constexpr std::string_view kLabel = "CPU capability usage: ";
  const std::string config = at::show_config();
  const size_t start = config.find(kLabel);
  if (start == std::string::npos) return "";
  const size_t value = start + kLabel.size();
  const size_t end = config.find('\n', value);
  return config.substr(
      value, end == std::string::npos ? std::string::npos : end - value);
}

KernelInfo CurrentKernelInfo() { return DescribeKernels(AtenCpuCapability()); }

std::string KernelInfoLine(const KernelInfo& info) {
  return absl::StrCat(
      "cpu ", info.cpu_model.empty() ? "(unknown)" : info.cpu_model, ", isa ",
      info.isa, ", BLAS core ",
      info.blas_core.empty() ? "(not OpenBLAS)" : info.blas_core, " (",
      info.blas_core_source, "), ATen ",
      info.aten_capability.empty() ? "(unknown)" : info.aten_capability, " (",
      info.aten_capability_source, "), OpenMP wait ", info.omp_wait, " (",
      info.omp_wait_source, ")");
}

}  // namespace attnscore::cpu
