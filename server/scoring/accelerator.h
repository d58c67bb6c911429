// What the compute device is: name, compute capability and memory, for the
// start-up log, the device check's report and the resource check (a request
// must fit the device's free memory, not only --max-request-memory). The only
// CUDA-specific code of the project sits behind this header: exactly one of
// accelerator_cuda.cc (when the LibTorch has CUDA; see
// cmake/AttnscoreTorch.cmake) and accelerator_none.cc is compiled, so no caller
// needs an #ifdef.
//
// Thread safety: reentrant. Errors: FAILED_PRECONDITION when the build has no
// CUDA or the device is not there; INVALID_ARGUMENT for a non-CUDA device;
// the host-memory functions answer false instead.
#ifndef ATTNSCORE_SERVER_SCORING_ACCELERATOR_H_
#define ATTNSCORE_SERVER_SCORING_ACCELERATOR_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnscore::scoring {

struct AcceleratorInfo {
  std::string name;       // e.g. "NVIDIA H200"
  int compute_major = 0;  // 9 for Hopper
  int compute_minor = 0;
  int multiprocessors = 0;
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;  // at the time of the call
};

// What LibTorch's caching allocator has handed out on a CUDA device (the
// bytes its tensors hold, not what it keeps cached for reuse): now, and at
// most since the last ResetPeakDeviceBytes. The memory tests and the device
// check compare the peak with the resource estimate.
struct DeviceAllocated {
  int64_t current_bytes = 0;
  int64_t peak_bytes = 0;
};

// Whether this build can use CUDA at all (LibTorch built with it).
bool BuiltWithCuda();

// The CUDA device `index` (0 for "cuda").
absl::StatusOr<AcceleratorInfo> DescribeCudaDevice(int index);

// The allocator's figures for the CUDA device `index`, and a reset of its
// peak to the current figure.
absl::StatusOr<DeviceAllocated> DeviceAllocatedBytes(int index);
absl::Status ResetPeakDeviceBytes(int index);

// Page-locks `bytes` of host memory at `data` (whole pages) for the CUDA
// devices, so that copies from it to a device are DMA without a staging copy.
// False, with the memory unchanged and usable as before, when it cannot: no
// CUDA, or the driver refuses (out of lockable memory).
bool PinHostMemory(void* data, size_t bytes);
// Undoes PinHostMemory before the memory is unmapped; a no-op for memory it
// did not lock. No copy from it may be in flight.
void UnpinHostMemory(void* data);
// Whether the `bytes` at `data` lie in page-locked host memory (PinHostMemory,
// or a pinned allocation) that a CUDA device copies from directly.
bool IsPinnedHostMemory(const void* data, size_t bytes);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_ACCELERATOR_H_
