#include "proto/attnscore/v1/proto_dtype.h"

namespace attnscore::v1 {

DType ToProtoDType(attnscore::DType dtype) {
  switch (dtype) {
    case attnscore::DType::kFloat32:
      return FLOAT32;
    case attnscore::DType::kFloat16:
      return FLOAT16;
    case attnscore::DType::kBFloat16:
      return BFLOAT16;
  }
  return DTYPE_UNSPECIFIED;
}

std::optional<attnscore::DType> FromProtoDType(int value) {
  switch (value) {
    case FLOAT32:
      return attnscore::DType::kFloat32;
    case FLOAT16:
      return attnscore::DType::kFloat16;
    case BFLOAT16:
      return attnscore::DType::kBFloat16;
    default:
      return std::nullopt;
  }
}

}  // namespace attnscore::v1
