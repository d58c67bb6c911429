#include "server/scoring/attention.h"

#include <ATen/ATen.h>

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace attnscore::scoring {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// d[i, j] = (Lk - Lq + i) - j: how far key j lies behind query i, in absolute positions.
// [Lq, Lk] float32 (exact: small integers).
at::Tensor Distances(int64_t query_len, int64_t key_len) {
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor query_pos = at::arange(key_len - query_len, key_len, opts).unsqueeze(1);  // [Lq,1]
  at::Tensor key_pos = at::arange(0, key_len, opts).unsqueeze(0);                      // [1,Lk]
  return query_pos - key_pos;
}

std::string CacheKey(const AttentionConfig& config, int64_t heads, int64_t query_len,
                     int64_t key_len) {
  std::string key = absl::StrCat(config.bias == BiasKind::kAlibi ? "alibi" : "rel", "|", heads,
                                 "|", query_len, "|", key_len, "|", config.causal);
  if (config.bias == BiasKind::kAlibi) {
    // Slopes by their exact bits: equal keys mean bit-identical biases.
    key.append(reinterpret_cast<const char*>(config.alibi_slopes.data()),
               config.alibi_slopes.size() * sizeof(float));
  } else {
    double scale = config.scale;
    absl::StrAppend(&key, "|", config.model->id(), "|");
    key.append(reinterpret_cast<const char*>(&scale), sizeof(scale));
  }
  return key;
}

}  // namespace

at::Tensor StaticBias(const AttentionConfig& config, int64_t heads, int64_t query_len,
                      int64_t key_len) {
  at::Tensor distance = Distances(query_len, key_len);  // [Lq,Lk]
  at::Tensor bias;                                      // [H,Lq,Lk]
  if (config.bias == BiasKind::kAlibi) {
    at::Tensor slopes = at::tensor(config.alibi_slopes, at::kFloat).view({heads, 1, 1});
    bias = config.causal ? -slopes * distance : -slopes * distance.abs();
  } else {
    // S[r, h] with r = P - Lk + Lq + j - i = r0 + (Lk - 1 - d) where r0 = P - Lk + 1 and
    // d = Lk - Lq + i - j; gathered once per (model, Lq, Lk).
    const RelativeModel& model = *config.model;
    const int64_t r0 = model.info().max_relative_positions - key_len + 1;
    const int64_t span = query_len + key_len - 1;
    at::Tensor key_bias = model.key_pos_bias().narrow(0, r0, span).t().contiguous();  // [H,R]
    at::Tensor index = (key_len - 1 - distance).to(at::kLong).flatten();              // [Lq*Lk]
    bias = key_bias.index_select(1, index).view({heads, query_len, key_len})
               .mul_(config.scale);
  }
  if (config.causal) {
    bias.masked_fill_((distance < 0).unsqueeze(0), kNegInf);
  }
  return bias.contiguous();
}

AttentionResult ComputeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 absl::Span<const int32_t> key_lengths,
                                 const AttentionConfig& config, StaticBiasCache* cache) {
  const int64_t batch = q.size(0);
  const int64_t heads = q.size(1);
  const int64_t query_len = q.size(2);
  const int64_t head_dim = q.size(3);
  const int64_t key_len = k.size(2);
  const bool relative = config.bias == BiasKind::kRelative;

  at::Tensor bias;  // [H,Lq,Lk]
  if (cache != nullptr) {
    bias = cache->GetOrCompute(CacheKey(config, heads, query_len, key_len),
                               [&] { return StaticBias(config, heads, query_len, key_len); });
  } else {
    bias = StaticBias(config, heads, query_len, key_len);
  }

  // Logits start as the broadcast static bias; masked keys become -inf before the GEMM adds
  // finite values to them, so masking costs a fill of the masked columns only.
  AttentionResult result;
  at::Tensor logits = at::empty({batch, heads, query_len, key_len}, q.options());
  logits.copy_(bias.unsqueeze(0).expand({batch, heads, query_len, key_len}));
  for (size_t b = 0; b < key_lengths.size(); ++b) {
    const int64_t len = key_lengths[b];
    if (len < key_len) logits.select(0, b).narrow(-1, len, key_len - len).fill_(kNegInf);
  }

  // Content term, accumulated into the logits in place: one batched GEMM, scale as alpha.
  at::Tensor content_query = q;  // [B,H,Lq,D]
  if (relative) content_query = q + config.model->query_pos_bias().view({1, heads, 1, head_dim});
  at::Tensor logits3 = logits.view({batch * heads, query_len, key_len});
  logits3.baddbmm_(content_query.reshape({batch * heads, query_len, head_dim}),
                   k.reshape({batch * heads, key_len, head_dim}).transpose(1, 2),
                   /*beta=*/1, /*alpha=*/config.scale);

  if (relative) {
    // Position term q_i.E[r,h] for the Lq + Lk - 1 relative distances that occur, as one GEMM per
    // head over all batch items: bd[h, b*Lq + i, t] with t = j - i + Lq - 1. The skew
    // (labml's shift_right) is then a strided view: (b,h,i,j) -> bd[h, b*Lq+i, j-i+Lq-1].
    const int64_t span = query_len + key_len - 1;
    const int64_t r0 = config.model->info().max_relative_positions - key_len + 1;
    at::Tensor embeddings = config.model->key_pos_embeddings().narrow(0, r0, span);  // [R,H,D]
    at::Tensor query_by_head =
        q.permute({1, 0, 2, 3}).reshape({heads, batch * query_len, head_dim});  // [H,B*Lq,D]
    at::Tensor bd = at::bmm(query_by_head, embeddings.permute({1, 2, 0}));     // [H,B*Lq,R]
    at::Tensor skewed = bd.as_strided({batch, heads, query_len, key_len},
                                      {query_len * span, batch * query_len * span, span - 1, 1},
                                      bd.storage_offset() + query_len - 1);
    logits.add_(skewed, config.scale);
  }

  if (config.want_probs || config.want_context) {
    at::Tensor probs = at::softmax(logits, -1);
    // Rows with no visible key are all -inf, which softmax turns into NaN: they are exactly the
    // items with key length 0 (causal always leaves key 0 visible, as Lq <= Lk).
    for (size_t b = 0; b < key_lengths.size(); ++b) {
      if (key_lengths[b] == 0) probs.select(0, b).zero_();
    }
    if (config.want_context) result.context = at::matmul(probs, v);  // [B,H,Lq,Dv]
    result.probs = std::move(probs);
  }
  result.logits = std::move(logits);
  return result;
}

at::Tensor ToCanonical(const at::Tensor& t, Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return t;
    case Layout::kBSHD:
      return t.permute({0, 2, 1, 3});
    case Layout::kSBHD:
      return t.permute({1, 2, 0, 3});
  }
  return t;
}

at::Tensor FromCanonical(const at::Tensor& t, Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return t.contiguous();
    case Layout::kBSHD:
      return t.permute({0, 2, 1, 3}).contiguous();
    case Layout::kSBHD:
      return t.permute({2, 0, 1, 3}).contiguous();
  }
  return t.contiguous();
}

at::Tensor StaticBiasCache::GetOrCompute(const std::string& key,
                                         const std::function<at::Tensor()>& compute) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
  }
  // Computed outside the lock: two threads may compute the same entry once; both are correct.
  at::Tensor value = compute();
  const size_t bytes = value.nbytes();
  if (bytes > budget_bytes_ / 4) return value;
  std::lock_guard<std::mutex> lock(mu_);
  if (index_.count(key) == 0) {
    lru_.emplace_front(key, value);
    index_[key] = lru_.begin();
    bytes_ += bytes;
    while (bytes_ > budget_bytes_ && !lru_.empty()) {
      bytes_ -= lru_.back().second.nbytes();
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }
  return value;
}

size_t StaticBiasCache::size_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

size_t StaticBiasCache::entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

}  // namespace attnscore::scoring
