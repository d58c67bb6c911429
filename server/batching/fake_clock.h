// A Clock for tests: time stands still until the test moves it, and threads
// waiting in WaitUntil wake when it reaches their deadline. Modelled on
// TensorFlow's FakeClockEnv.
//
// Ownership: the clock does not own the condition variables and mutexes passed
// to WaitUntil; the caller of WaitUntil keeps them alive until it returns.
//
// Thread safety: every method may be called from any thread. AdvanceMicros and
// SetMicros lock the mutex of each waiter they wake, so they must not be called
// while holding such a mutex.
//
// Errors: none. Time never moves backwards (a monotonic clock).
#ifndef ATTNSCORE_SERVER_BATCHING_FAKE_CLOCK_H_
#define ATTNSCORE_SERVER_BATCHING_FAKE_CLOCK_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "server/batching/clock.h"

namespace attnscore::batching {

class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_micros = 0) : now_micros_(start_micros) {}
  FakeClock(const FakeClock&) = delete;
  FakeClock& operator=(const FakeClock&) = delete;
  // REQUIRES: no thread is waiting in WaitUntil.
  ~FakeClock() override = default;

  int64_t NowMicros() const override;

  // Waits on `cv` until it is notified or AdvanceMicros/SetMicros reach
  // `deadline_micros`. Returns at once if the deadline has already been
  // reached. May briefly release `lock` on the way out (allowed: the caller
  // re-checks its state after any wake-up).
  void WaitUntil(std::condition_variable& cv,
                 std::unique_lock<std::mutex>& lock,
                 int64_t deadline_micros) override;

  // Moves time forward by `micros` (>= 0; negative values are ignored) and
  // wakes every waiter whose deadline is reached. When it returns, those
  // waiters no longer count in NumWaiters() and each has been notified under
  // its own mutex, so none of them misses the wake-up.
  void AdvanceMicros(int64_t micros);
  // Sets time to `micros`, as AdvanceMicros(micros - NowMicros()). Never moves
  // time backwards.
  void SetMicros(int64_t micros);

  // Threads blocked in WaitUntil whose deadline has not been reached.
  size_t NumWaiters() const;
  // Blocks until at least `n` threads are blocked in WaitUntil with deadlines
  // not yet reached: lets a test know a worker has seen its work and is waiting
  // for time to pass, so that the next AdvanceMicros is what wakes it.
  void BlockUntilWaiters(size_t n);

 private:
  // One thread blocked in WaitUntil; lives on that thread's stack.
  struct Waiter {
    int64_t deadline_micros;
    std::condition_variable* cv;
    std::mutex* mutex;
    // Set while in waiters_; cleared by whoever removes it.
    bool registered = true;
    // Advancers currently notifying `cv`; the waiter may not return (and free
    // `cv`'s owner's stack or object) until this drops to 0.
    int pins = 0;
  };

  // Unregisters and pins the waiters whose deadline now_micros_ has reached.
  std::vector<Waiter*> TakeDueWaitersLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Notifies each pinned waiter under its own mutex, then unpins it. Called
  // without mu_.
  void Wake(const std::vector<Waiter*>& due);

  mutable std::mutex mu_;
  // Signalled when waiters_ grows or a Waiter's pins drops.
  std::condition_variable changed_;
  int64_t now_micros_ ABSL_GUARDED_BY(mu_);
  std::vector<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnscore::batching

#endif  // ATTNSCORE_SERVER_BATCHING_FAKE_CLOCK_H_
