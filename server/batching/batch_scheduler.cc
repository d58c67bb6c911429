#include "server/batching/batch_scheduler.h"

#include <pthread.h>

#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/batching/idle_spin.h"

namespace attnscore::batching::internal {
namespace {

// Real time for the idle spin (a CPU bound, not batching time: see
// idle_spin.h), whatever clock the scheduler was given.
int64_t RealMicros() { return RealClock()->NowMicros(); }

// Best effort: a name that cannot be set leaves the inherited one.
void NameThisThread(const std::string& name) {
  if (name.empty()) return;
  // Linux refuses names over 15 bytes (ERANGE): keep their first 15.
  const std::string kept = name.substr(0, 15);
  pthread_setname_np(pthread_self(), kept.c_str());
}

}  // namespace

absl::StatusOr<std::unique_ptr<BatchSchedulerCore>> BatchSchedulerCore::Create(
    const BatchSchedulerOptions& options, Clock* clock, Callback callback) {
  if (options.max_batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_batch_size must be >= 1, got ", options.max_batch_size));
  }
  if (options.max_queue_delay_us < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_queue_delay_us must be >= 0, got ", options.max_queue_delay_us));
  }
  if (options.max_enqueued_tasks < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_enqueued_tasks must be >= 1, got ", options.max_enqueued_tasks));
  }
  if (options.num_batch_threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_batch_threads must be >= 1, got ", options.num_batch_threads));
  }
  if (options.idle_spin_us < 0 || options.idle_spin_us > kMaxIdleSpinUs) {
    return absl::InvalidArgumentError(
        absl::StrCat("idle_spin_us must be in [0, ", kMaxIdleSpinUs, "], got ",
                     options.idle_spin_us));
  }
  if (clock == nullptr) {
    return absl::InvalidArgumentError("clock must not be null");
  }
  if (!callback) {
    return absl::InvalidArgumentError("callback must not be empty");
  }
  return std::unique_ptr<BatchSchedulerCore>(
      new BatchSchedulerCore(options, clock, std::move(callback)));
}

BatchSchedulerCore::BatchSchedulerCore(const BatchSchedulerOptions& options,
                                       Clock* clock, Callback callback)
    : options_(options), clock_(clock), callback_(std::move(callback)) {
  std::lock_guard<std::mutex> lock(join_mu_);
  workers_.reserve(options_.num_batch_threads);
  for (int i = 0; i < options_.num_batch_threads; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

BatchSchedulerCore::~BatchSchedulerCore() { Shutdown(); }

absl::Status BatchSchedulerCore::Schedule(std::unique_ptr<BatchTask>* task) {
  if (task == nullptr || *task == nullptr) {
    return absl::InvalidArgumentError("Schedule: task is null");
  }
  const size_t size = (*task)->size();
  if (size == 0) {
    return absl::InvalidArgumentError(
        "Schedule: task size must be >= 1, got 0");
  }

  std::unique_lock<std::mutex> lock(mu_);
  if (shutting_down_) {
    return absl::UnavailableError("batch scheduler is shut down");
  }
  if (num_waiting_tasks_ >= options_.max_enqueued_tasks) {
    return absl::UnavailableError(absl::StrCat(
        "queue full: ", num_waiting_tasks_, " tasks waiting, limit ",
        options_.max_enqueued_tasks, "; retry later"));
  }

  bool wake_workers = false;
  auto found = open_by_key_.find((*task)->batch_key());
  // Close the key's open batch first if this task would push it past the limit,
  // so a batch never exceeds max_batch_size unless it is a single oversized
  // task.
  if (found != open_by_key_.end() &&
      found->second->num_items + size > options_.max_batch_size) {
    CloseLocked(found->second);
    found = open_by_key_.end();
    wake_workers = true;
  }
  if (found == open_by_key_.end()) {
    // The earliest timeout only changes when the first open batch appears;
    // later batches time out after the current front, which some worker is
    // already waiting for. Without a delay a free worker takes any new batch.
    wake_workers |= open_batches_.empty() || options_.max_queue_delay_us == 0;
    OpenBatch& open = open_batches_.emplace_back();
    open.key = (*task)->batch_key();
    open.opened_micros = clock_->NowMicros();
    found =
        open_by_key_.emplace(open.key, std::prev(open_batches_.end())).first;
  }
  const OpenList::iterator open = found->second;
  open->num_items += size;
  open->tasks.push_back(std::move(*task));
  ++num_waiting_tasks_;
  if (open->num_items >= options_.max_batch_size) {
    CloseLocked(open);
    wake_workers = true;
  }
  generation_.fetch_add(1, std::memory_order_release);
  // Notified after the unlock: a worker woken under the lock would find it
  // held and block on it at once (two more context switches before a lone
  // request starts computing). notify_all, not notify_one: a woken worker may
  // take a closed batch and leave no worker waiting for the next timeout.
  lock.unlock();
  if (wake_workers) work_cv_.notify_all();
  return absl::OkStatus();
}

void BatchSchedulerCore::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!shutting_down_) {
      shutting_down_ = true;
      // Oldest first, like timeouts, so shutdown keeps the FIFO order across
      // keys.
      while (!open_batches_.empty()) CloseLocked(open_batches_.begin());
      generation_.fetch_add(1, std::memory_order_release);
      work_cv_.notify_all();
    }
  }
  // Workers exit once no batch is left; every caller waits for them, not only
  // the first.
  std::lock_guard<std::mutex> lock(join_mu_);
  for (std::thread& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
}

size_t BatchSchedulerCore::QueueDepth() const {
  std::lock_guard<std::mutex> lock(mu_);
  return num_waiting_tasks_;
}

IdleSpinStats BatchSchedulerCore::IdleSpins() const {
  IdleSpinStats stats;
  stats.spins = spins_.load(std::memory_order_relaxed);
  stats.hits = spin_hits_.load(std::memory_order_relaxed);
  stats.micros = spin_micros_.load(std::memory_order_relaxed);
  return stats;
}

void BatchSchedulerCore::CloseLocked(OpenList::iterator open) {
  closed_batches_.push_back(std::move(open->tasks));
  open_by_key_.erase(open->key);
  open_batches_.erase(open);
}

int64_t BatchSchedulerCore::TimeoutAtMicros(const OpenBatch& open) const {
  // Saturate: a huge timeout must mean "never", not wrap into the past.
  if (open.opened_micros >
      std::numeric_limits<int64_t>::max() - options_.max_queue_delay_us) {
    return std::numeric_limits<int64_t>::max();
  }
  return open.opened_micros + options_.max_queue_delay_us;
}

absl::Status BatchSchedulerCore::RunOnEachWorker(
    const std::function<void()>& chore) {
  std::lock_guard<std::mutex> call(chore_call_mu_);
  std::unique_lock<std::mutex> lock(mu_);
  if (shutting_down_) {
    return absl::UnavailableError("RunOnEachWorker: the batcher is shut down");
  }
  chore_ = &chore;
  ++chore_round_;
  chore_pending_ = options_.num_batch_threads;
  // Wakes sleeping and spinning workers alike.
  generation_.fetch_add(1, std::memory_order_release);
  work_cv_.notify_all();
  chore_cv_.wait(lock, [this] { return chore_pending_ == 0; });
  chore_ = nullptr;
  return absl::OkStatus();
}

bool BatchSchedulerCore::RunChoreIfNew(std::unique_lock<std::mutex>& lock,
                                       uint64_t* seen) {
  if (*seen == chore_round_) return false;
  *seen = chore_round_;
  const std::function<void()>* chore = chore_;
  lock.unlock();
  (*chore)();
  lock.lock();
  if (--chore_pending_ == 0) chore_cv_.notify_all();
  return true;
}

void BatchSchedulerCore::WorkerLoop() {
  NameThisThread(options_.thread_name);
  IdleSpinPolicy spin(options_.idle_spin_us);
  int64_t idle_since = -1;  // RealMicros() at the end of the last batch.
  bool just_ran_batch = false;
  uint64_t chore_seen = 0;  // The last RunOnEachWorker round this one ran.
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (RunChoreIfNew(lock, &chore_seen)) continue;
    // No delay: this free worker closes the oldest open batch and runs it, with
    // every task that queued while the workers were busy. Only that one: the
    // other keys' batches keep filling until a worker is free for them.
    if (options_.max_queue_delay_us == 0 && closed_batches_.empty() &&
        !open_batches_.empty()) {
      CloseLocked(open_batches_.begin());
    }
    if (!closed_batches_.empty()) {
      Batch batch = std::move(closed_batches_.front());
      closed_batches_.pop_front();
      num_waiting_tasks_ -= batch.size();
      lock.unlock();
      if (idle_since >= 0) spin.RecordGap(RealMicros() - idle_since);
      RunBatch(std::move(batch));
      idle_since = RealMicros();
      just_ran_batch = true;
      lock.lock();
      continue;
    }
    if (open_batches_.empty()) {
      // Shutdown closed every open batch and Schedule accepts no more, so
      // nothing is left. (A chore accepted before Shutdown was run at the top
      // of this loop: RunOnEachWorker always returns.)
      if (shutting_down_) return;
      // No timeout to watch: sleep until Schedule opens or closes a batch.
      // Spins only right after a batch: once it has slept, the worker waits
      // for a notification.
      const int64_t spin_us = just_ran_batch ? spin.SpinMicros() : 0;
      just_ran_batch = false;
      if (!SpinForWork(lock, spin_us)) work_cv_.wait(lock);
      continue;
    }
    const int64_t now = clock_->NowMicros();
    const int64_t timeout_at = TimeoutAtMicros(open_batches_.front());
    if (now < timeout_at) {
      clock_->WaitUntil(work_cv_, lock, timeout_at);
      continue;
    }
    // Close every batch that has timed out, oldest first, so that batches of
    // all keys leave in order of their oldest task's arrival.
    while (!open_batches_.empty() &&
           TimeoutAtMicros(open_batches_.front()) <= now) {
      CloseLocked(open_batches_.begin());
    }
    // Other workers may take the batches this one will not get to yet.
    if (closed_batches_.size() > 1) work_cv_.notify_all();
  }
}

bool BatchSchedulerCore::SpinForWork(std::unique_lock<std::mutex>& lock,
                                     int64_t spin_us) {
  if (spin_us <= 0 || spinning_.exchange(true, std::memory_order_acquire)) {
    return false;
  }
  const uint64_t seen = generation_.load(std::memory_order_relaxed);
  lock.unlock();
  const int64_t start = RealMicros();
  const bool hit = clock_->SpinUntilChanged(generation_, seen, spin_us);
  spin_micros_.fetch_add(RealMicros() - start, std::memory_order_relaxed);
  spins_.fetch_add(1, std::memory_order_relaxed);
  if (hit) spin_hits_.fetch_add(1, std::memory_order_relaxed);
  spinning_.store(false, std::memory_order_release);
  lock.lock();
  // A Schedule between the spin's last look and the lock notified no one
  // (this worker was not waiting): look again rather than sleep through it.
  return generation_.load(std::memory_order_relaxed) != seen;
}

void BatchSchedulerCore::RunBatch(Batch batch) {
  const int64_t now = clock_->NowMicros();
  Batch runnable;
  runnable.reserve(batch.size());
  for (std::unique_ptr<BatchTask>& task : batch) {
    if (task->cancelled()) {
      task->Drop(absl::CancelledError(
          "task was cancelled while waiting for its batch"));
    } else if (const int64_t deadline = task->deadline_micros();
               deadline <= now) {
      task->Drop(absl::DeadlineExceededError(
          absl::StrCat("deadline passed while waiting for its batch: deadline ",
                       deadline, " us, now ", now, " us")));
    } else {
      runnable.push_back(std::move(task));
    }
  }
  // Dropped tasks are destroyed with `batch`; they have answered their callers
  // in Drop.
  if (!runnable.empty()) callback_(std::move(runnable));
}

}  // namespace attnscore::batching::internal
