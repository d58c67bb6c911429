// Time for the batcher, injected so that timeouts are tested with a fake clock,
// not sleeps.
//
// Thread safety: every method may be called from any thread.
#ifndef ATTNSCORE_SERVER_BATCHING_CLOCK_H_
#define ATTNSCORE_SERVER_BATCHING_CLOCK_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace attnscore::batching {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic time in microseconds.
  virtual int64_t NowMicros() const = 0;
  // Waits on `cv` (with `lock` held on entry and exit) until it is notified or
  // this clock reaches `deadline_micros`, whichever is first. Spurious wake-ups
  // are allowed.
  virtual void WaitUntil(std::condition_variable& cv,
                         std::unique_lock<std::mutex>& lock,
                         int64_t deadline_micros) = 0;
  // Spins until `*generation` differs from `seen` or `spin_us` have passed;
  // true when it changed. Real time whatever the clock (see idle_spin.h: the
  // bound is on CPU spent); virtual so that a test can act as a spin ends.
  virtual bool SpinUntilChanged(const std::atomic<uint64_t>& generation,
                                uint64_t seen, int64_t spin_us);
};

// std::chrono::steady_clock. A process-wide instance; never destroyed.
Clock* RealClock();

}  // namespace attnscore::batching

#endif  // ATTNSCORE_SERVER_BATCHING_CLOCK_H_
