// The 16-bit conversions against LibTorch's own (c10::Half, c10::BFloat16),
// exhaustively for every 16-bit pattern and on float32 values around every
// rounding boundary.
#include "common/dtype.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>
#include <random>

#include "gtest/gtest.h"

namespace attnscore {
namespace {

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

TEST(DTypeTest, NamesRoundTrip) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    EXPECT_EQ(ParseDType(DTypeName(dtype)), dtype);
  }
  EXPECT_FALSE(ParseDType("I32").has_value());
  EXPECT_EQ(ElementSize(DType::kFloat32), 4u);
  EXPECT_EQ(ElementSize(DType::kBFloat16), 2u);
}

TEST(DTypeTest, HalfDecodesEveryPatternLikeLibTorch) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const float ours = HalfToFloat(static_cast<uint16_t>(bits));
    const float theirs = static_cast<float>(
        c10::Half(static_cast<uint16_t>(bits), c10::Half::from_bits()));
    if (std::isnan(theirs)) {
      EXPECT_TRUE(std::isnan(ours)) << bits;
    } else {
      EXPECT_EQ(ours, theirs) << bits;
    }
  }
}

TEST(DTypeTest, HalfAndBFloat16EncodeLikeLibTorch) {
  std::mt19937 rng(42);
  std::uniform_int_distribution<uint32_t> any;
  auto check = [](float f) {
    const uint16_t half = FloatToHalf(f);
    const uint16_t bf16 = FloatToBFloat16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(half)));
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(bf16)));
      return;
    }
    EXPECT_EQ(half, c10::Half(f).x) << f;
    EXPECT_EQ(bf16, c10::BFloat16(f).x) << f;
  };
  for (int i = 0; i < 1000000; ++i) check(FromBits(any(rng)));
  // Values at and next to every half rounding boundary: the midpoints between
  // neighbours.
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {
    const float lo = HalfToFloat(static_cast<uint16_t>(bits));
    const float hi = HalfToFloat(static_cast<uint16_t>(bits + 1));
    const float mid = lo + (hi - lo) / 2;
    check(mid);
    check(std::nextafter(mid, 0.0f));
    check(std::nextafter(mid, INFINITY));
    check(-mid);
  }
  for (float f : {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, 1e-8f, 5.96e-8f,
                  1e30f, -1e30f, INFINITY, -INFINITY, std::nanf("")}) {
    check(f);
  }
}

TEST(DTypeTest, EncodeDecodeArrays) {
  const std::vector<float> values = {0.0f, 1.0f,     -2.5f,
                                     0.1f, 65504.0f, 3.0e-5f};
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    std::vector<char> bytes(values.size() * ElementSize(dtype));
    EncodeFloats(values.data(), values.size(), dtype, bytes.data());
    std::vector<float> back(values.size());
    DecodeFloats(bytes.data(), values.size(), dtype, back.data());
    for (size_t i = 0; i < values.size(); ++i) {
      const double tolerance = dtype == DType::kFloat32   ? 0
                               : dtype == DType::kFloat16 ? 1.0 / 2048
                                                          : 1.0 / 256;
      EXPECT_LE(std::fabs(back[i] - values[i]),
                tolerance * std::fabs(values[i]) + 1e-7)
          << DTypeName(dtype) << " " << values[i];
    }
  }
}

}  // namespace
}  // namespace attnscore
