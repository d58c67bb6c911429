// Spinning before sleeping (--batch-worker-spin-us, off by default): a batch
// worker that finds no work spins briefly before it sleeps on the condition
// variable, because waking a sleeping thread can cost more than a small
// request's compute (measured on a 2-core VM, client on the same host, B1 H8
// Lq=Lk=1 logits: the Python client's best of 7 0.43 -> 0.31 ms, the C++ load
// tool's c=1 p50 0.41 -> 0.31 ms). It burns CPU, so it runs only while it
// pays: IdleSpinPolicy remembers how soon work followed the last few times the
// worker went idle, and answers 0 (sleep at once) when it mostly came later
// than a spin would wait. Off by default because that CPU counts against any
// CPU quota: on the same VM, whenever the host took time back (steal time),
// the load tool's c=1 p90 went from 0.5-0.8 ms to 1.5-2.9 ms with spinning.
// libgomp's GOMP_SPINCOUNT and ONNX Runtime's allow_spinning make the same
// trade.
//
// Thread safety: an IdleSpinPolicy belongs to one worker thread;
// SpinUntilChanged may be called from any thread. No errors.
#ifndef ATTNSCORE_SERVER_BATCHING_IDLE_SPIN_H_
#define ATTNSCORE_SERVER_BATCHING_IDLE_SPIN_H_

#include <atomic>
#include <cstdint>

namespace attnscore::batching {

class IdleSpinPolicy {
 public:
  // Spins of up to `spin_us` real microseconds; 0 never spins.
  explicit IdleSpinPolicy(int64_t spin_us) : spin_us_(spin_us) {}

  // How long the worker waited for its next batch after finishing one (0 when
  // work was already queued).
  void RecordGap(int64_t gap_us) {
    recent_ = static_cast<uint8_t>((recent_ << 1) | (gap_us <= spin_us_));
  }

  // How long to spin now: `spin_us` when at least half of the last 8 gaps
  // were short enough for a spin to catch the work, else 0.
  int64_t SpinMicros() const {
    return __builtin_popcount(recent_) >= kMinShortGaps ? spin_us_ : 0;
  }

 private:
  static constexpr int kMinShortGaps = 4;

  const int64_t spin_us_;
  // One bit per recent gap, newest lowest: 1 when it was <= spin_us_. All
  // ones at first, so that a worker spins until gaps say otherwise.
  uint8_t recent_ = 0xff;
};

// Spins (yielding the core to any other runnable thread between looks) until
// `*generation` differs from `seen` or `spin_us` real microseconds have
// passed. True when it changed. Real time, not a batching Clock: the bound is
// on CPU spent, and a spin that ends changes nothing but whether the caller
// then sleeps.
bool SpinUntilChanged(const std::atomic<uint64_t>& generation, uint64_t seen,
                      int64_t spin_us);

}  // namespace attnscore::batching

#endif  // ATTNSCORE_SERVER_BATCHING_IDLE_SPIN_H_
