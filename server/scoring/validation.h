// Request checks and batch keys for the scoring API, before anything is
// allocated. Part of attnscore_scoring_api: no LibTorch.
//
// Thread safety: pure functions; call from any thread.
// Errors: ValidateItem returns INVALID_ARGUMENT naming the field and the
// expected vs. actual value.
#ifndef ATTNSCORE_SERVER_SCORING_VALIDATION_H_
#define ATTNSCORE_SERVER_SCORING_VALIDATION_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "server/scoring/score_spec.h"

namespace attnscore::scoring {

// What one pass over a tensor's bytes, read as `dtype`, found (FiniteScanner):
// the flat index of the first element whose exponent bits are all ones (NaN
// or Inf), kAllFinite when there is none, and the largest magnitude
// (meaningful only when all are finite).
struct FiniteScan {
  static constexpr size_t kAllFinite = SIZE_MAX;
  size_t first_non_finite = kAllFinite;
  float max_abs = 0;
  DType dtype = DType::kFloat32;
};

// `scan` when it read the bytes as `dtype`: a scan holds only for the dtype
// it read them as, and a later field may change a tensor's dtype.
inline std::optional<FiniteScan> ScanAs(const std::optional<FiniteScan>& scan,
                                        DType dtype) {
  if (scan.has_value() && scan->dtype == dtype) return scan;
  return std::nullopt;
}

// Scans a tensor's bytes for NaN/Inf and their largest magnitude as they
// arrive in order, in pieces of whole elements: a parser that copies a
// request's bytes scans each piece while it is still in cache, so the bytes
// are read from memory once. One pass over all the bytes gives what
// ValidateItem's own scan gives.
//
// Thread safety: one scanner per tensor, used by one thread at a time.
class FiniteScanner {
 public:
  explicit FiniteScanner(DType dtype) : dtype_(dtype) {}

  // The next `bytes` bytes of the tensor; REQUIRES: a multiple of the
  // element size. After a NaN or Inf the rest is not read.
  void Consume(const void* data, size_t bytes);
  // What the pieces so far hold.
  FiniteScan Finish() const;
  DType dtype() const { return dtype_; }

 private:
  DType dtype_;
  size_t elements_ = 0;  // consumed so far
  size_t first_non_finite_ = FiniteScan::kAllFinite;
  uint32_t max_bits_ = 0;  // the largest sign-cleared bit pattern
};

// Validates one item against the spec: dtypes, ranks, shapes vs. byte counts,
// H/D agreement, key_lengths, causal Lq <= Lk, scale, the bias kind's own
// parameters (slopes; the relative model's H, D and P), values finite.
//
// `scans`: what a parser that scanned the item's very bytes, as their dtype,
// while it copied them (service/score_request_parser.h) found; a tensor with a
// scan is not read a second time.
struct InputScans {
  std::optional<FiniteScan> query;
  std::optional<FiniteScan> key;
  std::optional<FiniteScan> value;
};
absl::Status ValidateItem(const ScoreSpec& spec, const ScoreItem& item,
                          const InputScans& scans = {});

// Items with equal keys can share one Scorer::ScoreBatch call.
std::string BatchKey(const ScoreSpec& spec, const ScoreItem& item);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_VALIDATION_H_
