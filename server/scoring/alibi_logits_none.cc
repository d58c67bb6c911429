// A build without the project's CUDA kernels (no CUDA, or
// ATTNSCORE_CUDA_KERNELS=off): the fused ALiBi logits kernel does not exist,
// and the batched path keeps the library's products (alibi_logits.h).
#include <c10/util/Exception.h>

#include "server/scoring/alibi_logits.h"

namespace attnscore::scoring {

bool AlibiLogitsKernelAvailable(const at::Device& /*device*/) { return false; }

void RunAlibiLogitsKernel(const AlibiLogitsOperands& /*ops*/) {
  TORCH_CHECK(false,
              "alibi logits kernel: not in this build "
              "(LibTorch " ATTNSCORE_TORCH_VERSION
              "; the kernels need CUDA and ATTNSCORE_CUDA_KERNELS auto)");
}

}  // namespace attnscore::scoring
