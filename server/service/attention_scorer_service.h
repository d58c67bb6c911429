// attnscore.v1.AttentionScorer on gRPC's callback API.
//
// Score, ScoreChunked and ScoreStream handlers (and the Open Inference
// Protocol's ModelInfer, kserve_service.h, through ScoreUnary) parse and
// validate a request on the gRPC thread, enqueue it in the dynamic batcher and
// return at once; the batch worker threads run Scorer::ScoreBatch and answer
// (Finish / Write) from there, so no gRPC thread ever waits for compute.
// Responses are serialized by response_encoder.h with tensor bytes as slices
// over the scorer's output (raw ByteBuffer methods, so protobuf never copies
// them). Requests are parsed once from the incoming ByteBuffer into a
// ScoreRequest whose tensor bytes the scorer reads in place.
//
// ScoreChunked is Score with the reply's tensors written as ScoreChunk
// messages of --reply-chunk-bytes, one write in flight at a time, so that the
// client copies one chunk while the next is on the wire. A request scored
// alone (Scorer::ScoreObserved) sends each message as soon as its rows are
// computed, while later rows compute.
//
// ScoreStream is pipelined: requests are read and scheduled as they arrive,
// responses (tagged with request_id) are written as they complete, one write in
// flight at a time; when too many requests of one stream are unanswered or
// unsent (max_stream_backlog), or its unsent replies hold more than
// max_stream_unsent_bytes (replies still computing count at their predicted
// size), reading pauses until the client reads (flow control). A bad request is
// answered with `error` set and does not end the stream.
//
// Admission, cheapest check first: the caller's identity (options.authenticate,
// at the start of every method; its error is the answer); drain (UNAVAILABLE
// "server is draining", also for new requests of open streams); the in-flight
// budget (inflight_budget.h) for the request's wire bytes, before the body is
// parsed; the queue (UNAVAILABLE when full); parsing and validation, including
// the predicted peak memory and work (request_validation.h); the budget again
// for the predicted peak. A request holds its share of the budget until its
// reply is sent (gRPC's OnDone / OnWriteDone).
//
// Every accepted request is answered exactly once: with its result, or with the
// status that stopped it (validation, queue full, deadline, cancellation,
// compute failure). Compute is stopped between tiles (scoring::StopFn) once
// every request of the batch is cancelled or past its deadline. An exception
// from the scorer or the encoder (std::bad_alloc: RESOURCE_EXHAUSTED; any
// other: INTERNAL) is answered, never left to terminate the process.
//
// Ownership: the service does not own the Scorer, the ModelRegistry or the
// ServiceMetrics; they must outlive it. It owns the batcher and its worker
// threads. Thread safety: gRPC calls the handlers concurrently. WarmUp(),
// Shutdown() and QueueDepth() may be called from any thread. REQUIRES:
// grpc::Server::Shutdown() has returned before the service is destroyed (the
// destructor runs Shutdown(), which answers whatever is still queued). Errors:
// absl::Status throughout; converted to grpc::Status only by ToGrpcStatus().
#ifndef ATTNSCORE_SERVER_SERVICE_ATTENTION_SCORER_SERVICE_H_
#define ATTNSCORE_SERVER_SERVICE_ATTENTION_SCORER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "server/batching/batch_scheduler.h"
#include "server/batching/clock.h"
#include "server/cpu/kernel_info.h"
#include "server/observability/log_rate_limiter.h"
#include "server/scoring/scorer.h"
#include "server/service/inflight_budget.h"
#include "server/service/model_registry.h"
#include "server/service/request_validation.h"
#include "server/service/score_codec.h"
#include "server/service/service_metrics.h"
#include "server/service/shared_memory.h"

namespace attnscore::service {

// Everything the service is configured with. The member initialisers (and
// those of RequestLimits and BatchSchedulerOptions) are the server's defaults:
// attnscore-server's flags take theirs from a default-constructed
// ServiceOptions. The gRPC service name (also the readiness entry in
// grpc.health.v1) is v1::AttentionScorer::service_full_name().
struct ServiceOptions {
  RequestLimits limits;
  batching::BatchSchedulerOptions batching;
  // Reported by GetServerInfo only; the server sets them (the gRPC message
  // limit, and the scorer's intra-op threads, 0 for "the number of cores").
  int64_t max_message_bytes = 0;
  int intra_op_threads = 0;
  cpu::KernelInfo kernels;  // GetServerInfo's `kernels`; the server sets it
  // Most unanswered plus unsent responses per ScoreStream before the server
  // stops reading it.
  int max_stream_backlog = 64;
  // Most unsent reply bytes per ScoreStream, counting the replies still
  // computing at their predicted size, before the server stops reading it
  // (--max-stream-unsent-bytes): a client that does not read holds at most
  // this much plus one reply per stream.
  int64_t max_stream_unsent_bytes = int64_t{64} << 20;
  // Output bytes per ScoreChunked message (--reply-chunk-bytes; whole rows,
  // at least one). Small enough that the client copies a chunk while the next
  // one arrives, large enough that per-message costs stay small.
  int64_t reply_chunk_bytes = int64_t{1} << 20;
  // Bytes all requests together may hold (--max-inflight-bytes); 0: half of
  // the container's memory limit (memory_limit.h DefaultInflightBytes).
  int64_t max_inflight_bytes = 0;
  // One identity's share of it (--max-inflight-per-client); 0: no per-client
  // cap; kHalfOfInflight: half of max_inflight_bytes where `authenticate`
  // tells callers apart, no cap where it is empty (every caller is then one
  // identity, whose share would cap the whole server at half its budget).
  static constexpr int64_t kHalfOfInflight = -1;
  int64_t max_inflight_per_client = kHalfOfInflight;
  // The caller's identity (a token's name, a certificate's subject), asked at
  // the start of every attnscore.v1 and KServe method; an error status is the
  // call's answer (UNAUTHENTICATED). Empty: everyone is "anonymous" (and the
  // per-client defaults are no cap). Called
  // concurrently from gRPC threads.
  std::function<absl::StatusOr<std::string>(const grpc::CallbackServerContext&)>
      authenticate;
  // Shared-memory outputs (--shm-prefix, --max-shm-regions): off by default.
  SharedMemoryOptions shared_memory;
};

// The identity of callers when ServiceOptions::authenticate is empty.
inline constexpr char kAnonymousClient[] = "anonymous";

// Score and ScoreStream exchange raw ByteBuffers (our serialization); the small
// methods use the generated messages. (CallbackService cannot be the base: its
// typed ScoreStream clashes.)
using AttentionScorerRawService =
    v1::AttentionScorer::WithRawCallbackMethod_Score<
        v1::AttentionScorer::WithRawCallbackMethod_ScoreChunked<
            v1::AttentionScorer::WithRawCallbackMethod_ScoreStream<
                v1::AttentionScorer::WithCallbackMethod_ListModels<
                    v1::AttentionScorer::WithCallbackMethod_GetServerInfo<
                        v1::AttentionScorer::
                            WithCallbackMethod_RegisterSharedMemory<
                                v1::AttentionScorer::
                                    WithCallbackMethod_UnregisterSharedMemory<
                                        v1::AttentionScorer::
                                            WithCallbackMethod_SharedMemoryStatus<
                                                v1::AttentionScorer::
                                                    Service>>>>>>>>;

class AttentionScorerService final : public AttentionScorerRawService {
 public:
  // INVALID_ARGUMENT for bad options (from the batcher). `clock` drives queue
  // timeouts and deadlines (a fake clock in tests). Starts the batch worker
  // threads.
  static absl::StatusOr<std::unique_ptr<AttentionScorerService>> Create(
      const ServiceOptions& options, scoring::Scorer* scorer,
      ModelRegistry* models, ServiceMetrics* metrics,
      batching::Clock* clock = batching::RealClock());

  AttentionScorerService(const AttentionScorerService&) = delete;
  AttentionScorerService& operator=(const AttentionScorerService&) = delete;
  ~AttentionScorerService() override;

  // Runs small computes (ALiBi, and each loaded relative model) on every batch
  // worker's thread and returns when all have, so that the first real request
  // does not pay for LibTorch's lazy initialisation nor for its worker's
  // thread team and buffers. Returns the first error. REQUIRES: not from a
  // batch worker.
  absl::Status WarmUp();

  // Starts the drain: from now on new requests (unary calls, and new messages
  // of open streams) get UNAVAILABLE "server is draining"; everything accepted
  // before is still computed and answered. Call before grpc::Server::Shutdown()
  // so that open streams stop taking work. Idempotent; Shutdown() implies it.
  void StartDrain();

  // Blocks until every accepted request has been answered and its reply sent
  // (the in-flight budget is empty) or `deadline` passes; true if it emptied.
  // Call after StartDrain() and before grpc::Server::Shutdown(): while it
  // waits, calls that reach the server get UNAVAILABLE from the service,
  // where gRPC's shutdown would cancel the ones it has not started yet
  // (CANCELLED, which clients do not retry).
  bool AwaitAnswered(absl::Time deadline) const {
    return budget_->AwaitEmpty(deadline);
  }

  // Stops the batcher: every queued request is computed (or dropped if
  // cancelled or expired) and answered, then the workers are joined. Call after
  // grpc::Server::Shutdown(). Idempotent.
  void Shutdown();

  // Bytes of the in-flight budget held now (also the attnscore_inflight_bytes
  // gauge).
  int64_t InflightBytes() const { return budget_->InUse(); }

  // The caller's identity by options.authenticate ("anonymous" without one).
  absl::StatusOr<std::string> Authenticate(
      const grpc::CallbackServerContext& context) const;

  // The options in force: ServiceOptions with the derived defaults resolved
  // (max_inflight_bytes, max_inflight_per_client).
  const ServiceOptions& options() const { return options_; }

  // Requests waiting in the batcher.
  size_t QueueDepth() const;

  // A small method of either protocol (ListModels, KServe's ServerLive, ...),
  // on the calling gRPC thread: authenticates, runs `body` with the caller's
  // identity, records `method`'s metrics and finishes the call with `body`'s
  // status (or the authentication's).
  grpc::ServerUnaryReactor* AnswerSmall(
      grpc::CallbackServerContext* context, Method method,
      absl::FunctionRef<absl::Status(const std::string& client)> body);

  // The shared-memory regions of every protocol (a region registered through
  // attnscore.v1 can be placed into through the Open Inference Protocol, and
  // the other way round). Thread-safe.
  SharedMemoryRegistry& shared_memory() { return shared_memory_; }

  // True from a successful WarmUp() until Shutdown() (the Open Inference
  // Protocol's ServerReady; grpc.health.v1's readiness is main's).
  bool ready() const { return ready_.load(std::memory_order_acquire); }

  // The shared pipeline of every unary scoring method of every protocol (v1
  // Score, KServe ModelInfer): parses `request` with the codec that
  // `make_codec` makes for the authenticated caller, validates, schedules,
  // and answers `response` through the single Answer exit with `method`'s
  // metrics. Returns the call's reactor (never blocks). REQUIRES: called from
  // the method's gRPC handler with its arguments.
  using CodecFactory =
      absl::FunctionRef<std::unique_ptr<ScoreCodec>(const std::string& client)>;
  grpc::ServerUnaryReactor* ScoreUnary(Method method, CodecFactory make_codec,
                                       grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response);

  // gRPC methods.
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ScoreStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ScoreChunked(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* ListModels(
      grpc::CallbackServerContext* context,
      const v1::ListModelsRequest* request,
      v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(
      grpc::CallbackServerContext* context,
      const v1::GetServerInfoRequest* request,
      v1::ServerInfo* response) override;
  grpc::ServerUnaryReactor* RegisterSharedMemory(
      grpc::CallbackServerContext* context,
      const v1::RegisterSharedMemoryRequest* request,
      v1::RegisterSharedMemoryResponse* response) override;
  grpc::ServerUnaryReactor* UnregisterSharedMemory(
      grpc::CallbackServerContext* context,
      const v1::UnregisterSharedMemoryRequest* request,
      v1::UnregisterSharedMemoryResponse* response) override;
  grpc::ServerUnaryReactor* SharedMemoryStatus(
      grpc::CallbackServerContext* context,
      const v1::SharedMemoryStatusRequest* request,
      v1::SharedMemoryStatusResponse* response) override;

 private:
  class ScoreTask;
  class UnaryReactor;
  class UnaryScoreTask;
  class ChunkedReactor;
  class ChunkedScoreTask;
  class StreamReactor;
  class StreamScoreTask;
  class RefusedStream;
  using Scheduler = batching::BatchScheduler<ScoreTask>;

  AttentionScorerService(const ServiceOptions& options,
                         std::shared_ptr<InflightBudget> budget,
                         scoring::Scorer* scorer, ModelRegistry* models,
                         ServiceMetrics* metrics, batching::Clock* clock);

  // The caller of a scoring method (Score, ScoreChunked, ScoreStream,
  // ModelInfer) and its metrics slot. A failed authentication is recorded as
  // `method`'s request (its duration from `arrival_micros`) and returned, to
  // be the call's answer.
  struct Caller {
    std::string client;
    int slot = 0;
  };
  absl::StatusOr<Caller> AuthenticateCaller(
      Method method, const grpc::CallbackServerContext& context,
      int64_t arrival_micros);
  // Parses and validates `request` into `task`, then schedules it; answers it
  // at once if any of that fails. Runs on a gRPC thread.
  void Accept(std::unique_ptr<ScoreTask> task, const grpc::ByteBuffer& request);
  // The admission steps of Accept up to scheduling, cheapest first.
  absl::Status Admit(ScoreTask& task, const grpc::ByteBuffer& request);
  // True when every task is cancelled or past its deadline: the batch's
  // StopFn. Reads the clock at most once.
  bool AllAbandoned(absl::Span<const std::unique_ptr<ScoreTask>> tasks) const;
  // Scorer::ScoreBatch, with an exception turned into a status.
  absl::StatusOr<std::vector<scoring::ScoreResult>> ScoreGuarded(
      absl::Span<const std::unique_ptr<ScoreTask>> tasks,
      absl::Span<const scoring::ScoreItem> items);
  // Answers every task of `batch` not answered yet with `status` (after an
  // exception escaped the compute).
  void AnswerRemaining(const std::vector<std::unique_ptr<ScoreTask>>& batch,
                       const absl::Status& status);
  // Batch worker: computes a batch and answers its tasks. The tasks die with
  // the batcher's callback argument, after this returns.
  void RunBatch(const std::vector<std::unique_ptr<ScoreTask>>& batch);
  // Computes tasks that share a batch key and answers them, pass by pass
  // (Scorer::ItemsPerPass); records the batch's metrics.
  void ComputeAndAnswer(absl::Span<const std::unique_ptr<ScoreTask>> tasks,
                        absl::Span<const scoring::ScoreItem> items);
  // One pass of a batch of `batch_items` items: scores and answers its tasks,
  // splitting a failed pass into single requests so that one request's error
  // cannot fail the others. Returns the pass's compute time (us).
  // `earlier_compute_us`, on the last pass only: the earlier passes' compute,
  // to record the batch's metrics before answering.
  int64_t ScoreAndAnswer(absl::Span<const std::unique_ptr<ScoreTask>> tasks,
                         absl::Span<const scoring::ScoreItem> items,
                         size_t batch_items,
                         std::optional<int64_t> earlier_compute_us);
  // The single exit of every Score/ScoreStream request: metrics, log line, then
  // delivery.
  void Answer(ScoreTask& task, absl::StatusOr<grpc::ByteBuffer> response);
  // The context's deadline on clock_, INT64_MAX for none.
  int64_t DeadlineMicros(const grpc::CallbackServerContext& context) const;
  // GetServerInfo's answer: version, device, limits, batching, kernels.
  void FillServerInfo(v1::ServerInfo& response) const;

  const ServiceOptions options_;
  const std::shared_ptr<InflightBudget> budget_;
  scoring::Scorer* const scorer_;
  ModelRegistry* const models_;
  ServiceMetrics* const metrics_;
  SharedMemoryRegistry shared_memory_;
  batching::Clock* const clock_;
  // The info lines for refused requests (INVALID_ARGUMENT, NOT_FOUND,
  // RESOURCE_EXHAUSTED, ...): a client can send those as fast as it likes, so
  // at most 10 a second after a burst of 20; each written line says how many
  // were left out, and attnscore_requests_total counts every one.
  observability::LogRateLimiter refusal_log_{/*per_second=*/10,
                                             /*burst=*/20};
  // Shared so that the queue-depth gauge can hold a weak reference that never
  // dangles.
  std::shared_ptr<Scheduler> scheduler_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
};

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_ATTENTION_SCORER_SERVICE_H_
