// The one mapping between attnscore::Layout (common/layout.h) and the wire enum
// attnscore.v1.Layout, used by the client library (request encoding) and the
// server (request validation). Target attnscore_proto_wire: no LibTorch.
//
// Thread safety: pure functions; call from any thread.
// Errors: FromProtoLayout returns std::nullopt for any value the enum does not
// define (callers turn that into their own status); LAYOUT_UNSPECIFIED means
// BHSD, as the proto documents. ToProtoLayout cannot fail.
#ifndef ATTNSCORE_PROTO_ATTNSCORE_V1_PROTO_LAYOUT_H_
#define ATTNSCORE_PROTO_ATTNSCORE_V1_PROTO_LAYOUT_H_

#include <optional>

#include "attnscore/v1/attnscore.pb.h"
#include "common/layout.h"

namespace attnscore::v1 {

// kBHSD -> BHSD, kBSHD -> BSHD, kSBHD -> SBHD.
Layout ToProtoLayout(attnscore::Layout layout);

// The inverse of ToProtoLayout, with LAYOUT_UNSPECIFIED read as BHSD. Takes
// the raw enum value (as parsed from the wire, possibly one this build does not
// know).
std::optional<attnscore::Layout> FromProtoLayout(int value);

}  // namespace attnscore::v1

#endif  // ATTNSCORE_PROTO_ATTNSCORE_V1_PROTO_LAYOUT_H_
