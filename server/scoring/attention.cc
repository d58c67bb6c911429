#include "server/scoring/attention.h"

#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_softmax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/tensor.h>

#include <cstring>
#include <limits>
#include <string>
#include <variant>

#include "absl/strings/str_cat.h"
#include "common/overloaded.h"

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
  const auto shape = [&](const char* tag) {
    return absl::StrCat(tag, "|", heads, "|", query_len, "|", key_len, "|",
                        config.causal);
  };
  return std::visit(
      Overloaded{
          [&](const ResolvedAlibi& alibi) {
            // Slopes by their exact bits: equal keys mean bit-identical
            // biases.
            std::string key = shape("alibi");
            key.append(reinterpret_cast<const char*>(alibi.slopes.data()),
                       alibi.slopes.size() * sizeof(float));
            return key;
          },
          [&](const ResolvedRelative& relative) {
            // The relative bias is scaled, so the scale is part of it.
            const double scale = config.scale;
            std::string key = shape("rel");
            absl::StrAppend(&key, "|", relative.model->id(), "|");
            key.append(reinterpret_cast<const char*>(&scale), sizeof(scale));
            return key;
          },
      },
      config.bias);
}

// bias[h, i, j] = -m_h * d[i, j] causal, -m_h * |d[i, j]| bidirectional.
at::Tensor AlibiTerm(const ResolvedAlibi& alibi, bool causal, int64_t heads,
                     const at::Tensor& distance) {
  at::Tensor slopes = at::tensor(alibi.slopes, at::kFloat).view({heads, 1, 1});
  return causal ? -slopes * distance : -slopes * distance.abs();
}

// scale * S[r, h] with r = P - Lk + Lq + j - i = r0 + (Lk - 1 - d) where r0 =
// P - Lk + 1 and d = Lk - Lq + i - j; gathered once per (model, Lq, Lk).
at::Tensor RelativeTerm(const AtenRelativeModel& model, double scale,
                        int64_t heads, const at::Tensor& distance) {
  const int64_t query_len = distance.size(0);
  const int64_t key_len = distance.size(1);
  const int64_t r0 = model.info().max_relative_positions - key_len + 1;
  const int64_t span = query_len + key_len - 1;
  at::Tensor key_bias =
      model.key_pos_bias().narrow(0, r0, span).t().contiguous();  // [H,R]
  at::Tensor index =
      (key_len - 1 - distance).to(at::kLong).flatten();  // [Lq*Lk]
  return key_bias.index_select(1, index)
      .view({heads, query_len, key_len})
      .mul_(scale);
}

// The sizes of one computation.
struct Sizes {
  int64_t batch = 0;
  int64_t heads = 0;
  int64_t query_len = 0;
  int64_t key_len = 0;
  int64_t head_dim = 0;
  int64_t value_dim = 0;  // 0 unless context is wanted
  // R: the relative distances that occur.
  int64_t span() const { return query_len + key_len - 1; }
};

Sizes SizesOf(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              const AttentionConfig& config) {
  return Sizes{q.size(0), q.size(1), q.size(2),
               k.size(2), q.size(3), config.want_context ? v.size(3) : 0};
}

// The static bias [H, Lq, Lk], from the cache when there is one.
at::Tensor StaticBiasOf(const AttentionConfig& config, const Sizes& sizes,
                        StaticBiasCache* cache) {
  const auto compute = [&] {
    return StaticBias(config, sizes.heads, sizes.query_len, sizes.key_len);
  };
  if (cache == nullptr) return compute();
  return cache->GetOrCompute(
      CacheKey(config, sizes.heads, sizes.query_len, sizes.key_len), compute);
}

// The outputs, allocated once: logits always; probabilities when wanted or
// needed for the context.
AttentionResult AllocateOutputs(const Sizes& sizes,
                                const AttentionConfig& config,
                                const at::TensorOptions& f32) {
  AttentionResult out;
  out.logits = at::empty(
      {sizes.batch, sizes.heads, sizes.query_len, sizes.key_len}, f32);
  if (config.want_probs || config.want_context) {
    out.probs = at::empty(
        {sizes.batch, sizes.heads, sizes.query_len, sizes.key_len}, f32);
  }
  if (config.want_context) {
    out.context = at::empty(
        {sizes.batch, sizes.heads, sizes.query_len, sizes.value_dim}, f32);
  }
  return out;
}

// Operands and outputs as [B*H, L, D] stacks of per-(batch item, head)
// blocks (copies only when the input layout is not BHSD).
struct Blocks {
  at::Tensor query;      // [B*H, Lq, D], plus u_h for relative
  at::Tensor raw_query;  // [B*H, Lq, D], the query alone
  at::Tensor key;        // [B*H, Lk, D]
  at::Tensor value;      // [B*H, Lk, Dv] (when context is wanted)
  at::Tensor logits;     // [B*H, Lq, Lk]
  at::Tensor probs;      // [B*H, Lq, Lk] (when probs or context are wanted)
  at::Tensor context;    // [B*H, Lq, Dv] (when context is wanted)
};

Blocks MakeBlocks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const AtenRelativeModel* model, const Sizes& sizes,
                  const AttentionResult& outputs) {
  const int64_t stack = sizes.batch * sizes.heads;
  Blocks blocks;
  at::Tensor content_query = q;  // [B,H,Lq,D]
  if (model != nullptr) {
    content_query =
        q + model->query_pos_bias().view({1, sizes.heads, 1, sizes.head_dim});
  }
  blocks.query =
      content_query.reshape({stack, sizes.query_len, sizes.head_dim});
  blocks.raw_query = model != nullptr
                         ? q.reshape({stack, sizes.query_len, sizes.head_dim})
                         : blocks.query;
  blocks.key = k.reshape({stack, sizes.key_len, sizes.head_dim});
  blocks.logits = outputs.logits.view({stack, sizes.query_len, sizes.key_len});
  if (outputs.probs.defined()) {
    blocks.probs = outputs.probs.view({stack, sizes.query_len, sizes.key_len});
  }
  if (outputs.context.defined()) {
    blocks.value = v.reshape({stack, sizes.key_len, sizes.value_dim});
    blocks.context =
        outputs.context.view({stack, sizes.query_len, sizes.value_dim});
  }
  return blocks;
}

// The relative position term's inputs: q_i.E[r,h] for the Lq + Lk - 1
// distances that occur, per head.
struct PositionTerm {
  at::Tensor embeddings;  // [R,H,D]; undefined for ALiBi
  // [H, B*Lq, R] when computed for all items at once. With few query rows the
  // per-block GEMM would stream E[:, h] once per batch item; then one GEMM per
  // head over all items (small in this regime) reads it once.
  at::Tensor shared;
};

PositionTerm MakePositionTerm(const at::Tensor& q,
                              const AtenRelativeModel* model,
                              const Sizes& sizes) {
  PositionTerm term;
  if (model == nullptr) return term;
  const int64_t r0 = model->info().max_relative_positions - sizes.key_len + 1;
  term.embeddings = model->key_pos_embeddings().narrow(0, r0, sizes.span());
  constexpr int64_t kSharedPositionTermBytes = int64_t{64} << 20;
  if (sizes.query_len <= 32 && sizes.batch > 1 &&
      sizes.heads * sizes.batch * sizes.query_len * sizes.span() * 4 <=
          kSharedPositionTermBytes) {
    term.shared =
        at::bmm(q.permute({1, 0, 2, 3})
                    .reshape({sizes.heads, sizes.batch * sizes.query_len,
                              sizes.head_dim}),
                term.embeddings.permute({1, 2, 0}));  // [H, B*Lq, R]
  }
  return term;
}

// One task per (batch item, head): its [Lq, Lk] block is built, biased,
// masked, normalised and multiplied by the values while it is hot in cache,
// instead of one pass over the whole [B,H,Lq,Lk] tensor per step. Inside
// at::parallel_for each GEMM runs single-threaded.
class BlockPass {
 public:
  BlockPass(const Sizes& sizes, const AttentionConfig& config,
            const at::Tensor& bias, absl::Span<const int32_t> key_lengths,
            const Blocks& blocks, const PositionTerm& position)
      : sizes_(sizes),
        config_(config),
        bias_(bias),
        key_lengths_(key_lengths),
        blocks_(blocks),
        position_(position) {}

  // Blocks [begin, end) of the [B*H] stack, on one thread.
  void Run(int64_t begin, int64_t end) const {
    // [Lq, R] scratch, reused across this thread's blocks.
    at::Tensor scratch =
        position_.embeddings.defined() && !position_.shared.defined()
            ? at::empty({sizes_.query_len, sizes_.span()},
                        blocks_.logits.options())
            : at::Tensor();
    for (int64_t index = begin; index < end; ++index) {
      const int64_t b = index / sizes_.heads;
      const int64_t h = index % sizes_.heads;
      at::Tensor block = blocks_.logits[index];  // [Lq,Lk]
      AddContent(index, b, h, block);
      if (position_.embeddings.defined()) {
        AddPosition(index, b, h, scratch, block);
      }
      if (blocks_.probs.defined()) Normalize(index, b, block);
    }
  }

 private:
  // Static bias (with -inf where causal masks), then masked keys to -inf,
  // then scale * q.k: the GEMM adds finite values, which leaves -inf in place.
  void AddContent(int64_t index, int64_t b, int64_t h,
                  at::Tensor& block) const {
    block.copy_(bias_[h]);
    if (!key_lengths_.empty() && key_lengths_[b] < sizes_.key_len) {
      block.narrow(1, key_lengths_[b], sizes_.key_len - key_lengths_[b])
          .fill_(kNegInf);
    }
    if (sizes_.query_len == 1) {
      // Decode step: a GEMV streams the key block once in its natural
      // row-major order.
      block.view({sizes_.key_len})
          .addmv_(blocks_.key[index],
                  blocks_.query[index].view({sizes_.head_dim}),
                  /*beta=*/1, /*alpha=*/config_.scale);
    } else {
      block.addmm_(blocks_.query[index], blocks_.key[index].t(), /*beta=*/1,
                   /*alpha=*/config_.scale);
    }
  }

  // bd[i, t] = q_i.E[r0 + t, h]; logits[i, j] += scale * bd[i, j - i + Lq -
  // 1], which is labml's shift_right as a strided view: row stride R - 1,
  // offset Lq - 1.
  void AddPosition(int64_t index, int64_t b, int64_t h, at::Tensor& scratch,
                   at::Tensor& block) const {
    const int64_t span = sizes_.span();
    at::Tensor rows;  // [Lq, R], contiguous rows
    if (position_.shared.defined()) {
      rows =
          position_.shared[h].narrow(0, b * sizes_.query_len, sizes_.query_len);
    } else if (sizes_.query_len == 1) {
      at::Tensor bd_row = scratch.view({span});
      at::mv_out(bd_row, position_.embeddings.select(1, h),
                 blocks_.raw_query[index].view({sizes_.head_dim}));
      rows = scratch;
    } else {
      at::mm_out(scratch, blocks_.raw_query[index],
                 position_.embeddings.select(1, h).t());
      rows = scratch;
    }
    block.add_(
        rows.as_strided({sizes_.query_len, sizes_.key_len}, {span - 1, 1},
                        rows.storage_offset() + sizes_.query_len - 1),
        config_.scale);
  }

  // Softmax over the keys, then the context when wanted.
  void Normalize(int64_t index, int64_t b, const at::Tensor& block) const {
    at::Tensor p = blocks_.probs[index];
    if (!key_lengths_.empty() && key_lengths_[b] == 0) {
      // No visible key: softmax would give NaN; the contract is zero
      // probabilities and context.
      p.zero_();
    } else {
      at::_softmax_out(p, block, -1, /*half_to_float=*/false);
    }
    if (blocks_.context.defined()) {
      at::Tensor out = blocks_.context[index];
      at::mm_out(out, p, blocks_.value[index]);
    }
  }

  const Sizes& sizes_;
  const AttentionConfig& config_;
  const at::Tensor& bias_;  // [H,Lq,Lk]
  const absl::Span<const int32_t> key_lengths_;
  const Blocks& blocks_;
  const PositionTerm& position_;
};

}  // namespace

const AtenRelativeModel* RelativeModelOf(const AttentionConfig& config) {
  return std::visit(
      Overloaded{
          [](const ResolvedAlibi&) -> const AtenRelativeModel* {
            return nullptr;
          },
          [](const ResolvedRelative& relative) { return relative.model; },
      },
      config.bias);
}

at::Tensor StaticBias(const AttentionConfig& config, int64_t heads,
                      int64_t query_len, int64_t key_len) {
  at::Tensor distance = Distances(query_len, key_len);  // [Lq,Lk]
  at::Tensor bias = std::visit(                         // [H,Lq,Lk]
      Overloaded{
          [&](const ResolvedAlibi& alibi) {
            return AlibiTerm(alibi, config.causal, heads, distance);
          },
          [&](const ResolvedRelative& relative) {
            return RelativeTerm(*relative.model, config.scale, heads, distance);
          },
      },
      config.bias);
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
  const Sizes sizes = SizesOf(q, k, v, config);
  const AtenRelativeModel* model = RelativeModelOf(config);
  const at::Tensor bias = StaticBiasOf(config, sizes, cache);  // [H,Lq,Lk]
  AttentionResult result =
      AllocateOutputs(sizes, config, q.options().dtype(at::kFloat));
  const Blocks blocks = MakeBlocks(q, k, v, model, sizes, result);
  const PositionTerm position = MakePositionTerm(q, model, sizes);
  const BlockPass pass(sizes, config, bias, key_lengths, blocks, position);
  at::parallel_for(0, sizes.batch * sizes.heads, 1,
                   [&](int64_t begin, int64_t end) { pass.Run(begin, end); });
  // Probabilities computed only for the context are not returned.
  if (!config.want_probs) result.probs = at::Tensor();
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
