#include "server/batching/idle_spin.h"

#include <sched.h>

#include <chrono>

namespace attnscore::batching {

bool SpinUntilChanged(const std::atomic<uint64_t>& generation, uint64_t seen,
                      int64_t spin_us) {
  using Steady = std::chrono::steady_clock;
  const Steady::time_point until =
      Steady::now() + std::chrono::microseconds(spin_us);
  for (;;) {
    if (generation.load(std::memory_order_acquire) != seen) return true;
    if (Steady::now() >= until) return false;
    // On a machine of few cores the threads that receive the next request
    // may need this one: sched_yield gives it to them and returns at once
    // when none is runnable.
    sched_yield();
  }
}

}  // namespace attnscore::batching
