#include "server/scoring/resource_estimate.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <variant>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/layout.h"
#include "server/scoring/blocked_tiling.h"

namespace attnscore::scoring {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// a * b, saturating at INT64_MAX (operands are non-negative).
int64_t Mul(int64_t a, int64_t b) {
  if (a == 0 || b == 0) return 0;
  return a > kMax / b ? kMax : a * b;
}
int64_t Add(int64_t a, int64_t b) { return a > kMax - b ? kMax : a + b; }

// Calibrated on the blocked path (2 cores, AMD EPYC): prefill arithmetic runs
// at about 70 GFLOP/s (B8 H8 L512 D64 logits, 2.1 GFLOP in ~30 ms), and
// bench/scoring_bench.cc's tiny-items case (2,000,000 float16 items of
// H = Lq = Lk = D = 1) takes about 0.9 us per item, mostly staging and
// splitting per item; the scalar kernel of one tiny (item, head) block takes
// tens of nanoseconds. In operations that take as long:
constexpr int64_t kWorkPerBlock = 2'000;
constexpr int64_t kWorkPerItem = 60'000;
// Per batch row: its ScoreResult, shapes and bookkeeping.
constexpr int64_t kBytesPerRow = 512;
// Per compute thread: ATen's small allocations for a tile's views.
constexpr int64_t kBytesPerThread = int64_t{64} << 10;
// Per request: allocator rounding and page granularity of the large buffers,
// and LibTorch's bookkeeping (measured: up to 1.3 MiB over the rest in a fresh
// process, kBytesFirstCompute of it only there).
constexpr int64_t kBytesFixed = int64_t{4} << 20;
// Of kBytesFixed, what only a process's first computations take
// (ResourceEstimate::first_compute_bytes): the rest, 256 KiB, covers the page
// rounding of a request's buffers and the objects that describe them.
constexpr int64_t kBytesFirstCompute = kBytesFixed - (int64_t{256} << 10);

std::string MiB(int64_t bytes) {
  constexpr int64_t kMiB = int64_t{1} << 20;
  return absl::StrCat(bytes / kMiB, ".", (bytes % kMiB) * 10 / kMiB, " MiB");
}

}  // namespace

ProblemSize ProblemSizeOf(const ScoreSpec& spec, const ScoreItem& item) {
  const Dims q = DimsOf(item.query.shape, spec.layout);
  const Dims k = DimsOf(item.key.shape, spec.layout);
  ProblemSize size;
  size.batch = q.batch;
  size.heads = q.heads;
  size.query_len = q.seq;
  size.key_len = k.seq;
  size.head_dim = q.dim;
  if (spec.want_context && item.value.has_value()) {
    size.value_dim = DimsOf(item.value->shape, spec.layout).dim;
  }
  if (item.key.dtype != DType::kFloat32) size.convert_cols = size.head_dim;
  if (size.value_dim > 0 && item.value->dtype != DType::kFloat32) {
    size.convert_cols = std::max(size.convert_cols, size.value_dim);
  }
  return size;
}

// The blocked path's allocations (blocked_attention.h, aten_scorer.cc):
// float32 staging of the inputs (always counted: a batch of several items is
// copied; a lone item's float32 inputs and 16-bit keys and values are read in
// place, its 16-bit query copied), the logits
// and probabilities asked for in the wire dtype (written per tile), the
// float32 context with its wire-dtype and layout copies, and per-thread
// scratch (blocked_tiling.h).
ResourceEstimate EstimateResources(const ScoreSpec& spec,
                                   const ProblemSize& size) {
  const int64_t blocks = Mul(size.batch, size.heads);
  const int64_t scores = Mul(blocks, Mul(size.query_len, size.key_len));
  const int64_t contexts = Mul(blocks, Mul(size.query_len, size.value_dim));
  const int64_t f32 = 4;
  const auto wire = static_cast<int64_t>(ElementSize(spec.output_dtype));
  int64_t inputs =
      Mul(blocks, Mul(Add(size.query_len, size.key_len), size.head_dim));
  inputs =
      Mul(Add(inputs, Mul(blocks, Mul(size.key_len, size.value_dim))), f32);
  int64_t outputs = 0;
  int64_t wire_copies = 0;
  if (spec.want_logits) outputs = Add(outputs, Mul(scores, wire));
  if (spec.want_probs) outputs = Add(outputs, Mul(scores, wire));
  if (spec.want_context) {
    const bool layout_copy = spec.layout != Layout::kBHSD;
    outputs = Add(outputs, Mul(contexts, layout_copy ? 2 * f32 : f32));
    if (wire != f32) wire_copies = Add(wire_copies, Mul(contexts, wire));
  }
  const bool relative = std::holds_alternative<RelativeBias>(spec.bias);
  const BlockedScratch scratch =
      BlockedScratchOf(size.query_len, size.key_len, size.head_dim, relative,
                       spec.want_logits, spec.want_probs, spec.want_context,
                       /*float32_matrices=*/wire == f32, size.convert_cols);
  const int64_t threads = BlockedThreads();
  const int64_t per_thread = Add(
      Mul(Add(scratch.floats, scratch.convert_floats), f32), kBytesPerThread);
  const int64_t scratch_bytes = Mul(per_thread, threads);
  const int64_t rows = Add(Mul(size.batch, kBytesPerRow), kBytesFixed);
  ResourceEstimate estimate;
  estimate.first_compute_bytes = kBytesFirstCompute;
  estimate.peak_bytes =
      Add(Add(inputs, outputs), Add(Add(wire_copies, scratch_bytes), rows));
  const int64_t flops_per_score =
      Mul(2, Add(Mul(size.head_dim, relative ? 2 : 1), size.value_dim));
  estimate.work =
      Add(Mul(scores, flops_per_score),
          Add(Mul(blocks, kWorkPerBlock), Mul(size.batch, kWorkPerItem)));
  estimate.breakdown = absl::StrCat(
      "float32 inputs ", MiB(inputs), " + outputs ", MiB(outputs),
      " + wire-dtype context ", MiB(wire_copies), " + scratch ",
      MiB(per_thread), " x ", threads, " threads + results and bookkeeping ",
      MiB(rows), "; no bias table");
  return estimate;
}

}  // namespace attnscore::scoring
