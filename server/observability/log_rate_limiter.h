// LogRateLimiter: a token bucket for log lines that a caller can trigger at
// will (a client sending bad requests), so that a flood costs the log a
// bounded number of lines and the next line written says how many were left
// out. Time comes from the caller (its injected clock), so tests drive it.
//
// Ownership: a plain object; the owner keeps it as long as it logs.
// Thread safety: Allow may be called from any thread.
// Errors: none.
#ifndef ATTNSCORE_SERVER_OBSERVABILITY_LOG_RATE_LIMITER_H_
#define ATTNSCORE_SERVER_OBSERVABILITY_LOG_RATE_LIMITER_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace attnscore::observability {

class LogRateLimiter {
 public:
  // Up to `burst` lines at once, then `per_second` lines a second.
  // REQUIRES: per_second > 0, burst >= 1.
  LogRateLimiter(double per_second, int64_t burst);

  struct Decision {
    bool allowed = false;
    // When allowed: the lines refused since the previous allowed one.
    int64_t left_out = 0;
  };
  // Whether a line may be written at `now_micros` (monotonic).
  Decision Allow(int64_t now_micros);

 private:
  const double per_micro_;
  const double burst_;
  absl::Mutex mu_;
  double tokens_ ABSL_GUARDED_BY(mu_);
  int64_t last_micros_ ABSL_GUARDED_BY(mu_) = -1;
  int64_t left_out_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace attnscore::observability

#endif  // ATTNSCORE_SERVER_OBSERVABILITY_LOG_RATE_LIMITER_H_
