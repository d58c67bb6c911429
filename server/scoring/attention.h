// The attention math on ATen: ALiBi-biased or Transformer-XL relative-position
// scores with causal and key-length masks, probabilities and context, in
// float32.
//
// Positions: query i sits at absolute position Lk - Lq + i (bottom-right
// alignment, as for KV-cache decode steps, chunked prefill and Transformer-XL
// memory). Masks: causal hides key j unless j <= Lk - Lq + i; key_lengths[b]
// hides keys j >= len. Masked logits are -inf and their probabilities 0; a row
// with no visible key (key length 0) has zero probabilities and zero context.
// ALiBi: logits = scale * q.k + bias, bias[h,i,j] = -m_h * (Lk - Lq + i - j)
// causal, or -m_h * |Lk - Lq + i - j| bidirectional; the bias is not scaled.
// Relative: logits = scale * ((q_i + u_h).k_j + q_i.E[r,h] + S[r,h]), r = P -
// Lk + Lq + j - i (labml's einsum + shift_right, exactly); scale multiplies the
// positional terms too.
//
// Thread safety: ComputeAttention is reentrant; StaticBiasCache is internally
// synchronised. Errors: REQUIRES validated inputs (validation.h ValidateItem);
// LibTorch failures throw c10::Error, which the caller catches at the compute
// boundary (Scorer).
#ifndef ATTNSCORE_SERVER_SCORING_ATTENTION_H_
#define ATTNSCORE_SERVER_SCORING_ATTENTION_H_

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "absl/types/span.h"
#include "common/layout.h"
#include "server/scoring/relative_model.h"

namespace attnscore::scoring {

// The batch-independent part of the logits, bias plus causal mask, shape [H,
// Lq, Lk], is the same for every request with the same bias parameters and
// lengths: compute it once. LRU by bytes; entries larger than a quarter of the
// budget are computed but not kept.
class StaticBiasCache {
 public:
  explicit StaticBiasCache(size_t budget_bytes) : budget_bytes_(budget_bytes) {}
  at::Tensor GetOrCompute(const std::string& key,
                          const std::function<at::Tensor()>& compute);
  size_t size_bytes() const;
  size_t entries() const;

 private:
  using Entry = std::pair<std::string, at::Tensor>;
  const size_t budget_bytes_;
  mutable std::mutex mu_;
  std::list<Entry> lru_;  // GUARDED_BY(mu_); front = most recent
  std::unordered_map<std::string, std::list<Entry>::iterator>
      index_;         // GUARDED_BY(mu_)
  size_t bytes_ = 0;  // GUARDED_BY(mu_)
};

// The bias of one computation, resolved from the request's Bias (score_spec.h):
// the same closed set of kinds, with everything the math needs filled in.
struct ResolvedAlibi {
  std::vector<float> slopes;  // [H], never empty
};
struct ResolvedRelative {
  // Not owned; on the device of the computation. REQUIRES: not null.
  const AtenRelativeModel* model = nullptr;
};
using ResolvedBias = std::variant<ResolvedAlibi, ResolvedRelative>;

struct AttentionConfig {
  ResolvedBias bias = ResolvedAlibi{};
  bool causal = false;
  double scale = 1.0;  // resolved
  // ComputeAttention always returns the logits; ComputeAttentionBlocked
  // (blocked_attention.h) computes them only when asked for.
  bool want_logits = true;
  bool want_probs = false;
  bool want_context = false;
  // ComputeAttentionBlocked writes the logits and probabilities in this type
  // (float32, float16 or bfloat16), converting each tile while it is in
  // cache; ComputeAttention and BatchedAttention return float32.
  at::ScalarType matrix_type = at::kFloat;
};

// The relative model of a config, or nullptr for ALiBi.
const AtenRelativeModel* RelativeModelOf(const AttentionConfig& config);

struct AttentionResult {
  // [B,H,Lq,Lk] contiguous, float32 (config.matrix_type from the blocked
  // path): the logits when computed, the probabilities when wanted.
  at::Tensor logits;
  at::Tensor probs;
  at::Tensor context;  // [B,H,Lq,Dv] float32, contiguous (when wanted)
};

// q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv] (undefined unless context is
// wanted), float32, any strides. key_lengths: empty or B values in [0, Lk].
// `cache` may be null.
AttentionResult ComputeAttention(const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v,
                                 absl::Span<const int32_t> key_lengths,
                                 const AttentionConfig& config,
                                 StaticBiasCache* cache);

// The static [H, Lq, Lk] part alone (bias, scaled for relative, with -inf where
// causal masks).
at::Tensor StaticBias(const AttentionConfig& config, int64_t heads,
                      int64_t query_len, int64_t key_len);

// Converts a tensor in `layout` to canonical [B,H,S,D] (a view) and back
// (contiguous).
at::Tensor ToCanonical(const at::Tensor& t, Layout layout);
at::Tensor FromCanonical(const at::Tensor& t, Layout layout);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_ATTENTION_H_
