#include "server/scoring/row_loops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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

namespace {

// kRowLanes floats as one value of GCC's generic vectors: each clone lowers it
// to its own registers (one zmm, two ymm, four xmm).
using Lanes = float __attribute__((vector_size(kRowLanes * sizeof(float))));

// row . x in ScaledDotRows' order: kRowLanes lanes, the lanes pairwise (k and
// k + 8, then k + 4, k + 2, k + 1), then the d % kRowLanes tail. Spelled with
// explicit shuffles: the plain loop's pairwise steps went through the stack.
inline float LaneDot(const float* row, const float* x, int64_t d) {
  static_assert(kRowLanes == 16, "the shuffles below are for 16 lanes");
  const int64_t body = d - d % kRowLanes;
  Lanes acc = {};
  for (int64_t t = 0; t < body; t += kRowLanes) {
    Lanes a, b;  // unaligned loads
    std::memcpy(&a, row + t, sizeof(a));
    std::memcpy(&b, x + t, sizeof(b));
    acc += a * b;
  }
  // __builtin_shufflevector: GCC >= 12 and clang alike.
  acc += __builtin_shufflevector(acc, acc, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9,
                                 10, 11, 12, 13, 14, 15);
  acc += __builtin_shufflevector(acc, acc, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7,
                                 4, 5, 6, 7);
  acc += __builtin_shufflevector(acc, acc, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
                                 2, 3, 2, 3);
  acc += __builtin_shufflevector(acc, acc, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                 1, 1, 1, 1);
  float dot = acc[0];
  for (int64_t t = body; t < d; ++t) dot += row[t] * x[t];
  return dot;
}

}  // namespace

ATTNSCORE_ROW_LOOP void ScaledDotRows(const float* rows, int64_t ld, int64_t n,
                                      const float* x, int64_t d, float alpha,
                                      bool accumulate, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const float dot = alpha * LaneDot(rows + j * ld, x, d);
    out[j] = accumulate ? out[j] + dot : dot;
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
