// The one mapping between the API's element types (common/dtype.h) and ATen's
// scalar types, for every ATen-level user: the scorer, its tests and
// benchmarks, and the client's optional LibTorch adapter. Header-only, so that
// attnscore_common itself never links LibTorch: include it only where ATen is
// on the include path.
//
// Thread safety: pure functions. Errors: FromScalarType returns std::nullopt
// for a scalar type the API does not carry (callers name it in their status).
#ifndef ATTNSCORE_COMMON_ATEN_DTYPE_H_
#define ATTNSCORE_COMMON_ATEN_DTYPE_H_

#include <c10/core/ScalarType.h>

#include <optional>

#include "common/dtype.h"

namespace attnscore {

constexpr at::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return at::kFloat;
    case DType::kFloat16:
      return at::kHalf;
    case DType::kBFloat16:
      return at::kBFloat16;
  }
  return at::kFloat;  // unreachable: the switch covers every DType
}

constexpr std::optional<DType> FromScalarType(at::ScalarType type) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    if (ToScalarType(dtype) == type) return dtype;
  }
  return std::nullopt;
}

}  // namespace attnscore

#endif  // ATTNSCORE_COMMON_ATEN_DTYPE_H_
