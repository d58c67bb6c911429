#include "server/service/attention_scorer_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <iterator>
#include <limits>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "attnscore/version.h"
#include "server/observability/logging.h"
#include "server/scoring/validation.h"
#include "server/service/memory_limit.h"
#include "server/service/response_encoder.h"
#include "server/service/status_conversion.h"
#include "server/service/v1_score_codec.h"

namespace attnscore::service {
namespace {

double Seconds(int64_t micros) { return static_cast<double>(micros) * 1e-6; }

// The status for an exception caught where it must not escape: `what` names
// the step ("computing", "encoding the response").
absl::Status StatusOfException(const std::exception_ptr& exception,
                               absl::string_view what) {
  try {
    std::rethrow_exception(exception);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of memory while ", what));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("exception while ", what, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat("unknown exception while ", what));
  }
}

// The last path component: clients see a model's file name, not the server's
// directory layout.
std::string Basename(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ServiceOptions with the derived defaults resolved. The per-client shares
// default to none where callers are not told apart: every call is then the
// one identity "anonymous", and half of the budget (or of the regions) would
// be all the server ever used.
ServiceOptions Resolve(ServiceOptions options) {
  if (options.max_inflight_bytes == 0) {
    options.max_inflight_bytes = DefaultInflightBytes();
  }
  const bool identified = static_cast<bool>(options.authenticate);
  if (options.max_inflight_per_client == ServiceOptions::kHalfOfInflight) {
    options.max_inflight_per_client =
        identified ? options.max_inflight_bytes / 2 : 0;
  }
  SharedMemoryOptions& shm = options.shared_memory;
  if (shm.max_regions_per_client == SharedMemoryOptions::kHalfOfRegions &&
      !identified) {
    shm.max_regions_per_client = 0;
  }
  return options;
}

// The batch workers' idle spins (--batch-worker-spin-us), for operators
// weighing the CPU they take against the wake-ups they save. Read at scrape
// time; a scrape after the scheduler is gone reads 0.
template <typename Scheduler>
void AddIdleSpinMetrics(observability::Registry& registry,
                        const std::shared_ptr<Scheduler>& scheduler) {
  const std::weak_ptr<Scheduler> weak(scheduler);
  const auto read = [weak](auto field) {
    return [weak, field] {
      std::shared_ptr<Scheduler> locked = weak.lock();
      return locked ? field(locked->IdleSpins()) : 0.0;
    };
  };
  registry.AddCallbackCounter(
      "attnscore_batch_worker_spins_total",
      "Times a batch worker with no work spun before sleeping.",
      read([](const batching::IdleSpinStats& s) {
        return static_cast<double>(s.spins);
      }));
  registry.AddCallbackCounter(
      "attnscore_batch_worker_spin_hits_total",
      "Spins that ended because a request arrived (it started without a "
      "thread wake-up).",
      read([](const batching::IdleSpinStats& s) {
        return static_cast<double>(s.hits);
      }));
  registry.AddCallbackCounter(
      "attnscore_batch_worker_spin_seconds_total",
      "Time batch workers spent spinning (CPU time, less what they yielded).",
      read([](const batching::IdleSpinStats& s) { return Seconds(s.micros); }));
}

}  // namespace

// One request (a Score call, a ScoreStream message, a ModelInfer call), from
// parsing to its answer. Owns the request's codec, which owns the parsed
// request whose tensor bytes the validated ScoreItem points into. Thread
// safety: a task belongs to one thread at a time (the gRPC thread that accepts
// it, then the batcher, then the worker that answers it).
class AttentionScorerService::ScoreTask : public batching::BatchTask {
 public:
  ScoreTask(AttentionScorerService* service, Method method,
            std::unique_ptr<ScoreCodec> codec, int64_t arrival_micros,
            int64_t deadline_micros, std::string client, int client_slot)
      : service_(service),
        method_(method),
        codec_(std::move(codec)),
        arrival_micros_(arrival_micros),
        deadline_micros_(deadline_micros),
        client_(std::move(client)),
        client_slot_(client_slot) {}

  size_t size() const override { return static_cast<size_t>(validated_.batch); }
  const std::string& batch_key() const override { return batch_key_; }
  int64_t deadline_micros() const override { return deadline_micros_; }
  void Drop(const absl::Status& reason) override {
    service_->Answer(*this, reason);
  }

  // Hands the answer to the caller: `response` when there is one (a result, or
  // a stream's error message), else `status`. Takes `response`'s slices (leaves
  // it empty): ByteBuffer has no move, and a copy would take a reference per
  // slice. `lease` (the reply's share of the in-flight budget) is kept until
  // gRPC reports the reply sent. Called exactly once, by Answer().
  virtual void Deliver(const absl::Status& status, grpc::ByteBuffer& response,
                       InflightBudget::Lease lease) = 0;
  // The call is cancelled (by the client, or by gRPC at its deadline); for
  // the StopFn.
  virtual bool call_cancelled() const = 0;
  // True when a failure is answered with a message (codec().EncodeError), as
  // streams do, rather than with the call's status.
  virtual bool errors_in_band() const { return false; }
  // The reply to a successful result: the codec's encoding. (ScoreChunked's
  // task keeps its messages itself.)
  virtual absl::StatusOr<grpc::ByteBuffer> EncodeResult(
      const scoring::ScoreResult& result, const BatchTiming& timing) {
    return codec().EncodeResult(result, timing);
  }

  // Parses and validates `request` through the codec; ready to schedule when
  // OK.
  absl::Status Prepare(const grpc::ByteBuffer& request,
                       const RequestLimits& limits,
                       const scoring::ModelSet& models);

  // The validated spec. REQUIRES: Prepare() returned OK.
  const scoring::ScoreSpec& spec() const { return validated_.spec; }
  // Moves the validated item out (ScoreBatch wants the items contiguous); its
  // tensor bytes stay in this task's request. REQUIRES: Prepare() returned OK.
  scoring::ScoreItem TakeItem() { return std::move(validated_.item); }

  // Accepted: scheduled, and counted in flight until answered.
  void MarkAccepted(int64_t now_micros) {
    accepted_ = true;
    accepted_micros_ = now_micros;
  }
  void MarkNotAccepted() { accepted_ = false; }
  bool accepted() const { return accepted_; }
  int64_t accepted_micros() const { return accepted_micros_; }

  // Answered (Answer() entered): never answered twice.
  bool MarkAnswered() { return !std::exchange(answered_, true); }
  bool answered() const { return answered_; }

  InflightBudget::Lease& lease() { return lease_; }
  // The request's own bytes, as received.
  void set_wire_bytes(int64_t bytes) { wire_bytes_ = bytes; }
  int64_t wire_bytes() const { return wire_bytes_; }
  // What the request holds at its peak once admitted (the budget's charge).
  int64_t in_flight_bytes() const { return validated_.in_flight_bytes; }
  // The reply's predicted size (all requested outputs).
  int64_t output_bytes() const { return validated_.output_bytes; }
  // Admitted: about to be scheduled. Streams count its reply from here on.
  virtual void OnAdmitted() {}
  // Told the rows of its outputs as they become final when it is scored
  // alone (Scorer::ScoreObserved); null: it waits for the whole result.
  virtual scoring::RowObserver* row_observer() { return nullptr; }

  const std::string& client() const { return client_; }
  int client_slot() const { return client_slot_; }
  Method method() const { return method_; }
  int64_t arrival_micros() const { return arrival_micros_; }
  const ScoreCodec& codec() const { return *codec_; }
  // The codec's look at the raw request before admission (its id).
  void Peek(const grpc::ByteBuffer& request) { codec_->Peek(request); }
  const std::string& request_id() const { return codec_->request_id(); }

 protected:
  AttentionScorerService* const service_;

 private:
  const Method method_;
  const std::unique_ptr<ScoreCodec> codec_;
  const int64_t arrival_micros_;
  int64_t accepted_micros_ = 0;
  bool accepted_ = false;
  const int64_t deadline_micros_;
  const std::string client_;
  const int client_slot_;
  bool answered_ = false;
  int64_t wire_bytes_ = 0;
  InflightBudget::Lease lease_;
  ValidatedRequest validated_;
  std::string batch_key_;
};

absl::Status AttentionScorerService::ScoreTask::Prepare(
    const grpc::ByteBuffer& request, const RequestLimits& limits,
    const scoring::ModelSet& models) {
  absl::StatusOr<ValidatedRequest> validated =
      codec_->Parse(request, limits, models);
  if (!validated.ok()) return validated.status();
  validated_ = *std::move(validated);
  // BatchKey names the model object (its id), not just its name: requests on
  // two loads of one model never share a batch.
  batch_key_ = scoring::BatchKey(validated_.spec, validated_.item);
  return absl::OkStatus();
}

// A unary scoring call's reactor: holds the reply's share of the in-flight
// budget until gRPC reports the call done (reply sent, or the call dead).
class AttentionScorerService::UnaryReactor final
    : public grpc::ServerUnaryReactor {
 public:
  void FinishWith(const grpc::Status& status, InflightBudget::Lease lease) {
    lease_ = std::move(lease);
    Finish(status);
  }
  void OnDone() override { delete this; }

 private:
  InflightBudget::Lease lease_;
};

class AttentionScorerService::UnaryScoreTask final : public ScoreTask {
 public:
  UnaryScoreTask(AttentionScorerService* service, Method method,
                 std::unique_ptr<ScoreCodec> codec, int64_t arrival_micros,
                 grpc::CallbackServerContext* context, UnaryReactor* reactor,
                 grpc::ByteBuffer* response, std::string client,
                 int client_slot)
      : ScoreTask(service, method, std::move(codec), arrival_micros,
                  service->DeadlineMicros(*context), std::move(client),
                  client_slot),
        context_(context),
        reactor_(reactor),
        response_(response) {}

  // The context stays valid until Deliver() calls Finish, which is after the
  // batcher's last look. gRPC also cancels a call whose deadline passed; that
  // one the batcher should report as DEADLINE_EXCEEDED, so it is not
  // "cancelled" here.
  bool cancelled() const override {
    return context_->IsCancelled() &&
           service_->clock_->NowMicros() < deadline_micros();
  }

  bool call_cancelled() const override { return context_->IsCancelled(); }

  void Deliver(const absl::Status& status, grpc::ByteBuffer& response,
               InflightBudget::Lease lease) override {
    if (status.ok()) response_->Swap(&response);
    reactor_->FinishWith(ToGrpcStatus(status), std::move(lease));
  }

 private:
  grpc::CallbackServerContext* const context_;
  UnaryReactor* const reactor_;
  grpc::ByteBuffer* const response_;
};

// A ScoreChunked call's reactor: writes the reply's messages one at a time,
// the last one with the call's status; holds the reply's share of the
// in-flight budget until gRPC reports the call done. Either the answer brings
// every message (Send), or the messages come before the compute (Stream) and
// each goes once the rows it holds are final (Rows, from the compute
// threads), the last one with the answer (Complete). A failed answer
// (FinishWith) may follow streamed messages. The call is finished only after
// the answer, so the reactor outlives every Rows call. Thread safety: every
// method may be called from any thread; one mutex orders them.
class AttentionScorerService::ChunkedReactor final
    : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // The answer: every message, none sent yet. REQUIRES: `messages` is not
  // empty, and Stream was not called.
  void Send(std::vector<grpc::ByteBuffer> messages,
            InflightBudget::Lease lease) {
    Step step;
    {
      absl::MutexLock lock(&mutex_);
      lease_ = std::move(lease);
      messages_ = std::move(messages);
      answered_ = true;
      step = NextStepLocked();
    }
    Run(step);
  }
  // Before the answer: the messages over outputs not yet computed, and for
  // each the rows that must be final before it goes (EncodeScoreChunks'
  // row_ends). The last waits for Complete, which brings its final form.
  // REQUIRES: as many ends as messages, at least two.
  void Stream(std::vector<grpc::ByteBuffer> messages,
              std::vector<int64_t> row_ends) {
    absl::MutexLock lock(&mutex_);
    messages_ = std::move(messages);
    row_ends_ = std::move(row_ends);
  }
  // Rows [0, rows) of the streamed outputs are final.
  void Rows(int64_t rows) {
    Step step;
    {
      absl::MutexLock lock(&mutex_);
      if (rows <= rows_) return;
      rows_ = rows;
      step = NextStepLocked();
    }
    Run(step);
  }
  // The answer after Stream: the last message in its final form (taken).
  void Complete(grpc::ByteBuffer& last, InflightBudget::Lease lease) {
    Step step;
    {
      absl::MutexLock lock(&mutex_);
      lease_ = std::move(lease);
      // Not written yet: the last message goes only after the answer.
      messages_.back().Swap(&last);
      answered_ = true;
      step = NextStepLocked();
    }
    Run(step);
  }
  // A failed answer; after Stream, possibly with messages already sent.
  void FinishWith(const grpc::Status& status, InflightBudget::Lease lease) {
    Step step;
    {
      absl::MutexLock lock(&mutex_);
      lease_ = std::move(lease);
      answered_ = true;
      finish_ = status;
      step = NextStepLocked();
    }
    Run(step);
  }
  void OnWriteDone(bool ok) override {
    Step step;
    {
      absl::MutexLock lock(&mutex_);
      writing_ = false;
      // Not ok: the call is dead (cancelled, past its deadline, or the client
      // gone): gRPC sends nothing more, but the reactor must still finish,
      // once the answer has come.
      if (!ok && !finish_.has_value()) {
        finish_ = grpc::Status(grpc::StatusCode::CANCELLED,
                               "ScoreChunked: the call ended before its reply "
                               "was written");
      }
      step = NextStepLocked();
    }
    Run(step);
  }
  void OnDone() override { delete this; }

 private:
  // What to start after a state change: decided under the lock, started
  // outside it, since OnDone (which deletes the reactor) may run on another
  // thread as soon as the call's end is started.
  struct Step {
    grpc::ByteBuffer* write = nullptr;  // null: none
    bool last = false;                  // `write` ends the call
    std::optional<grpc::Status> finish;
  };

  // The next write that may go, or the call's end once answered with a
  // status and no write is in flight.
  Step NextStepLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    Step step;
    if (writing_ || finished_) return step;
    if (finish_.has_value()) {
      if (!answered_) return step;  // compute threads may still tell rows
      finished_ = true;
      step.finish = *finish_;
      return step;
    }
    if (next_ >= messages_.size()) return step;
    const bool last = next_ + 1 == messages_.size();
    if (!answered_ && (last || row_ends_[next_] > rows_)) return step;
    step.write = &messages_[next_++];
    step.last = last;
    writing_ = !last;
    finished_ = last;
    return step;
  }

  // Past a step that ends the call, `this` may be gone.
  void Run(const Step& step) {
    if (step.finish.has_value()) {
      Finish(*step.finish);
    } else if (step.write == nullptr) {
      return;
    } else if (step.last) {
      StartWriteAndFinish(step.write, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      StartWrite(step.write);
    }
  }

  absl::Mutex mutex_;
  InflightBudget::Lease lease_ ABSL_GUARDED_BY(mutex_);
  // Written in place by gRPC's writes: never resized once a write started.
  std::vector<grpc::ByteBuffer> messages_ ABSL_GUARDED_BY(mutex_);
  std::vector<int64_t> row_ends_ ABSL_GUARDED_BY(mutex_);  // Stream's
  int64_t rows_ ABSL_GUARDED_BY(mutex_) = 0;               // final rows
  size_t next_ ABSL_GUARDED_BY(mutex_) = 0;        // the next message to write
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;   // a write in flight
  bool answered_ ABSL_GUARDED_BY(mutex_) = false;  // Send, Complete, FinishWith
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;  // the call's end decided
  // The call's status, where it ends without its last message.
  std::optional<grpc::Status> finish_ ABSL_GUARDED_BY(mutex_);
};

// One ScoreChunked call: Score's pipeline, with the result encoded as
// ScoreChunk messages.
class AttentionScorerService::ChunkedScoreTask final
    : public ScoreTask,
      public scoring::RowObserver {
 public:
  ChunkedScoreTask(AttentionScorerService* service,
                   std::unique_ptr<V1ScoreCodec> codec, int64_t arrival_micros,
                   grpc::CallbackServerContext* context,
                   ChunkedReactor* reactor, std::string client, int client_slot)
      : ScoreTask(service, Method::kScoreChunked, std::move(codec),
                  arrival_micros, service->DeadlineMicros(*context),
                  std::move(client), client_slot),
        context_(context),
        reactor_(reactor) {}

  // As UnaryScoreTask's: gRPC's cancellation at the deadline is not the
  // client's.
  bool cancelled() const override {
    return context_->IsCancelled() &&
           service_->clock_->NowMicros() < deadline_micros();
  }
  bool call_cancelled() const override { return context_->IsCancelled(); }

  // Keeps the messages for Deliver; returns their bytes as one buffer (slice
  // references, no copy) for the budget and the metrics.
  absl::StatusOr<grpc::ByteBuffer> EncodeResult(
      const scoring::ScoreResult& result, const BatchTiming& timing) override {
    // The constructor took a V1ScoreCodec.
    const auto& codec = static_cast<const V1ScoreCodec&>(this->codec());
    absl::StatusOr<std::vector<grpc::ByteBuffer>> messages = codec.EncodeChunks(
        result, timing, service_->options_.reply_chunk_bytes);
    if (!messages.ok()) return messages.status();
    messages_ = *std::move(messages);
    std::vector<grpc::Slice> all;
    for (const grpc::ByteBuffer& message : messages_) {
      std::vector<grpc::Slice> slices;
      if (!message.Dump(&slices).ok()) continue;
      std::move(slices.begin(), slices.end(), std::back_inserter(all));
    }
    return grpc::ByteBuffer(all.data(), all.size());
  }

  void Deliver(const absl::Status& status, grpc::ByteBuffer& /*response*/,
               InflightBudget::Lease lease) override {
    if (!status.ok() || messages_.empty()) {
      reactor_->FinishWith(ToGrpcStatus(status), std::move(lease));
    } else if (streamed_.load(std::memory_order_relaxed)) {
      reactor_->Complete(messages_.back(), std::move(lease));
    } else {
      reactor_->Send(std::move(messages_), std::move(lease));
    }
  }

  // Scored alone, the reply streams while it computes.
  scoring::RowObserver* row_observer() override { return this; }

  void OnOutputs(const scoring::ScoreResult& result) override {
    // Context is laid out after the pass; the scorer does not observe it.
    if (result.context.has_value()) return;
    const auto& codec = static_cast<const V1ScoreCodec&>(this->codec());
    const int64_t chunk_bytes = service_->options_.reply_chunk_bytes;
    std::vector<int64_t> row_ends;
    absl::StatusOr<std::vector<grpc::ByteBuffer>> messages =
        codec.EncodeChunksAhead(result, chunk_bytes, &row_ends);
    // One message: nothing to send before the answer.
    if (!messages.ok() || messages->size() < 2) return;
    reactor_->Stream(*std::move(messages), std::move(row_ends));
    streamed_.store(true, std::memory_order_relaxed);
  }

  void OnRows(int64_t rows) override {
    if (streamed_.load(std::memory_order_relaxed)) reactor_->Rows(rows);
  }

 private:
  grpc::CallbackServerContext* const context_;
  ChunkedReactor* const reactor_;
  std::vector<grpc::ByteBuffer> messages_;
  // Stream was called: messages went, or go, before the answer.
  std::atomic<bool> streamed_{false};
};

// The reactor of one ScoreStream call. Reads requests one at a time and hands
// each to Accept(); answers arrive from batch workers (or at once, for a bad
// request) through Send(). Lifetime: reference counted; gRPC holds one
// reference until OnDone, every unanswered request one more, so a worker may
// answer a request of a stream that the client has already abandoned.
class AttentionScorerService::StreamReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamReactor(AttentionScorerService* service,
                grpc::CallbackServerContext* context, std::string client,
                int client_slot)
      : service_(service),
        deadline_micros_(service->DeadlineMicros(*context)),
        client_(std::move(client)),
        client_slot_(client_slot) {
    // Not bound to the call yet: gRPC holds this read until the handler has
    // returned the reactor, so no reaction can run before the constructor ends.
    {
      absl::MutexLock lock(&mutex_);
      reading_ = true;
    }
    StartRead(&read_buffer_);
  }

  int64_t deadline_micros() const { return deadline_micros_; }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  const std::string& client() const { return client_; }
  int client_slot() const { return client_slot_; }

  // A request of this stream is about to be accepted: it will Send() exactly
  // once.
  void AddPending() {
    refs_.fetch_add(1, std::memory_order_relaxed);
    absl::MutexLock lock(&mutex_);
    ++pending_;
  }

  // A pending request was admitted: its reply will be about `bytes`; counted
  // as unsent from now on, so that a client cannot pipeline more work than
  // the bound while the replies are still computing.
  void Reserve(int64_t bytes) {
    absl::MutexLock lock(&mutex_);
    unsent_bytes_ += bytes;
  }

  // The answer to one pending request; takes `response`'s slices. `lease` is
  // given back when the write is done; `reserved` is what Reserve() counted
  // for it.
  void Send(grpc::ByteBuffer& response, InflightBudget::Lease lease,
            int64_t reserved) {
    Actions actions;
    {
      absl::MutexLock lock(&mutex_);
      --pending_;
      unsent_bytes_ -= reserved;
      if (!finished_) {
        Unsent& unsent = writes_.emplace_back();
        unsent.buffer.Swap(&response);
        unsent.lease = std::move(lease);
        unsent_bytes_ += static_cast<int64_t>(unsent.buffer.Length());
      }
      actions = NextActionsLocked();
    }
    Run(actions);
    Unref();
  }

  void OnReadDone(bool ok) override;

  void OnWriteDone(bool ok) override {
    Actions actions;
    {
      absl::MutexLock lock(&mutex_);
      unsent_bytes_ -= static_cast<int64_t>(writes_.front().buffer.Length());
      writes_.pop_front();
      writing_ = false;
      if (ok) {
        actions = NextActionsLocked();
      } else {
        // Only a dead call fails a write; nothing more can reach the client.
        FinishLocked(
            grpc::Status(grpc::StatusCode::CANCELLED, "stream write failed"),
            actions);
      }
    }
    Run(actions);
  }

  void OnCancel() override {
    cancelled_.store(true, std::memory_order_release);
    Actions actions;
    {
      absl::MutexLock lock(&mutex_);
      FinishLocked(
          grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled"),
          actions);
    }
    Run(actions);
  }

  void OnDone() override { Unref(); }

 private:
  // What to do after a state change, decided under the lock and done outside
  // it: a reaction may run inline in StartWrite/StartRead/Finish, and must not
  // find the lock held.
  struct Actions {
    bool start_read = false;
    const grpc::ByteBuffer* write = nullptr;
    std::optional<grpc::Status> finish;
  };

  Actions NextActionsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    Actions actions;
    if (finished_) return actions;
    if (!writing_ && !writes_.empty()) {
      writing_ = true;
      ++starting_;
      // deque::push_back never moves existing elements, so this stays valid
      // until OnWriteDone.
      actions.write = &writes_.front().buffer;
    }
    // Flow control: a client that does not read stops being read, so that
    // its unsent replies (counted and bytes) stay bounded.
    const size_t backlog = static_cast<size_t>(pending_) + writes_.size();
    if (!reading_ && !reads_done_ &&
        backlog < static_cast<size_t>(service_->options_.max_stream_backlog) &&
        unsent_bytes_ < service_->options_.max_stream_unsent_bytes) {
      reading_ = true;
      ++starting_;
      actions.start_read = true;
    }
    if (reads_done_ && pending_ == 0 && writes_.empty() && !writing_) {
      FinishLocked(grpc::Status::OK, actions);
    }
    return actions;
  }

  // Ends the call once. Finish must not overtake a StartRead/StartWrite that
  // another thread has decided on but not issued yet (the call could be gone
  // by the time it is issued), so then the last of those issues it.
  void FinishLocked(grpc::Status status, Actions& actions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (finished_) return;
    finished_ = true;
    if (starting_ == 0) {
      actions.finish = std::move(status);
    } else {
      deferred_finish_ = std::move(status);
    }
  }

  void Run(Actions actions) {
    if (actions.write != nullptr) StartWrite(actions.write);
    if (actions.start_read) StartRead(&read_buffer_);
    if (actions.write != nullptr || actions.start_read) {
      absl::MutexLock lock(&mutex_);
      starting_ -= int{actions.write != nullptr} + int{actions.start_read};
      if (starting_ == 0 && deferred_finish_.has_value()) {
        actions.finish = std::move(deferred_finish_);
        deferred_finish_.reset();
      }
    }
    if (actions.finish.has_value()) Finish(*actions.finish);
  }

  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // A reply waiting to be written, with its share of the in-flight budget.
  struct Unsent {
    grpc::ByteBuffer buffer;
    InflightBudget::Lease lease;
  };

  AttentionScorerService* const service_;
  const int64_t deadline_micros_;
  const std::string client_;
  const int client_slot_;
  std::atomic<bool> cancelled_{false};
  // gRPC's reference, dropped in OnDone, plus one per pending request.
  std::atomic<int> refs_{1};
  grpc::ByteBuffer read_buffer_;

  absl::Mutex mutex_;
  // Responses not yet written; the front is being written while writing_.
  std::deque<Unsent> writes_ ABSL_GUARDED_BY(mutex_);
  // Their bytes, plus the predicted bytes of the replies still computing.
  int64_t unsent_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  int pending_ ABSL_GUARDED_BY(mutex_) = 0;
  bool reading_ ABSL_GUARDED_BY(mutex_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mutex_) = false;
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  // StartRead/StartWrite calls decided on but not yet issued.
  int starting_ ABSL_GUARDED_BY(mutex_) = 0;
  std::optional<grpc::Status> deferred_finish_ ABSL_GUARDED_BY(mutex_);
};

class AttentionScorerService::StreamScoreTask final : public ScoreTask {
 public:
  StreamScoreTask(AttentionScorerService* service, int64_t arrival_micros,
                  StreamReactor* stream)
      : ScoreTask(service, Method::kScoreStream,
                  std::make_unique<V1ScoreCodec>(&service->shared_memory_,
                                                 stream->client()),
                  arrival_micros, stream->deadline_micros(), stream->client(),
                  stream->client_slot()),
        stream_(stream) {
    stream_->AddPending();
  }

  bool cancelled() const override { return stream_->cancelled(); }
  bool call_cancelled() const override { return stream_->cancelled(); }
  bool errors_in_band() const override { return true; }

  void OnAdmitted() override {
    reserved_ = output_bytes();
    stream_->Reserve(reserved_);
  }

  void Deliver(const absl::Status& /*status*/, grpc::ByteBuffer& response,
               InflightBudget::Lease lease) override {
    // Errors arrive here already encoded as a response with `error` set.
    stream_->Send(response, std::move(lease), reserved_);
  }

 private:
  StreamReactor* const stream_;
  int64_t reserved_ = 0;
};

void AttentionScorerService::StreamReactor::OnReadDone(bool ok) {
  // A request of a cancelled stream would only be dropped again.
  if (ok && !cancelled()) {
    // read_buffer_ is ours until the next StartRead, which only
    // NextActionsLocked() issues.
    auto task = std::make_unique<StreamScoreTask>(
        service_, service_->clock_->NowMicros(), this);
    service_->Accept(std::move(task), read_buffer_);
  }
  read_buffer_.Clear();
  Actions actions;
  {
    absl::MutexLock lock(&mutex_);
    reading_ = false;
    if (!ok) reads_done_ = true;
    actions = NextActionsLocked();
  }
  Run(actions);
}

// The reactor of a ScoreStream call refused before any message is read (its
// caller failed authentication): finishes with that status at once.
class AttentionScorerService::RefusedStream final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit RefusedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

absl::StatusOr<std::unique_ptr<AttentionScorerService>>
AttentionScorerService::Create(const ServiceOptions& options,
                               scoring::Scorer* scorer, ModelRegistry* models,
                               ServiceMetrics* metrics,
                               batching::Clock* clock) {
  if (scorer == nullptr || models == nullptr || metrics == nullptr ||
      clock == nullptr) {
    return absl::InvalidArgumentError(
        "AttentionScorerService: scorer, models, metrics and clock are "
        "required");
  }
  if (options.max_stream_backlog < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_stream_backlog: expected >= 1, got ", options.max_stream_backlog));
  }
  if (options.reply_chunk_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reply_chunk_bytes: expected >= 1, got ", options.reply_chunk_bytes));
  }
  if (options.max_stream_unsent_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_stream_unsent_bytes: expected >= 1, got ",
                     options.max_stream_unsent_bytes));
  }
  ServiceOptions resolved = Resolve(options);
  // Requests are costed by the scorer that will run them (its path and
  // device), unless the caller chose an estimate.
  if (!resolved.limits.estimate) {
    resolved.limits.estimate = [scorer](const scoring::ScoreSpec& spec,
                                        const scoring::ProblemSize& size) {
      return scorer->Estimate(spec, size);
    };
  }
  absl::StatusOr<std::shared_ptr<InflightBudget>> budget =
      InflightBudget::Create(resolved.max_inflight_bytes,
                             resolved.max_inflight_per_client);
  if (!budget.ok()) return budget.status();
  spdlog::info(
      "in-flight budget {} bytes, {} per client; per request at most {} bytes "
      "of peak memory and {} work units",
      resolved.max_inflight_bytes,
      resolved.max_inflight_per_client != 0
          ? std::to_string(resolved.max_inflight_per_client)
      : resolved.authenticate ? std::string("no cap")
                              : std::string("no cap (callers are anonymous)"),
      resolved.limits.max_request_memory, resolved.limits.max_request_work);
  std::unique_ptr<AttentionScorerService> service(new AttentionScorerService(
      resolved, *budget, scorer, models, metrics, clock));
  AttentionScorerService* raw = service.get();
  absl::StatusOr<std::unique_ptr<Scheduler>> scheduler = Scheduler::Create(
      options.batching, clock,
      [raw](const std::vector<std::unique_ptr<ScoreTask>>& batch) {
        raw->RunBatch(batch);
      });
  if (!scheduler.ok()) return scheduler.status();
  service->scheduler_ = *std::move(scheduler);
  metrics->registry().AddCallbackGauge(
      "attnscore_queue_depth", "Requests waiting in the batcher.",
      [weak = std::weak_ptr<Scheduler>(service->scheduler_)] {
        std::shared_ptr<Scheduler> scheduler = weak.lock();
        return scheduler ? static_cast<double>(scheduler->QueueDepth()) : 0.0;
      });
  AddIdleSpinMetrics(metrics->registry(), service->scheduler_);
  metrics->registry().AddCallbackGauge(
      "attnscore_inflight_bytes",
      "Bytes of the in-flight budget held by requests (their bytes, "
      "predicted peak memory, replies not yet sent).",
      [weak = std::weak_ptr<InflightBudget>(*budget)] {
        std::shared_ptr<InflightBudget> budget = weak.lock();
        return budget ? static_cast<double>(budget->InUse()) : 0.0;
      });
  return service;
}

AttentionScorerService::AttentionScorerService(
    const ServiceOptions& options, std::shared_ptr<InflightBudget> budget,
    scoring::Scorer* scorer, ModelRegistry* models, ServiceMetrics* metrics,
    batching::Clock* clock)
    : options_(options),
      budget_(std::move(budget)),
      scorer_(scorer),
      models_(models),
      metrics_(metrics),
      shared_memory_(options.shared_memory),
      clock_(clock) {}

AttentionScorerService::~AttentionScorerService() { Shutdown(); }

void AttentionScorerService::StartDrain() {
  if (!draining_.exchange(true, std::memory_order_acq_rel)) {
    spdlog::info("draining: new scoring requests get UNAVAILABLE");
  }
}

void AttentionScorerService::Shutdown() {
  ready_.store(false, std::memory_order_release);
  draining_.store(true, std::memory_order_release);
  if (scheduler_ != nullptr) scheduler_->Shutdown();
}

absl::StatusOr<std::string> AttentionScorerService::Authenticate(
    const grpc::CallbackServerContext& context) const {
  if (!options_.authenticate) return std::string(kAnonymousClient);
  return options_.authenticate(context);
}

size_t AttentionScorerService::QueueDepth() const {
  return scheduler_->QueueDepth();
}

absl::Status AttentionScorerService::WarmUp() {
  // On every batch worker's own thread, where requests compute: the first
  // computation of a thread starts its intra-op thread team and thread-local
  // buffers (and, on a GPU, its stream). The first B1 H8 L128 request after
  // start computed for 1.2-3.8 ms with the warm-up on the main thread (5.9-13.9
  // with a B1 H8 L64 probe there), 0.22-0.32 ms with this one on the workers;
  // 0.1-0.2 ms in steady state (2 cores, AMD EPYC 26/2).
  struct Probe {
    std::string label;
    scoring::ScoreSpec spec;
    std::vector<int64_t> shape;  // [1, H, L, D], query, key and value alike
    std::vector<float> ones;     // made once, read by every worker
  };
  const auto make_probe = [](std::string label, const scoring::ScoreSpec& spec,
                             int64_t heads, int64_t len, int64_t dim) {
    return Probe{
        std::move(label),
        spec,
        {1, heads, len, dim},
        std::vector<float>(static_cast<size_t>(heads * len * dim), 1.0f)};
  };
  // One ALiBi item of every output, large enough for the tiled path to split
  // it across the intra-op threads and hand the BLAS real products; plus one
  // per loaded relative model at its own H and D, with Lq = Lk = 1 (any model
  // covers that).
  scoring::ScoreSpec alibi;
  alibi.want_logits = alibi.want_probs = alibi.want_context = true;
  std::vector<Probe> probes;
  probes.push_back(make_probe("ALiBi", alibi, 8, 128, 64));
  const std::shared_ptr<const scoring::ModelSet> models = models_->Current();
  for (const auto& [name, model] : models->models) {
    scoring::ScoreSpec relative = alibi;
    relative.bias = scoring::RelativeBias{model};
    probes.push_back(make_probe(absl::StrCat("model \"", name, "\""), relative,
                                model->info().heads, 1,
                                model->info().head_dim));
  }
  absl::Mutex mu;
  absl::Status first_error;
  // A worker's chore must not throw.
  const std::function<void()> chore = [&] {
    for (const Probe& probe : probes) {
      scoring::TensorRef ref;
      ref.dtype = DType::kFloat32;
      ref.shape = probe.shape;
      ref.data = probe.ones.data();
      ref.size_bytes = probe.ones.size() * sizeof(float);
      scoring::ScoreItem item;
      item.query = item.key = ref;
      item.value = ref;
      absl::Status status;
      try {
        status = scorer_->ScoreBatch(probe.spec, absl::MakeConstSpan(&item, 1))
                     .status();
      } catch (...) {
        status = StatusOfException(std::current_exception(), "warming up");
      }
      if (status.ok()) continue;
      absl::MutexLock lock(&mu);
      if (first_error.ok()) {
        first_error = absl::Status(
            status.code(),
            absl::StrCat("warm-up with ", probe.label, ": ", status.message()));
      }
      return;
    }
  };
  if (absl::Status ran = scheduler_->RunOnEachWorker(chore); !ran.ok()) {
    return ran;
  }
  {
    absl::MutexLock lock(&mu);
    if (!first_error.ok()) return first_error;
  }
  ready_.store(true, std::memory_order_release);
  return absl::OkStatus();
}

int64_t AttentionScorerService::DeadlineMicros(
    const grpc::CallbackServerContext& context) const {
  using std::chrono::system_clock;
  const system_clock::time_point deadline = context.deadline();
  if (deadline == system_clock::time_point::max()) {
    return std::numeric_limits<int64_t>::max();
  }
  const int64_t remaining =
      std::chrono::duration_cast<std::chrono::microseconds>(deadline -
                                                            system_clock::now())
          .count();
  // Far-future deadlines (beyond ~100 years) are as good as none and must not
  // overflow.
  constexpr int64_t kForever = int64_t{1} << 62;
  if (remaining > kForever) return std::numeric_limits<int64_t>::max();
  return clock_->NowMicros() + remaining;
}

grpc::ServerUnaryReactor* AttentionScorerService::Score(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return ScoreUnary(
      Method::kScore,
      [this](const std::string& client) -> std::unique_ptr<ScoreCodec> {
        return std::make_unique<V1ScoreCodec>(&shared_memory_, client);
      },
      context, request, response);
}

grpc::ServerUnaryReactor* AttentionScorerService::ScoreUnary(
    Method method, CodecFactory make_codec,
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  const int64_t arrival = clock_->NowMicros();
  auto* reactor = new UnaryReactor();
  absl::StatusOr<Caller> caller = AuthenticateCaller(method, *context, arrival);
  if (!caller.ok()) {
    reactor->FinishWith(ToGrpcStatus(caller.status()), {});
    return reactor;
  }
  std::unique_ptr<ScoreCodec> codec = make_codec(caller->client);
  auto task = std::make_unique<UnaryScoreTask>(
      this, method, std::move(codec), arrival, context, reactor, response,
      std::move(caller->client), caller->slot);
  Accept(std::move(task), *request);
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>*
AttentionScorerService::ScoreChunked(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request) {
  const int64_t arrival = clock_->NowMicros();
  auto* reactor = new ChunkedReactor();
  absl::StatusOr<Caller> caller =
      AuthenticateCaller(Method::kScoreChunked, *context, arrival);
  if (!caller.ok()) {
    reactor->FinishWith(ToGrpcStatus(caller.status()), {});
    return reactor;
  }
  auto codec = std::make_unique<V1ScoreCodec>(&shared_memory_, caller->client);
  Accept(std::make_unique<ChunkedScoreTask>(
             this, std::move(codec), arrival, context, reactor,
             std::move(caller->client), caller->slot),
         *request);
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
AttentionScorerService::ScoreStream(grpc::CallbackServerContext* context) {
  absl::StatusOr<Caller> caller =
      AuthenticateCaller(Method::kScoreStream, *context, clock_->NowMicros());
  if (!caller.ok()) return new RefusedStream(ToGrpcStatus(caller.status()));
  return new StreamReactor(this, context, std::move(caller->client),
                           caller->slot);
}

absl::StatusOr<AttentionScorerService::Caller>
AttentionScorerService::AuthenticateCaller(
    Method method, const grpc::CallbackServerContext& context,
    int64_t arrival_micros) {
  absl::StatusOr<std::string> client = Authenticate(context);
  if (!client.ok()) {
    metrics_->RecordRequest(method, client.status(),
                            Seconds(clock_->NowMicros() - arrival_micros),
                            metrics_->ClientSlot("-"));
    return client.status();
  }
  const int slot = metrics_->ClientSlot(*client);
  return Caller{*std::move(client), slot};
}

absl::Status AttentionScorerService::Admit(ScoreTask& task,
                                           const grpc::ByteBuffer& request) {
  task.Peek(request);
  // A call that ended while its request was on the way (the client
  // cancelled, or its deadline passed) reaches the handler with no message,
  // sometimes before the context shows it cancelled: it is answered as what
  // it is, not as an unparseable request; nor is a dead call's request
  // parsed.
  if (!request.Valid() || task.call_cancelled()) {
    if (clock_->NowMicros() >= task.deadline_micros()) {
      return absl::DeadlineExceededError(
          "deadline passed before the request was read");
    }
    return absl::CancelledError(
        request.Valid() ? "request cancelled by the client before it was read"
                        : "no request message arrived: the call ended first");
  }
  if (draining_.load(std::memory_order_acquire)) {
    return absl::UnavailableError(
        "server is draining: retry on another replica");
  }
  // Before the body is parsed: parsing copies it, and a full budget must
  // cost the server nothing more.
  const auto wire = static_cast<int64_t>(request.Length());
  absl::StatusOr<InflightBudget::Lease> lease =
      budget_->TryAcquire(task.client(), wire);
  if (!lease.ok()) return lease.status();
  task.lease() = *std::move(lease);
  task.set_wire_bytes(wire);
  // The batcher refuses a full queue too, but only after the parse and the
  // scan for non-finite values.
  const size_t depth = scheduler_->QueueDepth();
  if (depth >= options_.batching.max_enqueued_tasks) {
    return absl::UnavailableError(
        absl::StrCat("queue full: ", depth, " requests waiting, limit ",
                     options_.batching.max_enqueued_tasks, "; retry later"));
  }
  // The model set is pinned by the spec (shared_ptr), so a reload cannot change
  // it under us.
  if (absl::Status s =
          task.Prepare(request, options_.limits, *models_->Current());
      !s.ok()) {
    return s;
  }
  return task.lease().TryResize(wire + task.in_flight_bytes());
}

void AttentionScorerService::Accept(std::unique_ptr<ScoreTask> task,
                                    const grpc::ByteBuffer& request) {
  metrics_->AddRequestBytes(task->method(), request.Length());
  absl::Status status = Admit(*task, request);
  if (status.ok()) {
    task->OnAdmitted();
    // Counted before Schedule: a worker may answer (and uncount) it before
    // Schedule returns.
    task->MarkAccepted(clock_->NowMicros());
    metrics_->AddInFlight(1);
    ScoreTask* raw = task.get();
    status = scheduler_->Schedule(&task);
    if (status.ok()) return;
    raw->MarkNotAccepted();
    metrics_->AddInFlight(-1);
  }
  Answer(*task, status);
}

void AttentionScorerService::RunBatch(
    const std::vector<std::unique_ptr<ScoreTask>>& batch) {
  // An exception must not end the worker thread (std::terminate): whatever
  // was not answered yet is answered with it.
  try {
    std::vector<scoring::ScoreItem> items;
    items.reserve(batch.size());
    // The items move out of their tasks: ScoreBatch wants them contiguous, and
    // nothing else needs them any more. The tensor bytes stay in the tasks'
    // requests.
    for (const std::unique_ptr<ScoreTask>& task : batch) {
      items.push_back(task->TakeItem());
    }
    ComputeAndAnswer(batch, items);
  } catch (...) {
    AnswerRemaining(batch, StatusOfException(std::current_exception(),
                                             "computing a batch"));
  }
}

void AttentionScorerService::AnswerRemaining(
    const std::vector<std::unique_ptr<ScoreTask>>& batch,
    const absl::Status& status) {
  spdlog::error("batch of {} requests failed: {}", batch.size(),
                status.ToString());
  for (const std::unique_ptr<ScoreTask>& task : batch) {
    if (task->answered()) continue;
    try {
      Answer(*task, status);
    } catch (...) {
      spdlog::error("answering a request of a failed batch failed too");
    }
  }
}

bool AttentionScorerService::AllAbandoned(
    absl::Span<const std::unique_ptr<ScoreTask>> tasks) const {
  // Called between tiles from the compute threads: the clock is read once,
  // and only when a task is not cancelled and has a deadline.
  std::optional<int64_t> now;
  for (const std::unique_ptr<ScoreTask>& task : tasks) {
    if (task->call_cancelled()) continue;
    const int64_t deadline = task->deadline_micros();
    if (deadline == std::numeric_limits<int64_t>::max()) return false;
    if (!now.has_value()) now = clock_->NowMicros();
    if (*now < deadline) return false;
  }
  return true;
}

absl::StatusOr<std::vector<scoring::ScoreResult>>
AttentionScorerService::ScoreGuarded(
    absl::Span<const std::unique_ptr<ScoreTask>> tasks,
    absl::Span<const scoring::ScoreItem> items) {
  // Once every request of the batch is abandoned, nobody waits for the rest.
  const scoring::StopFn stop = [this, tasks] { return AllAbandoned(tasks); };
  try {
    scoring::RowObserver* observer =
        tasks.size() == 1 ? tasks.front()->row_observer() : nullptr;
    if (observer != nullptr) {
      return scorer_->ScoreObserved(tasks.front()->spec(), items.front(), stop,
                                    *observer);
    }
    return scorer_->ScoreBatch(tasks.front()->spec(), items, stop);
  } catch (...) {
    // The scorer promises no exceptions; a bad_alloc from a library it calls
    // is still answered as what it is.
    return StatusOfException(std::current_exception(), "computing");
  }
}

void AttentionScorerService::ComputeAndAnswer(
    absl::Span<const std::unique_ptr<ScoreTask>> tasks,
    absl::Span<const scoring::ScoreItem> items) {
  const int64_t start = clock_->NowMicros();
  size_t batch_items = 0;
  for (const std::unique_ptr<ScoreTask>& task : tasks) {
    batch_items += task->size();
    metrics_->ObserveQueue(Seconds(start - task->accepted_micros()));
  }
  // Pass by pass (Scorer::ItemsPerPass): each pass is answered as soon as it
  // is computed, so its replies go out while the next pass computes instead
  // of waiting for the whole batch.
  int64_t compute_us = 0;  // of the passes so far
  for (size_t done = 0; done < tasks.size();) {
    const size_t n = std::clamp<size_t>(
        scorer_->ItemsPerPass(items.subspan(done)), 1, tasks.size() - done);
    const bool last = done + n == tasks.size();
    compute_us += ScoreAndAnswer(
        tasks.subspan(done, n), items.subspan(done, n), batch_items,
        last ? std::optional<int64_t>(compute_us) : std::nullopt);
    done += n;
  }
}

int64_t AttentionScorerService::ScoreAndAnswer(
    absl::Span<const std::unique_ptr<ScoreTask>> tasks,
    absl::Span<const scoring::ScoreItem> items, size_t batch_items,
    std::optional<int64_t> earlier_compute_us) {
  const int64_t start = clock_->NowMicros();
  absl::StatusOr<std::vector<scoring::ScoreResult>> results =
      ScoreGuarded(tasks, items);
  const int64_t end = clock_->NowMicros();
  // Before any answer of the last pass: a client that has its reply sees the
  // batch in the metrics. Its compute is the passes' own, without the time
  // spent answering between them.
  if (earlier_compute_us.has_value()) {
    metrics_->ObserveBatch(batch_items,
                           Seconds(*earlier_compute_us + end - start));
  }
  if (results.ok() && results->size() != tasks.size()) {
    results = absl::InternalError(absl::StrCat("scorer returned ",
                                               results->size(), " results for ",
                                               tasks.size(), " requests"));
  }
  if (!results.ok() && absl::IsCancelled(results.status()) &&
      AllAbandoned(tasks)) {
    // Stopped between tiles: each request gets its own reason.
    metrics_->CountStoppedCompute(tasks.size());
    for (const std::unique_ptr<ScoreTask>& task : tasks) {
      // cancelled() leaves out gRPC's own cancellation at the deadline.
      Answer(*task, task->cancelled()
                        ? absl::CancelledError(
                              "request cancelled by the client during compute")
                        : absl::DeadlineExceededError(
                              "deadline passed during compute"));
    }
    return end - start;
  }
  if (!results.ok() && tasks.size() > 1) {
    spdlog::warn("batch of {} requests failed ({}); retrying them one by one",
                 tasks.size(), results.status().ToString());
    for (size_t i = 0; i < tasks.size(); ++i) {
      // Computed alone: a batch of its own B.
      ScoreAndAnswer(tasks.subspan(i, 1), items.subspan(i, 1), tasks[i]->size(),
                     std::nullopt);
    }
    return end - start;
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    ScoreTask& task = *tasks[i];
    if (!results.ok()) {
      Answer(task, results.status());
      continue;
    }
    BatchTiming timing;
    timing.queue_us = start - task.accepted_micros();
    timing.compute_us = end - start;
    timing.batch_size = static_cast<int64_t>(batch_items);
    absl::StatusOr<grpc::ByteBuffer> encoded;
    try {
      encoded = task.EncodeResult((*results)[i], timing);
    } catch (...) {
      encoded =
          StatusOfException(std::current_exception(), "encoding the response");
    }
    Answer(task, std::move(encoded));
  }
  return end - start;
}

void AttentionScorerService::Answer(ScoreTask& task,
                                    absl::StatusOr<grpc::ByteBuffer> response) {
  if (!task.MarkAnswered()) return;
  const absl::Status status = response.status();
  grpc::ByteBuffer buffer;
  if (response.ok()) {
    buffer.Swap(&*response);
  } else if (task.errors_in_band()) {
    try {
      buffer = task.codec().EncodeError(status);
    } catch (...) {
      // Out of memory for a small message: the stream still gets a reply
      // (an empty ScoreResponse), so its accounting stays right.
      buffer.Clear();
    }
  }
  const int64_t micros = clock_->NowMicros() - task.arrival_micros();
  metrics_->RecordRequest(task.method(), status, Seconds(micros),
                          task.client_slot());
  if (buffer.Valid()) {
    metrics_->AddResponseBytes(task.method(), buffer.Length());
  }
  if (task.accepted()) metrics_->AddInFlight(-1);
  // From here on the request holds its bytes and its reply's, until sent.
  // Shrinking never fails; the reply is at most the predicted peak.
  InflightBudget::Lease lease = std::move(task.lease());
  if (lease.bytes() > 0) {
    lease
        .TryResize(
            std::min(lease.bytes(),
                     task.wire_bytes() + static_cast<int64_t>(buffer.Length())))
        .IgnoreError();
  }

  {
    // JSON logs carry them as members, text logs as {request_id=...
    // client=...}. Client strings are cut to a bounded, escaped prefix.
    observability::ScopedLogField request_id_field(
        "request_id", task.request_id().empty()
                          ? "-"
                          : ClientStringForLog(task.request_id()));
    observability::ScopedLogField client_field(
        "client", ClientStringForLog(task.client()));
    const char* method = MethodName(task.method());
    switch (status.code()) {
      case absl::StatusCode::kOk:
        spdlog::debug("{} OK: B={} duration_us={} response_bytes={}", method,
                      task.size(), micros, buffer.Length());
        break;
      case absl::StatusCode::kInternal:
      case absl::StatusCode::kUnknown:
      case absl::StatusCode::kDataLoss:
        spdlog::error("{} {}: {}", method,
                      absl::StatusCodeToString(status.code()),
                      std::string{status.message()});
        break;
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kCancelled:
      case absl::StatusCode::kDeadlineExceeded:
        // Load and client behaviour, counted in the metrics; a line each would
        // flood the log exactly when the server is busiest.
        spdlog::debug("{} {}: {}", method,
                      absl::StatusCodeToString(status.code()),
                      std::string{status.message()});
        break;
      default: {
        const observability::LogRateLimiter::Decision line =
            refusal_log_.Allow(clock_->NowMicros());
        if (!line.allowed) break;
        spdlog::info("{} {}: {}{}", method,
                     absl::StatusCodeToString(status.code()),
                     std::string{status.message()},
                     line.left_out == 0
                         ? std::string()
                         : absl::StrCat(" (", line.left_out,
                                        " refusals since the last line left "
                                        "out)"));
        break;
      }
    }
  }
  task.Deliver(status, buffer, std::move(lease));
}

grpc::ServerUnaryReactor* AttentionScorerService::ListModels(
    grpc::CallbackServerContext* context,
    const v1::ListModelsRequest* /*request*/,
    v1::ListModelsResponse* response) {
  return AnswerSmall(context, Method::kListModels, [&](const std::string&) {
    const std::shared_ptr<const scoring::ModelSet> models = models_->Current();
    for (const auto& [name, model] : models->models) {
      const scoring::RelativeModelInfo& info = model->info();
      v1::ModelInfo* out = response->add_models();
      out->set_name(name);
      // The file name only: the server's paths are not the client's business.
      out->set_source(Basename(info.source));
      out->set_heads(info.heads);
      out->set_head_dim(info.head_dim);
      out->set_max_relative_positions(info.max_relative_positions);
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AttentionScorerService::GetServerInfo(
    grpc::CallbackServerContext* context,
    const v1::GetServerInfoRequest* /*request*/, v1::ServerInfo* response) {
  return AnswerSmall(context, Method::kGetServerInfo, [&](const std::string&) {
    FillServerInfo(*response);
    return absl::OkStatus();
  });
}

void AttentionScorerService::FillServerInfo(v1::ServerInfo& response) const {
  response.set_version(kVersion);
  response.set_device(scorer_->device());
  response.set_intra_op_threads(options_.intra_op_threads);
  v1::Limits* limits = response.mutable_limits();
  limits->set_max_heads(options_.limits.max_heads);
  limits->set_max_head_dim(options_.limits.max_head_dim);
  limits->set_max_seq_len(options_.limits.max_seq_len);
  limits->set_max_output_bytes(options_.limits.max_output_bytes);
  limits->set_max_message_bytes(options_.max_message_bytes);
  limits->set_max_request_memory_bytes(options_.limits.max_request_memory);
  limits->set_max_request_work(options_.limits.max_request_work);
  limits->set_max_inflight_bytes(options_.max_inflight_bytes);
  limits->set_max_inflight_per_client_bytes(options_.max_inflight_per_client);
  limits->set_max_stream_unsent_bytes(options_.max_stream_unsent_bytes);
  limits->set_shm_prefix(options_.shared_memory.prefix);
  limits->set_max_shm_regions(options_.shared_memory.max_regions);
  limits->set_reply_chunk_bytes(options_.reply_chunk_bytes);
  v1::BatchingOptions* batching = response.mutable_batching();
  batching->set_max_batch_size(
      static_cast<int64_t>(options_.batching.max_batch_size));
  batching->set_max_queue_delay_us(options_.batching.max_queue_delay_us);
  batching->set_max_queue(
      static_cast<int64_t>(options_.batching.max_enqueued_tasks));
  batching->set_batch_workers(options_.batching.num_batch_threads);
  v1::KernelInfo* kernels = response.mutable_kernels();
  kernels->set_isa(options_.kernels.isa);
  kernels->set_blas_core(options_.kernels.blas_core);
  kernels->set_blas_core_source(options_.kernels.blas_core_source);
  kernels->set_aten_capability(options_.kernels.aten_capability);
  kernels->set_aten_capability_source(options_.kernels.aten_capability_source);
  kernels->set_omp_wait(options_.kernels.omp_wait);
  kernels->set_omp_wait_source(options_.kernels.omp_wait_source);
  kernels->set_cpu_model(options_.kernels.cpu_model);
  kernels->set_below_cpu(options_.kernels.below_cpu);
}

grpc::ServerUnaryReactor* AttentionScorerService::AnswerSmall(
    grpc::CallbackServerContext* context, Method method,
    absl::FunctionRef<absl::Status(const std::string& client)> body) {
  const int64_t start = clock_->NowMicros();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> client = Authenticate(*context);
  absl::Status status = client.status();
  if (client.ok()) status = body(*client);
  metrics_->RecordRequest(method, status, Seconds(clock_->NowMicros() - start),
                          metrics_->ClientSlot(client.ok() ? *client : "-"));
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* AttentionScorerService::RegisterSharedMemory(
    grpc::CallbackServerContext* context,
    const v1::RegisterSharedMemoryRequest* request,
    v1::RegisterSharedMemoryResponse* /*response*/) {
  return AnswerSmall(context, Method::kRegisterSharedMemory,
                     [&](const std::string& client) {
                       SharedMemorySpec spec;
                       spec.name = request->name();
                       spec.key = request->key();
                       spec.offset = request->offset();
                       spec.byte_size = request->byte_size();
                       return shared_memory_.Register(client, std::move(spec));
                     });
}

grpc::ServerUnaryReactor* AttentionScorerService::UnregisterSharedMemory(
    grpc::CallbackServerContext* context,
    const v1::UnregisterSharedMemoryRequest* request,
    v1::UnregisterSharedMemoryResponse* /*response*/) {
  return AnswerSmall(
      context, Method::kUnregisterSharedMemory, [&](const std::string& client) {
        return shared_memory_.Unregister(client, request->name());
      });
}

grpc::ServerUnaryReactor* AttentionScorerService::SharedMemoryStatus(
    grpc::CallbackServerContext* context,
    const v1::SharedMemoryStatusRequest* /*request*/,
    v1::SharedMemoryStatusResponse* response) {
  return AnswerSmall(
      context, Method::kSharedMemoryStatus, [&](const std::string& client) {
        if (absl::Status s = shared_memory_.CheckEnabled(); !s.ok()) return s;
        for (const SharedMemorySpec& spec : shared_memory_.List(client)) {
          v1::SharedMemoryRegionStatus* out = response->add_regions();
          out->set_name(spec.name);
          out->set_key(spec.key);
          out->set_offset(spec.offset);
          out->set_byte_size(spec.byte_size);
        }
        return absl::OkStatus();
      });
}

}  // namespace attnscore::service
