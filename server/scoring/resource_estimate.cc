#include "server/scoring/resource_estimate.h"

#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/layout.h"

namespace attnscore::scoring {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// a * b, saturating at INT64_MAX (operands are non-negative).
int64_t Mul(int64_t a, int64_t b) {
  if (a == 0 || b == 0) return 0;
  return a > kMax / b ? kMax : a * b;
}
int64_t Add(int64_t a, int64_t b) { return a > kMax - b ? kMax : a + b; }

// Charged per (batch item, head) block: dispatch, views and small allocations
// cost about as much as this many multiply-adds.
constexpr int64_t kWorkPerBlock = 20'000;
constexpr int64_t kWorkPerItem = 5'000;

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
  return size;
}

// Today's path materialises float32 logits, probabilities (when wanted or
// needed for the context) and the [H, Lq, Lk] bias, plus float32 copies of the
// inputs and the outputs in the wire dtype. The blocked path replaces this.
ResourceEstimate EstimateResources(const ScoreSpec& spec,
                                   const ProblemSize& size) {
  const int64_t blocks = Mul(size.batch, size.heads);
  const int64_t scores = Mul(blocks, Mul(size.query_len, size.key_len));
  const int64_t f32 = 4;
  const auto wire = static_cast<int64_t>(ElementSize(spec.output_dtype));
  int64_t inputs =
      Mul(blocks, Mul(Add(size.query_len, size.key_len), size.head_dim));
  inputs = Add(inputs, Mul(blocks, Mul(size.key_len, size.value_dim)));
  inputs = Mul(inputs, f32);
  const bool probs = spec.want_probs || spec.want_context;
  int64_t outputs = Mul(scores, probs ? 2 * f32 : f32);
  outputs =
      Add(outputs, Mul(Mul(blocks, Mul(size.query_len, size.value_dim)), f32));
  int64_t wire_outputs = 0;
  if (spec.want_logits) wire_outputs = Add(wire_outputs, Mul(scores, wire));
  if (spec.want_probs) wire_outputs = Add(wire_outputs, Mul(scores, wire));
  if (spec.want_context) {
    wire_outputs =
        Add(wire_outputs,
            Mul(Mul(blocks, Mul(size.query_len, size.value_dim)), wire));
  }
  const int64_t bias =
      Mul(Mul(size.heads, Mul(size.query_len, size.key_len)), f32);
  ResourceEstimate estimate;
  estimate.peak_bytes = Add(Add(inputs, outputs), Add(wire_outputs, bias));
  int64_t work = Mul(scores, size.head_dim);
  work = Add(work, Mul(Mul(blocks, Mul(size.query_len, size.key_len)),
                       size.value_dim));
  work =
      Add(work, Add(Mul(blocks, kWorkPerBlock), Mul(size.batch, kWorkPerItem)));
  estimate.work = work;
  estimate.breakdown = absl::StrCat("inputs ", inputs, " B + float32 outputs ",
                                    outputs, " B + wire outputs ", wire_outputs,
                                    " B + bias ", bias, " B");
  return estimate;
}

}  // namespace attnscore::scoring
