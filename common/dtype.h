// Element types shared by the server, the client library and the CLI, with
// exact conversions between float32 and the 16-bit formats. No LibTorch, no
// gRPC.
//
// Thread safety: everything here is a pure function.
// Errors: ParseDType returns std::nullopt for an unknown name.
#ifndef ATTNSCORE_COMMON_DTYPE_H_
#define ATTNSCORE_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace attnscore {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// Bytes per element.
constexpr size_t ElementSize(DType dtype) {
  return dtype == DType::kFloat32 ? 4 : 2;
}

// Safetensors names: "F32", "F16", "BF16".
const char* DTypeName(DType dtype);
std::optional<DType> ParseDType(std::string_view name);

// IEEE binary16 <-> float32, round to nearest even (what LibTorch and numpy
// do).
uint16_t FloatToHalf(float value);
float HalfToFloat(uint16_t bits);

// bfloat16 is the top half of a float32; rounding to nearest even, NaN kept
// quiet.
uint16_t FloatToBFloat16(float value);
inline float BFloat16ToFloat(uint16_t bits) {
  uint32_t word = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &word, sizeof(out));
  return out;
}

// Converts `count` elements between a float32 array and `dtype` bytes
// (little-endian, as on every platform we build for). `out` must hold count *
// ElementSize(dtype) bytes.
void EncodeFloats(const float* in, size_t count, DType dtype, void* out);
void DecodeFloats(const void* in, size_t count, DType dtype, float* out);

}  // namespace attnscore

#endif  // ATTNSCORE_COMMON_DTYPE_H_
