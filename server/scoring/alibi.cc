#include "server/scoring/alibi.h"

#include <cmath>

namespace attnscore::scoring {
namespace {

// Mirrors the reference `get_slopes` recursion, in double.
std::vector<double> SlopesDouble(int64_t n) {
  const double log2n = std::log2(static_cast<double>(n));
  if (std::floor(log2n) == log2n) {
    const double start = std::pow(2.0, -std::pow(2.0, -(log2n - 3.0)));
    std::vector<double> slopes(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      slopes[i] = start * std::pow(start, static_cast<double>(i));
    }
    return slopes;
  }
  const int64_t closest = int64_t{1} << static_cast<int>(std::floor(log2n));
  std::vector<double> slopes = SlopesDouble(closest);
  const std::vector<double> doubled = SlopesDouble(2 * closest);
  for (int64_t i = 0; i < n - closest; ++i) slopes.push_back(doubled[2 * i]);
  return slopes;
}

}  // namespace

std::vector<float> AlibiSlopes(int64_t heads) {
  std::vector<float> out;
  if (heads < 1) return out;
  for (double s : SlopesDouble(heads)) out.push_back(static_cast<float>(s));
  return out;
}

}  // namespace attnscore::scoring
