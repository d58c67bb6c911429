// Internal to the row loops (row_loops.cc, row_loops_avx2.cc): ScaledDotRows'
// dot products as templates over how a row's elements load as float32, so
// that float32, bfloat16 and float16 rows run the same arithmetic in the same
// order (the same bits). Each translation unit that includes this is built for
// its own instruction sets (row_loops_avx2.cc for AVX2 and F16C) and names the
// namespace its copies live in (ATTNSCORE_ROW_DOTS_ISA), so that no copy
// built for one CPU can stand in for another's at link time; everything here
// is always inlined.
//
// Thread safety: pure functions on the caller's memory. Errors: none.
#ifndef ATTNSCORE_SERVER_SCORING_ROW_DOTS_H_
#define ATTNSCORE_SERVER_SCORING_ROW_DOTS_H_

#ifndef ATTNSCORE_ROW_DOTS_ISA
#error "define ATTNSCORE_ROW_DOTS_ISA (the namespace of this unit's copies)"
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/dtype.h"
#include "server/scoring/row_loops.h"

namespace attnscore::scoring::ATTNSCORE_ROW_DOTS_ISA {

// Half a Lanes value and its halves: ScaledDotRows keeps each row's kRowLanes
// lanes as two Half accumulators (lanes k and k + 8), which every clone holds
// in registers. A whole Lanes value there went through the stack on AVX2
// (two ymm each), and the loop ran at a third of the memory rate.
using Half = float __attribute__((vector_size(kRowLanes / 2 * sizeof(float))));
using Quarter =
    float __attribute__((vector_size(kRowLanes / 4 * sizeof(float))));
using Eighth =
    float __attribute__((vector_size(kRowLanes / 8 * sizeof(float))));

// How ScaledDotRows reads its rows' elements as float32 (exactly): a vector
// of V's width from p, or one value. Float32 rows are read as they are;
// bfloat16 ones are widened (the top half of a float32), float16 ones by
// F16C's vcvtph2ps (Float16RowsF16c, in functions built for F16C) or one by
// one (Float16Rows).
struct FloatRows {
  using T = float;
  template <typename V>
  [[gnu::always_inline]] static void Load(const float* p, V* v) {
    std::memcpy(v, p, sizeof(*v));
  }
  [[gnu::always_inline]] static float One(const float* p) { return *p; }
};

// Eight and sixteen 16-bit lanes, and as many 32-bit ones (bfloat16 widening).
using Bits8 = uint16_t __attribute__((vector_size(8 * sizeof(uint16_t))));
using Bits16 = uint16_t __attribute__((vector_size(16 * sizeof(uint16_t))));
using Words8 = uint32_t __attribute__((vector_size(8 * sizeof(uint32_t))));
using Words16 = uint32_t __attribute__((vector_size(16 * sizeof(uint32_t))));

struct BFloat16Rows {
  using T = uint16_t;
  template <typename V>
  [[gnu::always_inline]] static void Load(const uint16_t* p, V* v) {
    constexpr bool kEight = sizeof(V) == 8 * sizeof(float);
    static_assert(kEight || sizeof(V) == 16 * sizeof(float));
    using Narrow = std::conditional_t<kEight, Bits8, Bits16>;
    using Wide = std::conditional_t<kEight, Words8, Words16>;
    Narrow bits;
    std::memcpy(&bits, p, sizeof(bits));
    const Wide words = __builtin_convertvector(bits, Wide) << 16;
    std::memcpy(v, &words, sizeof(*v));
  }
  [[gnu::always_inline]] static float One(const uint16_t* p) {
    return BFloat16ToFloat(*p);
  }
};

struct Float16Rows {
  using T = uint16_t;
  template <typename V>
  [[gnu::always_inline]] static void Load(const uint16_t* p, V* v) {
    float f[sizeof(V) / sizeof(float)];
    for (size_t k = 0; k < sizeof(V) / sizeof(float); ++k) {
      f[k] = HalfToFloat(p[k]);
    }
    std::memcpy(v, f, sizeof(*v));
  }
  [[gnu::always_inline]] static float One(const uint16_t* p) {
    return HalfToFloat(*p);
  }
};

// A row's dot product from its kRowLanes lane sums, folded to eight (h8): the
// lanes pairwise (k and k + 4, then k + 2, k + 1), then the terms of the
// d % kRowLanes tail, t in [body, d), in order.
template <typename E>
[[gnu::always_inline]] inline float FinishDot(const Half& h8,
                                              const typename E::T* row,
                                              const float* x, int64_t body,
                                              int64_t d) {
  // __builtin_shufflevector: GCC >= 12 and clang alike.
  const Quarter h4 = __builtin_shufflevector(h8, h8, 0, 1, 2, 3) +
                     __builtin_shufflevector(h8, h8, 4, 5, 6, 7);
  const Eighth h2 = __builtin_shufflevector(h4, h4, 0, 1) +
                    __builtin_shufflevector(h4, h4, 2, 3);
  float dot = h2[0] + h2[1];
  for (int64_t t = body; t < d; ++t) dot += E::One(row + t) * x[t];
  return dot;
}

// Rows' dot products with x, in ScaledDotRows' order: kRowLanes lanes, the
// lanes pairwise (k and k + 8, then k + 4, k + 2, k + 1), then the
// d % kRowLanes tail. kRows rows at a time: independent sums over separate
// lines keep more loads in flight. dots[r] = rows[r * ld, +d) . x.
template <int kRows, typename E = FloatRows>
[[gnu::always_inline]] inline void LaneDots(const typename E::T* rows,
                                            int64_t ld, const float* x,
                                            int64_t d, float* dots) {
  static_assert(kRowLanes == 16, "the halving below is for 16 lanes");
  const int64_t body = d - d % kRowLanes;
  Half lo[kRows] = {};
  Half hi[kRows] = {};
  for (int64_t t = 0; t < body; t += kRowLanes) {
    Half x_lo, x_hi;  // unaligned loads
    std::memcpy(&x_lo, x + t, sizeof(x_lo));
    std::memcpy(&x_hi, x + t + kRowLanes / 2, sizeof(x_hi));
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      Half a_lo, a_hi;
      E::Load(rows + r * ld + t, &a_lo);
      E::Load(rows + r * ld + t + kRowLanes / 2, &a_hi);
      lo[r] += a_lo * x_lo;
      hi[r] += a_hi * x_hi;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    dots[r] = FinishDot<E>(lo[r] + hi[r], rows + r * ld, x, body, d);
  }
}

// kRowLanes floats as one value of GCC's generic vectors: each clone lowers it
// to its own registers (one zmm, two ymm, four xmm).
using Lanes = float __attribute__((vector_size(kRowLanes * sizeof(float))));

// LaneDots with each row's kRowLanes lanes in one Lanes accumulator (one zmm
// where AVX-512 has 32 of them): half the loads, multiplies and adds per
// element of the Half pairs. Lane k of the accumulator is lo's lane k (k < 8)
// or hi's lane k - 8, so the sums, and the bits, are LaneDots'.
template <int kRows, typename E = FloatRows>
[[gnu::always_inline]] inline void WideLaneDots(const typename E::T* rows,
                                                int64_t ld, const float* x,
                                                int64_t d, float* dots) {
  static_assert(kRowLanes == 16, "the halving below is for 16 lanes");
  const int64_t body = d - d % kRowLanes;
  Lanes acc[kRows] = {};
  for (int64_t t = 0; t < body; t += kRowLanes) {
    Lanes xv;  // unaligned loads
    std::memcpy(&xv, x + t, sizeof(xv));
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      Lanes a;
      E::Load(rows + r * ld + t, &a);
      acc[r] += a * xv;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    const Half h8 =
        __builtin_shufflevector(acc[r], acc[r], 0, 1, 2, 3, 4, 5, 6, 7) +
        __builtin_shufflevector(acc[r], acc[r], 8, 9, 10, 11, 12, 13, 14, 15);
    dots[r] = FinishDot<E>(h8, rows + r * ld, x, body, d);
  }
}

// ScaledDotRows over rows of E's elements; `wide`: WideLaneDots (AVX-512's 32
// registers), else LaneDots. Always inlined into each clone.
template <typename E>
[[gnu::always_inline]] inline void ScaledDotRowsOf(const typename E::T* rows,
                                                   int64_t ld, int64_t n,
                                                   const float* x, int64_t d,
                                                   float alpha, bool accumulate,
                                                   float* out, bool wide) {
  // Whole rows ahead, so that each row's lines are asked for once.
  const uintptr_t row_bytes =
      static_cast<uintptr_t>(ld) * sizeof(typename E::T);
  const uintptr_t ahead =
      (kStreamPrefetchBytes + row_bytes - 1) / row_bytes * row_bytes;
  const uintptr_t used_bytes =
      static_cast<uintptr_t>(d) * sizeof(typename E::T);
  constexpr int kBlock = 4;  // 8 measured alike
  float dots[kBlock];
  const auto store = [&](int64_t j, int count) {
    for (int r = 0; r < count; ++r) {
      const float dot = alpha * dots[r];
      out[j + r] = accumulate ? out[j + r] + dot : dot;
    }
  };
  int64_t j = 0;
  for (; j + kBlock <= n; j += kBlock) {
    for (int r = 0; r < kBlock; ++r) {
      PrefetchLines(rows + (j + r) * ld, ahead, used_bytes);
    }
    if (wide) {
      WideLaneDots<kBlock, E>(rows + j * ld, ld, x, d, dots);
    } else {
      LaneDots<kBlock, E>(rows + j * ld, ld, x, d, dots);
    }
    store(j, kBlock);
  }
  for (; j < n; ++j) {
    PrefetchLines(rows + j * ld, ahead, used_bytes);
    LaneDots<1, E>(rows + j * ld, ld, x, d, dots);
    store(j, 1);
  }
}

}  // namespace attnscore::scoring::ATTNSCORE_ROW_DOTS_ISA

namespace attnscore::scoring::row_dots_avx2 {

// ScaledDotRowsFloat16 and ScaledDotRowsBFloat16 with intrinsics' loads
// (row_loops_avx2.cc, built for AVX2 and F16C). REQUIRES: the CPU has both
// (x86-64 only).
void ScaledDotRowsFloat16(const uint16_t* rows, int64_t ld, int64_t n,
                          const float* x, int64_t d, float alpha,
                          bool accumulate, float* out);
void ScaledDotRowsBFloat16(const uint16_t* rows, int64_t ld, int64_t n,
                           const float* x, int64_t d, float alpha,
                           bool accumulate, float* out);

}  // namespace attnscore::scoring::row_dots_avx2

#endif  // ATTNSCORE_SERVER_SCORING_ROW_DOTS_H_
