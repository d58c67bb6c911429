// ScaledDotRowsFloat16 for CPUs with AVX2 and F16C (row_dots.h): this unit
// is built for them (server/scoring/CMakeLists.txt), and row_loops.cc calls
// it only where the CPU has both.
#if defined(__x86_64__)

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define ATTNSCORE_ROW_DOTS_ISA row_dots_avx2_f16c
#include "server/scoring/row_dots.h"

namespace attnscore::scoring {
namespace {

// Float16 rows, eight elements per vcvtph2ps (exact; a signalling NaN comes
// out quiet, which the products it enters make of it anyway).
struct Float16RowsF16c {
  using T = uint16_t;
  template <typename V>
  [[gnu::always_inline]] static void Load(const uint16_t* p, V* out) {
    constexpr size_t kEights = sizeof(V) / (8 * sizeof(float));
    static_assert(kEights * 8 * sizeof(float) == sizeof(V));
    for (size_t k = 0; k < kEights; ++k) {
      const __m256 v = _mm256_cvtph_ps(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * k)));
      std::memcpy(reinterpret_cast<char*>(out) + k * sizeof(v), &v, sizeof(v));
    }
  }
  [[gnu::always_inline]] static float One(const uint16_t* p) {
    return _cvtsh_ss(*p);
  }
};

}  // namespace

namespace row_dots_f16c {

void ScaledDotRowsFloat16(const uint16_t* rows, int64_t ld, int64_t n,
                          const float* x, int64_t d, float alpha,
                          bool accumulate, float* out) {
  // AVX2's 16 registers: LaneDots (WideLaneDots is for AVX-512's 32).
  row_dots_avx2_f16c::ScaledDotRowsOf<Float16RowsF16c>(
      rows, ld, n, x, d, alpha, accumulate, out, /*wide=*/false);
}

}  // namespace row_dots_f16c
}  // namespace attnscore::scoring

#endif  // defined(__x86_64__)
