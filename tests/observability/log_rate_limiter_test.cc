#include "server/observability/log_rate_limiter.h"

#include <cstdint>

#include "gtest/gtest.h"

namespace attnscore::observability {
namespace {

constexpr int64_t kSecond = 1'000'000;

TEST(LogRateLimiterTest, BurstThenRateAndCountsWhatItLeftOut) {
  LogRateLimiter limiter(/*per_second=*/10, /*burst=*/3);
  const int64_t t0 = 5 * kSecond;
  for (int i = 0; i < 3; ++i) {
    const LogRateLimiter::Decision d = limiter.Allow(t0);
    EXPECT_TRUE(d.allowed) << i;
    EXPECT_EQ(d.left_out, 0);
  }
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(limiter.Allow(t0).allowed);
  // 10 a second: one token after 0.1 s, not before.
  EXPECT_FALSE(limiter.Allow(t0 + kSecond / 10 - 1).allowed);
  const LogRateLimiter::Decision next = limiter.Allow(t0 + kSecond / 10);
  EXPECT_TRUE(next.allowed);
  EXPECT_EQ(next.left_out, 101);
  EXPECT_FALSE(limiter.Allow(t0 + kSecond / 10).allowed);
  // A long quiet spell refills to the burst, no further.
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(limiter.Allow(t0 + 60 * kSecond).allowed) << i;
  }
  EXPECT_FALSE(limiter.Allow(t0 + 60 * kSecond).allowed);
}

TEST(LogRateLimiterTest, TimeGoingBackwardsGrantsNothing) {
  LogRateLimiter limiter(/*per_second=*/1, /*burst=*/1);
  EXPECT_TRUE(limiter.Allow(10 * kSecond).allowed);
  EXPECT_FALSE(limiter.Allow(5 * kSecond).allowed);
  EXPECT_FALSE(limiter.Allow(10 * kSecond + kSecond / 2).allowed);
  const LogRateLimiter::Decision d = limiter.Allow(11 * kSecond);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.left_out, 2);
}

}  // namespace
}  // namespace attnscore::observability
