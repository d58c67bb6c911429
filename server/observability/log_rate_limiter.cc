#include "server/observability/log_rate_limiter.h"

#include <algorithm>
#include <cstdint>

namespace attnscore::observability {

LogRateLimiter::LogRateLimiter(double per_second, int64_t burst)
    : per_micro_(per_second / 1e6),
      burst_(static_cast<double>(burst)),
      tokens_(static_cast<double>(burst)) {}

LogRateLimiter::Decision LogRateLimiter::Allow(int64_t now_micros) {
  absl::MutexLock lock(&mu_);
  if (last_micros_ >= 0 && now_micros > last_micros_) {
    tokens_ = std::min(
        burst_,
        tokens_ + static_cast<double>(now_micros - last_micros_) * per_micro_);
  }
  last_micros_ = std::max(last_micros_, now_micros);
  if (tokens_ < 1.0) {
    ++left_out_;
    return {};
  }
  tokens_ -= 1.0;
  Decision decision;
  decision.allowed = true;
  decision.left_out = left_out_;
  left_out_ = 0;
  return decision;
}

}  // namespace attnscore::observability
