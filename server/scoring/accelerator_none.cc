// Builds without CUDA (Debian's LibTorch): there is no CUDA device to describe.
#include "absl/strings/str_cat.h"
#include "server/scoring/accelerator.h"

namespace attnscore::scoring {

bool BuiltWithCuda() { return false; }

namespace {

absl::Status NoCuda(int index) {
  return absl::FailedPreconditionError(absl::StrCat(
      "cuda:", index, ": this build has no CUDA (LibTorch ",
      ATTNSCORE_TORCH_VERSION,
      " without CUDA); configure with -DATTNSCORE_TORCH=python against a "
      "CUDA LibTorch"));
}

}  // namespace

absl::StatusOr<AcceleratorInfo> DescribeCudaDevice(int index) {
  return NoCuda(index);
}

absl::StatusOr<DeviceAllocated> DeviceAllocatedBytes(int index) {
  return NoCuda(index);
}

absl::Status ResetPeakDeviceBytes(int index) { return NoCuda(index); }

bool PinHostMemory(void* /*data*/, size_t /*bytes*/) { return false; }

void UnpinHostMemory(void* /*data*/) {}

bool IsPinnedHostMemory(const void* /*data*/, size_t /*bytes*/) {
  return false;
}

}  // namespace attnscore::scoring
