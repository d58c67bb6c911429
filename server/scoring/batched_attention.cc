#include "server/scoring/batched_attention.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_softmax.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <limits>
#include <list>
#include <utility>
#include <variant>
#include <vector>

#include "server/scoring/alibi_logits.h"
#include "server/scoring/batched_estimate.h"
#include "server/scoring/fused_attention.h"

namespace attnscore::scoring {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The sizes of one computation.
struct Sizes {
  int64_t batch = 0;
  int64_t heads = 0;
  int64_t query_len = 0;
  int64_t key_len = 0;
  int64_t head_dim = 0;
  int64_t value_dim = 0;  // 0 unless context is wanted
  int64_t stack() const { return batch * heads; }
  // R: the relative distances that occur.
  int64_t span() const { return query_len + key_len - 1; }
  ProblemSize problem() const {
    return ProblemSize{batch, heads, query_len, key_len, head_dim, value_dim};
  }
};

// Everything one tile needs, made once per call, on the inputs' device.
struct Operands {
  Sizes sizes;
  at::TensorOptions f32;           // float32 on the device
  at::Tensor query;                // [B,H,Lq,D], plus u_h for relative
  at::Tensor raw_query;            // [B,H,Lq,D], the query alone
  at::Tensor key;                  // [B,H,Lk,D]
  at::Tensor key_t;                // [B*H, D, Lk]
  at::Tensor value;                // [B*H, Lk, Dv] (when context is wanted)
  at::Tensor neg_slopes;           // [1,H,1,1]: -m_h (ALiBi)
  const AtenRelativeModel* model;  // null for ALiBi
  at::Tensor embeddings_t;         // [H, D, R]: E for the distances (relative)
  at::Tensor key_bias;             // [H, R]: S for the distances (relative)
  at::Tensor key_lengths;          // [B] int64, when a key is hidden
  at::Tensor key_hidden;           // [B,1,1,Lk] bool: beyond the key length
  at::Tensor dead_rows;            // [B,1,1,1] bool: key length 0
  // ALiBi logits by the fused kernel (alibi_logits.h): bias, product and
  // masks in one pass, the tiles that causal hides skipped.
  bool alibi_kernel = false;
  int64_t tile = 1;  // query rows per tile (BatchedQueryTile)
  // Whether some tile computes its logits with the library's products (and
  // so needs key_hidden): always, unless the kernel takes every tile.
  bool library_logits = true;
};

// A few host values onto `device`. Off the CPU they go through pinned memory
// and are copied asynchronously: a copy from pageable memory would make the
// host wait for the stream's earlier work, and every call would stall the
// launch queue.
at::Tensor ToDevice(const at::Tensor& host, const at::Device& device) {
  if (device.is_cpu()) return host;
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

// The value for `key` in `cache` (most recent first, at most `entries`),
// made by make() when absent. The caches below are thread_local: each batch
// worker keeps what its own stream made, read-only once made.
template <typename Key, typename Value, typename Make>
const Value& RecentOrMake(std::list<std::pair<Key, Value>>& cache,
                          size_t entries, const Key& key, Make make) {
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (it->first == key) {
      cache.splice(cache.begin(), cache, it);
      return cache.front().second;
    }
  }
  cache.emplace_front(key, make());
  if (cache.size() > entries) cache.pop_back();
  return cache.front().second;
}

// -m_h for every head, [H] float32 on `device`. Serving repeats the same
// slopes call after call, and making them costs a pinned allocation, a copy
// and a kernel, on the host's side more than the ALiBi kernel's whole run on
// a GPU: each thread keeps the last few.
constexpr size_t kSlopesCacheEntries = 8;

at::Tensor CachedNegSlopes(const std::vector<float>& slopes,
                           const at::Device& device) {
  using Key = std::pair<at::Device, std::vector<float>>;
  thread_local std::list<std::pair<Key, at::Tensor>> cache;
  return RecentOrMake(cache, kSlopesCacheEntries, Key(device, slopes), [&] {
    return ToDevice(at::tensor(slopes, at::kFloat).neg_(), device);
  });
}

// The key-length masks on the device; undefined when no key is hidden. Only
// the B lengths travel from the host; the [B,1,1,Lk] mask is made only for
// the library's products (the kernel reads the lengths).
void MakeLengthMasks(absl::Span<const int32_t> key_lengths, Operands& ops) {
  const Sizes& s = ops.sizes;
  const bool any_hidden =
      std::any_of(key_lengths.begin(), key_lengths.end(),
                  [&](int32_t len) { return len < s.key_len; });
  if (!any_hidden) return;
  ops.key_lengths = ToDevice(
      at::tensor(std::vector<int64_t>(key_lengths.begin(), key_lengths.end()),
                 at::kLong),
      ops.f32.device());
  const at::Tensor& lengths = ops.key_lengths;
  if (ops.library_logits) {
    at::Tensor keys = at::arange(s.key_len, ops.f32.dtype(at::kLong));
    ops.key_hidden =
        keys.view({1, 1, 1, s.key_len}) >= lengths.view({s.batch, 1, 1, 1});
  }
  if (std::find(key_lengths.begin(), key_lengths.end(), 0) !=
      key_lengths.end()) {
    ops.dead_rows = (lengths == 0).view({s.batch, 1, 1, 1});
  }
}

// `query_tile`: rows per tile, 0 for BatchedQueryTile's; `fused`: the context
// comes from the fused attention (no logits at all).
Operands MakeOperands(const at::Tensor& q, const at::Tensor& k,
                      const at::Tensor& v,
                      absl::Span<const int32_t> key_lengths,
                      const AttentionConfig& config, bool alibi_kernel,
                      int64_t query_tile, bool fused) {
  Operands ops;
  Sizes& s = ops.sizes;
  s = Sizes{q.size(0), q.size(1), q.size(2),
            k.size(2), q.size(3), config.want_context ? v.size(3) : 0};
  ops.f32 = q.options().dtype(at::kFloat);
  ops.model = RelativeModelOf(config);
  ops.raw_query = q;
  ops.query = q;
  ops.key = k;
  ops.key_t = k.reshape({s.stack(), s.key_len, s.head_dim}).transpose(1, 2);
  if (config.want_context) {
    ops.value = v.reshape({s.stack(), s.key_len, s.value_dim});
  }
  if (ops.model == nullptr) {
    const auto& slopes = std::get<ResolvedAlibi>(config.bias).slopes;
    ops.neg_slopes =
        CachedNegSlopes(slopes, ops.f32.device()).view({1, s.heads, 1, 1});
  } else {
    ops.query =
        q + ops.model->query_pos_bias().view({1, s.heads, 1, s.head_dim});
    const int64_t r0 = ops.model->info().max_relative_positions - s.key_len + 1;
    ops.embeddings_t = ops.model->key_pos_embeddings()
                           .narrow(0, r0, s.span())
                           .permute({1, 2, 0});  // [H, D, R]
    ops.key_bias = ops.model->key_pos_bias().narrow(0, r0, s.span()).t();
  }
  ops.tile = query_tile > 0 ? query_tile : BatchedQueryTile(s.problem(), fused);
  ops.alibi_kernel = alibi_kernel && ops.model == nullptr &&
                     AlibiLogitsKernelAvailable(ops.f32.device());
  ops.library_logits =
      !fused && !(ops.alibi_kernel &&
                  AlibiLogitsKernelPaysEveryTile(s.query_len, ops.tile));
  MakeLengthMasks(key_lengths, ops);
  if (ops.alibi_kernel) {
    // The kernel reads rows with a unit last stride (validated inputs have
    // one; anything else is copied once here, not per tile).
    for (at::Tensor* t : {&ops.query, &ops.key}) {
      if (t->stride(-1) != 1) *t = t->contiguous();
    }
  }
  return ops;
}

// d[i, j] = (Lk - Lq + row0 + i) - j for the tile's rows and the first
// `columns` keys, [T, columns] float32.
at::Tensor TileDistance(const Operands& ops, int64_t row0, int64_t rows,
                        int64_t columns) {
  const Sizes& s = ops.sizes;
  const int64_t first = s.key_len - s.query_len + row0;
  return at::arange(first, first + rows, ops.f32).unsqueeze(1) -
         at::arange(0, columns, ops.f32).unsqueeze(0);
}

// The relative bias of the tile, scale * S[r0 + Lk - 1 - d, h], with -inf
// where causal hides a key, [H, T, Lk].
at::Tensor RelativeTileBias(const Operands& ops, const AttentionConfig& config,
                            const at::Tensor& distance) {
  const Sizes& s = ops.sizes;
  at::Tensor index = (s.key_len - 1 - distance).to(at::kLong).flatten();
  at::Tensor bias = ops.key_bias.index_select(1, index)
                        .view({s.heads, distance.size(0), distance.size(1)})
                        .mul_(config.scale);
  if (config.causal) bias.masked_fill_((distance < 0).unsqueeze(0), kNegInf);
  return bias;
}

// The position terms of an ALiBi tile: `distance` [T, C], |d| when
// bidirectional, d with 0 where causal hides a key; `hidden` [T, C], -inf
// where causal hides a key, else 0 (undefined when bidirectional).
struct AlibiTerms {
  at::Tensor distance;
  at::Tensor hidden;
};

AlibiTerms MakeAlibiTerms(const Operands& ops, bool causal, int64_t row0,
                          int64_t rows, int64_t columns) {
  AlibiTerms terms;
  terms.distance = TileDistance(ops, row0, rows, columns);
  if (!causal) {
    terms.distance.abs_();
    return terms;
  }
  const at::Tensor hidden = terms.distance < 0;
  terms.hidden = at::zeros_like(terms.distance).masked_fill_(hidden, kNegInf);
  terms.distance.masked_fill_(hidden, 0.0);
  return terms;
}

// The terms depend only on the tile's geometry, which recurs from call to
// call in serving, and on a GPU making them takes more launches than the
// tile's own bias and product: each thread keeps the last few (at most
// kTermsCacheEntries of at most kTermsCacheBytes each, on its own stream's
// device, so at most 32 MiB per batch worker) and reuses them.
constexpr size_t kTermsCacheEntries = 8;
constexpr int64_t kTermsCacheBytes = int64_t{4} << 20;

struct TermsKey {
  at::Device device;
  bool causal;
  int64_t first;  // Lk - Lq + row0: d of the tile's first row and key
  int64_t rows;
  int64_t columns;
  bool operator==(const TermsKey& o) const {
    return device == o.device && causal == o.causal && first == o.first &&
           rows == o.rows && columns == o.columns;
  }
};

AlibiTerms CachedAlibiTerms(const Operands& ops, const AttentionConfig& config,
                            int64_t row0, int64_t rows, int64_t columns) {
  const Sizes& s = ops.sizes;
  if (rows * columns * 2 * int64_t{sizeof(float)} > kTermsCacheBytes) {
    return MakeAlibiTerms(ops, config.causal, row0, rows, columns);
  }
  thread_local std::list<std::pair<TermsKey, AlibiTerms>> cache;
  const TermsKey key{ops.f32.device(), config.causal,
                     s.key_len - s.query_len + row0, rows, columns};
  return RecentOrMake(cache, kTermsCacheEntries, key, [&] {
    return MakeAlibiTerms(ops, config.causal, row0, rows, columns);
  });
}

// Writes the static bias of query rows [row0, row0 + rows) and the first C
// keys into `out` ([N, H, T, C], N = B or 1, any floating dtype and strides):
// ALiBi -m_h * d (|d| when bidirectional), relative as above, -inf where causal
// hides a key. ALiBi is one pass over `out`: only the [T, Lk] distances and
// their causal -inf term are separate tensors (small, and read from cache by
// every head and item), and addcmul adds the -inf term to -m_h * d, which
// stays -inf even for a zero slope (where -m * inf would be NaN).
void WriteTileBias(const Operands& ops, const AttentionConfig& config,
                   int64_t row0, int64_t rows, at::Tensor out) {
  const int64_t columns = out.size(3);
  if (ops.model != nullptr) {
    out.copy_(
        RelativeTileBias(ops, config, TileDistance(ops, row0, rows, columns))
            .unsqueeze(0));
    return;
  }
  const AlibiTerms terms = CachedAlibiTerms(ops, config, row0, rows, columns);
  const std::vector<int64_t> shape = {out.size(0), 1, rows, columns};
  if (!config.causal) {
    at::mul_out(out, terms.distance.expand(shape), ops.neg_slopes);
    return;
  }
  at::addcmul_out(out, terms.hidden.expand(shape), terms.distance.expand(shape),
                  ops.neg_slopes);
}

// logits[b, h, i, j] += scale * q_i.E[r(i, j), h] for the tile's rows: one
// batched product over heads, [H, B*T, R], and labml's shift_right as a
// strided view of it (row stride R - 1).
void AddPositionTerm(const Operands& ops, const AttentionConfig& config,
                     int64_t row0, int64_t rows, at::Tensor& logits) {
  const Sizes& s = ops.sizes;
  const int64_t span = s.span();
  at::Tensor query_rows = ops.raw_query.narrow(2, row0, rows)
                              .permute({1, 0, 2, 3})
                              .reshape({s.heads, s.batch * rows, s.head_dim});
  at::Tensor bd = at::bmm(query_rows, ops.embeddings_t);  // [H, B*T, R]
  at::Tensor shifted =
      bd.as_strided({s.batch, s.heads, rows, s.key_len},
                    {rows * span, s.batch * rows * span, span - 1, 1},
                    bd.storage_offset() + s.query_len - 1 - row0);
  logits.add_(shifted, config.scale);
}

// The ALiBi logits of query rows [row0, row0 + rows) into `logits`
// [B,H,T,Lk] by the fused kernel (alibi_logits.h), masks included.
void KernelLogits(const Operands& ops, const AttentionConfig& config,
                  int64_t row0, int64_t rows, at::Tensor& logits) {
  const Sizes& s = ops.sizes;
  AlibiLogitsOperands kernel;
  kernel.query = ops.query.narrow(2, row0, rows);
  kernel.key = ops.key;
  kernel.neg_slopes = ops.neg_slopes.view({s.heads});
  kernel.key_lengths = ops.key_lengths;
  kernel.out = logits;
  kernel.first_position = s.key_len - s.query_len + row0;
  kernel.scale = config.scale;
  kernel.causal = config.causal;
  RunAlibiLogitsKernel(kernel);
}

// The logits of query rows [row0, row0 + rows) into `logits` [B,H,T,Lk]
// (contiguous, or the output's row slice: B and H merge into one batch
// dimension either way): bias, scale * q.k by baddbmm, position term, masks;
// or the ALiBi kernel where it runs and pays.
void FillLogits(const Operands& ops, const AttentionConfig& config,
                int64_t row0, int64_t rows, at::Tensor& logits) {
  const Sizes& s = ops.sizes;
  if (ops.alibi_kernel && AlibiLogitsKernelPays(rows)) {
    KernelLogits(ops, config, row0, rows, logits);
    return;
  }
  WriteTileBias(ops, config, row0, rows, logits);
  at::Tensor stack = logits.view({s.stack(), rows, s.key_len});
  at::Tensor query_rows =
      ops.query.narrow(2, row0, rows).reshape({s.stack(), rows, s.head_dim});
  // Finite products added to -inf leave -inf in place.
  stack.baddbmm_(query_rows, ops.key_t, /*beta=*/1, /*alpha=*/config.scale);
  if (ops.model != nullptr) AddPositionTerm(ops, config, row0, rows, logits);
  if (ops.key_hidden.defined()) logits.masked_fill_(ops.key_hidden, kNegInf);
}

// Softmax over the keys into `probs` (contiguous), then the context rows
// ([B,H,T,Dv], contiguous) when wanted.
void Normalize(const Operands& ops, const at::Tensor& logits, at::Tensor& probs,
               at::Tensor* context_rows) {
  const Sizes& s = ops.sizes;
  at::_softmax_out(probs, logits, -1, /*half_to_float=*/false);
  // No visible key: softmax gives NaN; the contract is zero probabilities
  // and context.
  if (ops.dead_rows.defined()) probs.masked_fill_(ops.dead_rows, 0.0);
  if (context_rows != nullptr) {
    const int64_t rows = probs.size(2);
    at::Tensor out = context_rows->view({s.stack(), rows, s.value_dim});
    at::bmm_out(out, probs.view({s.stack(), rows, s.key_len}), ops.value);
  }
}

// The context of query rows [row0, row0 + rows) by the fused attention, one
// call per run of items with the same key length (its keys narrowed to that
// length), so that no [B, H, T, Lk] mask exists. A causal tile also drops the
// keys that all of its rows hide (the kernel would spend as much on their -inf
// as on visible keys), which halves the work over a whole query; the width
// kept is a multiple of 8 so that the bias rows stay 16-byte aligned.
void FusedContextTile(const Operands& ops, const AttentionConfig& config,
                      absl::Span<const int32_t> key_lengths, int64_t row0,
                      int64_t rows, at::Tensor& context_rows) {
  const Sizes& s = ops.sizes;
  const int64_t visible =
      config.causal ? std::min(s.key_len, s.key_len - s.query_len + row0 + rows)
                    : s.key_len;
  const int64_t width = std::min(s.key_len, (visible + 7) / 8 * 8);
  // The mask in the operands' dtype, as the kernel requires, written in that
  // dtype in one pass.
  at::Tensor bias = at::empty({1, s.heads, rows, width}, ops.query.options());
  WriteTileBias(ops, config, row0, rows, bias);
  const at::Tensor value =
      ops.value.view({s.batch, s.heads, s.key_len, s.value_dim});
  const at::Tensor key =
      ops.key_t.transpose(1, 2).view({s.batch, s.heads, s.key_len, s.head_dim});
  const auto length_of = [&](int64_t b) {
    return key_lengths.empty() ? s.key_len : int64_t{key_lengths[b]};
  };
  for (int64_t begin = 0; begin < s.batch;) {
    const int64_t len = length_of(begin);
    int64_t end = begin + 1;
    while (end < s.batch && length_of(end) == len) ++end;
    at::Tensor out = context_rows.narrow(0, begin, end - begin);
    if (len == 0) {
      out.zero_();
    } else {
      const int64_t used = std::min(len, width);
      out.copy_(FusedAttention(
          ops.query.narrow(0, begin, end - begin).narrow(2, row0, rows),
          key.narrow(0, begin, end - begin).narrow(2, 0, used),
          value.narrow(0, begin, end - begin).narrow(2, 0, used),
          bias.narrow(3, 0, used), config.scale));
    }
    begin = end;
  }
}

// The outputs that were asked for, allocated once.
AttentionResult AllocateOutputs(const Sizes& s, const AttentionConfig& config,
                                const at::TensorOptions& f32) {
  AttentionResult out;
  if (config.want_logits) {
    out.logits = at::empty({s.batch, s.heads, s.query_len, s.key_len}, f32);
  }
  if (config.want_probs) {
    out.probs = at::empty({s.batch, s.heads, s.query_len, s.key_len}, f32);
  }
  if (config.want_context) {
    out.context = at::empty({s.batch, s.heads, s.query_len, s.value_dim}, f32);
  }
  return out;
}

// Where a tile computes: the output itself when the tile is all of it (so
// one-tile problems copy nothing), else contiguous scratch, which
// CopyTileRows then writes into the output's rows (ATen's softmax and the
// fused attention want contiguous operands).
at::Tensor TileTarget(const at::Tensor& output, int64_t row0, int64_t rows,
                      int64_t last_dim, const Sizes& s,
                      const at::TensorOptions& f32) {
  if (output.defined() && row0 == 0 && rows == s.query_len) return output;
  return at::empty({s.batch, s.heads, rows, last_dim}, f32);
}

// The logits of a tile go straight into the output's rows when there is an
// output: a [B, H, T, Lk] row slice is a batch of [T, Lk] matrices with
// leading dimension Lk that the bias writes and baddbmm accumulates in place,
// so no tile is copied.
at::Tensor LogitsTarget(const at::Tensor& output, int64_t row0, int64_t rows,
                        const Sizes& s, const at::TensorOptions& f32) {
  if (output.defined()) return output.narrow(2, row0, rows);
  return at::empty({s.batch, s.heads, rows, s.key_len}, f32);
}

void CopyTileRows(const at::Tensor& tile, int64_t row0, at::Tensor& output) {
  if (!output.defined() || tile.is_same(output)) return;
  output.narrow(2, row0, tile.size(2)).copy_(tile);
}

}  // namespace

AttentionResult BatchedAttention(const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v,
                                 absl::Span<const int32_t> key_lengths,
                                 const AttentionConfig& config,
                                 int64_t query_tile, bool alibi_kernel) {
  const bool fused = config.want_context && !config.want_logits &&
                     !config.want_probs && RelativeModelOf(config) == nullptr &&
                     FusedAttentionAvailable();
  // The fused kernel takes 16-bit operands as they are; the rest of the path
  // computes in float32.
  const auto operand = [&](const at::Tensor& t) {
    return fused || !t.defined() ? t : t.to(at::kFloat);
  };
  const Operands ops =
      MakeOperands(operand(q), operand(k), operand(v), key_lengths, config,
                   alibi_kernel, query_tile, fused);
  const Sizes& s = ops.sizes;
  AttentionResult result = AllocateOutputs(s, config, ops.f32);
  const int64_t tile = ops.tile;
  const bool need_probs = config.want_probs || config.want_context;
  for (int64_t row0 = 0; row0 < s.query_len; row0 += tile) {
    const int64_t rows = std::min(tile, s.query_len - row0);
    at::Tensor context_rows;
    if (config.want_context) {
      context_rows =
          TileTarget(result.context, row0, rows, s.value_dim, s, ops.f32);
    }
    if (fused) {
      FusedContextTile(ops, config, key_lengths, row0, rows, context_rows);
    } else {
      at::Tensor logits = LogitsTarget(result.logits, row0, rows, s, ops.f32);
      // Into the output's rows (or scratch when only probabilities are wanted).
      FillLogits(ops, config, row0, rows, logits);
      if (need_probs) {
        at::Tensor probs =
            TileTarget(result.probs, row0, rows, s.key_len, s, ops.f32);
        Normalize(ops, logits, probs,
                  config.want_context ? &context_rows : nullptr);
        CopyTileRows(probs, row0, result.probs);
      }
    }
    CopyTileRows(context_rows, row0, result.context);
  }
  return result;
}

}  // namespace attnscore::scoring
