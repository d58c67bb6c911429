// The 16-bit dot products for CPUs with AVX2 and F16C (row_dots.h), with
// intrinsics' loads: this unit is built for both (server/scoring/
// CMakeLists.txt), and row_loops.cc calls it only where the CPU has them.
#if defined(__x86_64__)

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define ATTNSCORE_ROW_DOTS_ISA row_dots_avx2_f16c
#include "server/scoring/row_dots.h"

namespace attnscore::scoring {
namespace {

// out = what `widen` makes of each eight 16-bit elements from p on (eight
// floats each), for V of LaneDots' or WideLaneDots' width.
template <typename V, typename Widen>
[[gnu::always_inline]] inline void LoadEights(const uint16_t* p, V* out,
                                              Widen widen) {
  constexpr size_t kEights = sizeof(V) / (8 * sizeof(float));
  static_assert(kEights * 8 * sizeof(float) == sizeof(V));
  for (size_t k = 0; k < kEights; ++k) {
    const auto eight =
        widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * k)));
    static_assert(sizeof(eight) == 8 * sizeof(float));
    std::memcpy(reinterpret_cast<char*>(out) + k * sizeof(eight), &eight,
                sizeof(eight));
  }
}

// Float16 rows, eight elements per vcvtph2ps (exact; a signalling NaN comes
// out quiet, which the products it enters make of it anyway).
struct Float16RowsF16c {
  using T = uint16_t;
  template <typename V>
  [[gnu::always_inline]] static void Load(const uint16_t* p, V* out) {
    LoadEights(p, out, [](__m128i h) { return _mm256_cvtph_ps(h); });
  }
  [[gnu::always_inline]] static float One(const uint16_t* p) {
    return _cvtsh_ss(*p);
  }
};

// Bfloat16 rows, eight elements per vpmovzxwd and shift (GCC's generic
// vectors spilled this loop's accumulators to the stack in the AVX2 clone).
struct BFloat16RowsAvx2 {
  using T = uint16_t;
  template <typename V>
  [[gnu::always_inline]] static void Load(const uint16_t* p, V* out) {
    LoadEights(p, out, [](__m128i h) {
      return _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    });
  }
  [[gnu::always_inline]] static float One(const uint16_t* p) {
    return BFloat16ToFloat(*p);
  }
};

}  // namespace

namespace row_dots_avx2 {

void ScaledDotRowsBFloat16(const uint16_t* rows, int64_t ld, int64_t n,
                           const float* x, int64_t d, float alpha,
                           bool accumulate, float* out) {
  row_dots_avx2_f16c::ScaledDotRowsOf<BFloat16RowsAvx2>(
      rows, ld, n, x, d, alpha, accumulate, out, /*wide=*/false);
}

void ScaledDotRowsFloat16(const uint16_t* rows, int64_t ld, int64_t n,
                          const float* x, int64_t d, float alpha,
                          bool accumulate, float* out) {
  // AVX2's 16 registers: LaneDots (WideLaneDots is for AVX-512's 32).
  row_dots_avx2_f16c::ScaledDotRowsOf<Float16RowsF16c>(
      rows, ld, n, x, d, alpha, accumulate, out, /*wide=*/false);
}

}  // namespace row_dots_avx2
}  // namespace attnscore::scoring

#endif  // defined(__x86_64__)
