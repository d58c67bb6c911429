// The `batched` attention path, for accelerators: the semantics of
// attention.h (positions, masks, ALiBi and relative bias, the no-visible-key
// contract) computed for the whole [B*H] stack at once with batched products,
// so that a step launches a handful of kernels instead of B*H small ones:
//  - ALiBi logits on a CUDA device by a fused kernel (alibi_logits.h): scale,
//    product, bias and masks in one pass that skips the tiles causal hides
//    (for query tiles of 32 rows and more; decode steps keep the library's);
//  - otherwise logits = baddbmm(bias, q, k^T) with the bias (ALiBi from the
//  slopes,
//    relative from the parameter set) built on the tensors' device from
//    positions made there (arange), never copied from the host;
//  - the relative position term q_i.E[r] as one batched product per tile and
//    labml's shift_right as a strided view of it;
//  - causal and key-length masks as -inf (masked_fill_), softmax, and the
//    context by bmm;
//  - a request for the context alone runs a fused attention
//    (fused_attention.h: scaled_dot_product_attention where the LibTorch has
//    it) for ALiBi, else query tiles, without materialising [B, H, Lq, Lk].
// Work proceeds in tiles of query rows (BatchedQueryTile, batched_estimate.h)
// so that scratch stays bounded; EstimateBatchedResources counts it.
// Batch invariance: an item's ALiBi results have the same bits whatever it is
// batched with (on the CPU; tested); its relative position term is part of a
// product over all B * T query rows of the batch, whose rounding the BLAS may
// choose by that size, so relative results are within float32 rounding of the
// item's alone (relative 1e-5, tested), not bit-identical. (The CPU's default
// `blocked` path is bit-identical for both.)
//
// Thread safety: reentrant; runs on the calling thread's current stream.
// Errors: REQUIRES validated inputs (validation.h ValidateItem) on one
// device; LibTorch failures throw c10::Error, caught at the compute boundary
// (Scorer).
#ifndef ATTNSCORE_SERVER_SCORING_BATCHED_ATTENTION_H_
#define ATTNSCORE_SERVER_SCORING_BATCHED_ATTENTION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/types/span.h"
#include "server/scoring/attention.h"

namespace attnscore::scoring {

// q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv] (undefined unless context is
// wanted): float32 (16-bit inputs are computed in float32, except by the
// fused attention, which takes them as they are) on any one device, any
// strides; a relative config's model
// on that device too. key_lengths: empty or B values in [0, Lk] (host
// memory; B integers are copied to the device). Returns the outputs `config`
// asks for (logits only when config.want_logits, unlike ComputeAttention),
// each contiguous float32 on the inputs' device. `query_tile` > 0 overrides
// BatchedQueryTile (tests use it to exercise several tiles on small shapes).
// `alibi_kernel`: ALiBi logits by the fused kernel where it runs
// (alibi_logits.h: a CUDA device); false keeps the library's products (the
// benchmark compares the two).
AttentionResult BatchedAttention(const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v,
                                 absl::Span<const int32_t> key_lengths,
                                 const AttentionConfig& config,
                                 int64_t query_tile = 0,
                                 bool alibi_kernel = true);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_BATCHED_ATTENTION_H_
