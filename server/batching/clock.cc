#include "server/batching/clock.h"

#include <chrono>

#include "server/batching/idle_spin.h"

namespace attnscore::batching {

bool Clock::SpinUntilChanged(const std::atomic<uint64_t>& generation,
                             uint64_t seen, int64_t spin_us) {
  return batching::SpinUntilChanged(generation, seen, spin_us);
}

namespace {

class SteadyClock final : public Clock {
 public:
  int64_t NowMicros() const override {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  void WaitUntil(std::condition_variable& cv,
                 std::unique_lock<std::mutex>& lock,
                 int64_t deadline_micros) override {
    using Steady = std::chrono::steady_clock;
    // steady_clock counts nanoseconds in int64: a deadline beyond its range
    // (e.g. INT64_MAX micros, "never") would overflow into the past and turn
    // the wait into a busy loop.
    constexpr int64_t kMaxDeadlineMicros =
        std::chrono::duration_cast<std::chrono::microseconds>(
            Steady::duration::max())
            .count();
    if (deadline_micros >= kMaxDeadlineMicros) {
      cv.wait(lock);
      return;
    }
    cv.wait_until(
        lock, Steady::time_point(std::chrono::duration_cast<Steady::duration>(
                  std::chrono::microseconds(deadline_micros))));
  }
};

}  // namespace

Clock* RealClock() {
  static Clock* const clock = new SteadyClock();
  return clock;
}

}  // namespace attnscore::batching
