// The attnscore client library: scores attention on an attnscore server
// (attnscore.v1 over gRPC) from C++ without LibTorch.
//
//   namespace ac = attnscore::client;
//   ac::ClientOptions options;
//   options.target = "dns:///attnscore:50051";
//   auto client = ac::Client::Create(options);  // absl::StatusOr
//   ac::ScoreRequest request;
//   request.query = q.view();
//   request.key = k.view();
//   request.causal = true;
//   absl::StatusOr<ac::ScoreResult> result = (*client)->Score(request);
//
// Channels: one target ("host:port", "dns:///name:port", "ipv4:a:p,b:q",
// "unix:/path" for a server's --listen-unix socket on this host), or a
// list of host:port targets, balanced round_robin over every resolved address
// (what a headless Kubernetes Service needs); retries of UNAVAILABLE,
// keepalive, message limits and TLS come from ClientOptions through gRPC's own
// service config and channel arguments.
//
// Ownership: requests borrow tensor memory through TensorView. Score() needs it
// until it returns; ScoreAsync() until its callback has run (or its future is
// ready); Stream::Write() copies, so the memory is free once Write returns.
// Results own their tensors; a placed output's bytes are in the caller's
// shared memory (ScoreResult::placed says where). A Client must outlive every
// call and Stream it started.
// Thread safety: Client is thread-safe; Stream's methods may be called from any
// thread.
// Process-wide: the first Create keeps gRPC initialised until the process
// exits and, unless the process set it, sets
// GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS to 100 (why: client.cc).
// Errors: every call returns absl::Status / absl::StatusOr carrying the gRPC
// status code and the server's message verbatim (INVALID_ARGUMENT names the
// field, expected and actual value). Nothing throws.
#ifndef ATTNSCORE_CLIENT_CLIENT_H_
#define ATTNSCORE_CLIENT_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/tensor.h"
#include "common/layout.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace attnscore::client {

// The gRPC service's full name, "attnscore.v1.AttentionScorer" (from the
// generated stub, which this header does not include); also the readiness
// entry of grpc.health.v1 ("" is liveness).
const char* ServiceName();

// -----------------------------------------------------------------------------
// Requests and results (the semantics are the proto's:
// proto/attnscore/v1/attnscore.proto).

// The project's one Layout (common/layout.h), re-exported so that
// client::Layout, client::ParseLayout ("BHSD" / "BSHD" / "SBHD",
// case-insensitive) and client::LayoutName keep working.
using Layout = ::attnscore::Layout;
using ::attnscore::LayoutName;
using ::attnscore::ParseLayout;

// ALiBi bias; no slopes: the paper's slopes for H heads.
struct Alibi {
  std::vector<float> slopes;
};
// Transformer-XL relative bias with a parameter set the server loaded (see
// ListModels).
struct Relative {
  std::string model;
};

struct Outputs {
  bool logits = true;
  bool probs = false;
  bool context = false;
};

// One of the outputs, where a request or result names which (placements).
enum class Output { kLogits, kProbs, kContext };
// "logits", "probs", "context".
const char* OutputName(Output output);

// -----------------------------------------------------------------------------
// Shared-memory outputs (same host only; the server runs with --shm-prefix):
// the client creates a POSIX shared-memory object (SharedMemoryRegion,
// client/shared_memory.h), registers it (Client::RegisterSharedMemory) and
// places outputs in it (ScoreRequest::placements) instead of receiving their
// bytes in the reply.

// A shared-memory object registered with the server under `name`, the name
// placements use. `key` is the object's shm_open name without the leading '/'
// (it must start with the server's ServerInfo::shm_prefix); the region is its
// bytes [offset, offset + byte_size), offset a multiple of 4096.
struct SharedMemoryRegistration {
  std::string name;
  std::string key;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};

// Bytes [offset, offset + byte_size) of the registered region `region` (its
// registered name, not its key); offset counts from the region's start.
struct SharedMemoryRange {
  std::string region;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};

// Where one requested output goes instead of the reply: `range` must hold all
// of it (B*H*Lq*Lk or B*H*Lq*Dv elements of the output dtype).
struct OutputPlacement {
  Output output = Output::kLogits;
  SharedMemoryRange range;
};

// An output the server wrote into shared memory: its dtype and shape, and the
// range that holds its NumElements(shape) * ElementSize(dtype) bytes
// (range.byte_size: the bytes written). SharedMemoryRegion::View reads it.
struct PlacedOutput {
  Output output = Output::kLogits;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  SharedMemoryRange range;
};

// Inputs the server reads from registered shared memory instead of receiving
// their bytes (a server on this host with --shm-prefix). For each range set,
// the matching ScoreRequest tensor gives only the dtype and shape (its data is
// not read and may be null), and the range must hold exactly its
// NumElements(shape) * ElementSize(dtype) bytes. The server reads them while
// it computes: leave them unchanged until the call returns, and place no
// output over them.
struct SharedInputs {
  std::optional<SharedMemoryRange> query;
  std::optional<SharedMemoryRange> key;
  std::optional<SharedMemoryRange> value;
};

struct ScoreRequest {
  std::string
      request_id;  // echoed back; how Stream responses are matched to requests
  std::variant<Alibi, Relative> bias;
  TensorView query;                 // [B, H, Lq, D] in `layout`
  TensorView key;                   // [B, H, Lk, D]
  std::optional<TensorView> value;  // [B, H, Lk, Dv]; needed for context
  Layout layout = Layout::kBHSD;
  bool causal = false;
  std::optional<float> scale;        // unset: 1/sqrt(D)
  std::vector<int32_t> key_lengths;  // empty, or B values in [0, Lk]
  Outputs outputs;
  std::optional<DType> output_dtype;  // unset: the query's
  // Outputs written into registered shared memory instead of the reply; each
  // must also be requested in `outputs`, at most one placement each, and the
  // ranges must not overlap. The bytes are in place when the call returns (its
  // callback runs, or on a Stream its response arrives); do not read them
  // before, nor reuse a range for another request until then.
  std::vector<OutputPlacement> placements;
  SharedInputs shared_inputs;
};

// The server's account of one request.
struct Timing {
  int64_t queue_us = 0;    // arrival to the start of its batch's compute
  int64_t compute_us = 0;  // that batch's compute
  int32_t batch_size = 0;  // batch items computed together
};

struct ScoreResult {
  std::string request_id;
  std::optional<Tensor> logits;   // [B, H, Lq, Lk], masked entries -inf
  std::optional<Tensor> probs;    // [B, H, Lq, Lk]
  std::optional<Tensor> context;  // [B, H, Lq, Dv] in the request's layout
  // The outputs the request placed in shared memory, in the response's order
  // (their Tensor fields above stay empty).
  std::vector<PlacedOutput> placed;
  Timing timing;
};

struct ModelInfo {
  std::string name;
  std::string source;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t max_relative_positions = 0;  // P: requests need max(Lq, Lk) <= P
};

struct ServerInfo {
  std::string version;
  std::string device;
  int32_t intra_op_threads = 0;
  int64_t max_heads = 0;
  int64_t max_head_dim = 0;
  int64_t max_seq_len = 0;
  int64_t max_output_bytes = 0;
  int64_t max_message_bytes = 0;
  int64_t max_batch_size = 0;
  int64_t max_queue_delay_us = 0;
  int64_t max_queue = 0;
  int32_t batch_workers = 0;
  // The key prefix RegisterSharedMemory accepts; empty: shared-memory outputs
  // are off.
  std::string shm_prefix;
  int64_t max_shm_regions = 0;  // all identities together
  // What the server computes on (attnscore.proto's KernelInfo); empty strings
  // from a server that does not say.
  struct Kernels {
    std::string cpu_model;
    std::string isa;
    std::string blas_core;
    std::string blas_core_source;
    std::string aten_capability;
    std::string aten_capability_source;
    std::string omp_wait;
    std::string omp_wait_source;
    // What the operator's settings cost on that CPU; empty when nothing.
    std::string below_cpu;
  };
  Kernels kernels;
};

enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
const char* ServingStatusName(ServingStatus status);

// -----------------------------------------------------------------------------
// Options.

struct TlsOptions {
  bool enabled = false;
  std::string ca_file;  // PEM roots; empty: the system's
  std::string
      cert_file;  // client certificate chain (mutual TLS), with key_file
  std::string key_file;
  std::string server_name_override;  // when the target's name is not in the
                                     // certificate (tests)
};

// gRPC retries (service config retryPolicy) of UNAVAILABLE only: the status the
// server uses for "queue full / draining, try later" and that a dead connection
// produces. Never anything else: a retried DEADLINE_EXCEEDED or INTERNAL could
// double the load of an overloaded server.
struct RetryOptions {
  bool enabled = true;
  int max_attempts = 5;  // including the first; gRPC caps this at 5
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
  double backoff_multiplier = 2.0;
  // retryThrottling: retries stop while the tokens (each failure -1, each
  // success +ratio) are at or below max_tokens / 2. 100 rather than gRPC's
  // example 10: when one of a few backends dies, every call in flight on it
  // fails at once, and those retries are exactly the useful ones. 0 disables
  // throttling.
  int throttle_max_tokens = 100;
  double throttle_token_ratio = 0.1;
  // gRPC keeps a call's sent messages for a retry up to this size (its default,
  // 256 KiB, would make every prefill request unretriable).
  int64_t buffer_bytes = int64_t{64} << 20;
};

// Client pings. The server (server/main.cc) accepts pings at most every 10 s,
// with or without calls, so the interval must not go below 10 s or the server
// answers with GOAWAY.
struct KeepaliveOptions {
  absl::Duration time = absl::Seconds(30);
  absl::Duration timeout = absl::Seconds(10);
  bool permit_without_calls = true;
};

// How soon a channel tries a backend again after its connection failed or
// dropped: gRPC's backoff starts at initial_backoff and grows 1.6x per failed
// attempt up to max_backoff. gRPC's own maximum, 120 s, would leave a replica
// that restarted after a long absence without traffic for up to two minutes
// while round_robin sends everything to the others; 10 s bounds that, at the
// cost of one connection attempt per 10 s to a backend that stays down.
struct ReconnectOptions {
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(10);
};

struct ClientOptions {
  // "host:port", "dns:///name:port" (every A/AAAA record, re-resolved on
  // failures), "ipv4:a:p,b:q", "unix:/path", or a comma-separated list
  // "host:p,host2:q".
  std::string target = "127.0.0.1:50051";
  // Alternatively a list of host:port (resolved once at Create): overrides
  // `target`.
  std::vector<std::string> targets;
  std::string load_balancing = "round_robin";  // or "pick_first"
  // Deadline of calls without their own timeout (Stream: none).
  // absl::InfiniteDuration(): none.
  absl::Duration default_timeout = absl::Seconds(30);
  RetryOptions retry;
  KeepaliveOptions keepalive;
  ReconnectOptions reconnect;
  // -1: unlimited. Receive is unlimited by default because score matrices are
  // large (B8 H8 L512 float32 logits are 64 MiB); the server's
  // --max-output-bytes is the real bound.
  int64_t max_receive_message_bytes = -1;
  int64_t max_send_message_bytes = -1;
  TlsOptions tls;
  // Sent as "authorization: Bearer <token>" on every call. Over plaintext TCP
  // only when allow_insecure_token (a token on an unencrypted connection is
  // readable by anyone on the path); over TLS or a "unix:" socket always.
  std::string bearer_token;
  bool allow_insecure_token = false;
  // Independent channels (TCP connections per backend); calls are spread over
  // them.
  int connections = 1;
  // Most bytes of large response tensors (32 MiB and more) kept for reuse
  // once the results holding them are gone: malloc maps each such buffer
  // afresh, and a 64 MiB one faults in 16k pages, each zeroed by the kernel,
  // on every call; a reused one none. A kept buffer unused for 10 s is
  // returned to the kernel (BufferPool::kDefaultDecay), at the pool's next
  // use. 0: no reuse.
  int64_t keep_response_bytes = int64_t{256} << 20;
  // Most bytes one socket read takes from a TCP connection
  // (GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE); 0: gRPC's own sizing. A receiver
  // that copies megabytes per recvmsg holds the socket meanwhile, and the
  // kernel's receive processing queues behind it: on loopback, 64 KiB reads
  // moved bytes twice as fast as 4 MiB ones, and a 16 MiB response arrived
  // about 20% sooner. gRPC 1.51 honours it only with its tcp_read_chunks
  // experiment off (PreferBoundedSocketReads). Unix sockets keep gRPC's own
  // sizing: bounded reads made 64 MiB responses slower there.
  int max_socket_read_bytes = 64 << 10;
  // Score (and ScoreAsync) ask for the reply in chunks (the ScoreChunked
  // method) when the request's outputs in the reply are at least this many
  // bytes: the client then copies each chunk into the result while the next
  // one is on the wire, instead of copying the whole reply after it has
  // arrived. A server without ScoreChunked (UNIMPLEMENTED) is asked with Score
  // from then on. 0: never.
  int64_t chunked_reply_bytes = int64_t{4} << 20;
  // More integer gRPC channel arguments ("grpc.*" names, e.g.
  // "grpc.http2.lookahead_bytes"); they override the library's own (including
  // the message limits above): for transport tuning (bench/transport_bench.cc
  // --client_arg). INVALID_ARGUMENT for a name outside "grpc.".
  std::vector<std::pair<std::string, int>> channel_args;
};

// For a program's main, before anything uses gRPC (which reads its
// experiments once): turns off gRPC 1.51's tcp_read_chunks experiment
// (GRPC_EXPERIMENTS=-tcp_read_chunks), under which gRPC sizes reads by its own
// estimate (up to 4 MiB) and ignores ClientOptions::max_socket_read_bytes.
// An environment that already sets GRPC_EXPERIMENTS is left as it is (the
// operator's choice wins). Changes the process's environment, so not for a
// library to call on its users' behalf; attnscore's own programs (the CLI,
// the load tester, the benchmarks) call it.
void PreferBoundedSocketReads();

// Cancels the calls that carry it (CallOptions::cancellation). Thread-safe;
// cancelling twice is harmless; calls started after Cancel() fail with
// CANCELLED at once.
class CancellationToken {
 public:
  void Cancel();
  bool cancelled() const;

  // For the library: a running call's context. Register returns false if
  // already cancelled.
  bool Register(grpc::ClientContext* context);
  void Unregister(grpc::ClientContext* context);

 private:
  mutable std::mutex mutex_;
  bool cancelled_ = false;                      // guarded by mutex_
  std::vector<grpc::ClientContext*> contexts_;  // guarded by mutex_
};

struct CallOptions {
  // Unset: ClientOptions::default_timeout. absl::InfiniteDuration(): no
  // deadline.
  std::optional<absl::Duration> timeout;
  std::shared_ptr<CancellationToken> cancellation;
  // Wait for a connection instead of failing UNAVAILABLE at once while no
  // backend is reachable (still bounded by the deadline).
  bool wait_for_ready = false;
  std::vector<std::pair<std::string, std::string>> metadata;
};

// -----------------------------------------------------------------------------
// Streams.

struct StreamResponse {
  std::string request_id;
  // The request's own error (the stream goes on) or its result.
  absl::StatusOr<ScoreResult> result;
};

struct StreamOptions {
  // Called on a gRPC thread for every response in arrival order; must not
  // block. Unset: responses queue for Stream::Read().
  std::function<void(StreamResponse)> on_response;
  // Called once, on a gRPC thread, when the stream has ended, with its final
  // status.
  std::function<void(const absl::Status&)> on_done;
  // Write() waits while this many requests are queued behind the one being
  // sent.
  size_t max_queued_writes = 64;
};

// A ScoreStream call: pipelined requests, responses matched by request_id
// (possibly out of order). Created by Client::OpenStream. Destroying it cancels
// the call if it is still running.
class Stream {
 public:
  class State;  // implementation detail, shared with gRPC's reactor
  explicit Stream(std::shared_ptr<State> state);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Queues one request; its tensors are copied into the message before Write
  // returns. Waits up to `timeout` while max_queued_writes are queued
  // (DEADLINE_EXCEEDED). FAILED_PRECONDITION after WritesDone; the stream's
  // final status once it has ended.
  absl::Status Write(const ScoreRequest& request,
                     absl::Duration timeout = absl::Seconds(30));
  // The next response (when StreamOptions::on_response is unset).
  // DEADLINE_EXCEEDED when none arrives within `timeout`; OUT_OF_RANGE when the
  // stream has ended and every response was read (Finish() then says why it
  // ended).
  absl::StatusOr<StreamResponse> Read(absl::Duration timeout);
  // No more requests: the server ends the stream after answering the queued
  // ones.
  void WritesDone();
  // Waits up to `timeout` for the end of the stream; its final status
  // (DEADLINE_EXCEEDED if it has not ended by then: the stream goes on).
  absl::Status Finish(absl::Duration timeout);
  void Cancel();
  // Requests written but not yet answered.
  size_t outstanding() const;

 private:
  std::shared_ptr<State> state_;
};

// -----------------------------------------------------------------------------

class Client {
 public:
  using ScoreCallback = std::function<void(absl::StatusOr<ScoreResult>)>;

  // INVALID_ARGUMENT for unusable options (no target, unreadable TLS files, bad
  // numbers). Does not connect: the first call (or WaitForConnected) does.
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  absl::StatusOr<ScoreResult> Score(const ScoreRequest& request,
                                    const CallOptions& call = {});
  // `done` runs once, on a gRPC thread (or on the calling thread if the call
  // cannot start), and must not block. The request's tensors must stay valid
  // until then.
  void ScoreAsync(const ScoreRequest& request, const CallOptions& call,
                  ScoreCallback done);
  std::future<absl::StatusOr<ScoreResult>> ScoreAsync(
      const ScoreRequest& request, const CallOptions& call = {});
  // A ScoreStream call; the deadline is CallOptions::timeout if set, else none.
  absl::StatusOr<std::unique_ptr<Stream>> OpenStream(
      StreamOptions stream_options = {}, const CallOptions& call = {});

  absl::StatusOr<std::vector<ModelInfo>> ListModels(
      const CallOptions& call = {});
  absl::StatusOr<ServerInfo> GetServerInfo(const CallOptions& call = {});

  // Shared-memory regions, which belong to the caller's identity (bearer
  // token, client certificate or none): other identities neither see nor use
  // them. A region is registered with one server process: use them with a
  // client whose target is that one server on this host (with several
  // targets or addresses, each call may reach another server, which does
  // not know the region: NOT_FOUND). Register: FAILED_PRECONDITION when the
  // server has them off, INVALID_ARGUMENT naming a bad field, NOT_FOUND for no
  // such object, ALREADY_EXISTS for a registered name, PERMISSION_DENIED when
  // the server may not open the object, RESOURCE_EXHAUSTED at the server's
  // limit.
  absl::Status RegisterSharedMemory(const SharedMemoryRegistration& region,
                                    const CallOptions& call = {});
  // NOT_FOUND when the caller has no region `name`. Requests already accepted
  // still write into it.
  absl::Status UnregisterSharedMemory(std::string_view name,
                                      const CallOptions& call = {});
  // The caller's regions, sorted by name.
  absl::StatusOr<std::vector<SharedMemoryRegistration>> SharedMemoryStatus(
      const CallOptions& call = {});

  // grpc.health.v1 Check: ServiceName() is readiness, "" liveness.
  // kServiceUnknown when the server does not know `service`.
  absl::StatusOr<ServingStatus> Health(
      const std::string& service = ServiceName(), const CallOptions& call = {});

  // Connects every channel (or fails with DEADLINE_EXCEEDED/UNAVAILABLE after
  // `timeout`).
  absl::Status WaitForConnected(absl::Duration timeout);

  const ClientOptions& options() const;
  // The gRPC target the channels use (a list is turned into "ipv4:..." /
  // "ipv6:...").
  const std::string& resolved_target() const;

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace attnscore::client

#endif  // ATTNSCORE_CLIENT_CLIENT_H_
