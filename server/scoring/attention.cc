#include "server/scoring/attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace attnscore::scoring {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// d[i, j] = (Lk - Lq + i) - j: how far key j lies behind query i, in absolute
// positions. [Lq, Lk] float32 (exact: small integers).
at::Tensor Distances(int64_t query_len, int64_t key_len) {
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor query_pos =
      at::arange(key_len - query_len, key_len, opts).unsqueeze(1);  // [Lq,1]
  at::Tensor key_pos = at::arange(0, key_len, opts).unsqueeze(0);   // [1,Lk]
  return query_pos - key_pos;
}

std::string CacheKey(const AttentionConfig& config, int64_t heads,
                     int64_t query_len, int64_t key_len) {
  std::string key =
      absl::StrCat(config.bias == BiasKind::kAlibi ? "alibi" : "rel", "|",
                   heads, "|", query_len, "|", key_len, "|", config.causal);
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

at::Tensor StaticBias(const AttentionConfig& config, int64_t heads,
                      int64_t query_len, int64_t key_len) {
  at::Tensor distance = Distances(query_len, key_len);  // [Lq,Lk]
  at::Tensor bias;                                      // [H,Lq,Lk]
  if (config.bias == BiasKind::kAlibi) {
    at::Tensor slopes =
        at::tensor(config.alibi_slopes, at::kFloat).view({heads, 1, 1});
    bias = config.causal ? -slopes * distance : -slopes * distance.abs();
  } else {
    // S[r, h] with r = P - Lk + Lq + j - i = r0 + (Lk - 1 - d) where r0 = P -
    // Lk + 1 and d = Lk - Lq + i - j; gathered once per (model, Lq, Lk).
    const RelativeModel& model = *config.model;
    const int64_t r0 = model.info().max_relative_positions - key_len + 1;
    const int64_t span = query_len + key_len - 1;
    at::Tensor key_bias =
        model.key_pos_bias().narrow(0, r0, span).t().contiguous();  // [H,R]
    at::Tensor index =
        (key_len - 1 - distance).to(at::kLong).flatten();  // [Lq*Lk]
    bias = key_bias.index_select(1, index)
               .view({heads, query_len, key_len})
               .mul_(config.scale);
  }
  if (config.causal) {
    bias.masked_fill_((distance < 0).unsqueeze(0), kNegInf);
  }
  return bias.contiguous();
}

AttentionResult ComputeAttention(const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v,
                                 absl::Span<const int32_t> key_lengths,
                                 const AttentionConfig& config,
                                 StaticBiasCache* cache) {
  const int64_t batch = q.size(0);
  const int64_t heads = q.size(1);
  const int64_t query_len = q.size(2);
  const int64_t head_dim = q.size(3);
  const int64_t key_len = k.size(2);
  const bool relative = config.bias == BiasKind::kRelative;

  at::Tensor bias;  // [H,Lq,Lk]
  if (cache != nullptr) {
    bias = cache->GetOrCompute(
        CacheKey(config, heads, query_len, key_len),
        [&] { return StaticBias(config, heads, query_len, key_len); });
  } else {
    bias = StaticBias(config, heads, query_len, key_len);
  }

  // One task per (batch item, head): its [Lq, Lk] block is built, biased,
  // masked, normalised and multiplied by the values while it is hot in cache,
  // instead of one pass over the whole [B,H,Lq,Lk] tensor per step. Inside
  // at::parallel_for each GEMM runs single-threaded.
  AttentionResult result;
  const at::TensorOptions f32 = q.options().dtype(at::kFloat);
  at::Tensor logits = at::empty({batch, heads, query_len, key_len}, f32);
  at::Tensor probs;
  at::Tensor context;
  const bool want_probs = config.want_probs || config.want_context;
  if (want_probs) probs = at::empty({batch, heads, query_len, key_len}, f32);
  if (config.want_context)
    context = at::empty({batch, heads, query_len, v.size(3)}, f32);

  // Canonical contiguous [B*H, L, D] operands (copies only when the input
  // layout is not BHSD).
  at::Tensor content_query = q;  // [B,H,Lq,D]
  if (relative)
    content_query =
        q + config.model->query_pos_bias().view({1, heads, 1, head_dim});
  const at::Tensor q3 =
      content_query.reshape({batch * heads, query_len, head_dim});
  const at::Tensor k3 = k.reshape({batch * heads, key_len, head_dim});
  const at::Tensor raw_q3 =
      relative ? q.reshape({batch * heads, query_len, head_dim}) : q3;
  const at::Tensor v3 = config.want_context
                            ? v.reshape({batch * heads, key_len, v.size(3)})
                            : at::Tensor();
  at::Tensor logits3 = logits.view({batch * heads, query_len, key_len});
  at::Tensor probs3 = want_probs
                          ? probs.view({batch * heads, query_len, key_len})
                          : at::Tensor();
  at::Tensor context3 =
      config.want_context ? context.view({batch * heads, query_len, v.size(3)})
                          : at::Tensor();

  // Relative position term: q_i.E[r,h] for the Lq + Lk - 1 distances that
  // occur, per head.
  const int64_t span = query_len + key_len - 1;
  at::Tensor embeddings;  // [R,H,D]
  // With few query rows the per-block GEMM would stream E[:, h] once per batch
  // item; then one GEMM per head over all items ([H, B*Lq, R], small in this
  // regime) reads it once.
  at::Tensor bd_all;
  if (relative) {
    const int64_t r0 =
        config.model->info().max_relative_positions - key_len + 1;
    embeddings = config.model->key_pos_embeddings().narrow(0, r0, span);
    constexpr int64_t kSharedPositionTermBytes = int64_t{64} << 20;
    if (query_len <= 32 && batch > 1 &&
        heads * batch * query_len * span * 4 <= kSharedPositionTermBytes) {
      bd_all = at::bmm(
          q.permute({1, 0, 2, 3}).reshape({heads, batch * query_len, head_dim}),
          embeddings.permute({1, 2, 0}));  // [H, B*Lq, R]
    }
  }

  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    // [Lq, R] scratch, reused across this thread's blocks.
    at::Tensor bd = relative && !bd_all.defined()
                        ? at::empty({query_len, span}, f32)
                        : at::Tensor();
    for (int64_t index = begin; index < end; ++index) {
      const int64_t b = index / heads;
      const int64_t h = index % heads;
      at::Tensor block = logits3[index];  // [Lq,Lk]
      // Static bias (with -inf where causal masks), then masked keys to -inf:
      // the GEMM below adds finite values, which leaves -inf in place.
      block.copy_(bias[h]);
      if (!key_lengths.empty() && key_lengths[b] < key_len) {
        block.narrow(1, key_lengths[b], key_len - key_lengths[b])
            .fill_(kNegInf);
      }
      if (query_len == 1) {
        // Decode step: a GEMV streams the key block once in its natural
        // row-major order.
        block.view({key_len}).addmv_(k3[index], q3[index].view({head_dim}),
                                     /*beta=*/1,
                                     /*alpha=*/config.scale);
      } else {
        block.addmm_(q3[index], k3[index].t(), /*beta=*/1,
                     /*alpha=*/config.scale);
      }
      if (relative) {
        // bd[i, t] = q_i.E[r0 + t, h]; logits[i, j] += scale * bd[i, j - i + Lq
        // - 1], which is labml's shift_right as a strided view: row stride R -
        // 1, offset Lq - 1.
        at::Tensor rows;  // [Lq, R], contiguous rows
        if (bd_all.defined()) {
          rows = bd_all[h].narrow(0, b * query_len, query_len);
        } else if (query_len == 1) {
          at::Tensor bd_row = bd.view({span});
          at::mv_out(bd_row, embeddings.select(1, h),
                     raw_q3[index].view({head_dim}));
          rows = bd;
        } else {
          at::mm_out(bd, raw_q3[index], embeddings.select(1, h).t());
          rows = bd;
        }
        block.add_(rows.as_strided({query_len, key_len}, {span - 1, 1},
                                   rows.storage_offset() + query_len - 1),
                   config.scale);
      }
      if (!want_probs) continue;
      at::Tensor p = probs3[index];
      if (!key_lengths.empty() && key_lengths[b] == 0) {
        // No visible key: softmax would give NaN; the contract is zero
        // probabilities and context.
        p.zero_();
      } else {
        at::_softmax_out(p, block, -1, /*half_to_float=*/false);
      }
      if (config.want_context) {
        at::Tensor out = context3[index];
        at::mm_out(out, p, v3[index]);
      }
    }
  });

  result.logits = std::move(logits);
  if (config.want_probs) result.probs = std::move(probs);
  result.context = std::move(context);
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

at::Tensor StaticBiasCache::GetOrCompute(
    const std::string& key, const std::function<at::Tensor()>& compute) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
  }
  // Computed outside the lock: two threads may compute the same entry once;
  // both are correct.
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
