// The one mapping between attnscore::DType (common/dtype.h) and the wire enum
// attnscore.v1.DType, used by the client library (request encoding, response
// decoding) and the server (request validation, response encoding). Target
// attnscore_proto_wire: no LibTorch.
//
// Thread safety: pure functions; call from any thread.
// Errors: FromProtoDType returns std::nullopt for DTYPE_UNSPECIFIED and for any
// value the enum does not define (callers turn that into their own status);
// ToProtoDType cannot fail.
#ifndef ATTNSCORE_PROTO_ATTNSCORE_V1_PROTO_DTYPE_H_
#define ATTNSCORE_PROTO_ATTNSCORE_V1_PROTO_DTYPE_H_

#include <optional>

#include "attnscore/v1/attnscore.pb.h"
#include "common/dtype.h"

namespace attnscore::v1 {

// kFloat32 -> FLOAT32, kFloat16 -> FLOAT16, kBFloat16 -> BFLOAT16.
DType ToProtoDType(attnscore::DType dtype);

// The inverse of ToProtoDType. Takes the raw enum value (as parsed from the
// wire, possibly one this build does not know).
std::optional<attnscore::DType> FromProtoDType(int value);

}  // namespace attnscore::v1

#endif  // ATTNSCORE_PROTO_ATTNSCORE_V1_PROTO_DTYPE_H_
