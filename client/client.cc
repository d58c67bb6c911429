#include "client/client.h"

#include <arpa/inet.h>
#include <grpc/grpc.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "client/score_codec.h"
#include "common/layout.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace attnscore::client {
namespace {

// Releases, on a thread of its own instead of a gRPC callback thread, the
// library's channels once their last reference is gone (OpenChannel's
// deleter) and streams' states, which may hold such a reference.
// gRPC 1.51 shuts its callback completion queue down when the last channel
// goes, joins every thread that polls it, the calling one included, and frees
// the queue under it: a double free in grpc_cq_internal_unref, seen under
// AddressSanitizer when a stream outlived its Client by one reaction.
class Reaper {
 public:
  // Never destroyed: its detached thread may still run while the process exits.
  static Reaper& Get() {
    static Reaper* reaper = new Reaper();
    return *reaper;
  }

  void Release(std::shared_ptr<void> object) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(object));
    cv_.notify_one();
  }

 private:
  Reaper() {
    std::thread([this] { Run(); }).detach();
  }

  void Run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      cv_.wait(lock, [this] { return !queue_.empty(); });
      std::deque<std::shared_ptr<void>> batch;
      batch.swap(queue_);
      lock.unlock();
      batch.clear();  // the destructors run here, outside the lock
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<void>> queue_;  // guarded by mutex_
};

// The library's two process-wide settings, made before its first channel.
// First, one gRPC library reference for the life of the process, so that
// destroying the last channel never runs gRPC's final shutdown: that joins
// gRPC's executor threads, and one of them may be in tcp_posix's backup
// poller, which waits up to 10 s for a read that no callback queue covers. A
// program that had finished its work sat 10 s in ~Client about one run in two
// (gRPC 1.51). gRPC's threads then end with the process.
// Second, gRPC's client-channel backup poll, 100 ms instead of 5 s, unless
// the process chose one. Callback calls poll no connection attempt, so without
// it a server that came (back) up stayed unused up to 5 s after it accepted: a
// health probe waited 10 s for a server that had listened after 1.5 s. gRPC
// reads the variable once, at its first initialisation (grpc_is_initialized
// included): where the process set gRPC up before, this changes nothing.
void PrepareGrpcForTheProcess() {
  static const bool prepared = [] {
    setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "100",
           /*overwrite=*/0);
    grpc_init();
    return true;
  }();
  (void)prepared;
}

// The generic stub's method paths, "/attnscore.v1.AttentionScorer/<method>".
// Built once; never destroyed (calls may still run while the process exits).
const std::string& ScoreMethod() {
  static const std::string* const path = new std::string(
      absl::StrCat("/", v1::AttentionScorer::service_full_name(), "/Score"));
  return *path;
}
const std::string& ScoreChunkedMethod() {
  static const std::string* const path = new std::string(absl::StrCat(
      "/", v1::AttentionScorer::service_full_name(), "/ScoreChunked"));
  return *path;
}

const std::string& ScoreStreamMethod() {
  static const std::string* const path = new std::string(absl::StrCat(
      "/", v1::AttentionScorer::service_full_name(), "/ScoreStream"));
  return *path;
}
// After a call's own deadline, how long a synchronous caller waits for gRPC to
// report it before cancelling: gRPC enforces deadlines itself, so this only
// guards against the unexpected.
constexpr absl::Duration kSyncGrace = absl::Seconds(30);
// How long ~Stream waits for the cancelled call to end, so that callbacks stop
// before it returns.
constexpr absl::Duration kStreamCloseWait = absl::Seconds(10);

absl::Status FromGrpc(const grpc::Status& status, absl::string_view method) {
  if (status.ok()) return absl::OkStatus();
  std::string message = status.error_message();
  if (message.empty()) message = absl::StrCat(method, " failed");
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      message);
}

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": cannot read ", path));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// "%.6fs": the service config's duration syntax (no exponents).
std::string JsonDuration(absl::Duration d) {
  return absl::StrFormat("%.6fs", absl::ToDoubleSeconds(d));
}

// methodConfig: retries of UNAVAILABLE for the scoring and health services.
absl::StatusOr<nlohmann::json> RetryMethodConfig(const RetryOptions& retry) {
  if (retry.initial_backoff <= absl::ZeroDuration() ||
      retry.max_backoff <= absl::ZeroDuration() ||
      retry.backoff_multiplier <= 0) {
    return absl::InvalidArgumentError(
        "retry: backoffs and multiplier must be > 0");
  }
  return nlohmann::json::array(
      {{{"name",
         {{{"service", v1::AttentionScorer::service_full_name()}},
          {{"service", grpc::health::v1::Health::service_full_name()}}}},
        {"retryPolicy",
         {{"maxAttempts", std::min(retry.max_attempts, 5)},
          {"initialBackoff", JsonDuration(retry.initial_backoff)},
          {"maxBackoff", JsonDuration(retry.max_backoff)},
          {"backoffMultiplier", retry.backoff_multiplier},
          {"retryableStatusCodes", {"UNAVAILABLE"}}}}}});
}

absl::StatusOr<std::string> ServiceConfig(const ClientOptions& options) {
  const RetryOptions& retry = options.retry;
  if (options.load_balancing != "round_robin" &&
      options.load_balancing != "pick_first") {
    return absl::InvalidArgumentError(absl::StrCat(
        "load_balancing: expected round_robin or pick_first, got '",
        options.load_balancing, "'"));
  }
  nlohmann::json config = {
      {"loadBalancingConfig",
       {{{options.load_balancing, nlohmann::json::object()}}}}};
  // gRPC requires maxAttempts >= 2 for a retry policy; fewer means "no
  // retries".
  if (retry.enabled && retry.max_attempts >= 2) {
    absl::StatusOr<nlohmann::json> method_config = RetryMethodConfig(retry);
    if (!method_config.ok()) return method_config.status();
    config["methodConfig"] = *std::move(method_config);
    if (retry.throttle_max_tokens > 0) {
      if (retry.throttle_max_tokens > 1000 || retry.throttle_token_ratio <= 0) {
        return absl::InvalidArgumentError(
            "retry: throttle_max_tokens must be in (0, 1000] and "
            "throttle_token_ratio > 0");
      }
      config["retryThrottling"] = {
          {"maxTokens", retry.throttle_max_tokens},
          // gRPC reads at most three decimals.
          {"tokenRatio", std::round(retry.throttle_token_ratio * 1000) / 1000}};
    }
  }
  return config.dump();
}

// *out = part (absl::string_view has no std::string conversion assign takes).
void AssignPart(absl::string_view part, std::string* out) {
  out->assign(part.data(), part.size());
}

// Splits "host:port" / "[v6]:port".
absl::Status SplitHostPort(absl::string_view target, std::string* host,
                           std::string* port) {
  if (absl::StartsWith(target, "[")) {
    const size_t close = target.find(']');
    if (close == absl::string_view::npos || close + 1 >= target.size() ||
        target[close + 1] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("target '", target, "': expected [v6]:port"));
    }
    AssignPart(target.substr(1, close - 1), host);
    AssignPart(target.substr(close + 2), port);
    return absl::OkStatus();
  }
  const size_t colon = target.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 ||
      colon + 1 == target.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("target '", target, "': expected host:port"));
  }
  AssignPart(target.substr(0, colon), host);
  AssignPart(target.substr(colon + 1), port);
  return absl::OkStatus();
}

// A list of host:port becomes one "ipv4:" (or "ipv6:") target whose addresses
// round_robin spreads calls over. Names are resolved once, here: for a changing
// set use "dns:///name:port".
absl::StatusOr<std::string> ResolveList(
    const std::vector<std::string>& targets) {
  std::vector<std::string> v4;
  std::vector<std::string> v6;
  std::set<std::string> seen;
  for (const std::string& raw : targets) {
    const std::string target(absl::StripAsciiWhitespace(raw));
    if (target.empty()) continue;
    std::string host, port;
    if (absl::Status s = SplitHostPort(target, &host, &port); !s.ok()) return s;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
        rc != 0) {
      return absl::UnavailableError(absl::StrCat(
          "target '", target, "': cannot resolve: ", gai_strerror(rc)));
    }
    for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
      char text[INET6_ADDRSTRLEN] = {};
      if (a->ai_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
        inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
        std::string address = absl::StrCat(text, ":", ntohs(in->sin_port));
        if (seen.insert(address).second) v4.push_back(address);
      } else if (a->ai_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
        inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
        std::string address =
            absl::StrCat("[", text, "]:", ntohs(in6->sin6_port));
        if (seen.insert(address).second) v6.push_back(address);
      }
    }
    freeaddrinfo(found);
  }
  // One gRPC target holds one address family; IPv4 wins when a list resolves to
  // both.
  if (!v4.empty()) return absl::StrCat("ipv4:", absl::StrJoin(v4, ","));
  if (!v6.empty()) return absl::StrCat("ipv6:", absl::StrJoin(v6, ","));
  return absl::InvalidArgumentError("no target given");
}

absl::StatusOr<std::string> ResolveTarget(const ClientOptions& options) {
  if (!options.targets.empty()) return ResolveList(options.targets);
  const std::string target(absl::StripAsciiWhitespace(options.target));
  if (target.empty()) return absl::InvalidArgumentError("no target given");
  const bool has_list_scheme = absl::StartsWith(target, "ipv4:") ||
                               absl::StartsWith(target, "ipv6:") ||
                               absl::StartsWith(target, "unix:");
  if (!has_list_scheme && absl::StrContains(target, ',')) {
    return ResolveList(absl::StrSplit(target, ','));
  }
  return target;
}

int ClampToInt(int64_t bytes) {
  if (bytes < 0) return -1;
  return static_cast<int>(std::min<int64_t>(bytes, INT_MAX));
}

// now + timeout on the steady clock, for condition-variable waits. Clamped: an
// infinite absl::Duration would overflow the chrono arithmetic into a deadline
// in the past.
std::chrono::steady_clock::time_point SteadyDeadline(absl::Duration timeout) {
  const absl::Duration capped =
      std::clamp(timeout, absl::ZeroDuration(), absl::Hours(24 * 365));
  return std::chrono::steady_clock::now() + absl::ToChronoMicroseconds(capped);
}

absl::Duration EffectiveTimeout(const ClientOptions& options,
                                const CallOptions& call) {
  return call.timeout.value_or(options.default_timeout);
}

}  // namespace

// -----------------------------------------------------------------------------

const char* ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case ServingStatus::kUnknown:
      break;
  }
  return "UNKNOWN";
}

const char* ServiceName() { return v1::AttentionScorer::service_full_name(); }

const char* OutputName(Output output) {
  switch (output) {
    case Output::kLogits:
      return "logits";
    case Output::kProbs:
      return "probs";
    case Output::kContext:
      return "context";
  }
  return "unknown";
}

void CancellationToken::Cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_ = true;
  // Under the lock: Unregister (also locked) runs before a context is
  // destroyed, so none of these can be dangling.
  for (grpc::ClientContext* context : contexts_) context->TryCancel();
}

bool CancellationToken::cancelled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

bool CancellationToken::Register(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (cancelled_) return false;
  contexts_.push_back(context);
  return true;
}

void CancellationToken::Unregister(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mutex_);
  contexts_.erase(std::remove(contexts_.begin(), contexts_.end(), context),
                  contexts_.end());
}

// -----------------------------------------------------------------------------

class Client::Impl {
 public:
  struct Channel {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<grpc::GenericStub> generic;
    std::unique_ptr<v1::AttentionScorer::Stub> scorer;
    std::unique_ptr<grpc::health::v1::Health::Stub> health;
  };

  ClientOptions options;
  std::string target;
  // "authorization" metadata added per call (plaintext channels; TLS uses call
  // credentials).
  std::string plaintext_authorization;
  std::vector<Channel> channels;
  std::atomic<uint64_t> next_channel{0};
  // The server answered ScoreChunked with UNIMPLEMENTED: Score from now on.
  std::atomic<bool> chunked_unimplemented{false};
  // Response tensors' blocks (options.keep_response_bytes); null: none kept.
  // Shared: results may outlive the Client.
  std::shared_ptr<BufferPool> response_pool;

  Channel& Pick() {
    return channels[next_channel.fetch_add(1) % channels.size()];
  }

  // Deadline, wait-for-ready, metadata. The cancellation token is registered by
  // the caller.
  void Configure(grpc::ClientContext& context, const CallOptions& call,
                 bool default_deadline = true) const {
    const absl::Duration timeout =
        call.timeout ? *call.timeout
                     : (default_deadline ? options.default_timeout
                                         : absl::InfiniteDuration());
    if (timeout != absl::InfiniteDuration()) {
      context.set_deadline(absl::ToChronoTime(
          absl::Now() + std::max(timeout, absl::ZeroDuration())));
    }
    context.set_wait_for_ready(call.wait_for_ready);
    for (const auto& [key, value] : call.metadata) {
      context.AddMetadata(key, value);
    }
    if (!plaintext_authorization.empty()) {
      context.AddMetadata("authorization", plaintext_authorization);
    }
  }
};

namespace {

// What a Score call starts from besides its CallOptions: kept by a
// ScoreChunked call for the retry with Score when the server does not have it.
struct ScoreStart {
  Client::Impl* impl = nullptr;
  grpc::ByteBuffer request;  // slices over the caller's tensors (kReference)
  std::shared_ptr<CancellationToken> extra_token;
  Client::ScoreCallback done;
};

// Registers the call's tokens with `context`; false (and none left
// registered) if one of them is cancelled already.
bool RegisterTokens(const CallOptions& call, const ScoreStart& start,
                    grpc::ClientContext& context,
                    std::vector<std::shared_ptr<CancellationToken>>& tokens) {
  for (const std::shared_ptr<CancellationToken>& token :
       {call.cancellation, start.extra_token}) {
    if (token == nullptr) continue;
    if (!token->Register(&context)) {
      for (const auto& registered : tokens) registered->Unregister(&context);
      tokens.clear();
      return false;
    }
    tokens.push_back(token);
  }
  return true;
}

// One Score call in flight; deleted by its completion callback.
struct UnaryCall {
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
  std::shared_ptr<BufferPool> response_pool;
  Client::ScoreCallback done;
  std::vector<std::shared_ptr<CancellationToken>> tokens;
};

void StartUnary(ScoreStart start, const CallOptions& call) {
  Client::Impl& impl = *start.impl;
  auto state = std::make_unique<UnaryCall>();
  state->request.Swap(&start.request);  // ByteBuffer has no move
  state->response_pool = impl.response_pool;
  impl.Configure(state->context, call);
  if (!RegisterTokens(call, start, state->context, state->tokens)) {
    state.reset();
    start.done(absl::CancelledError("Score: cancelled before it started"));
    return;
  }
  state->done = std::move(start.done);
  UnaryCall* raw = state.release();
  impl.Pick().generic->UnaryCall(
      &raw->context, ScoreMethod(), grpc::StubOptions(), &raw->request,
      &raw->response, [raw](const grpc::Status& status) {
        std::unique_ptr<UnaryCall> call(raw);
        for (const auto& token : call->tokens) {
          token->Unregister(&call->context);
        }
        absl::StatusOr<ScoreResult> result;
        if (status.ok()) {
          absl::StatusOr<internal::DecodedResponse> decoded =
              internal::DecodeScoreResponse(call->response,
                                            call->response_pool);
          if (!decoded.ok()) {
            result = decoded.status();
          } else {
            result = std::move(decoded->result);
          }
        } else {
          result = FromGrpc(status, "Score");
        }
        // The call is complete before the caller hears of it, so the callback
        // may free the tensors: the request's slices over them are static
        // (never read again, nor freed, by gRPC). The call object is freed
        // here even when it holds the channel's last reference: the channel's
        // deleter hands it to the reaper (OpenChannel).
        Client::ScoreCallback callback = std::move(call->done);
        call.reset();
        callback(std::move(result));
      });
}

// One Score call answered through ScoreChunked: writes the request, reads
// chunks into a ChunkAssembler as they arrive (the copy of one overlaps the
// transfer of the next), and answers in OnDone, where it deletes itself.
// A server without the method (UNIMPLEMENTED before any chunk) gets the
// request again through Score, and this client asks it with Score from then
// on.
class ChunkedCall final
    : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ChunkedCall(ScoreStart start, const CallOptions& call, size_t reply_bytes)
      : start_(std::move(start)),
        call_(call),
        assembler_(start_.impl->response_pool, reply_bytes) {}

  void Start() {
    Client::Impl& impl = *start_.impl;
    impl.Configure(context_, call_);
    if (!RegisterTokens(call_, start_, context_, tokens_)) {
      Client::ScoreCallback done = std::move(start_.done);
      delete this;
      done(absl::CancelledError("Score: cancelled before it started"));
      return;
    }
    // The request's slices stay in start_ for a retry: the write takes
    // references.
    request_ = start_.request;
    impl.Pick().generic->PrepareBidiStreamingCall(
        &context_, ScoreChunkedMethod(), grpc::StubOptions(), this);
    StartWriteLast(&request_, grpc::WriteOptions());
    StartRead(&read_buffer_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended: OnDone follows
    if (!assembler_.Add(read_buffer_).ok()) {
      // A malformed reply: nothing more is worth reading.
      context_.TryCancel();
      return;
    }
    StartRead(&read_buffer_);
  }

  void OnDone(const grpc::Status& status) override {
    for (const auto& token : tokens_) token->Unregister(&context_);
    if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED &&
        !assembler_.started()) {
      start_.impl->chunked_unimplemented.store(true, std::memory_order_relaxed);
      ScoreStart start = std::move(start_);
      const CallOptions call = std::move(call_);
      delete this;
      StartUnary(std::move(start), call);
      return;
    }
    absl::StatusOr<ScoreResult> result;
    if (!assembler_.refused().ok()) {
      // A message the assembler refused is what went wrong, even when the
      // cancellation that followed it is what ended the call.
      result = assembler_.refused();
    } else if (!status.ok()) {
      // The server's refusal, a deadline, a drain: the call's own status, not
      // the reply it cut short.
      result = FromGrpc(status, "Score");
    } else {
      result = assembler_.Finish();
    }
    // As for unary calls: the call is over before the caller hears of it.
    Client::ScoreCallback done = std::move(start_.done);
    delete this;
    done(std::move(result));
  }

 private:
  ScoreStart start_;
  CallOptions call_;  // a copy: the caller's may be gone by a retry
  grpc::ClientContext context_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer read_buffer_;
  internal::ChunkAssembler assembler_;
  std::vector<std::shared_ptr<CancellationToken>> tokens_;
};

// The bytes of the outputs `request` gets in the reply (not placed in shared
// memory), as the server will send them; 0 when its shapes do not say (the
// server will refuse it).
size_t InBandReplyBytes(const ScoreRequest& request) {
  if (request.query.shape.size() != 4 || request.key.shape.size() != 4) {
    return 0;
  }
  const Dims q = DimsOf(request.query.shape, request.layout);
  const Dims k = DimsOf(request.key.shape, request.layout);
  const auto placed = [&request](Output output) {
    return std::any_of(
        request.placements.begin(), request.placements.end(),
        [output](const OutputPlacement& p) { return p.output == output; });
  };
  int64_t matrices = 0;
  if (request.outputs.logits && !placed(Output::kLogits)) ++matrices;
  if (request.outputs.probs && !placed(Output::kProbs)) ++matrices;
  int64_t value_dim = 0;
  if (request.outputs.context && !placed(Output::kContext) &&
      request.value.has_value() && request.value->shape.size() == 4) {
    value_dim = DimsOf(request.value->shape, request.layout).dim;
  }
  const int64_t per_row = matrices * k.seq + value_dim;
  const double elements =
      static_cast<double>(q.batch) * static_cast<double>(q.heads) *
      static_cast<double>(q.seq) * static_cast<double>(per_row);
  const DType dtype = request.output_dtype.value_or(request.query.dtype);
  const double bytes = elements * static_cast<double>(ElementSize(dtype));
  if (!(bytes > 0) || bytes > static_cast<double>(int64_t{1} << 40)) return 0;
  return static_cast<size_t>(bytes);
}

void StartScore(Client::Impl& impl, const ScoreRequest& request,
                const CallOptions& call,
                const std::shared_ptr<CancellationToken>& extra_token,
                Client::ScoreCallback done) {
  absl::StatusOr<grpc::ByteBuffer> encoded =
      internal::EncodeScoreRequest(request, internal::DataMode::kReference);
  if (!encoded.ok()) {
    done(encoded.status());
    return;
  }
  ScoreStart start{&impl, *std::move(encoded), extra_token, std::move(done)};
  const size_t reply_bytes = InBandReplyBytes(request);
  const int64_t threshold = impl.options.chunked_reply_bytes;
  // A receive limit bounds the whole reply; chunks would each pass it, so a
  // reply over it goes as Score (and fails RESOURCE_EXHAUSTED, as it should).
  const int64_t receive_limit = impl.options.max_receive_message_bytes;
  if (threshold > 0 && reply_bytes >= static_cast<size_t>(threshold) &&
      (receive_limit < 0 ||
       reply_bytes <= static_cast<size_t>(receive_limit)) &&
      !impl.chunked_unimplemented.load(std::memory_order_relaxed)) {
    (new ChunkedCall(std::move(start), call, reply_bytes))->Start();
    return;
  }
  StartUnary(std::move(start), call);
}

}  // namespace

// -----------------------------------------------------------------------------
// Stream.

class Stream::State final
    : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  State(StreamOptions options, std::shared_ptr<CancellationToken> token,
        std::shared_ptr<BufferPool> response_pool)
      : options_(std::move(options)),
        token_(std::move(token)),
        response_pool_(std::move(response_pool)) {}

  grpc::ClientContext& context() { return context_; }

  // Registers the token, starts the call and keeps itself alive until OnDone.
  absl::Status Start(const std::shared_ptr<State>& self,
                     grpc::GenericStub& stub) {
    if (token_ != nullptr && !token_->Register(&context_)) {
      token_ = nullptr;
      return absl::CancelledError("ScoreStream: cancelled before it started");
    }
    self_ = self;
    stub.PrepareBidiStreamingCall(&context_, ScoreStreamMethod(),
                                  grpc::StubOptions(), this);
    // Writes and WritesDone are started from the caller's threads, outside
    // reactions: the hold keeps the call from finishing under them until no
    // more writes will come.
    AddHold();
    StartRead(&read_buffer_);
    StartCall();
    return absl::OkStatus();
  }

  absl::Status Write(const ScoreRequest& request, absl::Duration timeout) {
    absl::StatusOr<grpc::ByteBuffer> encoded =
        internal::EncodeScoreRequest(request, internal::DataMode::kCopy);
    if (!encoded.ok()) return encoded.status();
    std::unique_lock<std::mutex> lock(mutex_);
    const auto deadline = SteadyDeadline(timeout);
    if (!cv_.wait_until(lock, deadline, [this] {
          return writes_closed_ || writes_done_requested_ ||
                 write_queue_.size() < options_.max_queued_writes;
        })) {
      return absl::DeadlineExceededError(absl::StrCat(
          "ScoreStream: ", write_queue_.size(), " writes still queued after ",
          absl::FormatDuration(timeout)));
    }
    if (writes_done_requested_) {
      return absl::FailedPreconditionError(
          "ScoreStream: Write after WritesDone");
    }
    if (writes_closed_) {
      // Ended (or cancelled): its final status when known says why.
      if (done_ && !final_status_.ok()) return final_status_;
      return absl::FailedPreconditionError("ScoreStream: the stream has ended");
    }
    ++outstanding_;
    if (write_in_flight_) {
      write_queue_.push_back(*std::move(encoded));
      return absl::OkStatus();
    }
    write_in_flight_ = true;
    current_write_ = *std::move(encoded);
    lock.unlock();
    // Outside the lock: gRPC may run reactions on this thread.
    StartWrite(&current_write_);
    return absl::OkStatus();
  }

  void WritesDone() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (writes_done_requested_) return;
    writes_done_requested_ = true;
    if (write_in_flight_ || writes_closed_) {
      // OnWriteDone sends it after the last queued write; or the stream is over
      // anyway.
      return;
    }
    SendWritesDoneLocked(lock);
  }

  void Cancel() {
    context_.TryCancel();
    std::unique_lock<std::mutex> lock(mutex_);
    CloseWritesLocked(lock);
  }

  absl::StatusOr<StreamResponse> Read(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    const auto deadline = SteadyDeadline(timeout);
    if (!cv_.wait_until(lock, deadline, [this] {
          return !responses_.empty() || reads_closed_;
        })) {
      return absl::DeadlineExceededError(absl::StrCat(
          "ScoreStream: no response within ", absl::FormatDuration(timeout)));
    }
    if (responses_.empty()) {
      return absl::OutOfRangeError("ScoreStream: no more responses");
    }
    StreamResponse response = std::move(responses_.front());
    responses_.pop_front();
    return response;
  }

  absl::Status Finish(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    const auto deadline = SteadyDeadline(timeout);
    if (!cv_.wait_until(lock, deadline, [this] { return done_; })) {
      return absl::DeadlineExceededError(absl::StrCat(
          "ScoreStream: not finished within ", absl::FormatDuration(timeout)));
    }
    return final_status_;
  }

  size_t outstanding() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return outstanding_;
  }

  // Reactions (gRPC threads).
  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mutex_);
    write_in_flight_ = false;
    current_write_.Clear();
    if (!ok) {
      // The call is over for writing (cancelled or broken); OnDone brings the
      // status.
      write_queue_.clear();
      CloseWritesLocked(lock);
      return;
    }
    cv_.notify_all();
    if (!write_queue_.empty() && !writes_closed_) {
      // ByteBuffer has no move assignment: Swap takes the slices without
      // copying.
      current_write_.Swap(&write_queue_.front());
      write_queue_.pop_front();
      write_in_flight_ = true;
      lock.unlock();
      StartWrite(&current_write_);
      return;
    }
    if (writes_done_requested_ && !writes_closed_) {
      SendWritesDoneLocked(lock);
      return;
    }
    if (writes_closed_) ReleaseHoldIfIdleLocked(lock);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      std::unique_lock<std::mutex> lock(mutex_);
      reads_closed_ = true;
      cv_.notify_all();
      // No more responses will come, so no request can be answered: stop
      // writing.
      write_queue_.clear();
      CloseWritesLocked(lock);
      return;
    }
    StreamResponse response;
    absl::StatusOr<internal::DecodedResponse> decoded =
        internal::DecodeScoreResponse(read_buffer_, response_pool_);
    if (!decoded.ok()) {
      response.result = decoded.status();
    } else {
      response.request_id = decoded->result.request_id;
      if (!decoded->error.ok()) {
        response.result = decoded->error;
      } else {
        response.result = std::move(decoded->result);
      }
    }
    read_buffer_.Clear();
    // Queued for Read(), or handed to on_response outside the lock.
    std::optional<StreamResponse> for_callback;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (outstanding_ > 0) --outstanding_;
      cv_.notify_all();
      if (options_.on_response) {
        for_callback = std::move(response);
      } else {
        responses_.push_back(std::move(response));
      }
    }
    if (for_callback) options_.on_response(*std::move(for_callback));
    StartRead(&read_buffer_);
  }

  void OnDone(const grpc::Status& status) override {
    if (token_ != nullptr) token_->Unregister(&context_);
    std::function<void(const absl::Status&)> on_done;
    absl::Status final_status = FromGrpc(status, "ScoreStream");
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
      reads_closed_ = true;
      writes_closed_ = true;
      final_status_ = final_status;
      on_done = std::move(options_.on_done);
      cv_.notify_all();
    }
    if (on_done) on_done(final_status);
    std::shared_ptr<State> self;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      reactions_over_ = true;
      self = std::move(self_);
      cv_.notify_all();
    }
    // This may be the last reference (the Stream is gone): never destroy the
    // state, and so its ClientContext, on this gRPC thread.
    Reaper::Get().Release(std::move(self));
  }

  // Waits (bounded) until OnDone has run to its end, so that no callback of
  // the owner's runs after the owner has destroyed the stream.
  void WaitForReactionsToEnd(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_until(lock, SteadyDeadline(timeout),
                   [this] { return reactions_over_; });
  }

 private:
  // REQUIRES: lock held, !write_in_flight_. Sends WritesDone and releases the
  // hold.
  void SendWritesDoneLocked(std::unique_lock<std::mutex>& lock) {
    writes_closed_ = true;
    hold_released_ = true;
    cv_.notify_all();
    lock.unlock();
    StartWritesDone();
    RemoveHold();
  }

  // No more writes will be started (cancelled, or the server has ended the
  // stream).
  void CloseWritesLocked(std::unique_lock<std::mutex>& lock) {
    writes_closed_ = true;
    cv_.notify_all();
    ReleaseHoldIfIdleLocked(lock);
  }

  void ReleaseHoldIfIdleLocked(std::unique_lock<std::mutex>& lock) {
    if (hold_released_ || write_in_flight_) return;
    hold_released_ = true;
    lock.unlock();
    RemoveHold();
  }

  StreamOptions options_;
  std::shared_ptr<CancellationToken> token_;
  const std::shared_ptr<BufferPool> response_pool_;  // may be null
  grpc::ClientContext context_;
  std::shared_ptr<State> self_;  // set from Start until OnDone

  grpc::ByteBuffer read_buffer_;  // owned by the read flow (one read at a time)
  grpc::ByteBuffer
      current_write_;  // owned by the write flow while write_in_flight_

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<grpc::ByteBuffer> write_queue_;  // guarded by mutex_
  std::deque<StreamResponse> responses_;      // guarded by mutex_
  size_t outstanding_ = 0;                    // guarded by mutex_
  bool write_in_flight_ = false;              // guarded by mutex_
  bool writes_done_requested_ = false;        // guarded by mutex_
  bool writes_closed_ = false;                // guarded by mutex_
  bool hold_released_ = false;                // guarded by mutex_
  bool reads_closed_ = false;                 // guarded by mutex_
  bool done_ = false;                         // guarded by mutex_
  bool reactions_over_ = false;               // guarded by mutex_
  absl::Status final_status_;                 // guarded by mutex_
};

Stream::Stream(std::shared_ptr<State> state) : state_(std::move(state)) {}

Stream::~Stream() {
  state_->Cancel();
  // Bounded: after TryCancel gRPC ends the call promptly; waiting means no
  // callback runs after the owner has destroyed the stream (and whatever its
  // callbacks use).
  state_->WaitForReactionsToEnd(kStreamCloseWait);
}

absl::Status Stream::Write(const ScoreRequest& request,
                           absl::Duration timeout) {
  return state_->Write(request, timeout);
}
absl::StatusOr<StreamResponse> Stream::Read(absl::Duration timeout) {
  return state_->Read(timeout);
}
void Stream::WritesDone() { state_->WritesDone(); }
absl::Status Stream::Finish(absl::Duration timeout) {
  return state_->Finish(timeout);
}
void Stream::Cancel() { state_->Cancel(); }
size_t Stream::outstanding() const { return state_->outstanding(); }

// -----------------------------------------------------------------------------
// Client.

namespace {

// Option checks that need no I/O (the target and the service config are
// checked where they are built).
absl::Status CheckConnectionOptions(const ClientOptions& options) {
  if (options.connections < 1 || options.connections > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "connections: expected 1..1024, got ", options.connections));
  }
  if (options.chunked_reply_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunked_reply_bytes: expected >= 0, got ",
                     options.chunked_reply_bytes));
  }
  if (options.max_socket_read_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_socket_read_bytes: expected >= 0, got ",
                     options.max_socket_read_bytes));
  }
  if (options.keep_response_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep_response_bytes: expected >= 0, got ",
                     options.keep_response_bytes));
  }
  if (options.keepalive.time < absl::Seconds(10)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "keepalive time ", absl::FormatDuration(options.keepalive.time),
        " is below the server's minimum ping interval (10s): it would answer "
        "with GOAWAY"));
  }
  const ReconnectOptions& reconnect = options.reconnect;
  if (reconnect.initial_backoff < absl::Milliseconds(1) ||
      reconnect.max_backoff < reconnect.initial_backoff) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reconnect: expected 1ms <= initial_backoff <= max_backoff, got "
        "initial_backoff ",
        absl::FormatDuration(reconnect.initial_backoff), ", max_backoff ",
        absl::FormatDuration(reconnect.max_backoff)));
  }
  // gRPC ignores names it does not know; the prefix at least catches a name
  // that cannot be one of its arguments.
  for (const auto& arg : options.channel_args) {
    const std::string& name = arg.first;
    if (!absl::StartsWith(name, "grpc.") || name.size() == 5) {
      return absl::InvalidArgumentError(absl::StrCat(
          "channel_args: expected a gRPC argument name \"grpc.*\", got '", name,
          "'"));
    }
  }
  return absl::OkStatus();
}

// The TLS roots and (mutual TLS) client certificate, read from their files.
absl::StatusOr<grpc::SslCredentialsOptions> SslOptions(const TlsOptions& tls) {
  grpc::SslCredentialsOptions ssl;
  if (!tls.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(tls.ca_file, "tls ca_file");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
  }
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        "tls: cert_file and key_file go together");
  }
  if (!tls.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadFile(tls.cert_file, "tls cert_file");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile(tls.key_file, "tls key_file");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  return ssl;
}

// A Unix domain socket target: the connection never leaves the host.
bool IsUnixSocketTarget(absl::string_view target) {
  return absl::StartsWith(target, "unix:") ||
         absl::StartsWith(target, "unix-abstract:");
}

// The channels' credentials for the resolved `target`. Over TLS the bearer
// token travels as call credentials; over a Unix socket too, with gRPC's local
// credentials (the bytes stay on the host, so no TLS is needed to keep it
// secret); over plaintext TCP (only with allow_insecure_token) it becomes the
// "authorization" value Configure() adds to every call, stored in
// `*plaintext_authorization`.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ClientOptions& options, absl::string_view target,
    std::string* plaintext_authorization) {
  if (!options.tls.enabled && IsUnixSocketTarget(target)) {
    std::shared_ptr<grpc::ChannelCredentials> credentials =
        grpc::experimental::LocalCredentials(grpc_local_connect_type::UDS);
    if (!options.bearer_token.empty()) {
      credentials = grpc::CompositeChannelCredentials(
          credentials, grpc::AccessTokenCredentials(options.bearer_token));
    }
    return credentials;
  }
  if (options.tls.enabled) {
    absl::StatusOr<grpc::SslCredentialsOptions> ssl = SslOptions(options.tls);
    if (!ssl.ok()) return ssl.status();
    std::shared_ptr<grpc::ChannelCredentials> credentials =
        grpc::SslCredentials(*ssl);
    if (!options.bearer_token.empty()) {
      credentials = grpc::CompositeChannelCredentials(
          credentials, grpc::AccessTokenCredentials(options.bearer_token));
    }
    return credentials;
  }
  if (!options.bearer_token.empty()) {
    if (!options.allow_insecure_token) {
      return absl::InvalidArgumentError(
          "a bearer token over a plaintext connection needs "
          "allow_insecure_token (or TLS)");
    }
    *plaintext_authorization = absl::StrCat("Bearer ", options.bearer_token);
  }
  return grpc::InsecureChannelCredentials();
}

// Channel `index`'s arguments for `target`: the service config, retries,
// keepalive, reconnect backoff, socket reads and message limits from
// `options`.
grpc::ChannelArguments ChannelArgs(const ClientOptions& options,
                                   const std::string& target,
                                   const std::string& service_config,
                                   int index) {
  grpc::ChannelArguments args;
  // First: where a name appears twice, gRPC takes its first value, so these
  // override the library's own below.
  for (const auto& [name, value] : options.channel_args) {
    args.SetInt(name, value);
  }
  args.SetServiceConfigJSON(service_config);
  // Our service config is the whole truth: do not let DNS TXT records replace
  // it.
  args.SetInt(GRPC_ARG_SERVICE_CONFIG_DISABLE_RESOLUTION, 1);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, options.retry.enabled ? 1 : 0);
  args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE,
              ClampToInt(options.retry.buffer_bytes));
  args.SetInt(
      GRPC_ARG_KEEPALIVE_TIME_MS,
      static_cast<int>(absl::ToInt64Milliseconds(options.keepalive.time)));
  args.SetInt(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      static_cast<int>(absl::ToInt64Milliseconds(options.keepalive.timeout)));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
              options.keepalive.permit_without_calls ? 1 : 0);
  args.SetInt(
      GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
      ClampToInt(absl::ToInt64Milliseconds(options.reconnect.initial_backoff)));
  args.SetInt(
      GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
      ClampToInt(absl::ToInt64Milliseconds(options.reconnect.max_backoff)));
  // Keep pinging an idle connection (the default stops after two pings
  // without data).
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  if (options.max_socket_read_bytes > 0 && !IsUnixSocketTarget(target)) {
    args.SetInt(GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE,
                options.max_socket_read_bytes);
  }
  args.SetMaxReceiveMessageSize(ClampToInt(options.max_receive_message_bytes));
  args.SetMaxSendMessageSize(ClampToInt(options.max_send_message_bytes));
  if (options.tls.enabled && !options.tls.server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.tls.server_name_override);
  }
  if (options.connections > 1) {
    // Channels with equal arguments share subchannels (one TCP connection per
    // backend); a local pool and a distinguishing argument give each channel
    // its own connections.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("attnscore.channel_index", index);
  }
  return args;
}

// A channel to `target` with its stubs. Does not connect.
absl::StatusOr<Client::Impl::Channel> OpenChannel(
    const std::string& target,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const grpc::ChannelArguments& args) {
  Client::Impl::Channel channel;
  std::shared_ptr<grpc::Channel> created =
      grpc::CreateCustomChannel(target, credentials, args);
  if (created == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a channel to ", target));
  }
  // Whoever drops the last reference (a call's context in a completion
  // callback, on a gRPC thread, included), the channel itself is destroyed on
  // the reaper's thread: calls then free their own state where they complete,
  // without a thread wake-up each.
  grpc::Channel* const raw = created.get();
  channel.channel = std::shared_ptr<grpc::Channel>(
      raw, [created = std::move(created)](grpc::Channel*) mutable {
        Reaper::Get().Release(std::move(created));
      });
  channel.generic = std::make_unique<grpc::GenericStub>(channel.channel);
  channel.scorer = v1::AttentionScorer::NewStub(channel.channel);
  channel.health = grpc::health::v1::Health::NewStub(channel.channel);
  return channel;
}

}  // namespace

void PreferBoundedSocketReads() {
  setenv("GRPC_EXPERIMENTS", "-tcp_read_chunks", /*overwrite=*/0);
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  PrepareGrpcForTheProcess();
  auto impl = std::make_unique<Impl>();
  absl::StatusOr<std::string> target = ResolveTarget(options);
  if (!target.ok()) return target.status();
  impl->target = *target;
  if (absl::Status s = CheckConnectionOptions(options); !s.ok()) return s;
  absl::StatusOr<std::string> service_config = ServiceConfig(options);
  if (!service_config.ok()) return service_config.status();
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      ChannelCredentials(options, impl->target, &impl->plaintext_authorization);
  if (!credentials.ok()) return credentials.status();
  for (int i = 0; i < options.connections; ++i) {
    absl::StatusOr<Impl::Channel> channel =
        OpenChannel(impl->target, *credentials,
                    ChannelArgs(options, impl->target, *service_config, i));
    if (!channel.ok()) return channel.status();
    impl->channels.push_back(*std::move(channel));
  }
  if (options.keep_response_bytes > 0) {
    impl->response_pool = std::make_shared<BufferPool>(
        static_cast<size_t>(options.keep_response_bytes));
  }
  impl->options = std::move(options);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

const ClientOptions& Client::options() const { return impl_->options; }
const std::string& Client::resolved_target() const { return impl_->target; }

void Client::ScoreAsync(const ScoreRequest& request, const CallOptions& call,
                        ScoreCallback done) {
  StartScore(*impl_, request, call, nullptr, std::move(done));
}

std::future<absl::StatusOr<ScoreResult>> Client::ScoreAsync(
    const ScoreRequest& request, const CallOptions& call) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<ScoreResult>>>();
  std::future<absl::StatusOr<ScoreResult>> future = promise->get_future();
  StartScore(*impl_, request, call, nullptr,
             [promise](absl::StatusOr<ScoreResult> result) {
               promise->set_value(std::move(result));
             });
  return future;
}

absl::StatusOr<ScoreResult> Client::Score(const ScoreRequest& request,
                                          const CallOptions& call) {
  auto cancel = std::make_shared<CancellationToken>();
  auto promise = std::make_shared<std::promise<absl::StatusOr<ScoreResult>>>();
  std::future<absl::StatusOr<ScoreResult>> future = promise->get_future();
  StartScore(*impl_, request, call, cancel,
             [promise](absl::StatusOr<ScoreResult> result) {
               promise->set_value(std::move(result));
             });
  const absl::Duration timeout = EffectiveTimeout(impl_->options, call);
  if (timeout != absl::InfiniteDuration()) {
    const auto bound = absl::ToChronoMicroseconds(
        std::max(timeout, absl::ZeroDuration()) + kSyncGrace);
    if (future.wait_for(bound) != std::future_status::ready) {
      // gRPC did not enforce the deadline (should not happen). Cancel, then
      // wait for the call to let go of the request's slices: they point at the
      // caller's tensors.
      cancel->Cancel();
    }
  }
  return future.get();
}

absl::StatusOr<std::unique_ptr<Stream>> Client::OpenStream(
    StreamOptions stream_options, const CallOptions& call) {
  if (stream_options.max_queued_writes == 0) {
    stream_options.max_queued_writes = 1;
  }
  auto state = std::make_shared<Stream::State>(
      std::move(stream_options), call.cancellation, impl_->response_pool);
  impl_->Configure(state->context(), call, /*default_deadline=*/false);
  if (absl::Status s = state->Start(state, *impl_->Pick().generic); !s.ok()) {
    return s;
  }
  return std::make_unique<Stream>(std::move(state));
}

namespace {

// One unary call of the generated stub, `invoke(context, stub)`, on the next
// channel with `call`'s deadline, metadata and cancellation; `method` names it
// in errors.
template <typename Invoke>
absl::Status StubCall(Client::Impl& impl, const CallOptions& call,
                      absl::string_view method, Invoke invoke) {
  grpc::ClientContext context;
  impl.Configure(context, call);
  if (call.cancellation != nullptr && !call.cancellation->Register(&context)) {
    return absl::CancelledError(absl::StrCat(method, ": cancelled"));
  }
  const grpc::Status status = invoke(&context, *impl.Pick().scorer);
  if (call.cancellation != nullptr) call.cancellation->Unregister(&context);
  return FromGrpc(status, method);
}

ServerInfo FromProto(const v1::ServerInfo& response) {
  ServerInfo info;
  info.version = response.version();
  info.device = response.device();
  info.intra_op_threads = response.intra_op_threads();
  info.max_heads = response.limits().max_heads();
  info.max_head_dim = response.limits().max_head_dim();
  info.max_seq_len = response.limits().max_seq_len();
  info.max_output_bytes = response.limits().max_output_bytes();
  info.max_message_bytes = response.limits().max_message_bytes();
  info.max_batch_size = response.batching().max_batch_size();
  info.max_queue_delay_us = response.batching().max_queue_delay_us();
  info.max_queue = response.batching().max_queue();
  info.batch_workers = response.batching().batch_workers();
  info.shm_prefix = response.limits().shm_prefix();
  info.max_shm_regions = response.limits().max_shm_regions();
  const v1::KernelInfo& kernels = response.kernels();
  info.kernels.cpu_model = kernels.cpu_model();
  info.kernels.isa = kernels.isa();
  info.kernels.blas_core = kernels.blas_core();
  info.kernels.blas_core_source = kernels.blas_core_source();
  info.kernels.aten_capability = kernels.aten_capability();
  info.kernels.aten_capability_source = kernels.aten_capability_source();
  info.kernels.omp_wait = kernels.omp_wait();
  info.kernels.omp_wait_source = kernels.omp_wait_source();
  info.kernels.below_cpu = kernels.below_cpu();
  return info;
}

}  // namespace

absl::StatusOr<std::vector<ModelInfo>> Client::ListModels(
    const CallOptions& call) {
  v1::ListModelsResponse response;
  absl::Status status = StubCall(
      *impl_, call, "ListModels",
      [&response](grpc::ClientContext* context, v1::AttentionScorer::Stub& s) {
        return s.ListModels(context, v1::ListModelsRequest(), &response);
      });
  if (!status.ok()) return status;
  std::vector<ModelInfo> models;
  for (const v1::ModelInfo& m : response.models()) {
    models.push_back(ModelInfo{m.name(), m.source(), m.heads(), m.head_dim(),
                               m.max_relative_positions()});
  }
  return models;
}

absl::StatusOr<ServerInfo> Client::GetServerInfo(const CallOptions& call) {
  v1::ServerInfo response;
  absl::Status status = StubCall(
      *impl_, call, "GetServerInfo",
      [&response](grpc::ClientContext* context, v1::AttentionScorer::Stub& s) {
        return s.GetServerInfo(context, v1::GetServerInfoRequest(), &response);
      });
  if (!status.ok()) return status;
  return FromProto(response);
}

absl::Status Client::RegisterSharedMemory(
    const SharedMemoryRegistration& region, const CallOptions& call) {
  v1::RegisterSharedMemoryRequest request;
  request.set_name(region.name);
  request.set_key(region.key);
  request.set_offset(region.offset);
  request.set_byte_size(region.byte_size);
  v1::RegisterSharedMemoryResponse response;
  return StubCall(
      *impl_, call, "RegisterSharedMemory",
      [&](grpc::ClientContext* context, v1::AttentionScorer::Stub& s) {
        return s.RegisterSharedMemory(context, request, &response);
      });
}

absl::Status Client::UnregisterSharedMemory(std::string_view name,
                                            const CallOptions& call) {
  v1::UnregisterSharedMemoryRequest request;
  request.set_name(std::string(name));
  v1::UnregisterSharedMemoryResponse response;
  return StubCall(
      *impl_, call, "UnregisterSharedMemory",
      [&](grpc::ClientContext* context, v1::AttentionScorer::Stub& s) {
        return s.UnregisterSharedMemory(context, request, &response);
      });
}

absl::StatusOr<std::vector<SharedMemoryRegistration>>
Client::SharedMemoryStatus(const CallOptions& call) {
  v1::SharedMemoryStatusResponse response;
  absl::Status status = StubCall(
      *impl_, call, "SharedMemoryStatus",
      [&response](grpc::ClientContext* context, v1::AttentionScorer::Stub& s) {
        return s.SharedMemoryStatus(context, v1::SharedMemoryStatusRequest(),
                                    &response);
      });
  if (!status.ok()) return status;
  std::vector<SharedMemoryRegistration> regions;
  regions.reserve(response.regions_size());
  for (const v1::SharedMemoryRegionStatus& r : response.regions()) {
    regions.push_back(
        SharedMemoryRegistration{r.name(), r.key(), r.offset(), r.byte_size()});
  }
  return regions;
}

absl::StatusOr<ServingStatus> Client::Health(const std::string& service,
                                             const CallOptions& call) {
  grpc::ClientContext context;
  impl_->Configure(context, call);
  if (call.cancellation != nullptr && !call.cancellation->Register(&context)) {
    return absl::CancelledError("Health: cancelled");
  }
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status =
      impl_->Pick().health->Check(&context, request, &response);
  if (call.cancellation != nullptr) call.cancellation->Unregister(&context);
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
    return ServingStatus::kServiceUnknown;
  }
  if (!status.ok()) return FromGrpc(status, "Health");
  switch (response.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING:
      return ServingStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING:
      return ServingStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return ServingStatus::kServiceUnknown;
    default:
      return ServingStatus::kUnknown;
  }
}

absl::Status Client::WaitForConnected(absl::Duration timeout) {
  const auto deadline = absl::ToChronoTime(absl::Now() + timeout);
  for (Impl::Channel& channel : impl_->channels) {
    if (!channel.channel->WaitForConnected(deadline)) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to ", impl_->target, " within ",
                       absl::FormatDuration(timeout)));
    }
  }
  return absl::OkStatus();
}

}  // namespace attnscore::client
