#include "server/batching/idle_spin.h"

#include <atomic>
#include <cstdint>
#include <thread>

#include "gtest/gtest.h"

namespace attnscore::batching {
namespace {

constexpr int64_t kSpinUs = 1000;

TEST(IdleSpinPolicyTest, SpinsUntilMostRecentGapsWereTooLongForIt) {
  IdleSpinPolicy policy(kSpinUs);
  EXPECT_EQ(policy.SpinMicros(), kSpinUs) << "a new worker spins";
  // Of the last 8 gaps at least 4 must have been short: 4 long ones leave 4.
  for (int i = 0; i < 4; ++i) policy.RecordGap(kSpinUs + 1);
  EXPECT_EQ(policy.SpinMicros(), kSpinUs);
  policy.RecordGap(50'000);
  EXPECT_EQ(policy.SpinMicros(), 0) << "5 of the last 8 gaps were long";
  for (int i = 0; i < 3; ++i) policy.RecordGap(50'000);
  EXPECT_EQ(policy.SpinMicros(), 0);
}

TEST(IdleSpinPolicyTest, SpinsAgainOnceRequestsComeSoonAgain) {
  IdleSpinPolicy policy(kSpinUs);
  for (int i = 0; i < 8; ++i) policy.RecordGap(1'000'000);
  ASSERT_EQ(policy.SpinMicros(), 0);
  // Gaps measured while sleeping count too: a gap of exactly the spin's
  // length would have been caught.
  for (int i = 0; i < 3; ++i) policy.RecordGap(kSpinUs);
  EXPECT_EQ(policy.SpinMicros(), 0);
  policy.RecordGap(0);
  EXPECT_EQ(policy.SpinMicros(), kSpinUs);
}

TEST(IdleSpinPolicyTest, ZeroNeverSpins) {
  IdleSpinPolicy policy(0);
  EXPECT_EQ(policy.SpinMicros(), 0);
  for (int i = 0; i < 8; ++i) policy.RecordGap(0);
  EXPECT_EQ(policy.SpinMicros(), 0);
}

TEST(SpinUntilChangedTest, ReturnsAtOnceWhenAlreadyChanged) {
  const std::atomic<uint64_t> generation{7};
  // A spin of the maximum length would take 0.1 s; the answer needs none.
  EXPECT_TRUE(SpinUntilChanged(generation, 6, int64_t{100'000}));
}

TEST(SpinUntilChangedTest, EndsWithoutAChangeAfterItsTime) {
  const std::atomic<uint64_t> generation{3};
  EXPECT_FALSE(SpinUntilChanged(generation, 3, kSpinUs));
  EXPECT_FALSE(SpinUntilChanged(generation, 3, 0));
}

TEST(SpinUntilChangedTest, SeesAnotherThreadsChange) {
  std::atomic<uint64_t> generation{0};
  std::atomic<bool> started{false};
  bool changed = false;
  // 60 s: long enough that only the change can end it on any machine.
  std::thread spinner([&] {
    started.store(true);
    changed = SpinUntilChanged(generation, 0, int64_t{60'000'000});
  });
  while (!started.load()) std::this_thread::yield();
  generation.fetch_add(1);
  spinner.join();
  EXPECT_TRUE(changed);
}

}  // namespace
}  // namespace attnscore::batching
