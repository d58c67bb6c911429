// A log-bucketed histogram of non-negative integers (latencies in nanoseconds),
// in the manner of HdrHistogram: values below 2^(kSubBucketBits+1) are counted
// exactly, larger ones in buckets whose width is 1/2^kSubBucketBits of their
// magnitude, so every percentile is within 0.1% of the true value however far
// the tail reaches (p99.99 of a million samples, minutes-long outliers) while
// memory stays bounded (a few thousand counters per power of two actually
// reached, grown on demand).
//
// Why not sorted samples (ghz): memory and time grow with the run, and merging
// per-shape or per-thread results means re-sorting; counters merge by addition.
//
// Thread safety: none; the load runner records under its own lock.
// Errors: negative values are recorded as 0.
#ifndef ATTNSCORE_CLIENT_LOAD_HISTOGRAM_H_
#define ATTNSCORE_CLIENT_LOAD_HISTOGRAM_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace attnscore::client::load {

class LogHistogram {
 public:
  // Relative bucket width 2^-10 (< 0.1%).
  static constexpr int kSubBucketBits = 10;

  void Record(int64_t value, int64_t count = 1);
  void Merge(const LogHistogram& other);

  int64_t count() const { return count_; }
  // 0 when empty.
  int64_t min() const { return count_ == 0 ? 0 : min_; }
  int64_t max() const { return max_; }
  double mean() const {
    return count_ == 0 ? 0.0 : sum_ / static_cast<double>(count_);
  }
  // The value at or below which `percent`% of the samples lie (the highest
  // value of the bucket holding that rank, clamped to [min, max]); 0 when
  // empty. Monotonic in `percent`.
  int64_t Percentile(double percent) const;

  struct Bucket {
    int64_t low;   // smallest value counted here
    int64_t high;  // largest value counted here
    int64_t count;
  };
  // Non-empty buckets in increasing order.
  std::vector<Bucket> Buckets() const;

  // Exposed for tests: the bucket index of a value and its value range.
  static size_t IndexOf(int64_t value);
  static int64_t LowestOf(size_t index);
  static int64_t HighestOf(size_t index);

 private:
  std::vector<int64_t> counts_;
  int64_t count_ = 0;
  int64_t min_ = 0;
  int64_t max_ = 0;
  double sum_ = 0;
};

}  // namespace attnscore::client::load

#endif  // ATTNSCORE_CLIENT_LOAD_HISTOGRAM_H_
