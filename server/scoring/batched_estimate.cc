#include "server/scoring/batched_estimate.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <variant>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"

namespace attnscore::scoring {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kF32 = 4;

// a * b, saturating at INT64_MAX (operands are non-negative).
int64_t Mul(int64_t a, int64_t b) {
  if (a == 0 || b == 0) return 0;
  return a > kMax / b ? kMax : a * b;
}
int64_t Add(int64_t a, int64_t b) { return a > kMax - b ? kMax : a + b; }
int64_t Sum(std::initializer_list<int64_t> terms) {
  int64_t total = 0;
  for (int64_t t : terms) total = Add(total, t);
  return total;
}

// A batched step costs a few kernel launches per tile and a copy per item,
// about as much as this many multiply-adds.
constexpr int64_t kWorkPerTile = 200'000;
constexpr int64_t kWorkPerItem = 5'000;

bool IsRelative(const ScoreSpec& spec) {
  return std::holds_alternative<RelativeBias>(spec.bias);
}

// The static bias of a tile of `rows` query rows on the library's path:
// positions (float distance, long index, bool mask, twice for temporaries)
// and the [H, T, Lk] bias with the temporary it is built from.
int64_t TileBias(const ProblemSize& size, int64_t rows) {
  const int64_t cells = Mul(rows, size.key_len);  // [T, Lk]
  return Add(Mul(cells, 2 * (kF32 + 8 + 1)),
             Mul(Mul(size.heads, cells), 2 * kF32));
}

// Scratch of one tile of T query rows, beyond the outputs and the bias.
int64_t TileScratch(const ScoreSpec& spec, const ProblemSize& size, int64_t t,
                    bool fused) {
  const int64_t stack = Mul(size.batch, size.heads);
  if (fused) {
    // Contiguous copies of one length group's keys and values, the output
    // tile and the kernel's log-sum-exp.
    const int64_t operands = Mul(Mul(stack, size.key_len),
                                 Mul(Add(size.head_dim, size.value_dim), kF32));
    const int64_t out = Mul(Mul(stack, t), Mul(Add(size.value_dim, 1), kF32));
    return Add(operands, out);
  }
  const int64_t stack_tile =
      Mul(Mul(stack, Mul(t, size.key_len)), kF32);  // [B*H, T, Lk]
  const bool need_probs = spec.want_probs || spec.want_context;
  int64_t scratch = 0;
  if (t < size.query_len) {
    // Several tiles: each computes in contiguous scratch, then is copied into
    // the outputs' rows.
    scratch = Sum({stack_tile, need_probs ? stack_tile : 0,
                   Mul(Mul(stack, t), Mul(size.value_dim, kF32))});
  } else {
    // One tile computes in the outputs; scratch only for what is not one.
    if (!spec.want_logits) scratch = Add(scratch, stack_tile);
    if (spec.want_context && !spec.want_probs) {
      scratch = Add(scratch, stack_tile);
    }
  }
  if (IsRelative(spec)) {
    // q.E for the tile's rows, [H, B*T, R], and the query rows it reads.
    const int64_t span = size.query_len + size.key_len - 1;
    scratch =
        Add(scratch, Mul(Mul(stack, t), Mul(Add(span, size.head_dim), kF32)));
  }
  return scratch;
}

// Whether the ALiBi kernel computes this request's logits (in the tiles where
// it pays): ALiBi on the tiled path (anything but the fused attention), and
// the kernel there.
bool KernelComputesLogits(const ScoreSpec& spec,
                          const BatchedKernels& kernels) {
  return kernels.alibi_logits && !IsRelative(spec) &&
         !UsesFusedAttention(spec, kernels.fused_attention);
}

// The bias scratch of the query's tiles of T rows: none for a tile whose
// logits the ALiBi kernel computes (only the [B, 1, 1, Lk] key-length mask,
// the lengths and the dead-row mask remain), the library's for the others. The
// last tile (Lq mod T rows) may be too short for the kernel.
int64_t BiasScratch(const ScoreSpec& spec, const ProblemSize& size, int64_t t,
                    const BatchedKernels& kernels) {
  if (!KernelComputesLogits(spec, kernels) || !AlibiLogitsKernelPays(t)) {
    return TileBias(size, t);
  }
  const int64_t masks = Mul(size.batch, Add(size.key_len, 8 + 1));
  if (AlibiLogitsKernelPaysEveryTile(size.query_len, t)) return masks;
  return Add(masks, TileBias(size, size.query_len % t));
}

}  // namespace

bool AlibiLogitsKernelPaysEveryTile(int64_t query_len, int64_t tile) {
  const int64_t last = query_len % tile;
  return AlibiLogitsKernelPays(tile) &&
         (last == 0 || AlibiLogitsKernelPays(last));
}

bool UsesFusedAttention(const ScoreSpec& spec, bool fused_available) {
  return fused_available && spec.want_context && !spec.want_logits &&
         !spec.want_probs && !IsRelative(spec);
}

int64_t BatchedQueryTile(const ProblemSize& size, bool fused) {
  // One query row of the tile: a [B*H, Lk] slice of logits, or an [H, Lk]
  // slice of the bias when the fused kernel keeps the logits to itself.
  const int64_t row_bytes = std::max<int64_t>(
      1, Mul(Mul(fused ? 1 : size.batch, size.heads), Mul(size.key_len, kF32)));
  const int64_t rows = kBatchedTileBytes / row_bytes;
  return std::clamp<int64_t>(rows, 1, std::max<int64_t>(size.query_len, 1));
}

ResourceEstimate EstimateBatchedResources(const ScoreSpec& spec,
                                          const ProblemSize& size,
                                          const BatchedKernels& kernels) {
  const bool fused = UsesFusedAttention(spec, kernels.fused_attention);
  const int64_t stack = Mul(size.batch, size.heads);
  const int64_t scores = Mul(stack, Mul(size.query_len, size.key_len));
  const int64_t context = Mul(stack, Mul(size.query_len, size.value_dim));
  int64_t inputs =
      Mul(stack, Mul(Add(size.query_len, size.key_len), size.head_dim));
  inputs = Add(inputs, Mul(stack, Mul(size.key_len, size.value_dim)));
  // Relative: the content query q + u, a copy of the query.
  if (IsRelative(spec)) {
    inputs = Add(inputs, Mul(stack, Mul(size.query_len, size.head_dim)));
  }
  inputs = Mul(inputs, kF32);
  // On a GPU 16-bit inputs cross as sent and are widened there: one input's
  // 16-bit copy lives beside the float32 ones while it converts (counted on
  // the CPU too, which widens them on the host: an upper bound there).
  int64_t as_sent = 0;
  if (size.convert_cols > 0) {
    as_sent = Mul(stack, std::max({Mul(size.query_len, size.head_dim),
                                   Mul(size.key_len, size.head_dim),
                                   Mul(size.key_len, size.value_dim)}));
    as_sent = Mul(as_sent, 2);
  }
  inputs = Add(inputs, as_sent);
  int64_t outputs = 0;
  if (spec.want_logits) outputs = Add(outputs, Mul(scores, kF32));
  if (spec.want_probs) outputs = Add(outputs, Mul(scores, kF32));
  if (spec.want_context) outputs = Add(outputs, Mul(context, kF32));
  const auto wire_size = static_cast<int64_t>(ElementSize(spec.output_dtype));
  int64_t wire = 0;
  if (spec.want_logits) wire = Add(wire, Mul(scores, wire_size));
  if (spec.want_probs) wire = Add(wire, Mul(scores, wire_size));
  if (spec.want_context) wire = Add(wire, Mul(context, wire_size));
  const int64_t tile = BatchedQueryTile(size, fused);
  const int64_t scratch = Add(TileScratch(spec, size, tile, fused),
                              BiasScratch(spec, size, tile, kernels));
  ResourceEstimate estimate;
  estimate.peak_bytes = Sum({inputs, outputs, scratch, wire});
  const int64_t tiles =
      (size.query_len + tile - 1) / std::max<int64_t>(tile, 1);
  int64_t work = Mul(scores, Add(size.head_dim, size.value_dim));
  if (IsRelative(spec)) {
    work =
        Add(work, Mul(Mul(stack, size.query_len),
                      Mul(size.query_len + size.key_len - 1, size.head_dim)));
  }
  estimate.work =
      Sum({work, Mul(tiles, kWorkPerTile), Mul(size.batch, kWorkPerItem)});
  estimate.breakdown = absl::StrCat(
      "batched path: inputs ", inputs, " B + float32 outputs ", outputs,
      " B + tile scratch ", scratch, " B (", tiles, " tile(s) of ", tile,
      " query rows", fused ? ", fused attention" : "",
      KernelComputesLogits(spec, kernels) && AlibiLogitsKernelPays(tile)
          ? ", ALiBi logits kernel"
          : "",
      ") + wire outputs ", wire, " B");
  return estimate;
}

}  // namespace attnscore::scoring
