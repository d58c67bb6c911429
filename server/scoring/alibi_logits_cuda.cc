// The CUDA build's launcher of the fused ALiBi logits kernel
// (alibi_logits_cuda.cu): arguments from the tensors, the current stream, the
// launch's error as a c10::Error.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "server/scoring/alibi_logits.h"

namespace attnscore::scoring {

// Defined in alibi_logits_cuda.cu.
cudaError_t LaunchAlibiLogits(const alibi_tile::AlibiLogitsArgs& args,
                              cudaStream_t stream);

bool AlibiLogitsKernelAvailable(const at::Device& device) {
  return device.is_cuda();
}

void RunAlibiLogitsKernel(const AlibiLogitsOperands& ops) {
  TORCH_CHECK(ops.query.is_cuda(), "alibi logits kernel: operands on ",
              ops.query.device(), ", expected a CUDA device");
  const alibi_tile::AlibiLogitsArgs args = MakeAlibiLogitsArgs(ops);
  const c10::cuda::CUDAGuard guard(ops.query.device());
  C10_CUDA_CHECK(
      LaunchAlibiLogits(args, c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace attnscore::scoring
