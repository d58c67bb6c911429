#include "proto/attnscore/v1/proto_layout.h"

namespace attnscore::v1 {

Layout ToProtoLayout(attnscore::Layout layout) {
  switch (layout) {
    case attnscore::Layout::kBHSD:
      return BHSD;
    case attnscore::Layout::kBSHD:
      return BSHD;
    case attnscore::Layout::kSBHD:
      return SBHD;
  }
  return LAYOUT_UNSPECIFIED;
}

std::optional<attnscore::Layout> FromProtoLayout(int value) {
  switch (value) {
    case LAYOUT_UNSPECIFIED:
    case BHSD:
      return attnscore::Layout::kBHSD;
    case BSHD:
      return attnscore::Layout::kBSHD;
    case SBHD:
      return attnscore::Layout::kSBHD;
    default:
      return std::nullopt;
  }
}

}  // namespace attnscore::v1
