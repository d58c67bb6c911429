#include "common/layout.h"

#include <cctype>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnscore {

const char* LayoutName(Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return "BHSD";
    case Layout::kBSHD:
      return "BSHD";
    case Layout::kSBHD:
      return "SBHD";
  }
  return "?";
}

const char* LayoutAxes(Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return "[B,H,S,D]";
    case Layout::kBSHD:
      return "[B,S,H,D]";
    case Layout::kSBHD:
      return "[S,B,H,D]";
  }
  return "?";
}

std::optional<Layout> ParseLayout(std::string_view name) {
  std::string upper(name);
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  for (Layout layout : {Layout::kBHSD, Layout::kBSHD, Layout::kSBHD}) {
    if (upper == LayoutName(layout)) return layout;
  }
  return std::nullopt;
}

Dims DimsOf(const std::vector<int64_t>& shape, Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return {shape[0], shape[1], shape[2], shape[3]};
    case Layout::kBSHD:
      return {shape[0], shape[2], shape[1], shape[3]};
    case Layout::kSBHD:
      return {shape[1], shape[2], shape[0], shape[3]};
  }
  return {};
}

int64_t BatchAxis(Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
    case Layout::kBSHD:
      return 0;
    case Layout::kSBHD:
      return 1;
  }
  return 0;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

}  // namespace attnscore
