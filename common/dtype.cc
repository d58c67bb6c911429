#include "common/dtype.h"

#include <cmath>

namespace attnscore {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "F32";
    case DType::kFloat16:
      return "F16";
    case DType::kBFloat16:
      return "BF16";
  }
  return "?";
}

std::optional<DType> ParseDType(std::string_view name) {
  if (name == "F32") return DType::kFloat32;
  if (name == "F16") return DType::kFloat16;
  if (name == "BF16") return DType::kBFloat16;
  return std::nullopt;
}

uint16_t FloatToHalf(float value) {
  uint32_t x;
  std::memcpy(&x, &value, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // Inf or NaN.
    return static_cast<uint16_t>(sign | 0x7c00u |
                                 (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) {  // Rounds to >= 65520: overflow to infinity.
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (abs < 0x38800000u) {  // Subnormal half (or zero): value * 2^24, rounded
                            // to nearest even.
    float magnitude;
    std::memcpy(&magnitude, &abs, sizeof(magnitude));
    const float scaled =
        std::nearbyint(magnitude * 16777216.0f);  // exact: power-of-two scale
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(scaled));
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits to
  // nearest even.
  uint32_t mantissa_odd = (abs >> 13) & 1u;
  uint32_t rounded = abs + 0xfffu + mantissa_odd;
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  uint32_t word;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24.
    float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    std::memcpy(&word, &magnitude, sizeof(word));
    word |= sign;
  } else if (exponent == 0x1f) {
    word = sign | 0x7f800000u | (mantissa << 13);
  } else {
    word = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &word, sizeof(out));
  return out;
}

uint16_t FloatToBFloat16(float value) {
  uint32_t x;
  std::memcpy(&x, &value, sizeof(x));
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // keep NaN a (quiet) NaN
  }
  const uint32_t rounding_bias = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding_bias) >> 16);
}

void EncodeFloats(const float* in, size_t count, DType dtype, void* out) {
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(out, in, count * sizeof(float));
      return;
    case DType::kFloat16: {
      auto* dst = static_cast<uint16_t*>(out);
      for (size_t i = 0; i < count; ++i) dst[i] = FloatToHalf(in[i]);
      return;
    }
    case DType::kBFloat16: {
      auto* dst = static_cast<uint16_t*>(out);
      for (size_t i = 0; i < count; ++i) dst[i] = FloatToBFloat16(in[i]);
      return;
    }
  }
}

void DecodeFloats(const void* in, size_t count, DType dtype, float* out) {
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(out, in, count * sizeof(float));
      return;
    case DType::kFloat16: {
      const auto* src = static_cast<const uint16_t*>(in);
      for (size_t i = 0; i < count; ++i) out[i] = HalfToFloat(src[i]);
      return;
    }
    case DType::kBFloat16: {
      const auto* src = static_cast<const uint16_t*>(in);
      for (size_t i = 0; i < count; ++i) out[i] = BFloat16ToFloat(src[i]);
      return;
    }
  }
}

}  // namespace attnscore
