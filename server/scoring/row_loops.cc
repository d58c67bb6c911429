#include "server/scoring/row_loops.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "server/scoring/target_clones.h"

// One clone per instruction set, resolved once when the library loads.
#define ATTNSCORE_ROW_LOOP ATTNSCORE_TARGET_CLONES

namespace attnscore::scoring {

ATTNSCORE_ROW_LOOP float RowMax(const float* x, int64_t n) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float lanes[kRowLanes];
  std::fill(lanes, lanes + kRowLanes, kNegInf);
  int64_t c = 0;
  for (; c + kRowLanes <= n; c += kRowLanes) {
    for (int64_t k = 0; k < kRowLanes; ++k) {
      lanes[k] = x[c + k] > lanes[k] ? x[c + k] : lanes[k];
    }
  }
  float max = kNegInf;
  for (; c < n; ++c) max = std::max(max, x[c]);
  for (float lane : lanes) max = std::max(max, lane);
  return max;
}

ATTNSCORE_ROW_LOOP float RowSum(const float* x, int64_t n) {
  float lanes[kRowLanes] = {};
  int64_t c = 0;
  for (; c + kRowLanes <= n; c += kRowLanes) {
    for (int64_t k = 0; k < kRowLanes; ++k) lanes[k] += x[c + k];
  }
  float sum = 0;
  for (float lane : lanes) sum += lane;
  for (; c < n; ++c) sum += x[c];
  return sum;
}

ATTNSCORE_ROW_LOOP void AddAlibiRow(float* row, int64_t n, int64_t base,
                                    float slope, bool causal) {
  // Distances as int32 (exact in float32 up to 2^24, like the int64 ones)
  // vectorise on every instruction set; int64 conversions need AVX-512DQ.
  constexpr int64_t kInt32 = std::numeric_limits<int32_t>::max();
  if (std::max(std::abs(base), std::abs(base - n)) >= kInt32) {
    for (int64_t c = 0; c < n; ++c) {
      const auto d = static_cast<float>(base - c);
      row[c] += slope * (causal ? d : std::fabs(d));
    }
    return;
  }
  const auto base32 = static_cast<int32_t>(base);
  const auto n32 = static_cast<int32_t>(n);
  if (causal) {
    for (int32_t c = 0; c < n32; ++c) {
      row[c] += slope * static_cast<float>(base32 - c);
    }
  } else {
    for (int32_t c = 0; c < n32; ++c) {
      row[c] += slope * std::fabs(static_cast<float>(base32 - c));
    }
  }
}

ATTNSCORE_ROW_LOOP void AddRelativeRow(float* row, int64_t n,
                                       const float* shifted, const float* bias,
                                       int64_t bias_stride, float scale) {
  for (int64_t c = 0; c < n; ++c) {
    row[c] += scale * (shifted[c] + bias[c * bias_stride]);
  }
}

ATTNSCORE_ROW_LOOP void ScaledDotRows(const float* rows, int64_t ld, int64_t n,
                                      const float* x, int64_t d, float alpha,
                                      bool accumulate, float* out) {
  const int64_t body = d - d % kRowLanes;
  for (int64_t j = 0; j < n; ++j) {
    const float* row = rows + j * ld;
    float lanes[kRowLanes] = {};
    for (int64_t t = 0; t < body; t += kRowLanes) {
      for (int64_t k = 0; k < kRowLanes; ++k) lanes[k] += row[t + k] * x[t + k];
    }
    // Pairwise, so that rows overlap in the pipeline instead of waiting on
    // one long chain of additions each.
    for (int64_t half = kRowLanes / 2; half > 0; half /= 2) {
      for (int64_t k = 0; k < half; ++k) lanes[k] += lanes[k + half];
    }
    float dot = lanes[0];
    for (int64_t t = body; t < d; ++t) dot += row[t] * x[t];
    out[j] = accumulate ? out[j] + alpha * dot : alpha * dot;
  }
}

ATTNSCORE_ROW_LOOP void SubtractRow(const float* in, float* out, int64_t n,
                                    float value) {
  for (int64_t c = 0; c < n; ++c) out[c] = in[c] - value;
}

ATTNSCORE_ROW_LOOP void DivideRow(float* x, int64_t n, float value) {
  for (int64_t c = 0; c < n; ++c) x[c] /= value;
}

}  // namespace attnscore::scoring
