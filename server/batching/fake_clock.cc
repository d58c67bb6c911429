#include "server/batching/fake_clock.h"

#include <algorithm>
#include <limits>

namespace attnscore::batching {

// Lock order: a waiter's own mutex (held by WaitUntil's caller), then mu_. Wake
// never holds mu_ while it takes a waiter's mutex, so the two orders never
// cross.

int64_t FakeClock::NowMicros() const {
  std::lock_guard<std::mutex> lock(mu_);
  return now_micros_;
}

void FakeClock::WaitUntil(std::condition_variable& cv,
                          std::unique_lock<std::mutex>& lock,
                          int64_t deadline_micros) {
  Waiter waiter{deadline_micros, &cv, lock.mutex()};
  {
    std::lock_guard<std::mutex> clock_lock(mu_);
    if (now_micros_ >= deadline_micros) return;
    waiters_.push_back(&waiter);
    changed_.notify_all();
  }
  // `lock` is held from registration until cv.wait releases it, and Wake
  // notifies while holding the same mutex, so a wake-up cannot fall between the
  // two.
  cv.wait(lock);

  std::unique_lock<std::mutex> clock_lock(mu_);
  if (waiter.registered) {
    waiters_.erase(std::find(waiters_.begin(), waiters_.end(), &waiter));
    waiter.registered = false;
  }
  if (waiter.pins == 0) return;
  // An advancer is about to notify `cv` and needs `lock`'s mutex to do so:
  // release it (after mu_, to keep the lock order) while waiting for the
  // advancer to finish.
  clock_lock.unlock();
  lock.unlock();
  clock_lock.lock();
  changed_.wait(clock_lock, [&waiter] { return waiter.pins == 0; });
  clock_lock.unlock();
  lock.lock();
}

void FakeClock::AdvanceMicros(int64_t micros) {
  std::vector<Waiter*> due;
  {
    std::lock_guard<std::mutex> clock_lock(mu_);
    if (micros <= 0) return;
    // Saturate rather than wrap: advancing "forever" must not move time
    // backwards.
    now_micros_ = micros > std::numeric_limits<int64_t>::max() - now_micros_
                      ? std::numeric_limits<int64_t>::max()
                      : now_micros_ + micros;
    due = TakeDueWaitersLocked();
  }
  Wake(due);
}

void FakeClock::SetMicros(int64_t micros) {
  std::vector<Waiter*> due;
  {
    std::lock_guard<std::mutex> clock_lock(mu_);
    now_micros_ = std::max(now_micros_, micros);
    due = TakeDueWaitersLocked();
  }
  Wake(due);
}

std::vector<FakeClock::Waiter*> FakeClock::TakeDueWaitersLocked() {
  std::vector<Waiter*> due;
  for (Waiter* waiter : waiters_) {
    if (waiter->deadline_micros > now_micros_) continue;
    waiter->registered = false;
    ++waiter->pins;
    due.push_back(waiter);
  }
  waiters_.erase(
      std::remove_if(waiters_.begin(), waiters_.end(),
                     [](const Waiter* waiter) { return !waiter->registered; }),
      waiters_.end());
  return due;
}

void FakeClock::Wake(const std::vector<Waiter*>& due) {
  if (due.empty()) return;
  // Pinned waiters stay inside WaitUntil, so their cv and mutex are still alive
  // here.
  for (Waiter* waiter : due) {
    std::lock_guard<std::mutex> waiter_lock(*waiter->mutex);
    waiter->cv->notify_all();
  }
  std::lock_guard<std::mutex> clock_lock(mu_);
  for (Waiter* waiter : due) --waiter->pins;
  changed_.notify_all();
}

size_t FakeClock::NumWaiters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiters_.size();
}

void FakeClock::BlockUntilWaiters(size_t n) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [this, n] { return waiters_.size() >= n; });
}

}  // namespace attnscore::batching
