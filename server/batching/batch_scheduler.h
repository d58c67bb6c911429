// The dynamic batcher: groups tasks with equal batch keys into batches of up to
// `max_batch_size` items, closing a batch when it is full or when its oldest
// task has waited `max_queue_delay_us`, and hands each closed batch to a
// callback on a worker thread. Modelled on TensorFlow Serving's BatchScheduler.
// Knows nothing of LibTorch or gRPC.
//
// Ownership: Schedule() takes a task if and only if it returns OK; the batcher
// then owns it until it is handed to the callback (in a batch) or dropped
// through BatchTask::Drop.
//
// Thread safety: Schedule(), QueueDepth(), IdleSpins(), RunOnEachWorker() and
// Shutdown() may be called from any thread (the last two not from the
// callback). Time comes from the injected Clock, so timeouts are tested with a
// fake clock, not sleeps.
//
// Errors: UNAVAILABLE when the queue is full or the batcher is shutting down
// ("retry later"); INVALID_ARGUMENT from Create() for bad options.
#ifndef ATTNSCORE_SERVER_BATCHING_BATCH_SCHEDULER_H_
#define ATTNSCORE_SERVER_BATCHING_BATCH_SCHEDULER_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/batching/clock.h"

namespace attnscore::batching {

// One unit of work: a request contributing size() batch items.
class BatchTask {
 public:
  virtual ~BatchTask() = default;
  // Number of batch items this task contributes (>= 1).
  virtual size_t size() const = 0;
  // Tasks batch together iff their keys are equal.
  virtual const std::string& batch_key() const = 0;
  // Clock time (micros) after which the task is dropped with DEADLINE_EXCEEDED
  // instead of run.
  virtual int64_t deadline_micros() const { return INT64_MAX; }
  // A cancelled task is dropped with CANCELLED instead of run.
  virtual bool cancelled() const { return false; }
  // Called exactly once, on a worker thread, for a task the batcher drops
  // (expired, cancelled); the task must answer its caller with `reason`.
  virtual void Drop(const absl::Status& reason) = 0;
};

// The member initialisers are the server's defaults: attnscore-server's flags
// (--max-batch-size, --max-queue-delay-us, --max-queue, --batch-workers) take
// theirs from a default-constructed BatchSchedulerOptions.
struct BatchSchedulerOptions {
  // Most items (sum of task sizes) per batch. A single task larger than this
  // runs alone.
  size_t max_batch_size = 32;
  // How long the oldest task of an open batch waits for company before the
  // batch is closed, in Clock microseconds. 0 (the default, as Triton's): a
  // batch never waits for company; it closes when a worker is free to run it,
  // taking every task of its key that queued while the workers were busy, so a
  // lone request runs at once and batching costs no latency. A positive value
  // holds a batch open up to that long, for fuller batches.
  int64_t max_queue_delay_us = 0;
  // Most tasks waiting (queued, not yet handed to a worker); beyond it Schedule
  // is UNAVAILABLE.
  size_t max_enqueued_tasks = 256;
  // Worker threads that run the callback.
  int num_batch_threads = 1;
  // A worker that finishes a batch and finds no work spins up to this long
  // (real microseconds, yielding the core to any runnable thread) before it
  // sleeps, so that a request arriving meanwhile starts without a thread
  // wake-up; only while recent requests came that soon (IdleSpinPolicy), and
  // one worker at a time. At most kMaxIdleSpinUs. 0 (the default) never
  // spins: the CPU a spin burns counts against a CPU quota (a container's
  // limit, a VM's share), and where one applies it slows everything else
  // (see idle_spin.h).
  int64_t idle_spin_us = 0;
  // The workers' thread name, as `top -H`, `ps -L` and perf show it (and the
  // name threads they start inherit); the kernel keeps 15 bytes of it.
  std::string thread_name = "attnscore-batch";
};

inline constexpr int64_t kMaxIdleSpinUs = 100'000;

// What the workers' spins (BatchSchedulerOptions::idle_spin_us) did since the
// scheduler started: how many there were, how many ended because work arrived,
// and the real time they took together.
struct IdleSpinStats {
  uint64_t spins = 0;
  uint64_t hits = 0;
  int64_t micros = 0;
};

namespace internal {
class BatchSchedulerCore;
}  // namespace internal

// Batches tasks of type TaskType, which must derive from BatchTask.
//
// A batch for a key is closed when adding the next task of that key would push
// it past `max_batch_size` items (so it closes exactly at `max_batch_size`), or
// when its oldest task has waited `max_queue_delay_us` by the Clock; with a
// `max_queue_delay_us` of 0, when a worker is free to take it (one batch per
// free worker, oldest first: the others stay open and keep filling). A single
// task larger than `max_batch_size` runs alone. Closed batches are handed to
// the callback in closing order; batches closed together (timeouts, Shutdown)
// go in order of their oldest task's arrival, so no key starves. Before a batch
// reaches the callback, cancelled tasks are dropped with CANCELLED and tasks
// whose deadline_micros() is at or before the Clock's now with
// DEADLINE_EXCEEDED; a batch left empty is not delivered. Every accepted task
// reaches the callback or is dropped, exactly once.
template <typename TaskType>
class BatchScheduler {
 public:
  // Runs on one of `num_batch_threads` worker threads; several batches may run
  // at once. Owns the tasks it receives and must answer each of them. Must not
  // throw, nor call Shutdown() or destroy the scheduler (a worker cannot join
  // itself).
  using BatchCallback =
      std::function<void(std::vector<std::unique_ptr<TaskType>> batch)>;

  // INVALID_ARGUMENT naming the option for bad options (max_batch_size 0,
  // negative max_queue_delay_us, num_batch_threads < 1, max_enqueued_tasks
  // 0, idle_spin_us outside [0, kMaxIdleSpinUs]), a null clock or an empty
  // callback. `clock` is not owned and must outlive the scheduler. Starts the
  // worker threads.
  static absl::StatusOr<std::unique_ptr<BatchScheduler>> Create(
      const BatchSchedulerOptions& options, Clock* clock,
      BatchCallback callback);

  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  // Calls Shutdown(): every task already accepted is still run or dropped
  // before this returns.
  ~BatchScheduler();

  // Never blocks (beyond a short internal lock). Takes `*task`, leaving it
  // null, if and only if it returns OK. UNAVAILABLE ("queue full: N tasks
  // waiting, limit M; retry later") when `max_enqueued_tasks` tasks are
  // waiting, UNAVAILABLE when shut down; INVALID_ARGUMENT for a null task or a
  // task of size 0.
  absl::Status Schedule(std::unique_ptr<TaskType>* task);

  // Stops accepting tasks; closes every open batch at once (without waiting for
  // timeouts); runs every queued task through the callback or drops it; joins
  // the workers. Idempotent and thread-safe: every call returns only once the
  // workers are joined. REQUIRES: not called from the callback.
  void Shutdown();

  // Tasks waiting: accepted, not yet taken by a worker to be run or dropped.
  size_t QueueDepth() const;

  IdleSpinStats IdleSpins() const;

  // Runs `chore` once on every worker thread, between batches, and returns
  // when all have: per-thread set-up that the first batch of each worker would
  // otherwise pay for (a compute thread team, thread-local buffers, a device
  // stream). Calls are serialised. UNAVAILABLE when the scheduler is already
  // shut down; once accepted, every worker runs it even if Shutdown() begins
  // meanwhile (the workers run it before they exit). `chore` must not throw,
  // nor call back into the scheduler. REQUIRES: not called from the callback
  // (its worker would wait for itself).
  absl::Status RunOnEachWorker(const std::function<void()>& chore);

 private:
  explicit BatchScheduler(std::unique_ptr<internal::BatchSchedulerCore> core);

  std::unique_ptr<internal::BatchSchedulerCore> core_;
};

// Implementation details follow. API users need not read.

namespace internal {

// The type-erased scheduler behind every BatchScheduler<T>: all the logic lives
// here, over BatchTask, so the template only casts. Thread safety and contract
// as BatchScheduler's.
class BatchSchedulerCore {
 public:
  using Batch = std::vector<std::unique_ptr<BatchTask>>;
  using Callback = std::function<void(Batch batch)>;

  static absl::StatusOr<std::unique_ptr<BatchSchedulerCore>> Create(
      const BatchSchedulerOptions& options, Clock* clock, Callback callback);

  BatchSchedulerCore(const BatchSchedulerCore&) = delete;
  BatchSchedulerCore& operator=(const BatchSchedulerCore&) = delete;
  ~BatchSchedulerCore();

  absl::Status Schedule(std::unique_ptr<BatchTask>* task);
  void Shutdown();
  size_t QueueDepth() const;
  IdleSpinStats IdleSpins() const;
  absl::Status RunOnEachWorker(const std::function<void()>& chore);

 private:
  // A batch still accepting tasks of its key.
  struct OpenBatch {
    std::string key;
    int64_t opened_micros = 0;  // Arrival of its oldest task.
    size_t num_items = 0;       // Sum of the tasks' sizes.
    Batch tasks;                // In arrival order.
  };
  // Oldest first: the clock is monotonic, so the front batch is the next to
  // time out.
  using OpenList = std::list<OpenBatch>;

  BatchSchedulerCore(const BatchSchedulerOptions& options, Clock* clock,
                     Callback callback);

  void WorkerLoop();
  // Runs the chore of RunOnEachWorker if this worker has not yet run the
  // current one (`*seen` is its last round); true when it did (look again).
  // Returns with `lock` held.
  bool RunChoreIfNew(std::unique_lock<std::mutex>& lock, uint64_t* seen)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With nothing to do: spins up to `spin_us` for Schedule or Shutdown to
  // change the state, unless another worker is spinning. True when the state
  // changed (look again); false: sleep on work_cv_. Returns with `lock` held.
  bool SpinForWork(std::unique_lock<std::mutex>& lock, int64_t spin_us)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the cancelled and expired tasks of `batch`, then runs the callback on
  // the rest.
  void RunBatch(Batch batch);
  // Moves `open` to the back of closed_batches_.
  void CloseLocked(OpenList::iterator open) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t TimeoutAtMicros(const OpenBatch& open) const;

  const BatchSchedulerOptions options_;
  Clock* const clock_;
  const Callback callback_;

  // std::mutex rather than absl::Mutex because Clock::WaitUntil waits on a
  // std::condition_variable, so a fake clock can wake the workers.
  mutable std::mutex mu_;
  // Signalled when a batch is closed, when the first open batch appears (a
  // worker must start its timeout; with max_queue_delay_us 0, when any batch
  // opens: a free worker takes it) and at shutdown.
  std::condition_variable work_cv_;
  // Bumped, under mu_, by every Schedule and by Shutdown: what a spinning
  // worker watches instead of the condition variable.
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> spinning_{false};  // One spinner at a time.
  std::atomic<uint64_t> spins_{0};
  std::atomic<uint64_t> spin_hits_{0};
  std::atomic<int64_t> spin_micros_{0};
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  OpenList open_batches_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, OpenList::iterator> open_by_key_
      ABSL_GUARDED_BY(mu_);
  // Closed batches not yet taken by a worker, in closing order.
  std::deque<Batch> closed_batches_ ABSL_GUARDED_BY(mu_);
  // Tasks in open_batches_ and closed_batches_: what QueueDepth() reports and
  // max_enqueued_tasks bounds.
  size_t num_waiting_tasks_ ABSL_GUARDED_BY(mu_) = 0;
  // RunOnEachWorker: the chore of round `chore_round_` (0: none yet) and the
  // workers that have not run it yet; chore_cv_ is signalled when the last of
  // them has.
  const std::function<void()>* chore_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t chore_round_ ABSL_GUARDED_BY(mu_) = 0;
  int chore_pending_ ABSL_GUARDED_BY(mu_) = 0;
  std::condition_variable chore_cv_;
  // Serialises RunOnEachWorker calls.
  std::mutex chore_call_mu_;

  // Serialises joining so that a second Shutdown() returns only after the
  // workers are joined.
  std::mutex join_mu_;
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(join_mu_);
};

}  // namespace internal

template <typename TaskType>
absl::StatusOr<std::unique_ptr<BatchScheduler<TaskType>>>
BatchScheduler<TaskType>::Create(const BatchSchedulerOptions& options,
                                 Clock* clock, BatchCallback callback) {
  static_assert(std::is_base_of_v<BatchTask, TaskType>,
                "TaskType must derive from BatchTask");
  internal::BatchSchedulerCore::Callback core_callback;
  if (callback) {
    // The core only ever holds tasks that Schedule() received as TaskType, so
    // the downcast is safe.
    core_callback = [callback = std::move(callback)](
                        internal::BatchSchedulerCore::Batch tasks) {
      std::vector<std::unique_ptr<TaskType>> batch;
      batch.reserve(tasks.size());
      for (std::unique_ptr<BatchTask>& task : tasks) {
        batch.emplace_back(static_cast<TaskType*>(task.release()));
      }
      callback(std::move(batch));
    };
  }
  absl::StatusOr<std::unique_ptr<internal::BatchSchedulerCore>> core =
      internal::BatchSchedulerCore::Create(options, clock,
                                           std::move(core_callback));
  if (!core.ok()) return core.status();
  return std::unique_ptr<BatchScheduler>(new BatchScheduler(*std::move(core)));
}

template <typename TaskType>
BatchScheduler<TaskType>::BatchScheduler(
    std::unique_ptr<internal::BatchSchedulerCore> core)
    : core_(std::move(core)) {}

template <typename TaskType>
BatchScheduler<TaskType>::~BatchScheduler() {
  Shutdown();
}

template <typename TaskType>
absl::Status BatchScheduler<TaskType>::Schedule(
    std::unique_ptr<TaskType>* task) {
  if (task == nullptr) {
    return absl::InvalidArgumentError("Schedule: task is null");
  }
  std::unique_ptr<BatchTask> base(task->release());
  absl::Status status = core_->Schedule(&base);
  // Not taken: hand the task back to the caller untouched.
  if (!status.ok()) task->reset(static_cast<TaskType*>(base.release()));
  return status;
}

template <typename TaskType>
void BatchScheduler<TaskType>::Shutdown() {
  core_->Shutdown();
}

template <typename TaskType>
size_t BatchScheduler<TaskType>::QueueDepth() const {
  return core_->QueueDepth();
}

template <typename TaskType>
IdleSpinStats BatchScheduler<TaskType>::IdleSpins() const {
  return core_->IdleSpins();
}

template <typename TaskType>
absl::Status BatchScheduler<TaskType>::RunOnEachWorker(
    const std::function<void()>& chore) {
  return core_->RunOnEachWorker(chore);
}

}  // namespace attnscore::batching

#endif  // ATTNSCORE_SERVER_BATCHING_BATCH_SCHEDULER_H_
