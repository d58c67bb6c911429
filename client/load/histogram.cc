#include "client/load/histogram.h"

#include <algorithm>
#include <cmath>

namespace attnscore::client::load {
namespace {

constexpr int64_t kSubBuckets = int64_t{1}
                                << LogHistogram::kSubBucketBits;  // 1024

int FloorLog2(uint64_t v) { return 63 - __builtin_clzll(v); }

}  // namespace

// Values below 2 * kSubBuckets have their own index; above, value v with
// magnitude 2^m (m = floor(log2 v)) is shifted right by b = m - kSubBucketBits
// so that v >> b lies in [kSubBuckets, 2 * kSubBuckets), and index = b *
// kSubBuckets + (v >> b). Consecutive magnitudes therefore occupy consecutive
// index ranges of kSubBuckets each.
size_t LogHistogram::IndexOf(int64_t value) {
  if (value < 2 * kSubBuckets) {
    return static_cast<size_t>(std::max<int64_t>(value, 0));
  }
  const int b = FloorLog2(static_cast<uint64_t>(value)) - kSubBucketBits;
  return static_cast<size_t>((int64_t{b} << kSubBucketBits) + (value >> b));
}

int64_t LogHistogram::LowestOf(size_t index) {
  const auto i = static_cast<int64_t>(index);
  if (i < 2 * kSubBuckets) return i;
  const int b = static_cast<int>(i >> kSubBucketBits) - 1;
  return (i - (int64_t{b} << kSubBucketBits)) << b;
}

int64_t LogHistogram::HighestOf(size_t index) {
  const auto i = static_cast<int64_t>(index);
  if (i < 2 * kSubBuckets) return i;
  const int b = static_cast<int>(i >> kSubBucketBits) - 1;
  return ((i - (int64_t{b} << kSubBucketBits) + 1) << b) - 1;
}

void LogHistogram::Record(int64_t value, int64_t count) {
  if (count <= 0) return;
  value = std::max<int64_t>(value, 0);
  const size_t index = IndexOf(value);
  if (index >= counts_.size()) counts_.resize(index + 1, 0);
  counts_[index] += count;
  if (count_ == 0 || value < min_) min_ = value;
  if (count_ == 0 || value > max_) max_ = value;
  count_ += count;
  sum_ += static_cast<double>(value) * static_cast<double>(count);
}

void LogHistogram::Merge(const LogHistogram& other) {
  if (other.count_ == 0) return;
  if (other.counts_.size() > counts_.size()) {
    counts_.resize(other.counts_.size(), 0);
  }
  for (size_t i = 0; i < other.counts_.size(); ++i) {
    counts_[i] += other.counts_[i];
  }
  if (count_ == 0 || other.min_ < min_) min_ = other.min_;
  if (count_ == 0 || other.max_ > max_) max_ = other.max_;
  count_ += other.count_;
  sum_ += other.sum_;
}

int64_t LogHistogram::Percentile(double percent) const {
  if (count_ == 0) return 0;
  if (percent <= 0) return min_;
  if (percent >= 100) return max_;
  // The smallest rank r with r >= percent% of the samples (at least the first
  // sample).
  const auto rank = std::max<int64_t>(
      1, static_cast<int64_t>(
             std::ceil(percent / 100.0 * static_cast<double>(count_))));
  int64_t seen = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen >= rank) return std::clamp(HighestOf(i), min_, max_);
  }
  return max_;
}

std::vector<LogHistogram::Bucket> LogHistogram::Buckets() const {
  std::vector<Bucket> out;
  for (size_t i = 0; i < counts_.size(); ++i) {
    if (counts_[i] > 0) {
      out.push_back(Bucket{LowestOf(i), HighestOf(i), counts_[i]});
    }
  }
  return out;
}

}  // namespace attnscore::client::load
