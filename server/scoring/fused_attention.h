// A fused attention, softmax(scale * q.k^T + mask) v without materialising
// the probabilities, from whichever LibTorch the build found: PyTorch's
// scaled_dot_product_attention where it exists (LibTorch >= 2.1, which takes
// a scale), else nothing. Exactly one definition is compiled
// (fused_attention_sdpa.cc or fused_attention_none.cc, chosen by
// cmake/AttnscoreTorch.cmake from the LibTorch version), so that no caller
// needs a version #if.
//
// Thread safety: reentrant. Errors: FusedAttention throws c10::Error when
// FusedAttentionAvailable() is false or LibTorch fails.
#ifndef ATTNSCORE_SERVER_SCORING_FUSED_ATTENTION_H_
#define ATTNSCORE_SERVER_SCORING_FUSED_ATTENTION_H_

#include <ATen/core/Tensor.h>

namespace attnscore::scoring {

// Whether FusedAttention can run in this build.
bool FusedAttentionAvailable();
// What FusedAttention is, for reports: "scaled_dot_product_attention
// (LibTorch 2.11.0)" or why there is none.
const char* FusedAttentionDescription();

// q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv] of one floating dtype; mask an
// additive float bias of that dtype broadcastable to [B,H,Lq,Lk] (-inf hides
// a key; every row must keep one visible key). Returns [B,H,Lq,Dv].
at::Tensor FusedAttention(const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& mask,
                          double scale);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_FUSED_ATTENTION_H_
