// What the compute device is: name, compute capability and memory, for the
// start-up log, the device check's report and the resource check (a request
// must fit the device's free memory, not only --max-request-memory). The only
// CUDA-specific code of the project sits behind this header: exactly one of
// accelerator_cuda.cc (when the LibTorch has CUDA; see
// cmake/AttnscoreTorch.cmake) and accelerator_none.cc is compiled, so no caller
// needs an #ifdef.
//
// Thread safety: reentrant. Errors: FAILED_PRECONDITION when the build has no
// CUDA or the device is not there; INVALID_ARGUMENT for a non-CUDA device.
#ifndef ATTNSCORE_SERVER_SCORING_ACCELERATOR_H_
#define ATTNSCORE_SERVER_SCORING_ACCELERATOR_H_

#include <cstdint>
#include <string>

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

// Whether this build can use CUDA at all (LibTorch built with it).
bool BuiltWithCuda();

// The CUDA device `index` (0 for "cuda").
absl::StatusOr<AcceleratorInfo> DescribeCudaDevice(int index);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_ACCELERATOR_H_
