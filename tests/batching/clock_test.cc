#include "server/batching/clock.h"

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "gtest/gtest.h"
#include "server/batching/fake_clock.h"

namespace attnscore::batching {
namespace {

TEST(FakeClockTest, MovesOnlyWhenToldAndNeverBackwards) {
  FakeClock clock(/*start_micros=*/10);
  EXPECT_EQ(clock.NowMicros(), 10);
  clock.AdvanceMicros(5);
  EXPECT_EQ(clock.NowMicros(), 15);
  clock.AdvanceMicros(-7);  // Ignored: the clock is monotonic.
  EXPECT_EQ(clock.NowMicros(), 15);
  clock.SetMicros(100);
  EXPECT_EQ(clock.NowMicros(), 100);
  clock.SetMicros(50);
  EXPECT_EQ(clock.NowMicros(), 100);
  clock.AdvanceMicros(
      INT64_MAX);  // Saturates instead of wrapping into the past.
  EXPECT_EQ(clock.NowMicros(), INT64_MAX);
}

TEST(FakeClockTest, WaitUntilAReachedDeadlineReturnsAtOnce) {
  FakeClock clock(/*start_micros=*/100);
  std::mutex mu;
  std::condition_variable cv;
  std::unique_lock<std::mutex> lock(mu);
  clock.WaitUntil(
      cv, lock, 100);  // Would hang if it waited: nothing else moves the clock.
  clock.WaitUntil(cv, lock, 5);
  EXPECT_TRUE(lock.owns_lock());
  EXPECT_EQ(clock.NumWaiters(), 0u);
}

// A thread waiting on the fake clock until it reads `deadline`, as the
// batcher's workers do.
class Sleeper {
 public:
  Sleeper(FakeClock& clock, int64_t deadline)
      : thread_([this, &clock, deadline] {
          std::unique_lock<std::mutex> lock(mu_);
          while (!woken_by_notify_ && clock.NowMicros() < deadline) {
            clock.WaitUntil(cv_, lock, deadline);
          }
          done_ = true;
        }) {}
  ~Sleeper() { Join(); }

  void Notify() {
    std::lock_guard<std::mutex> lock(mu_);
    woken_by_notify_ = true;
    cv_.notify_all();
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool woken_by_notify_ = false;  // GUARDED_BY(mu_)
  bool done_ = false;             // GUARDED_BY(mu_)
  std::thread thread_;  // Last: starts once the members it uses exist.
};

TEST(FakeClockTest, AdvanceWakesAWaiterExactlyAtItsDeadline) {
  FakeClock clock;
  Sleeper sleeper(clock, /*deadline=*/100);
  clock.BlockUntilWaiters(1);
  clock.AdvanceMicros(99);
  EXPECT_EQ(clock.NumWaiters(), 1u);
  EXPECT_FALSE(sleeper.done());
  clock.AdvanceMicros(1);
  EXPECT_EQ(clock.NumWaiters(), 0u);
  sleeper.Join();
  EXPECT_TRUE(sleeper.done());
}

TEST(FakeClockTest, SetMicrosWakesOnlyTheWaitersItReaches) {
  FakeClock clock;
  Sleeper early(clock, /*deadline=*/10);
  Sleeper late(clock, /*deadline=*/20);
  clock.BlockUntilWaiters(2);
  clock.SetMicros(15);
  early.Join();
  EXPECT_EQ(clock.NumWaiters(), 1u);
  EXPECT_FALSE(late.done());
  clock.SetMicros(20);
  late.Join();
  EXPECT_EQ(clock.NumWaiters(), 0u);
}

TEST(FakeClockTest, NotifyWakesAWaiterBeforeItsDeadline) {
  FakeClock clock;
  Sleeper sleeper(clock, /*deadline=*/1000);
  clock.BlockUntilWaiters(1);
  sleeper.Notify();
  sleeper.Join();
  EXPECT_TRUE(sleeper.done());
  EXPECT_EQ(clock.NumWaiters(), 0u);
  EXPECT_EQ(clock.NowMicros(), 0);
}

TEST(FakeClockTest, ManyAdvancesRacingManyWaitersLoseNoWakeUp) {
  // Waiters come and go while another thread advances: each must wake once time
  // passes its deadline, whichever side of a registration an advance lands on.
  FakeClock clock;
  constexpr int kRounds = 200;
  std::thread advancer([&] {
    for (int i = 0; i < 4 * kRounds; ++i) {
      clock.AdvanceMicros(1);
      std::this_thread::yield();
    }
  });
  for (int round = 0; round < kRounds; ++round) {
    Sleeper sleeper(clock, /*deadline=*/round + 1);
    sleeper.Join();
    EXPECT_TRUE(sleeper.done());
  }
  advancer.join();
  EXPECT_EQ(clock.NumWaiters(), 0u);
}

TEST(RealClockTest, IsASharedMonotonicClock) {
  ASSERT_NE(RealClock(), nullptr);
  EXPECT_EQ(RealClock(), RealClock());
  const int64_t first = RealClock()->NowMicros();
  const int64_t second = RealClock()->NowMicros();
  EXPECT_GE(second, first);
}

TEST(RealClockTest, WaitUntilReturnsOnceTheDeadlineHasPassed) {
  Clock* clock = RealClock();
  std::mutex mu;
  std::condition_variable cv;
  std::unique_lock<std::mutex> lock(mu);
  const int64_t deadline = clock->NowMicros() + 2000;
  while (clock->NowMicros() < deadline) clock->WaitUntil(cv, lock, deadline);
  EXPECT_GE(clock->NowMicros(), deadline);
  EXPECT_TRUE(lock.owns_lock());
}

TEST(RealClockTest, WaitUntilFarFutureWaitsForANotify) {
  // INT64_MAX micros does not fit steady_clock's nanoseconds; it must mean "no
  // deadline", not overflow into the past and spin.
  Clock* clock = RealClock();
  std::mutex mu;
  std::condition_variable cv;
  bool notified = false;
  int waits = 0;
  std::unique_lock<std::mutex> lock(mu);
  // The notifier needs `mu`, so it can only notify once this thread is waiting.
  std::thread notifier([&] {
    std::lock_guard<std::mutex> notifier_lock(mu);
    notified = true;
    cv.notify_all();
  });
  while (!notified) {
    ++waits;
    clock->WaitUntil(cv, lock, INT64_MAX);
  }
  lock.unlock();
  notifier.join();
  EXPECT_LE(waits, 3) << "WaitUntil(INT64_MAX) returned without a notify";
}

}  // namespace
}  // namespace attnscore::batching
