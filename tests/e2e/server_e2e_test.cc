// The real attnscore-server binary end to end: health before and after warm-up,
// reflection, ListModels / GetServerInfo, every bad-input class over Score and
// ScoreStream, overload, deadline, cancel, SIGHUP reload, SIGTERM drain with
// requests in flight, the metrics endpoint,
// --help and start-up failures.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"
#include "tests/observability/prometheus_harness.h"
#include "tests/service/shm_object.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::e2e {
namespace {

using ::attnscore::testing::CheckHealth;
using ::attnscore::testing::ServerProcess;
using ::attnscore::testing::TempDir;
using ::attnscore::testing::WaitFor;
using ::testing::HasSubstr;
using ::testing::Not;
using HealthStatus = grpc::health::v1::HealthCheckResponse;

constexpr auto kRpcTimeout = std::chrono::seconds(60);
constexpr const char* kReadiness = v1::AttentionScorer::service_full_name();
// Waits for the server's state (health, metrics, models): at most 30 s, looking
// every 20 ms (each look may be a /metrics scrape, so not more often).
constexpr absl::Duration kWaitTimeout = absl::Seconds(30);
constexpr absl::Duration kWaitPoll = absl::Milliseconds(20);

std::vector<float> Ramp(size_t n, float scale) {
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) {
    values[i] = scale * static_cast<float>((i * 7919) % 1000) / 1000;
  }
  return values;
}

// A FLOAT32 tensor of `shape` holding Ramp values.
v1::Tensor RampTensor(const std::vector<int64_t>& shape, float scale) {
  int64_t n = 1;
  for (int64_t d : shape) {
    n *= d;
  }
  return Float32Tensor(Ramp(static_cast<size_t>(n), scale), shape);
}

v1::ScoreRequest SmallRequest(const std::string& id = "") {
  v1::ScoreRequest request;
  request.set_request_id(id);
  request.mutable_alibi();
  *request.mutable_query() = RampTensor({1, 2, 3, 8}, 1);
  *request.mutable_key() = RampTensor({1, 2, 4, 8}, 2);
  *request.mutable_value() = RampTensor({1, 2, 4, 8}, 3);
  return request;
}

// ALiBi, causal, with ramps of `shape` as query and key (and value when
// `with_value`); no outputs asked for yet.
v1::ScoreRequest CausalRampRequest(const std::vector<int64_t>& shape,
                                   bool with_value) {
  v1::ScoreRequest request;
  request.mutable_alibi();
  request.set_causal(true);
  *request.mutable_query() = RampTensor(shape, 1);
  *request.mutable_key() = RampTensor(shape, 0.5f);
  if (with_value) *request.mutable_value() = RampTensor(shape, 2);
  return request;
}

// Compute-heavy, response-light: context only for B2 H8 L2048 D128 (hundreds
// of ms on the blocked path).
v1::ScoreRequest SlowRequest(const std::string& id = "slow") {
  v1::ScoreRequest request =
      CausalRampRequest({2, 8, 2048, 128}, /*with_value=*/true);
  request.set_request_id(id);
  request.add_outputs(v1::CONTEXT);
  return request;
}

// Twice SlowRequest's compute in half its bytes (causal context at L 8192,
// about half a second on one thread, under the default --max-request-work):
// it keeps the only worker busy for long enough that requests sent after it
// is seen in flight queue behind it even on a loaded machine.
v1::ScoreRequest LongRequest(const std::string& id) {
  v1::ScoreRequest request =
      CausalRampRequest({1, 2, 8192, 128}, /*with_value=*/true);
  request.set_request_id(id);
  request.add_outputs(v1::CONTEXT);
  return request;
}

struct Call {
  grpc::Status status;
  v1::ScoreResponse response;
};

// A thread joined when it goes out of scope, so that a failed ASSERT (which
// returns from the test) does not end the process through std::terminate.
class JoiningThread {
 public:
  explicit JoiningThread(std::thread thread) : thread_(std::move(thread)) {}
  JoiningThread(JoiningThread&&) = default;
  JoiningThread& operator=(JoiningThread&&) = delete;
  ~JoiningThread() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::thread thread_;
};

class ServerE2eTest : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> args) {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(E2eServerOptions(std::move(args)));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = server_->NewChannel();
    stub_ = v1::AttentionScorer::NewStub(channel_);
  }
  void TearDown() override {
    if (HasFailure() && server_ != nullptr) {
      std::cerr << "server log:\n" << server_->Log();
    }
  }

  void GetServerInfo(v1::ServerInfo& info) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    ASSERT_TRUE(
        stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
  }

  Call Score(const v1::ScoreRequest& request,
             std::chrono::milliseconds timeout = kRpcTimeout) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + timeout);
    Call call;
    call.status = stub_->Score(&context, request, &call.response);
    return call;
  }
  // Registers `object`'s whole `byte_size` bytes as region `name`.
  grpc::Status RegisterRegion(const std::string& name,
                              const service::testing::ShmObject& object,
                              uint64_t byte_size) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    v1::RegisterSharedMemoryRequest region;
    region.set_name(name);
    region.set_key(object.key());
    region.set_byte_size(byte_size);
    v1::RegisterSharedMemoryResponse registered;
    return stub_->RegisterSharedMemory(&context, region, &registered);
  }
  // Truncates `object` under `request`, which uses it: the server faults
  // (SIGBUS) on it, that request alone is ABORTED, and the server goes on
  // serving.
  void ExpectTruncationAbortsOnlyItsRequest(
      const service::testing::ShmObject& object,
      const v1::ScoreRequest& request) {
    object.Truncate(0);
    const Call truncated = Score(request);
    EXPECT_EQ(truncated.status.error_code(), grpc::StatusCode::ABORTED)
        << truncated.status.error_message();
    EXPECT_THAT(truncated.status.error_message(),
                HasSubstr("shrank below the registered range"));
    EXPECT_TRUE(Score(SmallRequest("after")).status.ok());
    EXPECT_TRUE(server_->running());
  }
  std::thread ScoreAsync(v1::ScoreRequest request, Call* call) {
    return std::thread(
        [this, request = std::move(request), call] { *call = Score(request); });
  }
  std::string Metrics() {
    absl::StatusOr<std::string> body = server_->ScrapeMetrics();
    return body.ok() ? *body : std::string();
  }
  bool MetricsContain(const std::string& text) {
    return Metrics().find(text) != std::string::npos;
  }
  std::vector<std::string> ModelNames() {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    v1::ListModelsResponse list;
    EXPECT_TRUE(
        stub_->ListModels(&context, v1::ListModelsRequest(), &list).ok());
    std::vector<std::string> names;
    for (const v1::ModelInfo& m : list.models()) names.push_back(m.name());
    return names;
  }

  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AttentionScorer::Stub> stub_;
};

// H=2, D=8, P=8.
absl::Status WriteModel(const std::string& path) {
  SafetensorsWriter writer;
  if (absl::Status s =
          writer.AddFloats("key_pos_embeddings", {16, 2, 8}, Ramp(256, 0.1f));
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          writer.AddFloats("key_pos_bias", {16, 2}, Ramp(32, 0.1f));
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          writer.AddFloats("query_pos_bias", {2, 8}, Ramp(16, 0.1f));
      !s.ok()) {
    return s;
  }
  return writer.Write(path);
}

TEST_F(ServerE2eTest, HealthIsLiveAtOnceAndReadyAfterWarmUp) {
  ASSERT_NO_FATAL_FAILURE(Start({"--warmup-delay-ms=3000"}));
  absl::StatusOr<HealthStatus::ServingStatus> live = CheckHealth(channel_, "");
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(*live, HealthStatus::SERVING);
  absl::StatusOr<HealthStatus::ServingStatus> ready =
      CheckHealth(channel_, kReadiness);
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(*ready, HealthStatus::NOT_SERVING)
      << "ready before the warm-up ran";
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<HealthStatus::ServingStatus> s =
            CheckHealth(channel_, kReadiness);
        return s.ok() && *s == HealthStatus::SERVING;
      },
      kWaitTimeout, kWaitPoll));
  EXPECT_TRUE(server_->WaitForLog("warm-up done", absl::Seconds(5)));
  EXPECT_EQ(CheckHealth(channel_, "no.such.Service").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ServerE2eTest, ReflectionListsTheServices) {
  // Reflection is off by default (tests/security checks that).
  ASSERT_NO_FATAL_FAILURE(Start({"--reflection"}));
  absl::StatusOr<std::vector<std::string>> services =
      ListServicesByReflection(channel_);
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, ::testing::Contains(std::string(kReadiness)));
  EXPECT_THAT(*services,
              ::testing::Contains(std::string("grpc.health.v1.Health")));
}

TEST_F(ServerE2eTest, ServerInfoReportsFlags) {
  ASSERT_NO_FATAL_FAILURE(
      Start({"--max-heads=12", "--max-output-bytes=1000000",
             "--max-batch-size=5", "--max-queue-delay-us=777", "--max-queue=9",
             "--batch-workers=2", "--threads=1"}));
  v1::ServerInfo info;
  ASSERT_NO_FATAL_FAILURE(GetServerInfo(info));
  EXPECT_FALSE(info.version().empty());
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.intra_op_threads(), 1);
  EXPECT_EQ(info.limits().max_heads(), 12);
  EXPECT_EQ(info.limits().max_output_bytes(), 1000000);
  EXPECT_GT(info.limits().max_message_bytes(), 1000000);
  EXPECT_EQ(info.batching().max_batch_size(), 5);
  EXPECT_EQ(info.batching().max_queue_delay_us(), 777);
  EXPECT_EQ(info.batching().max_queue(), 9);
  EXPECT_EQ(info.batching().batch_workers(), 2);
  // And the start-up log says what computes: the CPU's blocked path by
  // default.
  EXPECT_THAT(server_->Log(), HasSubstr("scorer: cpu, blocked path"));
}

// Byte flags take the quantities a Kubernetes manifest writes (Mi, Gi, G).
TEST_F(ServerE2eTest, ByteFlagsTakeUnits) {
  ASSERT_NO_FATAL_FAILURE(
      Start({"--max-output-bytes=2Mi", "--max-inflight-bytes=1.5Gi",
             "--max-request-memory", "1G"}));
  v1::ServerInfo info;
  ASSERT_NO_FATAL_FAILURE(GetServerInfo(info));
  EXPECT_EQ(info.limits().max_output_bytes(), int64_t{2} << 20);
  EXPECT_EQ(info.limits().max_inflight_bytes(), int64_t{3} << 29);
  EXPECT_EQ(info.limits().max_request_memory_bytes(), 1'000'000'000);
}

// The batched path on the CPU says which of its kernels run: the library's
// products for ALiBi logits (the project's kernel is CUDA's).
TEST_F(ServerE2eTest, StartUpLogNamesTheBatchedPathsKernels) {
  ASSERT_NO_FATAL_FAILURE(Start({"--compute-path=batched"}));
  EXPECT_THAT(server_->Log(),
              HasSubstr("scorer: cpu, batched path; context alone: "));
  EXPECT_THAT(server_->Log(),
              HasSubstr("; ALiBi logits: the library's products"));
  EXPECT_THAT(server_->Log(), Not(HasSubstr("(kernel off)")));
}

// --alibi-kernel=off (ATTNSCORE_ALIBI_KERNEL) keeps the library's products
// even where the kernel runs, and says so; other values are refused.
TEST_F(ServerE2eTest, AlibiKernelCanBeTurnedOff) {
  ASSERT_NO_FATAL_FAILURE(
      Start({"--compute-path=batched", "--alibi-kernel=off"}));
  EXPECT_THAT(server_->Log(),
              HasSubstr("; ALiBi logits: the library's products (kernel off)"));
  Call call = Score(SmallRequest("off"));
  EXPECT_TRUE(call.status.ok()) << call.status.error_message();
}

// Each bad-input class, with the code and the words its message must contain
// (field, expected, actual).
struct BadInput {
  const char* name;
  std::function<void(v1::ScoreRequest&)> mutate;
  grpc::StatusCode code;
  std::vector<std::string> message_parts;
};

std::vector<BadInput> BadInputs() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  auto set_float = [](v1::Tensor* t, size_t i, float v) {
    std::memcpy(t->mutable_data()->data() + i * 4, &v, 4);
  };
  using C = grpc::StatusCode;
  return {
      {"bytes vs shape",
       [](auto& r) { r.mutable_query()->mutable_data()->resize(100); },
       C::INVALID_ARGUMENT,
       {"query.data", "192", "100"}},
      {"rank",
       [](auto& r) { r.mutable_key()->mutable_shape()->RemoveLast(); },
       C::INVALID_ARGUMENT,
       {"key.shape", "4 dims"}},
      {"dim 0",
       [](auto& r) { r.mutable_key()->set_shape(2, 0); },
       C::INVALID_ARGUMENT,
       {"key.shape[2]", "> 0", "0"}},
      {"dtype",
       [](auto& r) { r.mutable_query()->set_dtype(v1::DTYPE_UNSPECIFIED); },
       C::INVALID_ARGUMENT,
       {"query.dtype", "FLOAT32", "DTYPE_UNSPECIFIED"}},
      {"layout",
       [](auto& r) { r.set_layout(static_cast<v1::Layout>(7)); },
       C::INVALID_ARGUMENT,
       {"layout", "7"}},
      {"output enum",
       [](auto& r) { r.add_outputs(static_cast<v1::Output>(9)); },
       C::INVALID_ARGUMENT,
       {"outputs[0]", "9"}},
      {"output dtype",
       [](auto& r) { r.set_output_dtype(static_cast<v1::DType>(4)); },
       C::INVALID_ARGUMENT,
       {"output_dtype", "4"}},
      {"heads disagree",
       [](auto& r) {
         *r.mutable_key() = RampTensor({1, 1, 8, 8}, 1);
       },
       C::INVALID_ARGUMENT,
       {"key", "2", "1"}},
      {"context without value",
       [](auto& r) {
         r.clear_value();
         r.add_outputs(v1::CONTEXT);
       },
       C::INVALID_ARGUMENT,
       {"value", "CONTEXT"}},
      {"key_lengths count",
       [](auto& r) { r.add_key_lengths(1), r.add_key_lengths(1); },
       C::INVALID_ARGUMENT,
       {"key_lengths", "1", "2"}},
      {"key_lengths range",
       [](auto& r) { r.add_key_lengths(5); },
       C::INVALID_ARGUMENT,
       {"key_lengths[0]", "4", "5"}},
      {"causal Lq > Lk",
       [](auto& r) {
         r.set_causal(true);
         *r.mutable_query() = RampTensor({1, 2, 5, 8}, 1);
       },
       C::INVALID_ARGUMENT,
       {"causal", "5", "4"}},
      {"scale",
       [](auto& r) { r.set_scale(-2.0f); },
       C::INVALID_ARGUMENT,
       {"scale", "> 0", "-2"}},
      {"slopes count",
       [](auto& r) { r.mutable_alibi()->add_slopes(0.5f); },
       C::INVALID_ARGUMENT,
       {"alibi.slopes", "2", "1"}},
      {"NaN",
       [=](auto& r) { set_float(r.mutable_query(), 3, nan); },
       C::INVALID_ARGUMENT,
       {"query.data", "finite"}},
      {"Inf",
       [=](auto& r) { set_float(r.mutable_key(), 0, -inf); },
       C::INVALID_ARGUMENT,
       {"key.data", "finite"}},
      {"unknown model",
       [](auto& r) { r.mutable_relative()->set_model("nope"); },
       C::NOT_FOUND,
       {"relative.model", "nope", "tiny"}},
      {"model heads",
       [](auto& r) {
         r.mutable_relative()->set_model("tiny");
         *r.mutable_query() = RampTensor({1, 3, 3, 8}, 1);
         *r.mutable_key() = RampTensor({1, 3, 4, 8}, 1);
         r.clear_value();
       },
       C::INVALID_ARGUMENT,
       {"tiny", "2", "3"}},
      {"model P",
       [](auto& r) {
         r.mutable_relative()->set_model("tiny");
         *r.mutable_key() = RampTensor({1, 2, 9, 8}, 1);
         r.clear_value();
       },
       C::INVALID_ARGUMENT,
       {"tiny", "8", "9"}},
      {"H cap",
       [](auto& r) {
         *r.mutable_query() = RampTensor({1, 5, 3, 8}, 1);
         *r.mutable_key() = RampTensor({1, 5, 4, 8}, 1);
         r.clear_value();
       },
       C::INVALID_ARGUMENT,
       {"query.shape", "--max-heads", "H=5"}},
      {"L cap",
       [](auto& r) {
         *r.mutable_key() = RampTensor({1, 2, 40, 8}, 1);
         r.clear_value();
       },
       C::INVALID_ARGUMENT,
       {"key.shape", "--max-seq-len", "Lk=40"}},
      {"D cap",
       [](auto& r) {
         *r.mutable_query() = RampTensor({1, 2, 3, 128}, 1);
         *r.mutable_key() = RampTensor({1, 2, 4, 128}, 1);
         r.clear_value();
       },
       C::INVALID_ARGUMENT,
       {"query.shape", "--max-head-dim", "D=128"}},
      {"output bytes",
       [](auto& r) {
         // [64,2,3,4] logits + probs float32 = 2 * 6144 bytes > 10000.
         *r.mutable_query() = RampTensor({64, 2, 3, 8}, 1);
         *r.mutable_key() = RampTensor({64, 2, 4, 8}, 1);
         r.clear_value();
         r.add_outputs(v1::LOGITS);
         r.add_outputs(v1::PROBS);
       },
       C::RESOURCE_EXHAUSTED,
       {"--max-output-bytes", "10000", "12288"}},
  };
}

TEST_F(ServerE2eTest, EveryBadInputClassOverScoreAndScoreStream) {
  TempDir models;
  ASSERT_TRUE(WriteModel(models.path() + "/tiny.safetensors").ok());
  ASSERT_NO_FATAL_FAILURE(Start(
      {"--model-dir=" + models.path(), "--max-heads=4", "--max-seq-len=32",
       "--max-head-dim=64", "--max-output-bytes=10000"}));
  const std::vector<BadInput> cases = BadInputs();
  for (const BadInput& bad : cases) {
    v1::ScoreRequest request = SmallRequest(bad.name);
    bad.mutate(request);
    Call call = Score(request);
    EXPECT_EQ(call.status.error_code(), bad.code)
        << bad.name << ": " << call.status.error_message();
    for (const std::string& part : bad.message_parts) {
      EXPECT_THAT(call.status.error_message(), HasSubstr(part)) << bad.name;
    }
  }

  // The same on one stream, interleaved with good requests: errors come back in
  // the responses and the stream goes on.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  auto stream = stub_->ScoreStream(&context);
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::ScoreRequest request = SmallRequest(cases[i].name);
    cases[i].mutate(request);
    ASSERT_TRUE(stream->Write(request));
    ASSERT_TRUE(stream->Write(SmallRequest(absl::StrCat("good", i))));
  }
  ASSERT_TRUE(stream->WritesDone());
  size_t errors = 0, good = 0;
  v1::ScoreResponse response;
  while (stream->Read(&response)) {
    if (response.request_id().rfind("good", 0) == 0) {
      EXPECT_FALSE(response.has_error()) << response.error().message();
      EXPECT_EQ(response.logits().shape_size(), 4);
      ++good;
      continue;
    }
    ++errors;
    for (const BadInput& bad : cases) {
      if (response.request_id() != bad.name) continue;
      EXPECT_EQ(response.error().code(), bad.code) << bad.name;
      for (const std::string& part : bad.message_parts) {
        EXPECT_THAT(response.error().message(), HasSubstr(part)) << bad.name;
      }
    }
  }
  EXPECT_EQ(errors, cases.size());
  EXPECT_EQ(good, cases.size());
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServerE2eTest, OverloadIsUnavailableAndAcceptedRequestsStillSucceed) {
  ASSERT_NO_FATAL_FAILURE(Start({"--max-queue=1", "--max-batch-size=1",
                                 "--max-queue-delay-us=0", "--threads=1"}));
  constexpr int kClients = 8;
  std::vector<Call> calls(kClients);
  std::vector<std::thread> threads;
  threads.reserve(kClients);
  const v1::ScoreRequest slow = SlowRequest();
  for (int i = 0; i < kClients; ++i) {
    threads.push_back(ScoreAsync(slow, &calls[i]));
  }
  for (std::thread& t : threads) t.join();
  int ok = 0, unavailable = 0;
  for (const Call& call : calls) {
    if (call.status.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(call.status.error_code(), grpc::StatusCode::UNAVAILABLE)
          << call.status.error_message();
      EXPECT_THAT(call.status.error_message(), HasSubstr("retry"));
      ++unavailable;
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(unavailable, 1);
  EXPECT_EQ(ok + unavailable, kClients);
}

TEST_F(ServerE2eTest, ExpiredAndCancelledRequestsAreDroppedBeforeCompute) {
  ASSERT_NO_FATAL_FAILURE(
      Start({"--max-batch-size=1", "--max-queue-delay-us=0", "--threads=1"}));
  // Occupy the only worker with one long request, so that what comes next
  // waits long enough to expire or be cancelled. One request, not two shorter
  // ones: on a loaded machine the second of two could arrive after the first
  // was done, and the worker was never seen busy with both (a CI run waited
  // 30 s for that).
  Call slow;
  JoiningThread occupy(ScoreAsync(LongRequest("long"), &slow));
  ASSERT_TRUE(WaitFor(
      [&] { return MetricsContain("attnscore_in_flight_requests 1\n"); },
      kWaitTimeout, kWaitPoll));
  // Queued behind it: one that the client cancels, then one that expires.
  // The cancelled one is seen queued first: on a loaded machine the expired
  // one's deadline can pass before the server has queued it, and it is then
  // answered at once, so the count in flight need never show both (an ASan
  // run waited 30 s for 3 and saw the cancelled request computed).
  grpc::ClientContext cancel_context;
  Call cancelled;
  JoiningThread cancel_thread(std::thread([&] {
    cancelled.status = stub_->Score(&cancel_context, SmallRequest("cancelled"),
                                    &cancelled.response);
  }));
  const bool queued = WaitFor(
      [&] { return MetricsContain("attnscore_in_flight_requests 2\n"); },
      kWaitTimeout, kWaitPoll);
  Call expired = Score(SmallRequest("expired"), std::chrono::milliseconds(30));
  EXPECT_EQ(expired.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  cancel_context.TryCancel();
  cancel_thread.Join();
  ASSERT_TRUE(queued) << Metrics();
  EXPECT_EQ(cancelled.status.error_code(), grpc::StatusCode::CANCELLED);
  occupy.Join();
  ASSERT_TRUE(slow.status.ok()) << slow.status.error_message();
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::string m = Metrics();
        return m.find("code=\"DEADLINE_EXCEEDED\",client=\"anonymous\"} 1") !=
                   std::string::npos &&
               m.find("code=\"CANCELLED\",client=\"anonymous\"} 1") !=
                   std::string::npos;
      },
      kWaitTimeout, kWaitPoll))
      << Metrics();
  // Only the long request was computed.
  EXPECT_TRUE(MetricsContain("attnscore_batch_size_count 1\n")) << Metrics();
}

TEST_F(ServerE2eTest, SighupReloadsModelsAndKeepsThemWhenAFileIsBroken) {
  TempDir models;
  ASSERT_TRUE(WriteModel(models.path() + "/first.safetensors").ok());
  ASSERT_NO_FATAL_FAILURE(Start({"--model-dir=" + models.path()}));
  EXPECT_THAT(ModelNames(), ::testing::ElementsAre("first"));

  ASSERT_TRUE(WriteModel(models.path() + "/second.safetensors").ok());
  server_->Signal(SIGHUP);
  EXPECT_TRUE(WaitFor([&] { return ModelNames().size() == 2; }, kWaitTimeout,
                      kWaitPoll));
  EXPECT_THAT(ModelNames(), ::testing::ElementsAre("first", "second"));
  v1::ScoreRequest request = SmallRequest("rel");
  request.mutable_relative()->set_model("second");
  Call call = Score(request);
  EXPECT_TRUE(call.status.ok()) << call.status.error_message();

  // A broken file: the reload fails as a whole, is logged, and the previous set
  // stays.
  {
    std::FILE* f =
        std::fopen((models.path() + "/broken.safetensors").c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fputs("not a safetensors file", f);
    std::fclose(f);
  }
  server_->Signal(SIGHUP);
  EXPECT_TRUE(server_->WaitForLog("reload", absl::Seconds(30)));
  EXPECT_TRUE(server_->WaitForLog("broken.safetensors", absl::Seconds(30)));
  EXPECT_THAT(ModelNames(), ::testing::ElementsAre("first", "second"));
  EXPECT_TRUE(Score(request).status.ok());
  EXPECT_TRUE(MetricsContain("attnscore_models_loaded 2"));
}

TEST_F(ServerE2eTest, SigtermDrainsInFlightRequestsAndExitsZero) {
  ASSERT_NO_FATAL_FAILURE(Start({"--max-batch-size=1", "--max-queue-delay-us=0",
                                 "--threads=1", "--shutdown-grace=60"}));
  constexpr int kInFlight = 3;
  std::vector<Call> calls(kInFlight);
  // One computing (seen in flight first), then two queued behind it.
  std::vector<JoiningThread> threads;
  threads.reserve(kInFlight);
  threads.emplace_back(ScoreAsync(LongRequest("drain0"), &calls[0]));
  ASSERT_TRUE(WaitFor(
      [&] { return MetricsContain("attnscore_in_flight_requests 1\n"); },
      kWaitTimeout, kWaitPoll))
      << Metrics();
  for (int i = 1; i < kInFlight; ++i) {
    threads.emplace_back(
        ScoreAsync(SmallRequest(absl::StrCat("drain", i)), &calls[i]));
  }
  // All accepted before the signal.
  ASSERT_TRUE(WaitFor(
      [&] {
        return MetricsContain(
            absl::StrCat("attnscore_in_flight_requests ", kInFlight, "\n"));
      },
      kWaitTimeout, kWaitPoll))
      << Metrics();
  server_->Signal(SIGTERM);
  for (JoiningThread& t : threads) t.Join();
  for (int i = 0; i < kInFlight; ++i) {
    EXPECT_TRUE(calls[i].status.ok())
        << i << ": " << calls[i].status.error_message();
    EXPECT_EQ(calls[i].response.request_id(), absl::StrCat("drain", i));
  }
  const absl::StatusOr<int> code = server_->Wait(absl::Seconds(60));
  ASSERT_TRUE(code.ok()) << "the server did not exit after draining: "
                         << code.status();
  EXPECT_EQ(*code, 0);
  EXPECT_THAT(server_->Log(), HasSubstr("draining"));
}

TEST_F(ServerE2eTest, LargeResponsesPassTheMessageLimits) {
  // B8 H8 L512 float32 logits: 64 MiB, far over gRPC's 4 MiB default.
  ASSERT_NO_FATAL_FAILURE(Start({}));
  v1::ScoreRequest request =
      CausalRampRequest({8, 8, 512, 64}, /*with_value=*/false);
  request.set_request_id("large");
  const auto start = std::chrono::steady_clock::now();
  Call call = Score(request);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  ASSERT_TRUE(call.status.ok()) << call.status.error_message();
  EXPECT_THAT(call.response.logits().shape(),
              ::testing::ElementsAre(8, 8, 512, 512));
  EXPECT_EQ(call.response.logits().data().size(), size_t{64} << 20);
  // Causal: the last key is masked for every query but the last.
  const std::vector<float> logits = ToFloats(call.response.logits());
  EXPECT_EQ(logits[511], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isfinite(logits[logits.size() - 1]));
  std::cerr << "64 MiB logits round trip: " << seconds << " s (compute "
            << static_cast<double>(call.response.timing().compute_us()) / 1e3
            << " ms)\n";
  // And the server still stops promptly: gRPC's global teardown used to hold
  // the exit ~10 s after large responses.
  server_->Signal(SIGTERM);
  const auto stop_start = std::chrono::steady_clock::now();
  absl::StatusOr<int> code = server_->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  EXPECT_LT(std::chrono::steady_clock::now() - stop_start,
            std::chrono::seconds(5));
}

// Outputs placed in a registered shared-memory object are the bytes the reply
// would carry (real compute: causal -inf positions included), and a client
// that truncates its object under the server fails only its own request.
TEST_F(ServerE2eTest, SharedMemoryOutputsAreTheReplysBytes) {
  ASSERT_NO_FATAL_FAILURE(
      Start({absl::StrCat("--shm-prefix=", service::testing::kShmTestPrefix)}));
  v1::ScoreRequest request =
      CausalRampRequest({2, 4, 256, 64}, /*with_value=*/false);
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  request.set_output_dtype(v1::BFLOAT16);
  const Call in_band = Score(request);
  ASSERT_TRUE(in_band.status.ok()) << in_band.status.error_message();
  const size_t bytes = size_t{2} * 4 * 256 * 256 * 2;  // bfloat16 [B,H,L,L]
  ASSERT_EQ(in_band.response.logits().data().size(), bytes);

  service::testing::ShmObject object(2 * bytes);
  const grpc::Status registered = RegisterRegion("scores", object, 2 * bytes);
  ASSERT_TRUE(registered.ok()) << registered.error_message();
  for (const auto& [output, offset] :
       {std::pair{v1::LOGITS, size_t{0}}, std::pair{v1::PROBS, bytes}}) {
    v1::OutputPlacement* placement = request.add_placements();
    placement->set_output(output);
    placement->mutable_range()->set_region("scores");
    placement->mutable_range()->set_offset(offset);
    placement->mutable_range()->set_byte_size(bytes);
  }
  const Call placed = Score(request);
  ASSERT_TRUE(placed.status.ok()) << placed.status.error_message();
  EXPECT_TRUE(placed.response.logits().data().empty());
  EXPECT_EQ(placed.response.logits().shared_memory().byte_size(), bytes);
  EXPECT_EQ(placed.response.probs().shared_memory().offset(), bytes);
  EXPECT_TRUE(std::string(object.data(), bytes) ==
              in_band.response.logits().data());
  EXPECT_TRUE(std::string(object.data() + bytes, bytes) ==
              in_band.response.probs().data());
  EXPECT_LT(placed.response.ByteSizeLong(), 1024u);

  // The client shrinks its object under the server's writes.
  ExpectTruncationAbortsOnlyItsRequest(object, request);
}

// Logits and probs of a request scored alone stream while they compute (the
// blocked path tells the rows as they become final): the reply is Score's,
// bit for bit, in float32 and bfloat16, causal and with key lengths.
TEST_F(ServerE2eTest, ScoreChunkedStreamedWhileComputingIsScore) {
  ASSERT_NO_FATAL_FAILURE(Start({"--reply-chunk-bytes=65536"}));
  for (const v1::DType dtype : {v1::FLOAT32, v1::BFLOAT16}) {
    SCOPED_TRACE(v1::DType_Name(dtype));
    v1::ScoreRequest request =
        CausalRampRequest({2, 4, 300, 64}, /*with_value=*/false);
    request.add_outputs(v1::LOGITS);
    request.add_outputs(v1::PROBS);
    request.add_key_lengths(300);
    request.add_key_lengths(123);
    request.set_output_dtype(dtype);
    const Call whole = Score(request);
    ASSERT_TRUE(whole.status.ok()) << whole.status.error_message();
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    std::unique_ptr<grpc::ClientReader<v1::ScoreChunk>> reader =
        stub_->ScoreChunked(&context, request);
    std::map<int, std::string> bytes;  // by output
    size_t chunks = 0;
    for (v1::ScoreChunk chunk; reader->Read(&chunk); ++chunks) {
      std::string& got = bytes[chunk.output()];
      EXPECT_EQ(chunk.offset(), got.size());
      got += chunk.data();
    }
    const grpc::Status status = reader->Finish();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_GT(chunks, 20u);
    EXPECT_TRUE(bytes[v1::LOGITS] == whole.response.logits().data());
    EXPECT_TRUE(bytes[v1::PROBS] == whole.response.probs().data());
  }
}

// ScoreChunked carries Score's reply bit for bit (real compute, every output,
// bfloat16), in chunks of whole rows within --reply-chunk-bytes; an output
// placed in shared memory comes as one chunk with its range.
TEST_F(ServerE2eTest, ScoreChunkedIsScoreInChunks) {
  ASSERT_NO_FATAL_FAILURE(
      Start({"--reply-chunk-bytes=5000",
             absl::StrCat("--shm-prefix=", service::testing::kShmTestPrefix)}));
  v1::ScoreRequest request =
      CausalRampRequest({2, 4, 256, 64}, /*with_value=*/true);
  request.set_request_id("chunked");
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  request.add_outputs(v1::CONTEXT);
  request.set_output_dtype(v1::BFLOAT16);
  const Call whole = Score(request);
  ASSERT_TRUE(whole.status.ok()) << whole.status.error_message();

  const auto read_chunks = [this](const v1::ScoreRequest& r) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    std::unique_ptr<grpc::ClientReader<v1::ScoreChunk>> reader =
        stub_->ScoreChunked(&context, r);
    std::vector<v1::ScoreChunk> chunks;
    for (v1::ScoreChunk chunk; reader->Read(&chunk);) chunks.push_back(chunk);
    const grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    return chunks;
  };
  std::map<int, std::string> bytes;  // by output
  const std::vector<v1::ScoreChunk> chunks = read_chunks(request);
  ASSERT_FALSE(chunks.empty());
  for (const v1::ScoreChunk& chunk : chunks) {
    std::string& got = bytes[chunk.output()];
    EXPECT_EQ(chunk.offset(), got.size());
    // Rows of 256 (logits, probs) or 64 (context) bfloat16: 9 or 39 rows.
    EXPECT_LE(chunk.data().size(), 4992u);
    got += chunk.data();
  }
  EXPECT_EQ(chunks.back().request_id(), "chunked");
  EXPECT_TRUE(bytes[v1::LOGITS] == whole.response.logits().data());
  EXPECT_TRUE(bytes[v1::PROBS] == whole.response.probs().data());
  EXPECT_TRUE(bytes[v1::CONTEXT] == whole.response.context().data());

  const size_t probs_bytes = whole.response.probs().data().size();
  service::testing::ShmObject object(probs_bytes);
  ASSERT_TRUE(RegisterRegion("probs", object, probs_bytes).ok());
  v1::OutputPlacement* placement = request.add_placements();
  placement->set_output(v1::PROBS);
  placement->mutable_range()->set_region("probs");
  placement->mutable_range()->set_byte_size(probs_bytes);
  int placed_chunks = 0;
  for (const v1::ScoreChunk& chunk : read_chunks(request)) {
    if (chunk.output() != v1::PROBS) continue;
    ++placed_chunks;
    EXPECT_TRUE(chunk.data().empty());
    EXPECT_EQ(chunk.shared_memory().region(), "probs");
    EXPECT_EQ(chunk.shared_memory().byte_size(), probs_bytes);
  }
  EXPECT_EQ(placed_chunks, 1);
  EXPECT_TRUE(std::string(object.data(), probs_bytes) ==
              whole.response.probs().data());
}

// Inputs read from shared memory give the reply of the same request with its
// bytes in-band; each way of naming a range wrongly gets its own status.
TEST_F(ServerE2eTest, SharedMemoryInputsAreReadInPlace) {
  ASSERT_NO_FATAL_FAILURE(
      Start({absl::StrCat("--shm-prefix=", service::testing::kShmTestPrefix)}));
  v1::ScoreRequest request =
      CausalRampRequest({1, 4, 128, 64}, /*with_value=*/true);
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::CONTEXT);
  const Call in_band = Score(request);
  ASSERT_TRUE(in_band.status.ok()) << in_band.status.error_message();

  const size_t bytes = request.query().data().size();  // each input's
  constexpr size_t kOutputOffset = size_t{1} << 20;
  constexpr size_t kRegionBytes = kOutputOffset + (size_t{1} << 20);
  service::testing::ShmObject object(kRegionBytes);
  const grpc::Status registered =
      RegisterRegion("inputs", object, kRegionBytes);
  ASSERT_TRUE(registered.ok()) << registered.error_message();
  v1::ScoreRequest shared = request;
  v1::Tensor* inputs[] = {shared.mutable_query(), shared.mutable_key(),
                          shared.mutable_value()};
  for (size_t i = 0; i < 3; ++i) {
    std::memcpy(object.data() + i * bytes, inputs[i]->data().data(), bytes);
    inputs[i]->clear_data();
    v1::SharedMemoryRange* range = inputs[i]->mutable_shared_memory();
    range->set_region("inputs");
    range->set_offset(i * bytes);
    range->set_byte_size(bytes);
  }
  const Call from_shm = Score(shared);
  ASSERT_TRUE(from_shm.status.ok()) << from_shm.status.error_message();
  EXPECT_TRUE(from_shm.response.logits().data() ==
              in_band.response.logits().data());
  EXPECT_TRUE(from_shm.response.context().data() ==
              in_band.response.context().data());

  // With the logits placed in the same region, apart from the inputs.
  v1::ScoreRequest placed = shared;
  v1::OutputPlacement* placement = placed.add_placements();
  placement->set_output(v1::LOGITS);
  placement->mutable_range()->set_region("inputs");
  placement->mutable_range()->set_offset(kOutputOffset);
  placement->mutable_range()->set_byte_size(size_t{1} << 20);
  const Call both = Score(placed);
  ASSERT_TRUE(both.status.ok()) << both.status.error_message();
  const std::string& logits = in_band.response.logits().data();
  EXPECT_TRUE(std::string(object.data() + kOutputOffset, logits.size()) ==
              logits);

  struct Case {
    const char* what;
    std::function<void(v1::ScoreRequest&)> change;
    grpc::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"data and a range",
       [&](v1::ScoreRequest& r) { r.mutable_key()->set_data("x"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "key: expected its bytes in data or in shared_memory, got both"},
      {"a range of the wrong size",
       [&](v1::ScoreRequest& r) {
         r.mutable_value()->mutable_shared_memory()->set_byte_size(bytes - 4);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "value.shared_memory.byte_size: expected 131072 bytes for F32 "
       "[1,4,128,64], got 131068"},
      {"a region not registered",
       [&](v1::ScoreRequest& r) {
         r.mutable_query()->mutable_shared_memory()->set_region("absent");
       },
       grpc::StatusCode::NOT_FOUND, "query.shared_memory.region"},
      {"a range past the region's end",
       [&](v1::ScoreRequest& r) {
         r.mutable_key()->mutable_shared_memory()->set_offset(kOutputOffset *
                                                              2);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "key.shared_memory: expected offset + byte_size within the region"},
      {"an output placed over an input",
       [&](v1::ScoreRequest& r) {
         r.mutable_placements(0)->mutable_range()->set_offset(bytes);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "placements[0].range: expected bytes apart from the inputs', got "
       "[131072, 393216) overlapping key.shared_memory's [131072, 262144)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    v1::ScoreRequest bad = placed;
    c.change(bad);
    const Call call = Score(bad);
    EXPECT_EQ(call.status.error_code(), c.code);
    EXPECT_THAT(call.status.error_message(), HasSubstr(c.message));
  }

  // The client shrinks its object under the server's reads.
  ExpectTruncationAbortsOnlyItsRequest(object, shared);
}

TEST_F(ServerE2eTest, MetricsEndpointServesTheSeries) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  ASSERT_TRUE(Score(SmallRequest("m")).status.ok());
  const std::string metrics = Metrics();
  // Callers without a token or client certificate are "anonymous".
  const std::string requests_ok =
      absl::StrCat("attnscore_requests_total{method=\"Score\",code=\"OK\",",
                   "client=\"anonymous\"} 1");
  for (const char* series : {
           requests_ok.c_str(),
           "attnscore_request_duration_seconds_bucket{method=\"Score\",le=",
           "attnscore_queue_duration_seconds_count 1",
           "attnscore_compute_duration_seconds_count 1",
           "attnscore_batch_size_count 1",
           "attnscore_queue_depth 0",
           "attnscore_in_flight_requests 0",
           "attnscore_batch_worker_spins_total ",
           "attnscore_batch_worker_spin_hits_total ",
           "attnscore_batch_worker_spin_seconds_total ",
           "attnscore_request_bytes_total{method=\"Score\"}",
           "attnscore_response_bytes_total{method=\"Score\"}",
           "attnscore_models_loaded 0",
           "attnscore_build_info{version=\"",
       }) {
    EXPECT_THAT(metrics, HasSubstr(series));
  }
}

// --batch-worker-spin-us reaches the batcher: after a request's batch the
// worker spins (up to 0.1 s here, so the spin's end is soon seen) and the
// metrics count it. Off by default: nothing spins.
TEST_F(ServerE2eTest, BatchWorkersSpinOnlyWhenAsked) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  ASSERT_TRUE(Score(SmallRequest("quiet")).status.ok());
  EXPECT_TRUE(MetricsContain("attnscore_batch_worker_spins_total 0\n"));
  ASSERT_NO_FATAL_FAILURE(Start({"--batch-worker-spin-us", "100000"}));
  ASSERT_TRUE(Score(SmallRequest("spun")).status.ok());
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::string metrics = Metrics();
        return absl::StrContains(metrics,
                                 "attnscore_batch_worker_spins_total ") &&
               !absl::StrContains(metrics,
                                  "attnscore_batch_worker_spins_total 0\n");
      },
      kWaitTimeout))
      << Metrics();
  EXPECT_FALSE(MetricsContain("attnscore_batch_worker_spin_seconds_total 0\n"));
}

// --host-pool-decay-ms reaches the pool: a reply's 2 MiB of logits go back to
// the host pool when sent, and, unused, leave it once the decay period has
// passed, with no further request to prompt it (the releaser thread).
TEST_F(ServerE2eTest, IdlePoolBlocksGoBackAfterTheDecayPeriod) {
  ASSERT_NO_FATAL_FAILURE(Start({"--host-pool-decay-ms", "200"}));
  v1::ScoreRequest request = CausalRampRequest({1, 2, 512, 8}, false);
  request.add_outputs(v1::LOGITS);
  const Call call = Score(request);
  ASSERT_TRUE(call.status.ok()) << call.status.error_message();
  EXPECT_EQ(call.response.logits().data().size(), size_t{2} << 20);
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::string metrics = Metrics();
        return absl::StrContains(metrics,
                                 "attnscore_host_pool_idle_bytes 0\n") &&
               absl::StrContains(metrics,
                                 "attnscore_host_pool_decayed_bytes_total ") &&
               !absl::StrContains(
                   metrics, "attnscore_host_pool_decayed_bytes_total 0\n");
      },
      kWaitTimeout))
      << Metrics();
  EXPECT_TRUE(
      server_->WaitForLog("each for at most 200 ms unused", absl::Seconds(1)));
}

// Debian's real prometheus scrapes the real server over loopback; the series a
// request produced must arrive through prometheus' query API, and the whole
// exposition must pass promtool's lint.
TEST_F(ServerE2eTest, PrometheusScrapesTheServer) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Score(SmallRequest(absl::StrCat("p", i))).status.ok());
  }
  EXPECT_TRUE(attnscore::testing::CheckMetricsWithPromtool(Metrics()).ok());
  attnscore::testing::PrometheusOptions options;
  options.targets = {absl::StrCat("127.0.0.1:", server_->metrics_port())};
  absl::StatusOr<std::unique_ptr<attnscore::testing::PrometheusHarness>>
      prometheus = attnscore::testing::PrometheusHarness::Start(options);
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();
  absl::StatusOr<double> up =
      (*prometheus)
          ->WaitForValue("up{job=\"attnscore\"}", absl::Seconds(30),
                         [](double v) { return v == 1; });
  ASSERT_TRUE(up.ok()) << up.status();
  absl::StatusOr<double> requests =
      (*prometheus)
          ->WaitForValue(
              "attnscore_requests_total{method=\"Score\",code=\"OK\"}",
              absl::Seconds(30), [](double v) { return v == 3; });
  EXPECT_TRUE(requests.ok()) << requests.status();
  absl::StatusOr<double> batches =
      (*prometheus)
          ->WaitForValue("attnscore_batch_size_count", absl::Seconds(30),
                         [](double v) { return v >= 1; });
  EXPECT_TRUE(batches.ok()) << batches.status();
}

// Runs the binary to completion (30 s at most) and returns its exit code and
// output.
std::pair<int, std::string> RunBinary(const std::string& args) {
  const std::string command =
      absl::StrCat("timeout 30 ", testing::ServerBinary(), " ", args, " 2>&1");
  std::FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof(buf), pipe)) {
    output.append(buf, n);
  }
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST(ServerCommandLineTest, HelpDocumentsEveryFlagWithItsDefault) {
  auto [code, help] = RunBinary("--help");
  EXPECT_EQ(code, 0);
  for (const char* flag :
       {"--listen TEXT=127.0.0.1:50051", "--port-file",
        "--metrics-listen TEXT=127.0.0.1:9090", "--threads", "--batch-workers",
        "--max-batch-size", "--max-queue-delay-us", "--max-queue",
        "--max-output-bytes", "--max-heads", "--max-head-dim", "--max-seq-len",
        "--model-dir", "--shutdown-grace", "--log-format", "--log-level",
        "--device", "--reply-chunk-bytes", "ATTNSCORE_LISTEN"}) {
    EXPECT_THAT(help, HasSubstr(flag));
  }
}

TEST(ServerCommandLineTest, AlibiKernelTakesAutoOrOff) {
  auto [code, output] = RunBinary(
      "--alibi-kernel=fast --listen=127.0.0.1:0 --metrics-listen=off");
  EXPECT_NE(code, 0);
  EXPECT_THAT(output, HasSubstr("--alibi-kernel"));
  // The variable is checked the same way (popen passes the environment on).
  ASSERT_EQ(setenv("ATTNSCORE_ALIBI_KERNEL", "fast", 1), 0);
  auto [env_code, env_output] =
      RunBinary("--listen=127.0.0.1:0 --metrics-listen=off");
  unsetenv("ATTNSCORE_ALIBI_KERNEL");
  EXPECT_NE(env_code, 0);
  EXPECT_THAT(env_output, HasSubstr("--alibi-kernel"));
}

// A bad number fails at start-up naming the flag, what it takes and what it
// got, whether given as a flag or through its variable.
TEST(ServerCommandLineTest, BadNumbersFailAtStartUpSayingWhatIsExpected) {
  const std::string rest = " --listen=127.0.0.1:0 --metrics-listen=off";
  auto [code, output] = RunBinary("--max-inflight-bytes=5mega" + rest);
  EXPECT_NE(code, 0);
  EXPECT_THAT(output, HasSubstr("--max-inflight-bytes: expected a number of "
                                "bytes such as 1073741824, 512Mi, 2GiB or 1G, "
                                "got '5mega'"));
  auto [threads_code, threads] = RunBinary("--threads=0" + rest);
  EXPECT_NE(threads_code, 0);
  EXPECT_THAT(threads, HasSubstr("--threads: expected 1 to 2147483647, got 0"));
  auto [grace_code, grace] = RunBinary("--shutdown-grace=-1" + rest);
  EXPECT_NE(grace_code, 0);
  EXPECT_THAT(grace,
              HasSubstr("--shutdown-grace: expected at least 0, got -1"));
  ASSERT_EQ(setenv("ATTNSCORE_MAX_INFLIGHT_BYTES", "-5", 1), 0);
  auto [env_code, env_output] = RunBinary(rest);
  unsetenv("ATTNSCORE_MAX_INFLIGHT_BYTES");
  EXPECT_NE(env_code, 0);
  EXPECT_THAT(env_output, HasSubstr("expected at least 1, got -5"));
}

// Every listening address is checked as HOST:PORT before anything starts:
// gRPC itself took a port past 65535 modulo 65536 and served elsewhere.
TEST(ServerCommandLineTest, ListenAddressesOutOfRangeFailAtStartUp) {
  for (const std::string& args :
       {std::string("--listen=127.0.0.1:99999 --metrics-listen=off"),
        std::string("--listen=bogus --metrics-listen=off"),
        std::string("--listen=127.0.0.1:0 --metrics-listen=off "
                    "--health-listen=127.0.0.1:65536"),
        std::string("--listen=127.0.0.1:0 --metrics-listen=127.0.0.1")}) {
    auto [code, output] = RunBinary(args);
    EXPECT_EQ(code, 2) << args;
    EXPECT_THAT(output, HasSubstr("expected HOST:PORT")) << args;
    EXPECT_THAT(output, ::testing::Not(HasSubstr("listening on"))) << args;
  }
  auto [code, output] =
      RunBinary("--listen=127.0.0.1:99999 --metrics-listen=off");
  EXPECT_THAT(output, HasSubstr("--listen: address \"127.0.0.1:99999\": port "
                                "\"99999\" is not in 0..65535"));
}

// ATTNSCORE_METRICS_LISTEN="" turns metrics off, as --metrics-listen "" does
// (CLI11 alone would take the empty variable for an unset one). The server
// then stops at an unwritable --port-file, after the metrics would have
// started.
TEST(ServerCommandLineTest, EmptyMetricsListenVariableTurnsMetricsOff) {
  const std::string args =
      "--listen=127.0.0.1:0 --port-file=/nonexistent/attnscore/port";
  ASSERT_EQ(setenv("ATTNSCORE_METRICS_LISTEN", "127.0.0.1:0", 1), 0);
  auto [on_code, on] = RunBinary(args);
  ASSERT_EQ(setenv("ATTNSCORE_METRICS_LISTEN", "", 1), 0);
  auto [off_code, off] = RunBinary(args);
  unsetenv("ATTNSCORE_METRICS_LISTEN");
  EXPECT_NE(on_code, 0);
  EXPECT_NE(off_code, 0);
  EXPECT_THAT(on, HasSubstr("metrics on 127.0.0.1:0"));
  EXPECT_THAT(off, HasSubstr("/nonexistent/attnscore/port"));
  EXPECT_THAT(off, ::testing::Not(HasSubstr("metrics on")));
}

TEST(ServerCommandLineTest, UnavailableDeviceFailsAtStartUp) {
  auto [code, output] =
      RunBinary("--device=cuda --listen=127.0.0.1:0 --metrics-listen=off");
  EXPECT_NE(code, 0);
  EXPECT_THAT(output, HasSubstr("cuda"));
}

TEST(ServerCommandLineTest, BrokenModelDirFailsAtStartUp) {
  TempDir models;
  {
    std::FILE* f =
        std::fopen((models.path() + "/bad.safetensors").c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fputs("garbage", f);
    std::fclose(f);
  }
  auto [code, output] = RunBinary("--model-dir=" + models.path() +
                                  " --listen=127.0.0.1:0 --metrics-listen=off");
  EXPECT_NE(code, 0);
  EXPECT_THAT(output, HasSubstr("bad.safetensors"));
}

}  // namespace
}  // namespace attnscore::e2e
