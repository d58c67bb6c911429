// The blocked path's element loops (server/scoring/row_loops.h) against plain
// scalar loops of the same arithmetic, bit for bit, at lengths around the
// vector widths and with -inf, on whichever clone this CPU resolves to; and
// the int64 fallback of StoreAlibiRow for distances past int32; the 16-bit
// loads against common/dtype.h's conversions, and the 16-bit rows' dot
// products against ScaledDotRows over the rows widened first.
#include "server/scoring/row_loops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "c10/util/BFloat16.h"
#include "c10/util/Half.h"
#include "common/dtype.h"
#include "gtest/gtest.h"

namespace attnscore::scoring {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> Random(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = normal(gen);
  return x;
}

uint32_t Bits(float x) {
  uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

// Same bits (so -inf == -inf and a NaN would fail).
void ExpectBits(const std::vector<float>& got, const std::vector<float>& want,
                int64_t n) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t c = 0; c < got.size(); ++c) {
    ASSERT_EQ(Bits(got[c]), Bits(want[c])) << "n " << n << " c " << c;
  }
}

const int64_t kLengths[] = {0,  1,  3,  7,  8,  15,  16,  17,  31,
                            32, 33, 63, 64, 65, 100, 257, 1000};

TEST(RowLoopsTest, RowMaxIsTheMaximum) {
  for (int64_t n : kLengths) {
    std::vector<float> x = Random(n, 1);
    float want = -kInf;
    for (float v : x) want = std::max(want, v);
    EXPECT_EQ(RowMax(x.data(), n), want) << n;
    if (n > 2) {
      x[n / 2] = 1e30f;
      EXPECT_EQ(RowMax(x.data(), n), 1e30f) << n;
    }
  }
  const float all_masked[3] = {-kInf, -kInf, -kInf};
  EXPECT_EQ(RowMax(all_masked, 3), -kInf);
}

TEST(RowLoopsTest, RowSumAddsInFixedLanes) {
  for (int64_t n : kLengths) {
    const std::vector<float> x = Random(n, 2);
    float lanes[kRowLanes] = {};
    int64_t c = 0;
    for (; c + kRowLanes <= n; c += kRowLanes) {
      for (int64_t k = 0; k < kRowLanes; ++k) lanes[k] += x[c + k];
    }
    float want = 0;
    for (float lane : lanes) want += lane;
    for (; c < n; ++c) want += x[c];
    EXPECT_EQ(Bits(RowSum(x.data(), n)), Bits(want)) << n;
  }
}

// ScaledDotRows' order: kRowLanes lanes, the lanes pairwise, then the tail.
float LaneDot(const float* row, const float* x, int64_t d) {
  float lanes[kRowLanes] = {};
  int64_t t = 0;
  for (; t + kRowLanes <= d; t += kRowLanes) {
    for (int64_t k = 0; k < kRowLanes; ++k) lanes[k] += row[t + k] * x[t + k];
  }
  for (int64_t half = kRowLanes / 2; half > 0; half /= 2) {
    for (int64_t k = 0; k < half; ++k) lanes[k] += lanes[k + half];
  }
  float dot = lanes[0];
  for (; t < d; ++t) dot += row[t] * x[t];
  return dot;
}

TEST(RowLoopsTest, ScaledDotRowsIsTheProductInFixedLanes) {
  constexpr int64_t kRows = 37;
  constexpr float kAlpha = 0.125f;
  for (int64_t d : kLengths) {
    const int64_t ld =
        d + 5;  // strided rows, like E[., h] of the relative bias
    const std::vector<float> rows = Random(kRows * ld, 3);
    const std::vector<float> x = Random(d, 4);
    const std::vector<float> before = Random(kRows, 5);
    for (bool accumulate : {false, true}) {
      std::vector<float> got = before, want = before;
      ScaledDotRows(rows.data(), ld, kRows, x.data(), d, kAlpha, accumulate,
                    got.data());
      for (int64_t j = 0; j < kRows; ++j) {
        const float dot = kAlpha * LaneDot(rows.data() + j * ld, x.data(), d);
        want[j] = accumulate ? want[j] + dot : dot;
        // And the product itself, in double, within float rounding.
        double exact = 0;
        for (int64_t t = 0; t < d; ++t) {
          exact += double{rows[j * ld + t]} * double{x[t]};
        }
        const double expected =
            kAlpha * exact + (accumulate ? double{before[j]} : 0.0);
        EXPECT_NEAR(got[j], expected, 1e-4 * (1.0 + 9.0 * d)) << d << " " << j;
      }
      ExpectBits(got, want, d);
    }
  }
}

// The 16-bit rows' dot products are ScaledDotRows' over the rows widened
// first: the same bits, for every head size of kLengths (lane tails), a row
// count with a tail of the 4-row blocks, and strided rows.
TEST(RowLoopsTest, SixteenBitScaledDotRowsEqualThoseOfTheWidenedRows) {
  constexpr int64_t kRows = 37;
  constexpr float kAlpha = 0.125f;
  struct Kind {
    const char* name;
    void (*dots)(const uint16_t*, int64_t, int64_t, const float*, int64_t,
                 float, bool, float*);
    void (*widen)(const uint16_t*, int64_t, float*);
    uint16_t (*narrow)(float);
  };
  for (const Kind& kind :
       {Kind{"bfloat16", ScaledDotRowsBFloat16, LoadBFloat16Row,
             FloatToBFloat16},
        Kind{"float16", ScaledDotRowsFloat16, LoadFloat16Row, FloatToHalf}}) {
    for (int64_t d : kLengths) {
      const int64_t ld = d + 5;
      const std::vector<float> values = Random(kRows * ld, 3);
      std::vector<uint16_t> rows(values.size());
      for (size_t c = 0; c < values.size(); ++c) {
        rows[c] = kind.narrow(values[c]);
      }
      std::vector<float> wide(rows.size());
      kind.widen(rows.data(), static_cast<int64_t>(rows.size()), wide.data());
      const std::vector<float> x = Random(d, 4);
      const std::vector<float> before = Random(kRows, 5);
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(
            absl::StrCat(kind.name, " d ", d, " accumulate ", accumulate));
        std::vector<float> got = before, want = before;
        kind.dots(rows.data(), ld, kRows, x.data(), d, kAlpha, accumulate,
                  got.data());
        ScaledDotRows(wide.data(), ld, kRows, x.data(), d, kAlpha, accumulate,
                      want.data());
        ExpectBits(got, want, d);
      }
    }
  }
}

// ExpRow's arithmetic as a plain scalar loop (row_loops.cc, ExpRow).
float ScalarExp(float v) {
  const float a = std::min(std::max(v, -87.0f), 88.0f);
  const float t = a * 1.44269504088896341f + 12582912.0f;
  const float k = t - 12582912.0f;
  const float r = (a - k * 0.693359375f) - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const uint32_t scale_bits = (Bits(t) - 0x4B400000u + 127) << 23;
  float scale = 0;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  if (std::isnan(v)) return v;
  return v < -87.0f ? 0.0f : y * scale;
}

TEST(RowLoopsTest, ExpRowIsTheScalarArithmeticAtEveryLength) {
  for (int64_t n : kLengths) {
    std::vector<float> got = Random(n, 11);
    for (float& v : got) v = -std::fabs(v) * 8;  // a softmax's inputs
    if (n > 1) got[0] = -kInf;
    if (n > 2) got[n - 1] = -100.0f;
    if (n > 3) got[n / 2] = 0.0f;
    std::vector<float> want = got;
    for (float& v : want) v = ScalarExp(v);
    ExpRow(got.data(), n);
    ExpectBits(got, want, n);
  }
}

TEST(RowLoopsTest, ExpRowIsWithinTwoUlpOfTheExactValue) {
  std::vector<float> x;
  for (float v = -87.0f; v <= 88.0f; v += 0.0009765625f) x.push_back(v);
  for (float v = -1e-3f; v <= 1e-3f; v += 1e-6f) x.push_back(v);
  std::vector<float> got = x;
  ExpRow(got.data(), static_cast<int64_t>(got.size()));
  for (size_t c = 0; c < x.size(); ++c) {
    const double exact = std::exp(static_cast<double>(x[c]));
    const auto rounded = static_cast<float>(exact);
    const double ulp = std::nextafter(rounded, kInf) - rounded;
    ASSERT_LE(std::fabs(got[c] - exact), 2 * ulp)
        << "exp(" << x[c] << ") = " << got[c] << ", exactly " << exact;
  }
}

TEST(RowLoopsTest, ExpRowEdges) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x = {-kInf, -1000.0f, -87.5f, 0.0f,
                          -0.0f, 100.0f,   kInf,   nan};
  ExpRow(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(Bits(x[0]), Bits(0.0f)) << "exp(-inf) is +0 exactly";
  EXPECT_EQ(Bits(x[1]), Bits(0.0f));
  EXPECT_EQ(Bits(x[2]), Bits(0.0f)) << "below -87: 0";
  EXPECT_EQ(x[3], 1.0f);
  EXPECT_EQ(x[4], 1.0f);
  const float at88 = ScalarExp(88.0f);
  EXPECT_NEAR(at88, std::exp(88.0), std::exp(88.0) * 1e-6);
  EXPECT_EQ(x[5], at88) << "above 88: exp(88)";
  EXPECT_EQ(x[6], at88);
  EXPECT_TRUE(std::isnan(x[7]));
}

TEST(RowLoopsTest, StoreAlibiRowMatchesTheScalarFormula) {
  for (bool causal : {false, true}) {
    for (int64_t n : kLengths) {
      for (int64_t base :
           {int64_t{0}, n - 1, n / 2, int64_t{4095}, int64_t{-5}}) {
        // Whatever the row held before (-inf, NaN, numbers) is overwritten.
        std::vector<float> got = Random(n, 3);
        if (n > 1) got[0] = -kInf;
        if (n > 2) got[1] = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> want(n);
        const float slope = -0.0625f;
        StoreAlibiRow(got.data(), n, base, slope, causal);
        for (int64_t c = 0; c < n; ++c) {
          const auto d = static_cast<float>(base - c);
          want[c] = slope * (causal ? d : std::fabs(d));
        }
        ExpectBits(got, want, n);
      }
    }
  }
}

TEST(RowLoopsTest, StoreAlibiRowFallsBackPastInt32Distances) {
  const int64_t base = int64_t{1} << 33;
  std::vector<float> got(40, 1.0f), want(40);
  StoreAlibiRow(got.data(), 40, base, -1.0f, /*causal=*/false);
  for (int64_t c = 0; c < 40; ++c) {
    want[c] = -1.0f * std::fabs(static_cast<float>(base - c));
  }
  ExpectBits(got, want, 40);
  EXPECT_EQ(got[0], -8589934592.0f);
}

TEST(RowLoopsTest, StoreRelativeRowReadsTheStridedBias) {
  for (int64_t n : kLengths) {
    const int64_t stride = 3;
    const std::vector<float> shifted = Random(n, 4);
    const std::vector<float> bias = Random(n * stride + 1, 5);
    std::vector<float> got = Random(n, 6);  // overwritten
    std::vector<float> want(got.size());
    StoreRelativeRow(got.data(), n, shifted.data(), bias.data(), stride,
                     0.125f);
    for (int64_t c = 0; c < n; ++c) {
      want[c] = 0.125f * (shifted[c] + bias[c * stride]);
    }
    ExpectBits(got, want, n);
  }
}

TEST(RowLoopsTest, SubtractAndDivideRows) {
  for (int64_t n : kLengths) {
    const std::vector<float> in = Random(n, 7);
    std::vector<float> got(in.size()), want(in.size());
    SubtractRow(in.data(), got.data(), n, 1.5f);
    for (int64_t c = 0; c < n; ++c) want[c] = in[c] - 1.5f;
    ExpectBits(got, want, n);
    SubtractRow(got.data(), got.data(), n, -1.5f);  // in place
    for (int64_t c = 0; c < n; ++c) want[c] = want[c] + 1.5f;
    ExpectBits(got, want, n);
    DivideRow(got.data(), n, 3.0f);
    for (int64_t c = 0; c < n; ++c) want[c] /= 3.0f;
    ExpectBits(got, want, n);
  }
}

// E^T [d, a] in PanelDots' layout: panels of kPanelCols columns, each [d,
// kPanelCols], zeros past column a.
std::vector<float> Panels(const std::vector<float>& et, int64_t d, int64_t a) {
  const int64_t panels = (a + kPanelCols - 1) / kPanelCols;
  std::vector<float> out(static_cast<size_t>(panels * d * kPanelCols), 0.0f);
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t t = 0; t < a; ++t) {
      out[((t / kPanelCols) * d + c) * kPanelCols + t % kPanelCols] =
          et[c * a + t];
    }
  }
  return out;
}

// Every kind of value: normal ones, any bit pattern (NaNs of either sign and
// any payload among them), and chosen high halves (ones, the largest finite
// floats, zeros, the smallest subnormals, infinities, NaNs, and float16's
// overflow threshold and smallest subnormal) with low halves at and around
// the ties.
std::vector<float> SixteenBitCases() {
  std::vector<float> x = Random(4096, 11);
  std::mt19937 gen(12);
  const auto from_bits = [](uint32_t bits) {
    float v;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
  };
  for (int i = 0; i < 4096; ++i) x.push_back(from_bits(gen()));
  for (uint32_t high : {0x3F80u, 0x3F81u, 0x7F7Fu, 0xFF7Fu, 0x0000u, 0x8000u,
                        0x0001u, 0x7F80u, 0xFF80u, 0x7FC0u, 0xFFC1u, 0x477Fu,
                        0x4780u, 0x3380u, 0x3300u, 0xB380u, 0x387Fu}) {
    for (uint32_t low : {0x0000u, 0x0001u, 0x0FFFu, 0x1000u, 0x1001u, 0x2000u,
                         0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) {
      x.push_back(from_bits(high << 16 | low));
    }
  }
  return x;
}

// `store` over every length of kLengths of `x` from two starts, and over the
// whole of it at once, against `want` per value.
template <typename Store, typename Want>
void ExpectStoresAs(Store store, Want want, const std::vector<float>& x) {
  for (int64_t n : kLengths) {
    for (int64_t start : {int64_t{0}, int64_t{4096}}) {
      std::vector<uint16_t> got(static_cast<size_t>(n), 0xDEAD);
      store(x.data() + start, n, got.data());
      for (int64_t c = 0; c < n; ++c) {
        ASSERT_EQ(got[c], want(x[start + c]))
            << "n " << n << " value bits " << std::hex << Bits(x[start + c]);
      }
    }
  }
  std::vector<uint16_t> got(x.size());
  store(x.data(), static_cast<int64_t>(x.size()), got.data());
  for (size_t c = 0; c < x.size(); ++c) {
    ASSERT_EQ(got[c], want(x[c])) << std::hex << Bits(x[c]);
  }
}

TEST(RowLoopsTest, StoreBFloat16RowRoundsAsC10) {
  ExpectStoresAs(
      StoreBFloat16Row, [](float v) { return c10::BFloat16(v).x; },
      SixteenBitCases());
}

// The same cases through the F16C path (where the CPU has it: eight at a
// time, a group with a NaN and the tail by formula), and a NaN with payload
// bits (which F16C would keep) at every offset of a group of eight.
TEST(RowLoopsTest, StoreFloat16RowRoundsAsC10) {
  std::vector<float> x = SixteenBitCases();
  for (int at = 0; at < 8; ++at) {
    std::vector<float> group = Random(8, 20 + at);
    const uint32_t nan = at % 2 == 0 ? 0x7FBFFFFFu : 0xFFC12345u;
    std::memcpy(&group[at], &nan, sizeof(nan));
    x.insert(x.end(), group.begin(), group.end());
  }
  ExpectStoresAs(
      StoreFloat16Row, [](float v) { return c10::Half(v).x; }, x);
}

// Every 16-bit pattern (NaNs of any payload, signalling ones included,
// infinities, subnormals, zeros of either sign), laid out so that each length
// of kLengths from two starts sees groups of eight with and without a NaN;
// each load against `want` bit for bit.
template <typename Load, typename Want>
void ExpectLoadsAs(Load load, Want want) {
  std::vector<uint16_t> x(1 << 16);
  for (uint32_t bits = 0; bits < x.size(); ++bits) {
    // A multiplicative permutation of [0, 2^16): neighbours differ in kind.
    x[bits] = static_cast<uint16_t>(bits * 40503u);
  }
  const auto check = [&](const uint16_t* in, int64_t n) {
    std::vector<float> got(static_cast<size_t>(n) + 1, 12345.0f);
    load(in, n, got.data());
    for (int64_t c = 0; c < n; ++c) {
      ASSERT_EQ(Bits(got[c]), Bits(want(in[c])))
          << "n " << n << " value bits " << std::hex << in[c];
    }
    ASSERT_EQ(got[n], 12345.0f) << "wrote past n " << n;
  };
  for (int64_t n : kLengths) {
    for (int64_t start : {int64_t{0}, int64_t{31741}}) check(&x[start], n);
  }
  check(x.data(), static_cast<int64_t>(x.size()));
}

TEST(RowLoopsTest, LoadBFloat16RowIsExact) {
  ExpectLoadsAs(LoadBFloat16Row,
                [](uint16_t bits) { return BFloat16ToFloat(bits); });
}

// F16C where the CPU has it: a signalling NaN keeps its bits (HalfToFloat's),
// which vcvtph2ps alone would quiet.
TEST(RowLoopsTest, LoadFloat16RowIsExact) {
  ExpectLoadsAs(LoadFloat16Row,
                [](uint16_t bits) { return HalfToFloat(bits); });
}

TEST(RowLoopsTest, PanelDotsAddEachColumnInOrderWhateverTheCall) {
  struct Shape {
    int64_t d, a, a0, n, count;
  };
  for (const Shape& s : {Shape{1, 1, 0, 1, 1}, Shape{3, 40, 5, 33, 1},
                         Shape{64, 200, 0, 200, 16}, Shape{64, 200, 31, 150, 9},
                         Shape{17, 97, 33, 64, 13}, Shape{5, 70, 64, 6, 20},
                         Shape{8, 64, 7, 0, 3}, Shape{65, 33, 1, 32, 8}}) {
    const std::vector<float> et = Random(s.d * s.a, 6);
    const std::vector<float> panels = Panels(et, s.d, s.a);
    const int64_t q_stride = s.d + 3, out_ld = s.n + 5;
    const std::vector<float> q = Random(s.count * q_stride, 7);
    std::vector<float> got(static_cast<size_t>(s.count * out_ld), 1234.5f);
    PanelDots(panels.data(), s.a0, s.n, q.data(), q_stride, s.count, s.d,
              got.data(), out_ld);
    std::vector<float> want = got;
    for (int64_t g = 0; g < s.count; ++g) {
      for (int64_t j = 0; j < out_ld; ++j) {
        if (j >= s.n) {
          want[g * out_ld + j] = 1234.5f;  // untouched
          continue;
        }
        float sum = 0;
        for (int64_t c = 0; c < s.d; ++c) {
          sum += q[g * q_stride + c] * et[c * s.a + s.a0 + j];
        }
        want[g * out_ld + j] = sum;
      }
    }
    ExpectBits(got, want, s.count);
    // One step alone: the same bits as among the others.
    for (int64_t g = 0; g < s.count; g += 4) {
      std::vector<float> alone(static_cast<size_t>(s.n));
      PanelDots(panels.data(), s.a0, s.n, q.data() + g * q_stride, q_stride, 1,
                s.d, alone.data(), s.n);
      for (int64_t j = 0; j < s.n; ++j) {
        ASSERT_EQ(Bits(alone[j]), Bits(got[g * out_ld + j])) << g << " " << j;
      }
    }
  }
}

}  // namespace
}  // namespace attnscore::scoring
