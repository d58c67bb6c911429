// The CPU `blocked` attention path: the semantics of attention.h (positions,
// masks, ALiBi and relative bias, the no-visible-key contract) computed per
// (batch item, head) in tiles of query rows, so that nothing of size [Lq, Lk]
// exists beyond what was asked for:
//  - logits and probabilities are written straight into their outputs, tile
//    by tile; the bias of a tile comes from the slopes or the relative
//    parameters, never from a materialised [H, Lq, Lk] table;
//  - causal and key-length masked columns are -inf without being computed;
//  - a request for the context alone runs FlashAttention's online softmax
//    (running max and sum over key tiles) and holds one [Tq, Tk] tile per
//    thread.
// Scratch per thread and tile sizes are those of blocked_tiling.h, which the
// resource estimate (resource_estimate.h) counts.
//
// Thread safety: reentrant; runs on ATen's intra-op threads. `stop` is called
// from those threads between tiles. Errors: REQUIRES validated inputs (see
// ComputeAttention); LibTorch failures throw c10::Error.
#ifndef ATTNSCORE_SERVER_SCORING_BLOCKED_ATTENTION_H_
#define ATTNSCORE_SERVER_SCORING_BLOCKED_ATTENTION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

#include "absl/types/span.h"
#include "server/scoring/attention.h"

namespace attnscore::scoring {

// q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv] (undefined unless context is
// wanted): on the CPU, any strides; q float32, k and v float32, float16 or
// bfloat16 (converted per tile, in cache: a 16-bit key stream crosses memory
// at half float32's bytes). key_lengths: empty or B values in
// [0, Lk]. Fills `result` with the outputs `config` asks for (logits only when
// config.want_logits): logits and probs in config.matrix_type, context
// float32, each contiguous. A logits or probs tensor that `result` holds on
// entry, contiguous with the output's shape and type, is written in place (a
// caller's memory); the others are allocated from the host pool. Returns
// false, with `result` partial (to be dropped), when `stop` (may be empty)
// returned true.
bool ComputeAttentionBlocked(const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v,
                             absl::Span<const int32_t> key_lengths,
                             const AttentionConfig& config,
                             const std::function<bool()>& stop,
                             AttentionResult* result);

// Told, from the compute threads (possibly at once, values possibly out of
// order), that rows [0, rows) of [B*H*Lq] are final in every output.
using RowsDoneFn = std::function<void(int64_t rows)>;

// The same, telling `rows_done` (may be empty) as leading rows become final,
// and at the end all B*H*Lq of them unless stopped.
bool ComputeAttentionBlocked(const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v,
                             absl::Span<const int32_t> key_lengths,
                             const AttentionConfig& config,
                             const std::function<bool()>& stop,
                             const RowsDoneFn& rows_done,
                             AttentionResult* result);

// Allocates into `result` the outputs `config` asks for that it does not hold
// yet, as ComputeAttentionBlocked would: for a caller that needs the buffers
// before the compute starts (to send rows as they become final).
void AllocateBlockedOutputs(const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const AttentionConfig& config,
                            AttentionResult* result);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_BLOCKED_ATTENTION_H_
