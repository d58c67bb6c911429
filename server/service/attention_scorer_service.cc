#include "server/service/attention_scorer_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "attnscore/version.h"
#include "server/observability/logging.h"
#include "server/scoring/validation.h"
#include "server/service/status_conversion.h"
#include "server/service/v1_score_codec.h"

namespace attnscore::service {
namespace {

double Seconds(int64_t micros) { return static_cast<double>(micros) * 1e-6; }

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
            int64_t deadline_micros)
      : service_(service),
        method_(method),
        codec_(std::move(codec)),
        arrival_micros_(arrival_micros),
        deadline_micros_(deadline_micros) {}

  size_t size() const override { return static_cast<size_t>(validated_.batch); }
  const std::string& batch_key() const override { return batch_key_; }
  int64_t deadline_micros() const override { return deadline_micros_; }
  void Drop(const absl::Status& reason) override {
    service_->Answer(*this, reason);
  }

  // Hands the answer to the caller: `response` when there is one (a result, or
  // a stream's error message), else `status`. Takes `response`'s slices (leaves
  // it empty): ByteBuffer has no move, and a copy would take a reference per
  // slice. Called exactly once, by Answer().
  virtual void Deliver(const absl::Status& status,
                       grpc::ByteBuffer& response) = 0;
  // True when a failure is answered with a message (codec().EncodeError), as
  // streams do, rather than with the call's status.
  virtual bool errors_in_band() const { return false; }

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

  Method method() const { return method_; }
  int64_t arrival_micros() const { return arrival_micros_; }
  const ScoreCodec& codec() const { return *codec_; }
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

class AttentionScorerService::UnaryScoreTask final : public ScoreTask {
 public:
  UnaryScoreTask(AttentionScorerService* service, Method method,
                 std::unique_ptr<ScoreCodec> codec, int64_t arrival_micros,
                 grpc::CallbackServerContext* context,
                 grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* response)
      : ScoreTask(service, method, std::move(codec), arrival_micros,
                  service->DeadlineMicros(*context)),
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

  void Deliver(const absl::Status& status,
               grpc::ByteBuffer& response) override {
    if (status.ok()) response_->Swap(&response);
    reactor_->Finish(ToGrpcStatus(status));
  }

 private:
  grpc::CallbackServerContext* const context_;
  grpc::ServerUnaryReactor* const reactor_;
  grpc::ByteBuffer* const response_;
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
                grpc::CallbackServerContext* context)
      : service_(service), deadline_micros_(service->DeadlineMicros(*context)) {
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

  // A request of this stream is about to be accepted: it will Send() exactly
  // once.
  void AddPending() {
    refs_.fetch_add(1, std::memory_order_relaxed);
    absl::MutexLock lock(&mutex_);
    ++pending_;
  }

  // The answer to one pending request; takes `response`'s slices.
  void Send(grpc::ByteBuffer& response) {
    Actions actions;
    {
      absl::MutexLock lock(&mutex_);
      --pending_;
      if (!finished_) writes_.emplace_back().Swap(&response);
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
      actions.write = &writes_.front();
    }
    const size_t backlog = static_cast<size_t>(pending_) + writes_.size();
    if (!reading_ && !reads_done_ &&
        backlog < static_cast<size_t>(service_->options_.max_stream_backlog)) {
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

  AttentionScorerService* const service_;
  const int64_t deadline_micros_;
  std::atomic<bool> cancelled_{false};
  // gRPC's reference, dropped in OnDone, plus one per pending request.
  std::atomic<int> refs_{1};
  grpc::ByteBuffer read_buffer_;

  absl::Mutex mutex_;
  // Responses not yet written; the front is being written while writing_.
  std::deque<grpc::ByteBuffer> writes_ ABSL_GUARDED_BY(mutex_);
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
                  std::make_unique<V1ScoreCodec>(), arrival_micros,
                  stream->deadline_micros()),
        stream_(stream) {
    stream_->AddPending();
  }

  bool cancelled() const override { return stream_->cancelled(); }
  bool errors_in_band() const override { return true; }

  void Deliver(const absl::Status& /*status*/,
               grpc::ByteBuffer& response) override {
    // Errors arrive here already encoded as a response with `error` set.
    stream_->Send(response);
  }

 private:
  StreamReactor* const stream_;
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
  std::unique_ptr<AttentionScorerService> service(
      new AttentionScorerService(options, scorer, models, metrics, clock));
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
  return service;
}

AttentionScorerService::AttentionScorerService(const ServiceOptions& options,
                                               scoring::Scorer* scorer,
                                               ModelRegistry* models,
                                               ServiceMetrics* metrics,
                                               batching::Clock* clock)
    : options_(options),
      scorer_(scorer),
      models_(models),
      metrics_(metrics),
      clock_(clock) {}

AttentionScorerService::~AttentionScorerService() { Shutdown(); }

void AttentionScorerService::Shutdown() {
  ready_.store(false, std::memory_order_release);
  if (scheduler_ != nullptr) scheduler_->Shutdown();
}

size_t AttentionScorerService::QueueDepth() const {
  return scheduler_->QueueDepth();
}

absl::Status AttentionScorerService::WarmUp() {
  // One ALiBi item of every output, plus one per loaded relative model at its
  // own H and D, with Lq = Lk = 1 (any model covers that).
  struct Probe {
    std::string label;
    scoring::ScoreSpec spec;
    int64_t heads;
    int64_t dim;
  };
  scoring::ScoreSpec alibi;
  alibi.want_logits = alibi.want_probs = alibi.want_context = true;
  std::vector<Probe> probes = {{"ALiBi", alibi, 2, 4}};
  const std::shared_ptr<const scoring::ModelSet> models = models_->Current();
  for (const auto& [name, model] : models->models) {
    Probe probe{absl::StrCat("model \"", name, "\""), alibi,
                model->info().heads, model->info().head_dim};
    probe.spec.bias = scoring::RelativeBias{model};
    probes.push_back(std::move(probe));
  }
  for (const Probe& probe : probes) {
    const std::vector<float> ones(static_cast<size_t>(probe.heads * probe.dim),
                                  1.0f);
    scoring::TensorRef ref;
    ref.dtype = DType::kFloat32;
    ref.shape = {1, probe.heads, 1, probe.dim};
    ref.data = ones.data();
    ref.size_bytes = ones.size() * sizeof(float);
    scoring::ScoreItem item;
    item.query = item.key = ref;
    item.value = ref;
    absl::StatusOr<std::vector<scoring::ScoreResult>> result =
        scorer_->ScoreBatch(probe.spec, absl::MakeConstSpan(&item, 1));
    if (!result.ok()) {
      return absl::Status(result.status().code(),
                          absl::StrCat("warm-up with ", probe.label, ": ",
                                       result.status().message()));
    }
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
  return ScoreUnary(Method::kScore, std::make_unique<V1ScoreCodec>(), context,
                    request, response);
}

grpc::ServerUnaryReactor* AttentionScorerService::ScoreUnary(
    Method method, std::unique_ptr<ScoreCodec> codec,
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto task = std::make_unique<UnaryScoreTask>(this, method, std::move(codec),
                                               clock_->NowMicros(), context,
                                               reactor, response);
  Accept(std::move(task), *request);
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
AttentionScorerService::ScoreStream(grpc::CallbackServerContext* context) {
  return new StreamReactor(this, context);
}

void AttentionScorerService::Accept(std::unique_ptr<ScoreTask> task,
                                    const grpc::ByteBuffer& request) {
  metrics_->AddRequestBytes(task->method(), request.Length());
  // The model set is pinned by the spec (shared_ptr), so a reload cannot change
  // it under us.
  absl::Status status =
      task->Prepare(request, options_.limits, *models_->Current());
  if (status.ok()) {
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
  std::vector<scoring::ScoreItem> items;
  items.reserve(batch.size());
  // The items move out of their tasks: ScoreBatch wants them contiguous, and
  // nothing else needs them any more. The tensor bytes stay in the tasks'
  // requests.
  for (const std::unique_ptr<ScoreTask>& task : batch) {
    items.push_back(task->TakeItem());
  }
  ComputeAndAnswer(batch, items);
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
  absl::StatusOr<std::vector<scoring::ScoreResult>> results =
      scorer_->ScoreBatch(tasks.front()->spec(), items);
  const int64_t end = clock_->NowMicros();
  metrics_->ObserveBatch(batch_items, Seconds(end - start));
  if (results.ok() && results->size() != tasks.size()) {
    results = absl::InternalError(absl::StrCat("scorer returned ",
                                               results->size(), " results for ",
                                               tasks.size(), " requests"));
  }
  if (!results.ok() && tasks.size() > 1) {
    spdlog::warn("batch of {} requests failed ({}); retrying them one by one",
                 tasks.size(), results.status().ToString());
    for (size_t i = 0; i < tasks.size(); ++i) {
      ComputeAndAnswer(tasks.subspan(i, 1), items.subspan(i, 1));
    }
    return;
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
    Answer(task, task.codec().EncodeResult((*results)[i], timing));
  }
}

void AttentionScorerService::Answer(ScoreTask& task,
                                    absl::StatusOr<grpc::ByteBuffer> response) {
  const absl::Status status = response.status();
  grpc::ByteBuffer buffer;
  if (response.ok()) {
    buffer.Swap(&*response);
  } else if (task.errors_in_band()) {
    buffer = task.codec().EncodeError(status);
  }
  const int64_t micros = clock_->NowMicros() - task.arrival_micros();
  metrics_->RecordRequest(task.method(), status, Seconds(micros));
  if (buffer.Valid()) {
    metrics_->AddResponseBytes(task.method(), buffer.Length());
  }
  if (task.accepted()) metrics_->AddInFlight(-1);

  {
    // JSON logs carry it as a "request_id" member, text logs as
    // {request_id=...}.
    observability::ScopedLogField request_id_field(
        "request_id", task.request_id().empty() ? "-" : task.request_id());
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
      default:
        spdlog::info("{} {}: {}", method,
                     absl::StatusCodeToString(status.code()),
                     std::string{status.message()});
        break;
    }
  }
  task.Deliver(status, buffer);
}

grpc::ServerUnaryReactor* AttentionScorerService::ListModels(
    grpc::CallbackServerContext* context,
    const v1::ListModelsRequest* /*request*/,
    v1::ListModelsResponse* response) {
  const int64_t start = clock_->NowMicros();
  const std::shared_ptr<const scoring::ModelSet> models = models_->Current();
  for (const auto& [name, model] : models->models) {
    const scoring::RelativeModelInfo& info = model->info();
    v1::ModelInfo* out = response->add_models();
    out->set_name(name);
    out->set_source(info.source);
    out->set_heads(info.heads);
    out->set_head_dim(info.head_dim);
    out->set_max_relative_positions(info.max_relative_positions);
  }
  metrics_->RecordRequest(Method::kListModels, absl::OkStatus(),
                          Seconds(clock_->NowMicros() - start));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionScorerService::GetServerInfo(
    grpc::CallbackServerContext* context,
    const v1::GetServerInfoRequest* /*request*/, v1::ServerInfo* response) {
  const int64_t start = clock_->NowMicros();
  response->set_version(kVersion);
  response->set_device(scorer_->device());
  response->set_intra_op_threads(options_.intra_op_threads);
  v1::Limits* limits = response->mutable_limits();
  limits->set_max_heads(options_.limits.max_heads);
  limits->set_max_head_dim(options_.limits.max_head_dim);
  limits->set_max_seq_len(options_.limits.max_seq_len);
  limits->set_max_output_bytes(options_.limits.max_output_bytes);
  limits->set_max_message_bytes(options_.max_message_bytes);
  v1::BatchingOptions* batching = response->mutable_batching();
  batching->set_max_batch_size(
      static_cast<int64_t>(options_.batching.max_batch_size));
  batching->set_max_queue_delay_us(options_.batching.max_queue_delay_us);
  batching->set_max_queue(
      static_cast<int64_t>(options_.batching.max_enqueued_tasks));
  batching->set_batch_workers(options_.batching.num_batch_threads);
  metrics_->RecordRequest(Method::kGetServerInfo, absl::OkStatus(),
                          Seconds(clock_->NowMicros() - start));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace attnscore::service
