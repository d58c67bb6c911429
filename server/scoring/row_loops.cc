#include "server/scoring/row_loops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/dtype.h"
#include "server/cpu/cpu_features.h"
#include "server/scoring/target_clones.h"

// This unit's copies of the dot-product templates (built into each clone).
#define ATTNSCORE_ROW_DOTS_ISA row_dots_cloned
#include "server/scoring/row_dots.h"

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

ATTNSCORE_ROW_LOOP void ExpRow(float* x, int64_t n) {
  constexpr float kLog2e = 1.44269504088896341f;
  // Adding 1.5 * 2^23 rounds a float of magnitude under 2^22 to an integer,
  // which is then the low bits of the sum's representation.
  constexpr float kRound = 12582912.0f;
  constexpr uint32_t kRoundBits = 0x4B400000;
  // ln 2 in two parts: k * kLn2Hi is exact for the k here.
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kLow = -87.0f;
  constexpr float kHigh = 88.0f;
  for (int64_t c = 0; c < n; ++c) {
    const float v = x[c];
    const float a = std::min(std::max(v, kLow), kHigh);  // NaN stays NaN
    const float t = a * kLog2e + kRound;
    const float k = t - kRound;  // round(a / ln 2), in [-126, 127]
    const float r = (a - k * kLn2Hi) - k * kLn2Lo;  // |r| <= ln 2 / 2
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * (r * r) + r + 1.0f;  // exp(r)
    // Unsigned: a NaN's bits wrap instead of overflowing (its result is NaN).
    uint32_t bits;
    std::memcpy(&bits, &t, sizeof(bits));
    const uint32_t scale_bits = (bits - kRoundBits + 127) << 23;  // 2^k
    float scale;
    std::memcpy(&scale, &scale_bits, sizeof(scale));
    // Both sides computed, then chosen: a vector blend (CMakeLists.txt). A
    // NaN went through every step as NaN (the clamp keeps it).
    const float e = y * scale;
    x[c] = v < kLow ? 0.0f : e;
  }
}

ATTNSCORE_ROW_LOOP void StoreAlibiRow(float* row, int64_t n, int64_t base,
                                      float slope, bool causal) {
  // Distances as int32 (exact in float32 up to 2^24, like the int64 ones)
  // vectorise on every instruction set; int64 conversions need AVX-512DQ.
  constexpr int64_t kInt32 = std::numeric_limits<int32_t>::max();
  if (std::max(std::abs(base), std::abs(base - n)) >= kInt32) {
    for (int64_t c = 0; c < n; ++c) {
      const auto d = static_cast<float>(base - c);
      row[c] = slope * (causal ? d : std::fabs(d));
    }
    return;
  }
  const auto base32 = static_cast<int32_t>(base);
  const auto n32 = static_cast<int32_t>(n);
  if (causal) {
    for (int32_t c = 0; c < n32; ++c) {
      row[c] = slope * static_cast<float>(base32 - c);
    }
  } else {
    for (int32_t c = 0; c < n32; ++c) {
      row[c] = slope * std::fabs(static_cast<float>(base32 - c));
    }
  }
}

ATTNSCORE_ROW_LOOP void StoreBFloat16Row(const float* in, int64_t n,
                                         uint16_t* out) {
  for (int64_t c = 0; c < n; ++c) {
    uint32_t bits;
    std::memcpy(&bits, &in[c], sizeof(bits));
    // Adding 0x7FFF, plus the lowest kept bit, carries into the kept bits
    // exactly when the dropped half is above a tie, or a tie with an odd kept
    // part: round to nearest even (c10::round_to_nearest_even).
    const auto rounded =
        static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    out[c] = std::isnan(in[c]) ? uint16_t{0x7FC0} : rounded;
  }
}

namespace {

// One 16-bit element, read through memcpy: stacked inputs may come from a
// shared-memory range at any byte offset.
inline uint16_t BitsAt(const uint16_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return bits;
}

#if defined(__x86_64__)
// F16C: eight floats per instruction, rounded to nearest even as FloatToHalf
// rounds. NaNs differ (F16C keeps payload bits, c10 writes 0x7E00), so a group
// of eight holding one takes FloatToHalf, as does the tail.
__attribute__((target("avx,f16c"))) void StoreFloat16RowF16c(const float* in,
                                                             int64_t n,
                                                             uint16_t* out) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 v = _mm256_loadu_ps(in + c);
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    if (_mm256_testz_ps(nan, nan) == 0) {
      for (int64_t k = c; k < c + 8; ++k) out[k] = FloatToHalf(in[k]);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; c < n; ++c) out[c] = FloatToHalf(in[c]);
}

// Eight at a time; a group holding a NaN goes through HalfToFloat, which
// keeps a signalling NaN's bits where vcvtph2ps would quiet it.
__attribute__((target("avx,f16c"))) void LoadFloat16RowF16c(const uint16_t* in,
                                                            int64_t n,
                                                            float* out) {
  const __m128i magnitude = _mm_set1_epi16(0x7fff);
  const __m128i infinity = _mm_set1_epi16(0x7c00);
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + c));
    // |h| > infinity's bits (both under 0x8000: a signed compare holds).
    const __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, magnitude), infinity);
    if (_mm_movemask_epi8(nan) != 0) {
      for (int64_t k = c; k < c + 8; ++k) out[k] = HalfToFloat(BitsAt(in + k));
      continue;
    }
    _mm256_storeu_ps(out + c, _mm256_cvtph_ps(h));
  }
  for (; c < n; ++c) out[c] = HalfToFloat(BitsAt(in + c));
}

bool HasF16c() {
  // cpuid and XCR0 (Clang's __builtin_cpu_supports has no "f16c").
  static const bool has = cpu::DetectCpuFeatures().f16c;
  return has;
}

// What row_loops_avx2.cc is built for.
bool HasAvx2AndF16c() {
  static const bool has = HasF16c() && __builtin_cpu_supports("avx2");
  return has;
}
#endif

}  // namespace

void StoreFloat16Row(const float* in, int64_t n, uint16_t* out) {
#if defined(__x86_64__)
  if (HasF16c()) {
    StoreFloat16RowF16c(in, n, out);
    return;
  }
#endif
  for (int64_t c = 0; c < n; ++c) out[c] = FloatToHalf(in[c]);
}

ATTNSCORE_ROW_LOOP void LoadBFloat16Row(const uint16_t* in, int64_t n,
                                        float* out) {
  for (int64_t c = 0; c < n; ++c) {
    const uint32_t word = static_cast<uint32_t>(BitsAt(in + c)) << 16;
    std::memcpy(out + c, &word, sizeof(word));
  }
}

void LoadFloat16Row(const uint16_t* in, int64_t n, float* out) {
#if defined(__x86_64__)
  if (HasF16c()) {
    LoadFloat16RowF16c(in, n, out);
    return;
  }
#endif
  for (int64_t c = 0; c < n; ++c) out[c] = HalfToFloat(BitsAt(in + c));
}

ATTNSCORE_ROW_LOOP void StoreRelativeRow(float* row, int64_t n,
                                         const float* shifted,
                                         const float* bias, int64_t bias_stride,
                                         float scale) {
  for (int64_t c = 0; c < n; ++c) {
    row[c] = scale * (shifted[c] + bias[c * bias_stride]);
  }
}

namespace {

using row_dots_cloned::BFloat16Rows;
using row_dots_cloned::Float16Rows;
using row_dots_cloned::FloatRows;
using row_dots_cloned::Half;
using row_dots_cloned::Lanes;
using row_dots_cloned::ScaledDotRowsOf;

// Floats in a vector of type V, and V vectors per panel row.
template <typename V>
constexpr int64_t kVectorFloats = sizeof(V) / sizeof(float);
template <typename V>
constexpr int kPanelVectors = static_cast<int>(kPanelCols / kVectorFloats<V>);

// PanelDots' register block: kItems steps x kVectors column vectors of type V,
// from `run` (a vector's columns in a panel) on: vector v is vector v %
// kPanelVectors of panel v / kPanelVectors. Accumulated over d, in order,
// then stored at out (row stride out_ld). Each column is a sum of its own, so
// V's width changes no bits. Always inlined, so that each clone has its own
// copy.
template <typename V, int kItems, int kVectors>
[[gnu::always_inline]] inline void PanelBlock(const float* run, int64_t d,
                                              const float* q, int64_t q_stride,
                                              float* out, int64_t out_ld) {
  constexpr int kPerPanel = kPanelVectors<V>;
  constexpr int64_t kFloats = kVectorFloats<V>;
  const int64_t panel_floats = d * kPanelCols;
  V acc[kItems][kVectors] = {};
  for (int64_t c = 0; c < d; ++c) {
    V e[kVectors];
#pragma GCC unroll 16
    for (int v = 0; v < kVectors; ++v) {
      std::memcpy(&e[v],
                  run + v / kPerPanel * panel_floats + c * kPanelCols +
                      v % kPerPanel * kFloats,
                  sizeof(e[v]));
    }
#pragma GCC unroll 16
    for (int i = 0; i < kItems; ++i) {
      const float s = q[i * q_stride + c];
#pragma GCC unroll 16
      for (int v = 0; v < kVectors; ++v) acc[i][v] += s * e[v];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < kItems; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < kVectors; ++v) {
      std::memcpy(out + i * out_ld + v * kFloats, &acc[i][v],
                  sizeof(acc[i][v]));
    }
  }
}

// PanelDots with one register shape: kItems steps at a time over one panel
// (kVectors vectors of type V at a time), whose d rows then come from L1 for
// the next steps; steps left over one at a time, over kRunPanels panels at
// once (a lone decode step reads each embedding once: enough independent sums
// to keep the adders busy).
template <typename V, int kItems, int kVectors, int kRunPanels>
[[gnu::always_inline]] inline void PanelDotsWith(
    const float* panels, int64_t a0, int64_t n, const float* q,
    int64_t q_stride, int64_t count, int64_t d, float* out, int64_t out_ld) {
  constexpr int kPerPanel = kPanelVectors<V>;
  static_assert(kPerPanel % kVectors == 0);
  const int64_t panel_floats = d * kPanelCols;
  const auto column = [a0](int64_t p) { return p * kPanelCols - a0; };
  // The panels wholly inside [a0, a0 + n), computed in place.
  const int64_t whole_begin = (a0 + kPanelCols - 1) / kPanelCols;
  const int64_t whole_end = std::max(whole_begin, (a0 + n) / kPanelCols);
  int64_t g = 0;
  for (; g + kItems <= count; g += kItems) {
    for (int64_t p = whole_begin; p < whole_end; ++p) {
      for (int v = 0; v < kPerPanel; v += kVectors) {
        PanelBlock<V, kItems, kVectors>(
            panels + p * panel_floats + v * kVectorFloats<V>, d,
            q + g * q_stride, q_stride,
            out + g * out_ld + column(p) + v * kVectorFloats<V>, out_ld);
      }
    }
  }
  for (; g < count; ++g) {
    int64_t p = whole_begin;
    for (; p + kRunPanels <= whole_end; p += kRunPanels) {
      PanelBlock<V, 1, kRunPanels * kPerPanel>(
          panels + p * panel_floats, d, q + g * q_stride, q_stride,
          out + g * out_ld + column(p), out_ld);
    }
    for (; p < whole_end; ++p) {
      PanelBlock<V, 1, kPerPanel>(panels + p * panel_floats, d,
                                  q + g * q_stride, q_stride,
                                  out + g * out_ld + column(p), out_ld);
    }
  }
  // The (at most two) panels cut by the range: whole into `part`, then the
  // columns in range copied.
  float part[kPanelCols];
  const int64_t end = (a0 + n + kPanelCols - 1) / kPanelCols;
  for (int64_t p = a0 / kPanelCols; p < end; ++p) {
    if (p >= whole_begin && p < whole_end) continue;
    const int64_t lo = std::max<int64_t>(column(p), 0);
    const int64_t hi = std::min(column(p) + kPanelCols, n);
    for (int64_t i = 0; i < count; ++i) {
      PanelBlock<V, 1, kPerPanel>(panels + p * panel_floats, d,
                                  q + i * q_stride, q_stride, part, kPanelCols);
      std::copy(part + (lo - column(p)), part + (hi - column(p)),
                out + i * out_ld + lo);
    }
  }
}

// 32 vector registers (AVX-512) hold 8 x 2 or 1 x 8 accumulators of Lanes
// (one zmm); 16 (AVX2, SSE2) hold 4 x 2 or 1 x 8 of Half (one ymm on AVX2):
// whole Lanes values there (two ymm) went through the stack, and the relative
// decode ran at half the speed.
bool HasWideRegisters() {
  static const bool wide = __builtin_cpu_supports("avx512f");
  return wide;
}

}  // namespace

ATTNSCORE_ROW_LOOP void ScaledDotRows(const float* rows, int64_t ld, int64_t n,
                                      const float* x, int64_t d, float alpha,
                                      bool accumulate, float* out) {
  ScaledDotRowsOf<FloatRows>(rows, ld, n, x, d, alpha, accumulate, out,
                             HasWideRegisters());
}

namespace {

// The clones' copy: AVX-512's and the baseline's.
ATTNSCORE_ROW_LOOP void ScaledDotRowsBFloat16Cloned(
    const uint16_t* rows, int64_t ld, int64_t n, const float* x, int64_t d,
    float alpha, bool accumulate, float* out) {
  ScaledDotRowsOf<BFloat16Rows>(rows, ld, n, x, d, alpha, accumulate, out,
                                HasWideRegisters());
}

}  // namespace

void ScaledDotRowsBFloat16(const uint16_t* rows, int64_t ld, int64_t n,
                           const float* x, int64_t d, float alpha,
                           bool accumulate, float* out) {
#if defined(__x86_64__)
  // AVX2 without AVX-512: the intrinsics' copy (see row_loops_avx2.cc).
  if (HasAvx2AndF16c() && !HasWideRegisters()) {
    row_dots_avx2::ScaledDotRowsBFloat16(rows, ld, n, x, d, alpha, accumulate,
                                         out);
    return;
  }
#endif
  ScaledDotRowsBFloat16Cloned(rows, ld, n, x, d, alpha, accumulate, out);
}

void ScaledDotRowsFloat16(const uint16_t* rows, int64_t ld, int64_t n,
                          const float* x, int64_t d, float alpha,
                          bool accumulate, float* out) {
#if defined(__x86_64__)
  if (HasAvx2AndF16c()) {
    row_dots_avx2::ScaledDotRowsFloat16(rows, ld, n, x, d, alpha, accumulate,
                                        out);
    return;
  }
#endif
  ScaledDotRowsOf<Float16Rows>(rows, ld, n, x, d, alpha, accumulate, out,
                               /*wide=*/false);
}

ATTNSCORE_ROW_LOOP void PanelDots(const float* panels, int64_t a0, int64_t n,
                                  const float* q, int64_t q_stride,
                                  int64_t count, int64_t d, float* out,
                                  int64_t out_ld) {
  if (n <= 0) return;
  if (HasWideRegisters()) {
    PanelDotsWith<Lanes, 8, 2, 4>(panels, a0, n, q, q_stride, count, d, out,
                                  out_ld);
  } else {
    PanelDotsWith<Half, 4, 2, 2>(panels, a0, n, q, q_stride, count, d, out,
                                 out_ld);
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
