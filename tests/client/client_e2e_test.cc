// The client library against real attnscore-server processes on loopback: every
// golden case through Score, ScoreAsync and Stream; errors with the server's
// message; deadlines and cancellation; health, models and server info;
// round-robin over three servers; message limits; shared-memory inputs and
// outputs; option validation (TLS files, tokens).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/shared_memory.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/golden_support.h"
#include "tests/testing/golden.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::client {
namespace {

using ::attnscore::testing::CompareWithGolden;
using ::attnscore::testing::GoldenCase;
using ::attnscore::testing::GoldenRequest;
using ::attnscore::testing::ServerOptions;
using ::attnscore::testing::ServerProcess;
using ::attnscore::testing::TempDir;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(30);

std::unique_ptr<Client> MakeClient(const std::string& target,
                                   ClientOptions options = {}) {
  options.target = target;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// A request of a given shape with deterministic values (ALiBi, logits).
struct OwnedRequest {
  Tensor q;
  Tensor k;
  ScoreRequest request;
};
OwnedRequest MakeRequest(int64_t b, int64_t h, int64_t lq, int64_t lk,
                         int64_t d) {
  OwnedRequest out;
  std::vector<float> qv(static_cast<size_t>(b * h * lq * d));
  std::vector<float> kv(static_cast<size_t>(b * h * lk * d));
  for (size_t i = 0; i < qv.size(); ++i) {
    qv[i] = static_cast<float>((i * 7919) % 97) / 97.0f - 0.5f;
  }
  for (size_t i = 0; i < kv.size(); ++i) {
    kv[i] = static_cast<float>((i * 104729) % 89) / 89.0f - 0.5f;
  }
  out.q = *Tensor::FromFloats(DType::kFloat32, {b, h, lq, d}, qv);
  out.k = *Tensor::FromFloats(DType::kFloat32, {b, h, lk, d}, kv);
  out.request.query = out.q.view();
  out.request.key = out.k.view();
  out.request.causal = true;
  return out;
}

class ClientE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::vector<GoldenCase>> cases = testing::LoadGoldenCases();
    ASSERT_TRUE(cases.ok()) << cases.status();
    cases_ = new std::vector<GoldenCase>(*std::move(cases));
  }
  static void TearDownTestSuite() {
    delete cases_;
    cases_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(testing::WriteGoldenModels(*cases_, models_.path()).ok());
    ServerOptions options;
    options.model_dir = models_.path();
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = MakeClient(server_->target());
    ASSERT_NE(client_, nullptr);
  }

  static std::vector<GoldenCase>* cases_;
  TempDir models_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};
std::vector<GoldenCase>* ClientE2eTest::cases_ = nullptr;

TEST_F(ClientE2eTest, EveryGoldenCaseThroughScore) {
  ASSERT_FALSE(cases_->empty());
  for (const GoldenCase& golden : *cases_) {
    SCOPED_TRACE(golden.name);
    absl::StatusOr<ScoreResult> result = client_->Score(GoldenRequest(golden));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->request_id, testing::CaseStem(golden));
    EXPECT_EQ(CompareWithGolden(golden, *result), "");
    EXPECT_GE(result->timing.batch_size, 1);
  }
}

TEST_F(ClientE2eTest, EveryGoldenCaseThroughScoreAsyncConcurrently) {
  // Futures: all in flight at once (the server may batch them; results must
  // still be exact).
  std::vector<std::future<absl::StatusOr<ScoreResult>>> futures;
  for (const GoldenCase& golden : *cases_) {
    futures.push_back(client_->ScoreAsync(GoldenRequest(golden)));
  }
  for (size_t i = 0; i < futures.size(); ++i) {
    SCOPED_TRACE((*cases_)[i].name);
    ASSERT_EQ(futures[i].wait_for(std::chrono::seconds(60)),
              std::future_status::ready);
    absl::StatusOr<ScoreResult> result = futures[i].get();
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(CompareWithGolden((*cases_)[i], *result), "");
  }
  // Callbacks. Their state is shared with them, not on this stack: the last
  // callback still unlocks the mutex after it wakes this thread, which may by
  // then have returned.
  struct Results {
    std::mutex mutex;
    std::map<std::string, std::string> diffs;
    std::promise<void> all_done;
    size_t remaining = 0;
  };
  auto results = std::make_shared<Results>();
  results->remaining = cases_->size();
  std::future<void> all_done = results->all_done.get_future();
  for (const GoldenCase& golden : *cases_) {
    client_->ScoreAsync(GoldenRequest(golden), {},
                        [results, g = &golden](absl::StatusOr<ScoreResult> r) {
                          std::lock_guard<std::mutex> lock(results->mutex);
                          results->diffs[g->name] =
                              r.ok() ? CompareWithGolden(*g, *r)
                                     : r.status().ToString();
                          if (--results->remaining == 0) {
                            results->all_done.set_value();
                          }
                        });
  }
  ASSERT_EQ(all_done.wait_for(std::chrono::seconds(60)),
            std::future_status::ready);
  std::lock_guard<std::mutex> lock(results->mutex);
  for (const auto& [name, diff] : results->diffs) {
    EXPECT_EQ(diff, "") << name;
  }
}

TEST_F(ClientE2eTest, EveryGoldenCaseThroughOneStream) {
  absl::StatusOr<std::unique_ptr<Stream>> stream = client_->OpenStream();
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::map<std::string, const GoldenCase*> by_id;
  for (const GoldenCase& golden : *cases_) {
    ScoreRequest request = GoldenRequest(golden);
    by_id[request.request_id] = &golden;
    ASSERT_TRUE((*stream)->Write(request).ok());
  }
  // A bad request in the middle answers with its own error and does not end the
  // stream.
  ScoreRequest bad = GoldenRequest(cases_->front());
  bad.request_id = "bad";
  bad.bias = Relative{"no_such_model"};
  ASSERT_TRUE((*stream)->Write(bad).ok());
  (*stream)->WritesDone();
  size_t answered = 0;
  bool saw_bad = false;
  while (true) {
    absl::StatusOr<StreamResponse> response = (*stream)->Read(kWait);
    if (absl::IsOutOfRange(response.status())) break;
    ASSERT_TRUE(response.ok()) << response.status();
    if (response->request_id == "bad") {
      saw_bad = true;
      EXPECT_EQ(response->result.status().code(), absl::StatusCode::kNotFound)
          << response->result.status();
      EXPECT_THAT(response->result.status().message(),
                  HasSubstr("no_such_model"));
      continue;
    }
    ASSERT_TRUE(by_id.count(response->request_id)) << response->request_id;
    ASSERT_TRUE(response->result.ok()) << response->result.status();
    EXPECT_EQ(
        CompareWithGolden(*by_id[response->request_id], *response->result), "");
    ++answered;
  }
  EXPECT_TRUE(saw_bad);
  EXPECT_EQ(answered, cases_->size());
  EXPECT_TRUE((*stream)->Finish(kWait).ok());
  EXPECT_EQ((*stream)->outstanding(), 0u);
}

TEST_F(ClientE2eTest, StreamCallbacksAndCancel) {
  std::mutex mutex;
  std::condition_variable cv;
  int responses = 0;
  std::optional<absl::Status> done;
  StreamOptions options;
  options.on_response = [&](const StreamResponse& r) {
    std::lock_guard<std::mutex> lock(mutex);
    EXPECT_TRUE(r.result.ok()) << r.result.status();
    ++responses;
    cv.notify_all();
  };
  options.on_done = [&](const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mutex);
    done = s;
    cv.notify_all();
  };
  absl::StatusOr<std::unique_ptr<Stream>> stream =
      client_->OpenStream(std::move(options));
  ASSERT_TRUE(stream.ok()) << stream.status();
  OwnedRequest r = MakeRequest(1, 4, 8, 8, 16);
  for (int i = 0; i < 5; ++i) {
    r.request.request_id = absl::StrCat("r", i);
    ASSERT_TRUE((*stream)->Write(r.request).ok());
  }
  {
    std::unique_lock<std::mutex> lock(mutex);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30),
                            [&] { return responses == 5; }));
  }
  // The stream is still open (no WritesDone): cancelling ends it with
  // CANCELLED.
  (*stream)->Cancel();
  absl::Status finished = (*stream)->Finish(kWait);
  EXPECT_EQ(finished.code(), absl::StatusCode::kCancelled) << finished;
  std::unique_lock<std::mutex> lock(mutex);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10),
                          [&] { return done.has_value(); }));
  EXPECT_EQ(done->code(), absl::StatusCode::kCancelled);
  lock.unlock();
  EXPECT_FALSE((*stream)->Write(r.request).ok());
}

TEST_F(ClientE2eTest, ServerErrorsKeepTheirCodeAndMessage) {
  // Replies whole (Score) and in chunks (ScoreChunked, which every reply takes
  // with a limit of 1 byte): a refusal is the server's status either way, not
  // the chunked reply it cut short.
  for (int64_t chunked_reply_bytes : {int64_t{0}, int64_t{1}}) {
    SCOPED_TRACE(absl::StrCat("chunked_reply_bytes ", chunked_reply_bytes));
    ClientOptions options;
    options.chunked_reply_bytes = chunked_reply_bytes;
    std::unique_ptr<Client> client = MakeClient(server_->target(), options);
    ASSERT_NE(client, nullptr);
    OwnedRequest r = MakeRequest(1, 4, 8, 8, 16);
    r.request.bias = Relative{"missing_model"};
    absl::StatusOr<ScoreResult> result = client->Score(r.request);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound)
        << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("missing_model"));

    // Key with another head dim than the query: the server names the field.
    OwnedRequest bad = MakeRequest(1, 4, 8, 8, 16);
    Tensor key = *Tensor::FromFloats(DType::kFloat32, {1, 4, 8, 8},
                                     std::vector<float>(256, 0.5f));
    bad.request.key = key.view();
    result = client->Score(bad.request);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
        << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("key"));

    // Caught locally, before anything is sent: the view's bytes disagree with
    // its shape.
    OwnedRequest local = MakeRequest(1, 4, 8, 8, 16);
    local.request.query.size_bytes -= 4;
    result = client->Score(local.request);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
        << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("query"));
  }
}

TEST_F(ClientE2eTest, HealthModelsAndServerInfo) {
  absl::StatusOr<ServingStatus> ready = client_->Health();
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(*ready, ServingStatus::kServing);
  absl::StatusOr<ServingStatus> live = client_->Health("");
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(*live, ServingStatus::kServing);
  absl::StatusOr<ServingStatus> unknown = client_->Health("no.such.Service");
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_EQ(*unknown, ServingStatus::kServiceUnknown);

  absl::StatusOr<std::vector<ModelInfo>> models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  std::map<std::string, ModelInfo> by_name;
  for (const ModelInfo& m : *models) by_name[m.name] = m;
  for (const GoldenCase& golden : *cases_) {
    if (!golden.relative()) continue;
    const std::string name = testing::CaseStem(golden);
    ASSERT_TRUE(by_name.count(name)) << name;
    EXPECT_EQ(by_name[name].heads, golden.Int("heads"));
    EXPECT_EQ(by_name[name].head_dim, golden.Int("head_dim"));
    EXPECT_EQ(by_name[name].max_relative_positions,
              golden.Int("max_relative_positions"));
  }

  absl::StatusOr<ServerInfo> info = client_->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->version.empty());
  EXPECT_EQ(info->device, "cpu");
  EXPECT_GT(info->max_output_bytes, 0);
  EXPECT_GT(info->max_batch_size, 0);
}

TEST_F(ClientE2eTest, LargeResponsesAndReceiveLimit) {
  // 16 MiB of float32 logits: far over gRPC's 4 MiB default, fine with the
  // client's default.
  OwnedRequest r = MakeRequest(2, 8, 512, 512, 16);
  r.request.outputs = Outputs{true, true, false};
  absl::StatusOr<ScoreResult> result = client_->Score(r.request);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->logits.has_value());
  EXPECT_EQ(result->logits->size_bytes(), size_t{2} * 8 * 512 * 512 * 4);
  const std::vector<float> probs = result->probs->ToFloats();
  double row = 0;
  for (int j = 0; j < 512; ++j) {
    row += probs[size_t{511} * 512 + static_cast<size_t>(j)];
  }
  EXPECT_NEAR(row, 1.0, 1e-4);

  // A client that accepts less than the response gets RESOURCE_EXHAUSTED.
  ClientOptions limited;
  limited.max_receive_message_bytes = 64 << 10;
  std::unique_ptr<Client> small = MakeClient(server_->target(), limited);
  OwnedRequest medium = MakeRequest(1, 2, 128, 128, 16);  // 128 KiB of logits
  result = small->Score(medium.request);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted)
      << result.status();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted)
      << result.status();
}

// Replies asked for in chunks (ScoreChunked) are the replies asked for whole,
// bit for bit: every output, float32 and bfloat16.
TEST_F(ClientE2eTest, ChunkedRepliesAreTheWholeReplies) {
  ClientOptions chunked;
  chunked.chunked_reply_bytes = 1;
  ClientOptions whole;
  whole.chunked_reply_bytes = 0;
  std::unique_ptr<Client> by_chunks = MakeClient(server_->target(), chunked);
  std::unique_ptr<Client> at_once = MakeClient(server_->target(), whole);
  OwnedRequest r = MakeRequest(2, 4, 96, 200, 16);
  Tensor v =
      *Tensor::FromFloats(DType::kFloat32, {2, 4, 200, 24},
                          std::vector<float>(size_t{2} * 4 * 200 * 24, 0.25f));
  r.request.value = v.view();
  r.request.outputs = Outputs{true, true, true};
  for (std::optional<DType> dtype :
       {std::optional<DType>(), std::optional<DType>(DType::kBFloat16)}) {
    r.request.output_dtype = dtype;
    absl::StatusOr<ScoreResult> a = by_chunks->Score(r.request);
    absl::StatusOr<ScoreResult> b = at_once->Score(r.request);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    for (auto member :
         {&ScoreResult::logits, &ScoreResult::probs, &ScoreResult::context}) {
      const std::optional<Tensor>& x = (*a).*member;
      const std::optional<Tensor>& y = (*b).*member;
      ASSERT_TRUE(x.has_value() && y.has_value());
      EXPECT_EQ(x->dtype(), y->dtype());
      EXPECT_EQ(x->shape(), y->shape());
      ASSERT_EQ(x->size_bytes(), y->size_bytes());
      EXPECT_EQ(std::memcmp(x->data(), y->data(), x->size_bytes()), 0);
    }
    EXPECT_EQ(a->timing.batch_size, 2);
  }
  // A receive limit under the reply still refuses it (the chunks alone would
  // each pass it).
  ClientOptions limited = chunked;
  limited.max_receive_message_bytes = 64 << 10;
  std::unique_ptr<Client> small = MakeClient(server_->target(), limited);
  EXPECT_EQ(small->Score(r.request).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(ClientE2eTest, OutputDtypesAndHalfInputs) {
  const GoldenCase& golden = cases_->front();
  ScoreRequest request = GoldenRequest(golden);
  // float16 inputs, bfloat16 outputs: the tensors travel in those dtypes.
  Tensor q16 = Tensor::FromFloats(DType::kFloat32, request.query.shape,
                                  request.query.ToFloats())
                   ->ConvertTo(DType::kFloat16);
  Tensor k16 = Tensor::FromFloats(DType::kFloat32, request.key.shape,
                                  request.key.ToFloats())
                   ->ConvertTo(DType::kFloat16);
  request.query = q16.view();
  request.key = k16.view();
  request.value.reset();
  request.outputs = Outputs{false, true, false};
  request.output_dtype = DType::kBFloat16;
  absl::StatusOr<ScoreResult> result = client_->Score(request);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->probs.has_value());
  EXPECT_EQ(result->probs->dtype(), DType::kBFloat16);
  // bfloat16 keeps 8 bits of mantissa; float16 inputs add their own rounding.
  const std::vector<float> got = result->probs->ToFloats();
  const std::vector<float> expected = golden.Floats("expected_probs");
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], expected[i], 2e-2) << i;
  }
}

// Query and key read from a region and the logits written into the same one
// (apart): the bytes of the same request sent and answered in-band.
TEST(ClientSharedMemoryTest, InputsAndOutputsInOneRegion) {
  ServerOptions options;
  options.extra_args = {"--shm-prefix", "attnscore-test-"};
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<Client> client = MakeClient((*server)->target());
  ASSERT_NE(client, nullptr);
  OwnedRequest owned = MakeRequest(1, 2, 16, 32, 8);
  owned.request.outputs = Outputs{true, true, false};
  absl::StatusOr<ScoreResult> in_band = client->Score(owned.request);
  ASSERT_TRUE(in_band.ok()) << in_band.status();

  absl::StatusOr<SharedMemoryRegion> region = SharedMemoryRegion::Create(
      absl::StrCat("attnscore-test-", getpid(), "-io"), size_t{1} << 20);
  ASSERT_TRUE(region.ok()) << region.status();
  ASSERT_TRUE(client->RegisterSharedMemory(region->Registration("io")).ok());
  const size_t q_bytes = owned.q.size_bytes();
  const size_t k_bytes = owned.k.size_bytes();
  std::memcpy(region->data(), owned.q.data(), q_bytes);
  std::memcpy(region->data() + q_bytes, owned.k.data(), k_bytes);
  ScoreRequest shared = owned.request;
  shared.query.data = nullptr;  // dtype and shape only
  shared.query.size_bytes = 0;
  shared.key.data = nullptr;
  shared.key.size_bytes = 0;
  shared.shared_inputs.query = SharedMemoryRange{"io", 0, q_bytes};
  shared.shared_inputs.key = SharedMemoryRange{"io", q_bytes, k_bytes};
  shared.placements = {{Output::kLogits, {"io", 65536, 65536}}};
  absl::StatusOr<ScoreResult> result = client->Score(shared);
  ASSERT_TRUE(result.ok()) << result.status();

  ASSERT_EQ(result->placed.size(), 1u);
  absl::StatusOr<TensorView> logits = region->View(result->placed[0]);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->size_bytes, in_band->logits->size_bytes());
  EXPECT_EQ(
      std::memcmp(logits->data, in_band->logits->data(), logits->size_bytes),
      0);
  ASSERT_TRUE(result->probs.has_value());
  ASSERT_EQ(result->probs->size_bytes(), in_band->probs->size_bytes());
  EXPECT_EQ(std::memcmp(result->probs->data(), in_band->probs->data(),
                        result->probs->size_bytes()),
            0);
  EXPECT_TRUE(client->UnregisterSharedMemory("io").ok());
}

TEST(ClientDeadlineTest, DeadlineAndCancellation) {
  // A long batching delay keeps requests queued on the server for 3 s unless a
  // batch fills.
  ServerOptions options;
  options.extra_args = {"--max-queue-delay-us", "3000000", "--max-batch-size",
                        "64"};
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  OwnedRequest r = MakeRequest(1, 4, 8, 8, 16);
  // Replies whole (Score) and in chunks (ScoreChunked, which every reply takes
  // with a limit of 1 byte): the call's own status either way.
  for (int64_t chunked_reply_bytes : {int64_t{0}, int64_t{1}}) {
    SCOPED_TRACE(absl::StrCat("chunked_reply_bytes ", chunked_reply_bytes));
    ClientOptions client_options;
    client_options.chunked_reply_bytes = chunked_reply_bytes;
    std::unique_ptr<Client> client =
        MakeClient((*server)->target(), client_options);
    ASSERT_NE(client, nullptr);

    // Deadline: DEADLINE_EXCEEDED, where the server would have answered OK
    // after its batching delay.
    CallOptions call;
    call.timeout = absl::Milliseconds(300);
    absl::StatusOr<ScoreResult> result = client->Score(r.request, call);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded)
        << result.status();

    // Cancellation of a running call: CANCELLED, where the server would have
    // answered OK.
    call = CallOptions();
    call.cancellation = std::make_shared<CancellationToken>();
    std::future<absl::StatusOr<ScoreResult>> future =
        client->ScoreAsync(r.request, call);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    call.cancellation->Cancel();
    ASSERT_EQ(future.wait_for(std::chrono::seconds(10)),
              std::future_status::ready);
    result = future.get();
    EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled)
        << result.status();

    // A token cancelled before the call: fails at once, for every kind of call.
    result = client->Score(r.request, call);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
    EXPECT_EQ(client->ListModels(call).status().code(),
              absl::StatusCode::kCancelled);
    EXPECT_EQ(client->OpenStream({}, call).status().code(),
              absl::StatusCode::kCancelled);

    // A sync call cancelled from another thread.
    auto token = std::make_shared<CancellationToken>();
    call.cancellation = token;
    std::thread canceller([token] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      token->Cancel();
    });
    result = client->Score(r.request, call);
    canceller.join();
    EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled)
        << result.status();

    // The server is still healthy and answers (the batch delay is the only
    // wait).
    call = CallOptions();
    call.timeout = absl::Seconds(20);
    result = client->Score(r.request, call);
    EXPECT_TRUE(result.ok()) << result.status();
  }
}

TEST(ClientRoundRobinTest, SpreadsOverThreeServers) {
  std::vector<std::unique_ptr<ServerProcess>> servers;
  std::vector<std::string> targets;
  for (int i = 0; i < 3; ++i) {
    ServerOptions options;
    options.metrics = true;
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    targets.push_back((*server)->target());
    servers.push_back(*std::move(server));
  }
  OwnedRequest r = MakeRequest(1, 2, 4, 4, 8);
  // A list of targets, and the same list as one "ipv4:" target.
  ClientOptions list;
  list.targets = targets;
  std::unique_ptr<Client> by_list = MakeClient("", list);
  ASSERT_NE(by_list, nullptr);
  EXPECT_EQ(
      by_list->resolved_target(),
      absl::StrCat("ipv4:", targets[0], ",", targets[1], ",", targets[2]));
  std::unique_ptr<Client> by_uri = MakeClient(by_list->resolved_target());
  auto served = [&](std::vector<double>& out) {
    out.clear();
    for (const auto& server : servers) {
      absl::StatusOr<std::string> metrics = server->ScrapeMetrics();
      if (!metrics.ok()) return false;
      out.push_back(
          ServerProcess::SumMetric(*metrics, "attnscore_requests_total"));
    }
    return true;
  };
  std::vector<double> start, now, before, after;
  for (Client* client : {by_list.get(), by_uri.get()}) {
    ASSERT_TRUE(client->WaitForConnected(kWait).ok());
    // round_robin picks among READY subchannels only, and a channel is ready
    // with its first one: warm up until each backend has answered this client
    // (bounded), so the measured calls below see all three.
    ASSERT_TRUE(served(start));
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (true) {
      ASSERT_TRUE(client->Score(r.request).ok());
      ASSERT_TRUE(served(now));
      bool all = true;
      for (size_t i = 0; i < now.size(); ++i) all = all && now[i] > start[i];
      if (all) break;
      ASSERT_LT(absl::Now(), deadline) << "a backend never answered";
    }
    ASSERT_TRUE(served(before));
    for (int i = 0; i < 30; ++i) {
      absl::StatusOr<ScoreResult> result = client->Score(r.request);
      ASSERT_TRUE(result.ok()) << result.status();
    }
    // A server counts a request once it has answered it: allow the last
    // counts a moment to land.
    const absl::Time settle = absl::Now() + absl::Seconds(5);
    double total = 0;
    do {
      ASSERT_TRUE(served(after));
      total = 0;
      for (size_t i = 0; i < servers.size(); ++i) total += after[i] - before[i];
    } while (total < 30 && absl::Now() < settle);
    total = 0;
    for (size_t i = 0; i < servers.size(); ++i) {
      // round_robin over three READY backends: 10 of the 30 calls each.
      EXPECT_GE(after[i] - before[i], 8) << servers[i]->target();
      total += after[i] - before[i];
    }
    EXPECT_EQ(total, 30);
  }
}

TEST(ClientOptionsTest, ValidatesOptionsAndReportsUnreachableServers) {
  ClientOptions options;
  options.target = "";
  EXPECT_EQ(Client::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);

  options.target = "127.0.0.1:1";
  options.bearer_token = "secret";
  absl::Status token = Client::Create(options).status();
  EXPECT_EQ(token.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(token.message(), HasSubstr("allow_insecure_token"));

  options = ClientOptions();
  options.tls.enabled = true;
  options.tls.ca_file = "/nonexistent/ca.pem";
  absl::Status tls = Client::Create(options).status();
  EXPECT_EQ(tls.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tls.message(), HasSubstr("/nonexistent/ca.pem"));

  options = ClientOptions();
  options.keepalive.time = absl::Seconds(1);  // the server would GOAWAY us
  EXPECT_EQ(Client::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);

  options = ClientOptions();
  options.load_balancing = "weighted";
  EXPECT_EQ(Client::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);

  // Nothing listens on a port we just had and released: UNAVAILABLE, quickly,
  // after retries.
  int free_port;
  {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    free_port = (*server)->port();
  }
  std::unique_ptr<Client> client =
      MakeClient(absl::StrCat("127.0.0.1:", free_port));
  OwnedRequest r = MakeRequest(1, 2, 4, 4, 8);
  // UNAVAILABLE, not a wait for the server (which would end in
  // DEADLINE_EXCEEDED, or never).
  absl::StatusOr<ScoreResult> result = client->Score(r.request);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable)
      << result.status();
  EXPECT_FALSE(result.status().message().empty());
  EXPECT_EQ(client->Health().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(client->WaitForConnected(absl::Milliseconds(200)).ok());
}

TEST(ClientOptionsTest, TokenConnectionsAndTlsAgainstAPlaintextServer) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  OwnedRequest r = MakeRequest(1, 2, 4, 4, 8);

  ClientOptions options;
  options.bearer_token = "t0ken";
  options.allow_insecure_token = true;
  options.connections = 3;
  std::unique_ptr<Client> client = MakeClient((*server)->target(), options);
  ASSERT_TRUE(client->WaitForConnected(kWait).ok());
  for (int i = 0; i < 6; ++i) EXPECT_TRUE(client->Score(r.request).ok());

  // TLS to a plaintext port: the handshake fails and the call says so (no hang,
  // no crash).
  options = ClientOptions();
  options.tls.enabled = true;
  options.retry.enabled = false;
  std::unique_ptr<Client> tls = MakeClient((*server)->target(), options);
  CallOptions call;
  call.timeout = absl::Seconds(10);
  absl::StatusOr<ScoreResult> result = tls->Score(r.request, call);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable)
      << result.status();
}

}  // namespace
}  // namespace attnscore::client
