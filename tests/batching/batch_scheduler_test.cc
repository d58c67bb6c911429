#include "server/batching/batch_scheduler.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/batching/fake_clock.h"

namespace attnscore::batching {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Waits in these tests are for other threads to finish work that is already
// due; the limit only turns a bug (a batch never delivered) into a failure
// instead of a hang.
constexpr auto kBugTimeout = std::chrono::seconds(30);
// A batch timeout the tests never reach unless they mean to.
constexpr int64_t kNeverMicros = int64_t{3600} * 1000 * 1000;

class Recorder;

class TestTask final : public BatchTask {
 public:
  TestTask(int id, size_t size, std::string key, Recorder* recorder)
      : id_(id), size_(size), key_(std::move(key)), recorder_(recorder) {}

  size_t size() const override { return size_; }
  const std::string& batch_key() const override { return key_; }
  int64_t deadline_micros() const override { return deadline_micros_; }
  bool cancelled() const override { return cancelled_.load(); }
  void Drop(const absl::Status& reason) override;

  int id() const { return id_; }
  void set_deadline_micros(int64_t deadline) { deadline_micros_ = deadline; }
  void Cancel() { cancelled_.store(true); }

 private:
  const int id_;
  const size_t size_;
  const std::string key_;
  Recorder* const recorder_;
  int64_t deadline_micros_ = INT64_MAX;
  std::atomic<bool> cancelled_{false};
};

// What became of every task: the batches the callback received and the drops,
// in order.
class Recorder {
 public:
  struct DeliveredBatch {
    std::string key;
    std::vector<int> ids;
    size_t num_items = 0;
  };

  void RecordBatch(const std::vector<std::unique_ptr<TestTask>>& batch) {
    DeliveredBatch delivered;
    // An empty batch must never be delivered; record it (key "") rather than
    // crash on it.
    if (!batch.empty()) delivered.key = batch.front()->batch_key();
    for (const std::unique_ptr<TestTask>& task : batch) {
      delivered.ids.push_back(task->id());
      delivered.num_items += task->size();
      if (task->batch_key() != delivered.key) mixed_keys_.store(true);
    }
    std::lock_guard<std::mutex> lock(mu_);
    batches_.push_back(std::move(delivered));
    num_tasks_ += batch.size();
    changed_.notify_all();
  }

  void RecordDrop(int id, absl::StatusCode code) {
    std::lock_guard<std::mutex> lock(mu_);
    drops_.emplace_back(id, code);
    ++num_tasks_;
    changed_.notify_all();
  }

  // True once at least `n` batches were delivered.
  bool WaitForBatches(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, kBugTimeout,
                             [&] { return batches_.size() >= n; });
  }
  // True once at least `n` tasks were delivered or dropped.
  bool WaitForTasks(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, kBugTimeout,
                             [&] { return num_tasks_ >= n; });
  }

  std::vector<DeliveredBatch> batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  std::vector<std::vector<int>> batch_ids() const {
    std::vector<std::vector<int>> ids;
    for (const DeliveredBatch& batch : batches()) ids.push_back(batch.ids);
    return ids;
  }
  std::vector<std::pair<int, absl::StatusCode>> drops() const {
    std::lock_guard<std::mutex> lock(mu_);
    return drops_;
  }
  // How often each task id was delivered or dropped.
  std::map<int, int> times_accounted() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<int, int> times;
    for (const DeliveredBatch& batch : batches_) {
      for (int id : batch.ids) ++times[id];
    }
    for (const auto& [id, code] : drops_) ++times[id];
    return times;
  }
  size_t num_batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_.size();
  }
  bool mixed_keys() const { return mixed_keys_.load(); }

 private:
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::vector<DeliveredBatch> batches_;                  // GUARDED_BY(mu_)
  std::vector<std::pair<int, absl::StatusCode>> drops_;  // GUARDED_BY(mu_)
  size_t num_tasks_ = 0;                                 // GUARDED_BY(mu_)
  std::atomic<bool> mixed_keys_{false};
};

void TestTask::Drop(const absl::Status& reason) {
  recorder_->RecordDrop(id_, reason.code());
}

using Scheduler = BatchScheduler<TestTask>;

BatchSchedulerOptions Options(size_t max_batch_size, int64_t max_queue_delay_us,
                              int num_batch_threads = 1) {
  BatchSchedulerOptions options;
  options.max_batch_size = max_batch_size;
  options.max_queue_delay_us = max_queue_delay_us;
  options.num_batch_threads = num_batch_threads;
  return options;
}

class BatchSchedulerTest : public ::testing::Test {
 protected:
  // A scheduler on the fake clock whose callback records every batch, then runs
  // `also`.
  std::unique_ptr<Scheduler> MakeScheduler(
      const BatchSchedulerOptions& options,
      const std::function<void(const std::vector<std::unique_ptr<TestTask>>&)>&
          also = nullptr) {
    absl::StatusOr<std::unique_ptr<Scheduler>> scheduler = Scheduler::Create(
        options, &clock_,
        [this, also](const std::vector<std::unique_ptr<TestTask>>& batch) {
          recorder_.RecordBatch(batch);
          if (also) also(batch);
        });
    EXPECT_TRUE(scheduler.ok()) << scheduler.status();
    return scheduler.ok() ? *std::move(scheduler) : nullptr;
  }

  std::unique_ptr<TestTask> NewTask(size_t size = 1,
                                    const std::string& key = "k") {
    return std::make_unique<TestTask>(next_id_++, size, key, &recorder_);
  }

  // Schedules a new task and returns its id, or -1 if Schedule failed.
  int Add(Scheduler& scheduler, size_t size = 1, const std::string& key = "k") {
    std::unique_ptr<TestTask> task = NewTask(size, key);
    const int id = task->id();
    const absl::Status status = scheduler.Schedule(&task);
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_EQ(task, nullptr) << "an accepted task must be taken";
    return status.ok() ? id : -1;
  }

  FakeClock clock_;
  Recorder recorder_;
  int next_id_ = 0;
};

TEST_F(BatchSchedulerTest, CreateRejectsInvalidOptionsNamingTheOption) {
  struct Case {
    std::function<void(BatchSchedulerOptions&)> spoil;
    std::string option;
  };
  const std::vector<Case> cases = {
      {[](BatchSchedulerOptions& o) { o.max_batch_size = 0; },
       "max_batch_size"},
      {[](BatchSchedulerOptions& o) { o.max_queue_delay_us = -1; },
       "max_queue_delay_us"},
      {[](BatchSchedulerOptions& o) { o.num_batch_threads = 0; },
       "num_batch_threads"},
      {[](BatchSchedulerOptions& o) { o.num_batch_threads = -3; },
       "num_batch_threads"},
      {[](BatchSchedulerOptions& o) { o.max_enqueued_tasks = 0; },
       "max_enqueued_tasks"},
      {[](BatchSchedulerOptions& o) { o.idle_spin_us = -1; }, "idle_spin_us"},
      {[](BatchSchedulerOptions& o) { o.idle_spin_us = kMaxIdleSpinUs + 1; },
       "idle_spin_us"},
  };
  for (const Case& c : cases) {
    BatchSchedulerOptions options;
    c.spoil(options);
    absl::StatusOr<std::unique_ptr<Scheduler>> scheduler = Scheduler::Create(
        options, &clock_, [](const std::vector<std::unique_ptr<TestTask>>&) {});
    EXPECT_EQ(scheduler.status().code(), absl::StatusCode::kInvalidArgument)
        << c.option;
    EXPECT_THAT(scheduler.status().message(), HasSubstr(c.option));
  }
}

TEST_F(BatchSchedulerTest, CreateRejectsNullClockAndEmptyCallback) {
  const BatchSchedulerOptions options;
  EXPECT_EQ(
      Scheduler::Create(options, nullptr,
                        [](const std::vector<std::unique_ptr<TestTask>>&) {})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Scheduler::Create(options, &clock_, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The defaults and a zero timeout (batch whatever is there right away) are
  // valid.
  EXPECT_TRUE(
      Scheduler::Create(Options(1, 0), &clock_,
                        [](const std::vector<std::unique_ptr<TestTask>>&) {})
          .ok());
}

TEST_F(BatchSchedulerTest, ScheduleRejectsNullAndEmptyTasks) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(4, kNeverMicros));
  std::unique_ptr<TestTask> null_task;
  EXPECT_EQ(scheduler->Schedule(&null_task).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(scheduler->Schedule(nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  std::unique_ptr<TestTask> empty = NewTask(/*size=*/0);
  EXPECT_EQ(scheduler->Schedule(&empty).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty, nullptr) << "a rejected task stays with the caller";
  EXPECT_EQ(scheduler->QueueDepth(), 0u);
}

TEST_F(BatchSchedulerTest, TimeoutClosesBatchExactlyWhenOldestTaskHasWaited) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(8, /*max_queue_delay_us=*/100));
  const int first = Add(*scheduler);
  clock_.BlockUntilWaiters(
      1);  // The worker is waiting for the first task's timeout.
  clock_.AdvanceMicros(50);
  const int second =
      Add(*scheduler);  // Joins the batch; does not restart its timeout.

  clock_.AdvanceMicros(
      49);  // t = 99: one microsecond short of the oldest task's timeout.
  EXPECT_EQ(clock_.NumWaiters(), 1u)
      << "the worker must still be asleep at timeout - 1";
  EXPECT_THAT(recorder_.batch_ids(), IsEmpty());
  EXPECT_EQ(scheduler->QueueDepth(), 2u);

  clock_.AdvanceMicros(1);  // t = 100.
  ASSERT_TRUE(recorder_.WaitForBatches(1));
  EXPECT_THAT(recorder_.batch_ids(), ElementsAre(ElementsAre(first, second)));
  EXPECT_EQ(scheduler->QueueDepth(), 0u);
}

TEST_F(BatchSchedulerTest, ZeroTimeoutBatchesWithoutAdvancingTheClock) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(8, /*max_queue_delay_us=*/0));
  const int id = Add(*scheduler);
  ASSERT_TRUE(recorder_.WaitForBatches(1));
  EXPECT_THAT(recorder_.batch_ids(), ElementsAre(ElementsAre(id)));
  EXPECT_EQ(clock_.NowMicros(), 0);
}

// The default delay is 0 (Triton's): a lone request is dispatched at once,
// without the clock moving.
TEST_F(BatchSchedulerTest, DefaultOptionsDispatchALoneRequestWithoutWaiting) {
  EXPECT_EQ(BatchSchedulerOptions().max_queue_delay_us, 0);
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(BatchSchedulerOptions());
  const int id = Add(*scheduler);
  ASSERT_TRUE(recorder_.WaitForBatches(1));
  EXPECT_THAT(recorder_.batch_ids(), ElementsAre(ElementsAre(id)));
  EXPECT_EQ(clock_.NowMicros(), 0);
  EXPECT_EQ(clock_.NumWaiters(), 0u) << "no worker waits for a timeout";
}

TEST_F(BatchSchedulerTest, WorkersCarryTheConfiguredThreadName) {
  const auto name_of_this_thread = [] {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    return std::string(name);
  };
  std::mutex mu;
  std::vector<std::string> names;
  const auto record = [&](const std::vector<std::unique_ptr<TestTask>>&) {
    std::lock_guard<std::mutex> lock(mu);
    names.push_back(name_of_this_thread());
  };
  {
    std::unique_ptr<Scheduler> scheduler =
        MakeScheduler(BatchSchedulerOptions(), record);
    Add(*scheduler);
    ASSERT_TRUE(recorder_.WaitForBatches(1));
  }
  BatchSchedulerOptions named;
  // Longer than the kernel's 15 bytes: the first 15 are kept.
  named.thread_name = "scorer-worker-of-the-test";
  {
    std::unique_ptr<Scheduler> scheduler = MakeScheduler(named, record);
    Add(*scheduler);
    ASSERT_TRUE(recorder_.WaitForBatches(2));
  }
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_THAT(names, ElementsAre("attnscore-batch", "scorer-worker-o"));
}

// Holds every batch's callback until the test lets it go, one at a time, so
// that a test can keep the worker busy while tasks queue.
class Gate {
 public:
  // Called by the callback: announces the batch, then waits to be released.
  void Enter() {
    std::unique_lock<std::mutex> lock(mu_);
    ++entered_;
    cv_.notify_all();
    cv_.wait_for(lock, kBugTimeout, [&] { return released_ >= entered_; });
  }
  // True once `n` batches have entered.
  bool WaitForEntered(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kBugTimeout, [&] { return entered_ >= n; });
  }
  void ReleaseOne() {
    std::lock_guard<std::mutex> lock(mu_);
    ++released_;
    cv_.notify_all();
  }
  void ReleaseAll() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = 1 << 20;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int entered_ = 0;   // GUARDED_BY(mu_)
  int released_ = 0;  // GUARDED_BY(mu_)
};

TEST_F(BatchSchedulerTest,
       ZeroDelayBatchesWhatQueuedWhileTheWorkerWasBusyUpToMaxBatchSize) {
  Gate gate;
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(
      Options(4, /*max_queue_delay_us=*/0),
      [&](const std::vector<std::unique_ptr<TestTask>>&) { gate.Enter(); });
  const int first = Add(*scheduler);
  ASSERT_TRUE(gate.WaitForEntered(1));  // The only worker is busy with it.
  std::vector<int> queued;
  queued.reserve(6);
  for (int i = 0; i < 6; ++i) queued.push_back(Add(*scheduler));
  EXPECT_EQ(scheduler->QueueDepth(), 6u) << "nothing runs while it is busy";
  gate.ReleaseAll();
  ASSERT_TRUE(recorder_.WaitForBatches(3));
  // The first four closed full; the other two formed one batch as soon as the
  // worker was free, without the clock moving.
  EXPECT_THAT(
      recorder_.batch_ids(),
      ElementsAre(ElementsAre(first),
                  ElementsAre(queued[0], queued[1], queued[2], queued[3]),
                  ElementsAre(queued[4], queued[5])));
  EXPECT_EQ(clock_.NowMicros(), 0);
}

TEST_F(BatchSchedulerTest,
       ZeroDelayFreeWorkerTakesTheOldestBatchAndLetsTheOthersKeepFilling) {
  Gate gate;
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(
      Options(8, /*max_queue_delay_us=*/0),
      [&](const std::vector<std::unique_ptr<TestTask>>&) { gate.Enter(); });
  const int first = Add(*scheduler, 1, "x");
  ASSERT_TRUE(gate.WaitForEntered(1));
  const int x1 = Add(*scheduler, 1, "x");
  const int y1 = Add(*scheduler, 1, "y");
  const int x2 = Add(*scheduler, 1, "x");
  gate.ReleaseOne();
  // The freed worker takes x's batch (the oldest) and is busy with it again;
  // y's batch stays open and takes y2.
  ASSERT_TRUE(gate.WaitForEntered(2));
  const int y2 = Add(*scheduler, 1, "y");
  gate.ReleaseAll();
  ASSERT_TRUE(recorder_.WaitForBatches(3));
  EXPECT_THAT(recorder_.batch_ids(),
              ElementsAre(ElementsAre(first), ElementsAre(x1, x2),
                          ElementsAre(y1, y2)));
}

TEST_F(BatchSchedulerTest, ZeroDelayIdleWorkersEachTakeABatchAtOnce) {
  Gate gate;
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(
      Options(8, /*max_queue_delay_us=*/0, /*num_batch_threads=*/2),
      [&](const std::vector<std::unique_ptr<TestTask>>&) { gate.Enter(); });
  Add(*scheduler, 1, "x");
  ASSERT_TRUE(gate.WaitForEntered(1));
  // The second worker is idle: a new key's request runs at once beside the
  // first, without waiting for the busy worker or the clock.
  Add(*scheduler, 1, "y");
  ASSERT_TRUE(gate.WaitForEntered(2));
  EXPECT_EQ(scheduler->QueueDepth(), 0u);
  gate.ReleaseAll();
  ASSERT_TRUE(recorder_.WaitForBatches(2));
}

BatchSchedulerOptions SpinOptions(int64_t idle_spin_us) {
  BatchSchedulerOptions options = Options(8, /*max_queue_delay_us=*/0);
  options.idle_spin_us = idle_spin_us;
  return options;
}

// A worker that finished its batch spins for the next task instead of
// sleeping. Whether a given task arrives during the spin depends on the
// scheduling of two threads, so the test gives it many chances: each task
// comes 2 ms into a spin of up to 100 ms.
TEST_F(BatchSchedulerTest, AnIdleWorkerSpinsForTheNextTask) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(SpinOptions(kMaxIdleSpinUs));
  constexpr int kChances = 50;
  for (int i = 0; i < kChances && scheduler->IdleSpins().hits == 0; ++i) {
    Add(*scheduler);
    ASSERT_TRUE(recorder_.WaitForBatches(i + 1));
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const IdleSpinStats stats = scheduler->IdleSpins();
  EXPECT_GE(stats.hits, 1u)
      << "no task of " << kChances << " was taken by a spinning worker";
  EXPECT_GE(stats.spins, stats.hits);
  EXPECT_GT(stats.micros, 0);
  EXPECT_EQ(clock_.NowMicros(), 0) << "spins run on real time";
}

TEST_F(BatchSchedulerTest, ZeroSpinNeverSpins) {
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(SpinOptions(0));
  for (int i = 0; i < 5; ++i) {
    Add(*scheduler);
    ASSERT_TRUE(recorder_.WaitForBatches(i + 1));
  }
  const IdleSpinStats stats = scheduler->IdleSpins();
  EXPECT_EQ(stats.spins, 0u);
  EXPECT_EQ(stats.hits, 0u);
  EXPECT_EQ(stats.micros, 0);
}

// The fake clock, except that its spins run `at_spin_end` and then end as if
// their time had passed with no change.
class SpinEndClock final : public Clock {
 public:
  int64_t NowMicros() const override { return clock_.NowMicros(); }
  void WaitUntil(std::condition_variable& cv,
                 std::unique_lock<std::mutex>& lock,
                 int64_t deadline_micros) override {
    clock_.WaitUntil(cv, lock, deadline_micros);
  }
  bool SpinUntilChanged(const std::atomic<uint64_t>&, uint64_t,
                        int64_t) override {
    std::function<void()> act;
    {
      std::lock_guard<std::mutex> lock(mu_);
      act.swap(at_spin_end_);
    }
    if (act) act();
    return false;
  }
  // Runs `act` (once) at the end of the next spin.
  void AtSpinEnd(std::function<void()> act) {
    std::lock_guard<std::mutex> lock(mu_);
    at_spin_end_ = std::move(act);
  }

 private:
  FakeClock clock_;
  std::mutex mu_;
  std::function<void()> at_spin_end_;  // GUARDED_BY(mu_)
};

// A task scheduled as a spin ends (after its last look, before the worker
// sleeps) notifies no one, as no worker is waiting: the worker must see it
// anyway instead of sleeping until some later task wakes it.
TEST_F(BatchSchedulerTest, NoTaskIsMissedWhenItArrivesAsASpinEnds) {
  SpinEndClock clock;
  absl::StatusOr<std::unique_ptr<Scheduler>> scheduler = Scheduler::Create(
      SpinOptions(kMaxIdleSpinUs), &clock,
      [this](const std::vector<std::unique_ptr<TestTask>>& batch) {
        recorder_.RecordBatch(batch);
      });
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  std::unique_ptr<TestTask> second = NewTask();
  const int second_id = second->id();
  clock.AtSpinEnd([&] { ASSERT_TRUE((*scheduler)->Schedule(&second).ok()); });
  const int first = Add(**scheduler);
  ASSERT_TRUE(recorder_.WaitForBatches(2)) << "the second task was missed";
  EXPECT_THAT(recorder_.batch_ids(),
              ElementsAre(ElementsAre(first), ElementsAre(second_id)));
  // After the first batch (the second's spin may not have ended yet).
  EXPECT_GE((*scheduler)->IdleSpins().spins, 1u);
  EXPECT_EQ((*scheduler)->IdleSpins().hits, 0u);
}

TEST_F(BatchSchedulerTest, PositiveDelayHoldsALoneRequestWhileAWorkerIsFree) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(8, /*max_queue_delay_us=*/2000));
  const int id = Add(*scheduler);
  clock_.BlockUntilWaiters(1);
  clock_.AdvanceMicros(1999);
  EXPECT_THAT(recorder_.batch_ids(), IsEmpty());
  EXPECT_EQ(scheduler->QueueDepth(), 1u);
  clock_.AdvanceMicros(1);
  ASSERT_TRUE(recorder_.WaitForBatches(1));
  EXPECT_THAT(recorder_.batch_ids(), ElementsAre(ElementsAre(id)));
}

TEST_F(BatchSchedulerTest, BatchClosesExactlyAtMaxBatchSize) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(4, kNeverMicros));
  const int a = Add(*scheduler, 1);
  const int b = Add(*scheduler, 2);
  const int c =
      Add(*scheduler, 1);  // 4 items: full, so closed without any timeout.
  ASSERT_TRUE(recorder_.WaitForBatches(1));
  scheduler->Shutdown();
  // One batch holding all three: it neither closed early at 3 items nor waited
  // for the clock.
  ASSERT_EQ(recorder_.batches().size(), 1u);
  EXPECT_THAT(recorder_.batches()[0].ids, ElementsAre(a, b, c));
  EXPECT_EQ(recorder_.batches()[0].num_items, 4u);
  EXPECT_EQ(clock_.NowMicros(), 0);
}

TEST_F(BatchSchedulerTest, TaskThatWouldOverflowTheBatchStartsTheNextOne) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(4, /*max_queue_delay_us=*/100));
  const int a = Add(*scheduler, 3);
  const int b = Add(*scheduler,
                    2);  // 3 + 2 > 4: closes {a}; b opens a new batch at t = 0.
  ASSERT_TRUE(recorder_.WaitForBatches(1));
  EXPECT_THAT(recorder_.batch_ids(), ElementsAre(ElementsAre(a)));
  EXPECT_EQ(scheduler->QueueDepth(), 1u);

  clock_.AdvanceMicros(100);
  ASSERT_TRUE(recorder_.WaitForBatches(2));
  EXPECT_THAT(recorder_.batch_ids(),
              ElementsAre(ElementsAre(a), ElementsAre(b)));
  EXPECT_EQ(scheduler->QueueDepth(), 0u);
}

TEST_F(BatchSchedulerTest, OversizedTaskRunsAlone) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(4, kNeverMicros));
  const int small = Add(*scheduler, 1);
  const int big =
      Add(*scheduler, 9);  // Closes {small}, then runs alone at once.
  const int after = Add(*scheduler, 1);
  const int lone_big = Add(*scheduler, 5);  // Closes {after}, then runs alone.
  ASSERT_TRUE(recorder_.WaitForBatches(4));
  EXPECT_THAT(recorder_.batch_ids(),
              ElementsAre(ElementsAre(small), ElementsAre(big),
                          ElementsAre(after), ElementsAre(lone_big)));
  EXPECT_EQ(recorder_.batches()[1].num_items, 9u);
  EXPECT_EQ(clock_.NowMicros(), 0);
}

TEST_F(BatchSchedulerTest, TasksWithDifferentKeysAreNeverBatchedTogether) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(2, /*max_queue_delay_us=*/100));
  const int a1 = Add(*scheduler, 1, "a");
  const int b1 = Add(*scheduler, 1, "b");
  const int a2 = Add(*scheduler, 1, "a");  // Fills "a".
  const int c1 = Add(*scheduler, 1, "c");
  const int b2 = Add(*scheduler, 1, "b");  // Fills "b".
  ASSERT_TRUE(recorder_.WaitForBatches(2));
  clock_.AdvanceMicros(100);  // Times out the lone "c".
  ASSERT_TRUE(recorder_.WaitForBatches(3));
  EXPECT_THAT(
      recorder_.batch_ids(),
      ElementsAre(ElementsAre(a1, a2), ElementsAre(b1, b2), ElementsAre(c1)));
  EXPECT_FALSE(recorder_.mixed_keys());
}

TEST_F(BatchSchedulerTest,
       BatchesTimingOutTogetherLeaveInArrivalOrderAcrossKeys) {
  // One worker, so delivery order is closing order.
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(8, /*max_queue_delay_us=*/100));
  const int x = Add(*scheduler, 1, "x");
  clock_.AdvanceMicros(10);
  const int y = Add(*scheduler, 1, "y");
  clock_.AdvanceMicros(10);
  const int z = Add(*scheduler, 1, "z");
  clock_.AdvanceMicros(10);
  const int x2 =
      Add(*scheduler, 1, "x");  // Newest task, but its batch is the oldest.
  clock_.BlockUntilWaiters(1);
  clock_.SetMicros(500);  // Every batch has timed out.
  ASSERT_TRUE(recorder_.WaitForBatches(3));
  EXPECT_THAT(recorder_.batch_ids(),
              ElementsAre(ElementsAre(x, x2), ElementsAre(y), ElementsAre(z)));
}

TEST_F(BatchSchedulerTest,
       QueueFullIsUnavailableAndLeavesTheTaskWithTheCaller) {
  BatchSchedulerOptions options = Options(8, /*max_queue_delay_us=*/100);
  options.max_enqueued_tasks = 2;
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(options);
  const int a = Add(*scheduler);
  const int b = Add(*scheduler);

  std::unique_ptr<TestTask> rejected = NewTask();
  const absl::Status status = scheduler->Schedule(&rejected);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(),
              HasSubstr("queue full: 2 tasks waiting, limit 2; retry later"));
  ASSERT_NE(rejected, nullptr);
  EXPECT_EQ(scheduler->QueueDepth(), 2u);

  clock_.AdvanceMicros(100);
  ASSERT_TRUE(recorder_.WaitForBatches(1));
  EXPECT_EQ(scheduler->QueueDepth(), 0u);
  // The same task, retried once there is room, is taken and run.
  const int retried = rejected->id();
  EXPECT_TRUE(scheduler->Schedule(&rejected).ok());
  EXPECT_EQ(rejected, nullptr);
  scheduler->Shutdown();
  EXPECT_THAT(recorder_.batch_ids(),
              ElementsAre(ElementsAre(a, b), ElementsAre(retried)));
}

TEST_F(BatchSchedulerTest,
       ClosedBatchesCountAgainstTheQueueLimitUntilAWorkerTakesThem) {
  BatchSchedulerOptions options = Options(1, kNeverMicros);
  options.max_enqueued_tasks = 2;
  absl::Notification first_entered;
  absl::Notification release_first;
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(
      options, [&](const std::vector<std::unique_ptr<TestTask>>&) {
        if (!first_entered.HasBeenNotified()) {
          first_entered.Notify();
          release_first.WaitForNotificationWithTimeout(absl::Seconds(30));
        }
      });
  Add(*scheduler);  // Closed at once; the only worker takes it and blocks.
  ASSERT_TRUE(first_entered.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(scheduler->QueueDepth(), 0u);
  Add(*scheduler);  // Closed, but no worker is free.
  Add(*scheduler);
  EXPECT_EQ(scheduler->QueueDepth(), 2u);
  std::unique_ptr<TestTask> rejected = NewTask();
  EXPECT_EQ(scheduler->Schedule(&rejected).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_NE(rejected, nullptr);

  release_first.Notify();
  ASSERT_TRUE(recorder_.WaitForBatches(3));
  EXPECT_EQ(scheduler->QueueDepth(), 0u);
}

TEST_F(BatchSchedulerTest, ScheduleAfterShutdownIsUnavailable) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(4, kNeverMicros));
  scheduler->Shutdown();
  std::unique_ptr<TestTask> task = NewTask();
  const absl::Status status = scheduler->Schedule(&task);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("shut down"));
  EXPECT_NE(task, nullptr);
  EXPECT_EQ(scheduler->QueueDepth(), 0u);
}

TEST_F(BatchSchedulerTest,
       ShutdownRunsEveryQueuedTaskWithoutWaitingForTimeouts) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(4, kNeverMicros, /*num_batch_threads=*/2));
  std::vector<int> ids;
  ids.reserve(30);
  const std::vector<std::string> keys = {"a", "b", "c"};
  for (int i = 0; i < 30; ++i) {
    ids.push_back(Add(*scheduler, 1 + i % 3, keys[i % keys.size()]));
  }
  clock_.BlockUntilWaiters(
      1);  // Open batches remain, waiting for a timeout never reached.
  EXPECT_GT(scheduler->QueueDepth(), 0u);

  scheduler->Shutdown();  // Returns without the clock moving, so it did not
                          // wait for timeouts.
  EXPECT_EQ(scheduler->QueueDepth(), 0u);
  EXPECT_EQ(clock_.NowMicros(), 0);
  std::map<int, int> times = recorder_.times_accounted();
  ASSERT_EQ(times.size(), ids.size());
  for (int id : ids) EXPECT_EQ(times[id], 1) << "task " << id;
  EXPECT_THAT(recorder_.drops(), IsEmpty());
  EXPECT_FALSE(recorder_.mixed_keys());
  for (const Recorder::DeliveredBatch& batch : recorder_.batches()) {
    EXPECT_LE(batch.num_items, 4u);
  }
}

TEST_F(BatchSchedulerTest, ShutdownIsIdempotentAndThreadSafe) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(4, kNeverMicros, /*num_batch_threads=*/2));
  const int id = Add(*scheduler);
  std::thread other([&] { scheduler->Shutdown(); });
  scheduler->Shutdown();
  // Both calls return only after the workers ran what was queued.
  EXPECT_THAT(recorder_.batch_ids(), ElementsAre(ElementsAre(id)));
  other.join();
  scheduler->Shutdown();
  EXPECT_EQ(recorder_.batches().size(), 1u);
}

TEST_F(BatchSchedulerTest, DestructorRunsQueuedTasks) {
  int id = -1;
  {
    std::unique_ptr<Scheduler> scheduler =
        MakeScheduler(Options(4, kNeverMicros));
    id = Add(*scheduler);
  }
  EXPECT_THAT(recorder_.batch_ids(), ElementsAre(ElementsAre(id)));
}

TEST_F(BatchSchedulerTest, CancelledAndExpiredTasksAreDroppedWithTheirStatus) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(8, /*max_queue_delay_us=*/100));
  const int runs = Add(*scheduler);
  std::unique_ptr<TestTask> expired = NewTask();
  expired->set_deadline_micros(50);
  std::unique_ptr<TestTask> cancelled = NewTask();
  std::unique_ptr<TestTask> expires_at_close = NewTask();
  expires_at_close->set_deadline_micros(100);  // deadline <= now is expired.
  std::unique_ptr<TestTask> survives = NewTask();
  survives->set_deadline_micros(101);
  const int expired_id = expired->id();
  const int cancelled_id = cancelled->id();
  const int expires_at_close_id = expires_at_close->id();
  const int survives_id = survives->id();
  TestTask* cancelled_raw = cancelled.get();
  for (std::unique_ptr<TestTask>* task :
       {&expired, &cancelled, &expires_at_close, &survives}) {
    ASSERT_TRUE(scheduler->Schedule(task).ok());
  }
  cancelled_raw
      ->Cancel();  // Cancelled while queued, as a client hanging up would.

  clock_.AdvanceMicros(100);
  ASSERT_TRUE(recorder_.WaitForTasks(5));
  scheduler->Shutdown();
  EXPECT_THAT(recorder_.batch_ids(),
              ElementsAre(ElementsAre(runs, survives_id)));
  EXPECT_THAT(
      recorder_.drops(),
      ElementsAre(
          std::make_pair(expired_id, absl::StatusCode::kDeadlineExceeded),
          std::make_pair(cancelled_id, absl::StatusCode::kCancelled),
          std::make_pair(expires_at_close_id,
                         absl::StatusCode::kDeadlineExceeded)));
}

TEST_F(BatchSchedulerTest, BatchLeftEmptyByDropsIsNotDelivered) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(2, kNeverMicros));
  std::unique_ptr<TestTask> cancelled = NewTask();
  cancelled->Cancel();
  std::unique_ptr<TestTask> expired = NewTask();
  expired->set_deadline_micros(0);  // Already due at t = 0.
  const int cancelled_id = cancelled->id();
  const int expired_id = expired->id();
  ASSERT_TRUE(scheduler->Schedule(&cancelled).ok());
  ASSERT_TRUE(scheduler->Schedule(&expired).ok());  // Fills the batch.
  ASSERT_TRUE(recorder_.WaitForTasks(2));
  scheduler
      ->Shutdown();  // Joins the worker: a delivery would have happened by now.
  EXPECT_THAT(recorder_.batch_ids(), IsEmpty());
  EXPECT_THAT(
      recorder_.drops(),
      ElementsAre(
          std::make_pair(cancelled_id, absl::StatusCode::kCancelled),
          std::make_pair(expired_id, absl::StatusCode::kDeadlineExceeded)));
}

TEST_F(BatchSchedulerTest, ShutdownDropsTasksThatExpiredWhileQueued) {
  std::unique_ptr<Scheduler> scheduler =
      MakeScheduler(Options(8, /*max_queue_delay_us=*/100));
  std::unique_ptr<TestTask> expiring = NewTask();
  expiring->set_deadline_micros(50);
  const int expiring_id = expiring->id();
  ASSERT_TRUE(scheduler->Schedule(&expiring).ok());
  const int fresh = Add(*scheduler);
  clock_.BlockUntilWaiters(1);
  clock_.AdvanceMicros(60);  // Past the deadline, short of the batch timeout.
  EXPECT_EQ(clock_.NumWaiters(), 1u);
  scheduler->Shutdown();
  EXPECT_THAT(recorder_.batch_ids(), ElementsAre(ElementsAre(fresh)));
  EXPECT_THAT(recorder_.drops(),
              ElementsAre(std::make_pair(expiring_id,
                                         absl::StatusCode::kDeadlineExceeded)));
}

TEST_F(BatchSchedulerTest, SeveralBatchesRunConcurrently) {
  // Each callback waits for the other to start: this passes only if two workers
  // run batches at the same time.
  std::mutex mu;
  std::condition_variable cv;
  int running = 0;
  bool both_ran = true;
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(
      Options(1, kNeverMicros, /*num_batch_threads=*/2),
      [&](const std::vector<std::unique_ptr<TestTask>>&) {
        std::unique_lock<std::mutex> lock(mu);
        ++running;
        cv.notify_all();
        if (!cv.wait_for(lock, kBugTimeout, [&] { return running >= 2; })) {
          both_ran = false;
        }
      });
  Add(*scheduler);
  Add(*scheduler);
  ASSERT_TRUE(recorder_.WaitForBatches(2));
  scheduler->Shutdown();
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_TRUE(both_ran);
  EXPECT_EQ(running, 2);
}

TEST_F(BatchSchedulerTest, RunOnEachWorkerRunsTheChoreOnceOnEveryWorker) {
  constexpr int kWorkers = 3;
  // Workers asleep (no work), waiting for a batch's timeout, and spinning.
  for (const bool with_open_batch : {false, true}) {
    BatchSchedulerOptions options =
        Options(8, kNeverMicros, /*num_batch_threads=*/kWorkers);
    options.idle_spin_us = with_open_batch ? 0 : 1000;
    std::unique_ptr<Scheduler> scheduler = MakeScheduler(options);
    if (with_open_batch) Add(*scheduler);
    std::mutex mu;
    std::map<std::thread::id, int> runs;
    const std::function<void()> chore = [&] {
      std::lock_guard<std::mutex> lock(mu);
      ++runs[std::this_thread::get_id()];
    };
    for (int round = 1; round <= 2; ++round) {
      ASSERT_TRUE(scheduler->RunOnEachWorker(chore).ok());
      // It returned only after every worker ran it: no waiting here.
      std::lock_guard<std::mutex> lock(mu);
      ASSERT_EQ(runs.size(), size_t{kWorkers}) << "round " << round;
      EXPECT_EQ(runs.count(std::this_thread::get_id()), 0u)
          << "not on the caller's thread";
      for (const auto& [id, n] : runs) EXPECT_EQ(n, round);
    }
    // The open batch still waits for its timeout, untouched.
    EXPECT_EQ(recorder_.num_batches(), 0u);
    EXPECT_EQ(scheduler->QueueDepth(), with_open_batch ? 1u : 0u);
  }
}

TEST_F(BatchSchedulerTest, RunOnEachWorkerWaitsForABusyWorkersBatch) {
  Gate gate;
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(
      Options(1, 0),
      [&](const std::vector<std::unique_ptr<TestTask>>&) { gate.Enter(); });
  Add(*scheduler);
  ASSERT_TRUE(gate.WaitForEntered(1));
  std::atomic<bool> chore_ran{false};
  std::atomic<bool> returned{false};
  std::thread caller([&] {
    EXPECT_TRUE(scheduler
                    ->RunOnEachWorker([&] {
                      // The batch has returned before the chore starts.
                      EXPECT_EQ(recorder_.num_batches(), 1u);
                      chore_ran = true;
                    })
                    .ok());
    returned = true;
  });
  // The only worker is inside the callback: the chore cannot have run.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(chore_ran.load());
  EXPECT_FALSE(returned.load());
  gate.ReleaseAll();
  caller.join();
  EXPECT_TRUE(chore_ran.load());
}

TEST_F(BatchSchedulerTest, RunOnEachWorkerAfterShutdownIsUnavailable) {
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(Options(8, 0, 2));
  scheduler->Shutdown();
  bool ran = false;
  const absl::Status status = scheduler->RunOnEachWorker([&] { ran = true; });
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("shut down"));
  EXPECT_FALSE(ran);
}

TEST_F(BatchSchedulerTest, ShutdownDuringAChoreWaitsForIt) {
  std::unique_ptr<Scheduler> scheduler = MakeScheduler(Options(8, 0, 2));
  absl::Notification chore_started;
  absl::Notification shutdown_called;
  std::atomic<int> runs{0};
  std::thread caller([&] {
    EXPECT_TRUE(scheduler
                    ->RunOnEachWorker([&] {
                      if (runs.fetch_add(1) == 0) {
                        chore_started.Notify();
                        shutdown_called.WaitForNotificationWithTimeout(
                            absl::Seconds(30));
                      }
                    })
                    .ok());
  });
  ASSERT_TRUE(chore_started.WaitForNotificationWithTimeout(absl::Seconds(30)));
  std::thread stopper([&] { scheduler->Shutdown(); });
  // Shutdown has begun once Schedule refuses.
  for (;;) {
    std::unique_ptr<TestTask> task = NewTask();
    if (!scheduler->Schedule(&task).ok()) break;
    std::this_thread::yield();
  }
  shutdown_called.Notify();
  caller.join();
  stopper.join();
  EXPECT_EQ(runs.load(), 2) << "each worker ran it before exiting";
}

// Several producers race several workers on the real clock, with a queue small
// enough to fill; every accepted task must come out exactly once, as a delivery
// or a drop with the right code. With `spinning`, batches close as soon as a
// worker is free and idle workers spin for the next task.
void RunStress(bool shut_down_while_producing, bool spinning = false) {
  constexpr int kProducers = 4;
  constexpr int kTasksPerProducer = 2000;
  constexpr size_t kMaxBatchSize = 8;
  Recorder recorder;
  BatchSchedulerOptions options = Options(
      kMaxBatchSize, /*max_queue_delay_us=*/200, /*num_batch_threads=*/3);
  options.max_enqueued_tasks = 64;
  if (spinning) {
    options.max_queue_delay_us = 0;
    options.idle_spin_us = 200;
  }
  absl::StatusOr<std::unique_ptr<Scheduler>> created = Scheduler::Create(
      options, RealClock(),
      [&recorder](const std::vector<std::unique_ptr<TestTask>>& batch) {
        recorder.RecordBatch(batch);
      });
  ASSERT_TRUE(created.ok()) << created.status();
  Scheduler& scheduler = **created;

  std::mutex accepted_mu;
  // Accepted task id to its expected outcome (kOk: delivered).
  std::map<int, absl::StatusCode> accepted;
  std::atomic<int> queue_full{0};
  std::vector<std::thread> producers;
  producers.reserve(kProducers);
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      const std::vector<std::string> keys = {"a", "b", "c"};
      for (int i = 0; i < kTasksPerProducer; ++i) {
        const int id = p * kTasksPerProducer + i;
        const size_t size = i % 50 == 0 ? kMaxBatchSize + 3 : 1 + i % 4;
        auto task = std::make_unique<TestTask>(
            id, size, keys[(i + p) % keys.size()], &recorder);
        absl::StatusCode expected = absl::StatusCode::kOk;
        if (i % 7 == 0) {
          task->Cancel();
          expected = absl::StatusCode::kCancelled;
        } else if (i % 11 == 0) {
          task->set_deadline_micros(0);  // Long past on the real clock.
          expected = absl::StatusCode::kDeadlineExceeded;
        }
        absl::Status status;
        while (!(status = scheduler.Schedule(&task)).ok()) {
          ASSERT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
          ASSERT_NE(task, nullptr);
          if (absl::StrContains(status.message(), "shut down")) return;
          ++queue_full;
          std::this_thread::yield();
        }
        std::lock_guard<std::mutex> lock(accepted_mu);
        accepted.emplace(id, expected);
      }
    });
  }
  if (shut_down_while_producing) {
    while (recorder.num_batches() < 50) std::this_thread::yield();
    scheduler.Shutdown();
  }
  for (std::thread& producer : producers) producer.join();
  scheduler.Shutdown();
  ::testing::Test::RecordProperty("queue_full_retries", queue_full.load());

  EXPECT_EQ(scheduler.QueueDepth(), 0u);
  EXPECT_FALSE(recorder.mixed_keys());
  for (const Recorder::DeliveredBatch& batch : recorder.batches()) {
    EXPECT_TRUE(batch.num_items <= kMaxBatchSize || batch.ids.size() == 1)
        << batch.num_items << " items in " << batch.ids.size() << " tasks";
  }
  std::map<int, absl::StatusCode> outcome;
  for (const Recorder::DeliveredBatch& batch : recorder.batches()) {
    for (int id : batch.ids) outcome.emplace(id, absl::StatusCode::kOk);
  }
  for (const auto& [id, code] : recorder.drops()) outcome.emplace(id, code);
  const std::map<int, int> times = recorder.times_accounted();
  std::lock_guard<std::mutex> lock(accepted_mu);
  if (!shut_down_while_producing) {
    EXPECT_EQ(accepted.size(), size_t{kProducers} * kTasksPerProducer);
  }
  EXPECT_EQ(times.size(), accepted.size());
  for (const auto& [id, expected] : accepted) {
    const auto it = times.find(id);
    ASSERT_NE(it, times.end()) << "task " << id << " was lost";
    EXPECT_EQ(it->second, 1) << "task " << id;
    EXPECT_EQ(outcome[id], expected) << "task " << id;
  }
}

TEST(BatchSchedulerStressTest, EveryTaskIsAccountedForExactlyOnce) {
  RunStress(/*shut_down_while_producing=*/false);
}

TEST(BatchSchedulerStressTest, ShutdownWhileProducingLosesNoAcceptedTask) {
  RunStress(/*shut_down_while_producing=*/true);
}

TEST(BatchSchedulerStressTest, SpinningWorkersAccountForEveryTaskExactlyOnce) {
  RunStress(/*shut_down_while_producing=*/false, /*spinning=*/true);
}

TEST(BatchSchedulerStressTest, ShutdownWhileWorkersSpinLosesNoAcceptedTask) {
  RunStress(/*shut_down_while_producing=*/true, /*spinning=*/true);
}

}  // namespace
}  // namespace attnscore::batching
