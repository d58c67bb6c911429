// LibTorch < 2.1 (Debian's 1.13): no public fused attention that takes a
// scale. The batched path then tiles over queries (batched_attention.cc).
#include <c10/util/Exception.h>

#include "server/scoring/fused_attention.h"

namespace attnscore::scoring {

bool FusedAttentionAvailable() { return false; }

const char* FusedAttentionDescription() {
  return "not available: LibTorch " ATTNSCORE_TORCH_VERSION
         " has no scaled_dot_product_attention with a scale (needs >= 2.1)";
}

at::Tensor FusedAttention(const at::Tensor& /*q*/, const at::Tensor& /*k*/,
                          const at::Tensor& /*v*/, const at::Tensor& /*mask*/,
                          double /*scale*/) {
  TORCH_CHECK(false, "FusedAttention: ", FusedAttentionDescription());
  return at::Tensor();  // not reached: TORCH_CHECK(false) throws
}

}  // namespace attnscore::scoring
