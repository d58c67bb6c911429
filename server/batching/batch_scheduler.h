// The dynamic batcher: groups tasks with equal batch keys into batches of up to
// `max_batch_size` items, closing a batch when it is full or when its oldest task has waited
// `batch_timeout_micros`, and hands each closed batch to a callback on a worker thread.
// Modelled on TensorFlow Serving's BatchScheduler. Knows nothing of LibTorch or gRPC.
//
// Ownership: Schedule() takes a task if and only if it returns OK; the batcher then owns it until
// it is handed to the callback (in a batch) or dropped through BatchTask::Drop.
// Thread safety: Schedule(), QueueDepth() and Shutdown() may be called from any thread.
// Time comes from the injected Clock, so timeouts are tested with a fake clock, not sleeps.
// Errors: UNAVAILABLE when the queue is full or the batcher is shutting down ("retry later");
// INVALID_ARGUMENT from Create() for bad options.
#ifndef ATTNSCORE_SERVER_BATCHING_BATCH_SCHEDULER_H_
#define ATTNSCORE_SERVER_BATCHING_BATCH_SCHEDULER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

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
  // Clock time (micros) after which the task is dropped with DEADLINE_EXCEEDED instead of run.
  virtual int64_t deadline_micros() const { return INT64_MAX; }
  // A cancelled task is dropped with CANCELLED instead of run.
  virtual bool cancelled() const { return false; }
  // Called exactly once, on a worker thread, for a task the batcher drops (expired, cancelled);
  // the task must answer its caller with `reason`.
  virtual void Drop(const absl::Status& reason) = 0;
};

struct BatchSchedulerOptions {
  // Most items (sum of task sizes) per batch. A single task larger than this runs alone.
  size_t max_batch_size = 32;
  // How long the oldest task of an open batch waits for company before the batch is closed.
  int64_t batch_timeout_micros = 1000;
  // Most tasks waiting (queued, not yet handed to a worker); beyond it Schedule is UNAVAILABLE.
  size_t max_enqueued_tasks = 1024;
  // Worker threads that run the callback.
  int num_batch_threads = 1;
};

template <typename TaskType>
class BatchScheduler {
 public:
  using BatchCallback = std::function<void(std::vector<std::unique_ptr<TaskType>> batch)>;
  ...
};

}  // namespace attnscore::batching

#endif  // ATTNSCORE_SERVER_BATCHING_BATCH_SCHEDULER_H_
