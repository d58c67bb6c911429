// Tensor layouts shared by the server, the client library and the CLI: the one
// definition of Layout, its names and how to read [B, H, S, D] out of a shape.
// The wire enum attnscore.v1.Layout maps to it in proto/attnscore/v1/
// proto_layout.h. No LibTorch, no gRPC.
//
// Thread safety: everything here is a pure function.
// Errors: ParseLayout returns std::nullopt for an unknown name.
#ifndef ATTNSCORE_COMMON_LAYOUT_H_
#define ATTNSCORE_COMMON_LAYOUT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/types/span.h"

namespace attnscore {

// B batch, H heads, S sequence, D head dim.
enum class Layout {
  kBHSD,  // [B, H, S, D], canonical
  kBSHD,  // [B, S, H, D], FlashAttention's
  kSBHD,  // [S, B, H, D], labml's [seq, batch, heads, d]
};

// "BHSD", "BSHD", "SBHD".
const char* LayoutName(Layout layout);
// The axis order in brackets, e.g. "[B,S,H,D]", for error messages.
const char* LayoutAxes(Layout layout);
// Case-insensitive inverse of LayoutName.
std::optional<Layout> ParseLayout(std::string_view name);

// Batch, heads, sequence length and head dim of a shape given in a layout.
struct Dims {
  int64_t batch = 0, heads = 0, seq = 0, dim = 0;
};
// REQUIRES: shape.size() == 4.
Dims DimsOf(const std::vector<int64_t>& shape, Layout layout);

// The axis that holds the batch: 1 for SBHD, else 0.
int64_t BatchAxis(Layout layout);

// "[2,8,16,64]", for error messages.
std::string ShapeString(absl::Span<const int64_t> shape);

}  // namespace attnscore

#endif  // ATTNSCORE_COMMON_LAYOUT_H_
