// The CUDA build (cmake/AttnscoreTorch.cmake compiles this file only when the
// LibTorch has CUDA): the device's properties and free memory from the CUDA
// runtime, under a guard that leaves the caller's current device alone.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "server/scoring/accelerator.h"

namespace attnscore::scoring {

bool BuiltWithCuda() { return true; }

namespace {

absl::Status CheckIndex(int index) {
  const int count = c10::cuda::device_count();
  if (index < 0 || index >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda:", index, ": expected a device index in [0, ", count,
                     "), the CUDA runtime sees ", count, " device(s)"));
  }
  return absl::OkStatus();
}

// StatType::AGGREGATE (all pools together), in c10::cuda::CUDACachingAllocator
// in LibTorch 1.13 and in c10::CachingDeviceAllocator in 2.x.
constexpr size_t kAggregate = 0;

}  // namespace

absl::StatusOr<AcceleratorInfo> DescribeCudaDevice(int index) {
  if (absl::Status status = CheckIndex(index); !status.ok()) return status;
  cudaDeviceProp props{};
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  try {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
    C10_CUDA_CHECK(cudaGetDeviceProperties(&props, index));
    C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  } catch (const c10::Error& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda:", index, ": ", e.what_without_backtrace()));
  }
  AcceleratorInfo info;
  info.name = props.name;
  info.compute_major = props.major;
  info.compute_minor = props.minor;
  info.multiprocessors = props.multiProcessorCount;
  info.total_bytes = static_cast<int64_t>(total_bytes);
  info.free_bytes = static_cast<int64_t>(free_bytes);
  return info;
}

absl::StatusOr<DeviceAllocated> DeviceAllocatedBytes(int index) {
  if (absl::Status status = CheckIndex(index); !status.ok()) return status;
  try {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
        static_cast<c10::DeviceIndex>(index));
    const auto& bytes = stats.allocated_bytes[kAggregate];
    return DeviceAllocated{bytes.current, bytes.peak};
  } catch (const c10::Error& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda:", index, ": ", e.what_without_backtrace()));
  }
}

absl::Status ResetPeakDeviceBytes(int index) {
  if (absl::Status status = CheckIndex(index); !status.ok()) return status;
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(
        static_cast<c10::DeviceIndex>(index));
  } catch (const c10::Error& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda:", index, ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

// The runtime's errors here are not sticky; each is cleared so that it cannot
// surface at a later, unrelated check.
bool PinHostMemory(void* data, size_t bytes) {
  if (c10::cuda::device_count() == 0) return false;
  if (cudaHostRegister(data, bytes, cudaHostRegisterDefault) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return true;
}

void UnpinHostMemory(void* data) {
  if (c10::cuda::device_count() == 0) return;
  // cudaErrorHostMemoryNotRegistered for a block mapped before the hooks.
  if (cudaHostUnregister(data) != cudaSuccess) (void)cudaGetLastError();
}

bool IsPinnedHostMemory(const void* data, size_t bytes) {
  if (c10::cuda::device_count() == 0 || bytes == 0) return false;
  const auto* first = static_cast<const char*>(data);
  for (const char* p : {first, first + bytes - 1}) {
    cudaPointerAttributes attributes{};
    if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (attributes.type != cudaMemoryTypeHost) return false;
  }
  return true;
}

}  // namespace attnscore::scoring
