// AttentionScorerService in-process over real gRPC (loopback), with a fake
// scorer: validation and status mapping on the wire, batching of concurrent
// requests and exact splitting of the results, overload, deadlines,
// cancellation, ScoreStream pipelining and errors, a failing batch, drain,
// ListModels, GetServerInfo, warm-up and metrics. No LibTorch at all: the
// models are stand-ins (fake_models.h). The service's time (queue timeouts,
// deadlines) runs on a FakeClock that the tests advance; the only sleeps left
// wait for gRPC's own threads (a cancellation or a shutdown reaching the
// server), which no clock of ours drives.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/sinks/ostream_sink.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/batching/fake_clock.h"
#include "server/observability/logging.h"
#include "server/observability/metrics.h"
#include "server/service/attention_scorer_service.h"
#include "server/service/status_conversion.h"
#include "tests/service/fake_models.h"
#include "tests/service/fake_scorer.h"
#include "tests/service/shm_object.h"
#include "tests/service/test_requests.h"
#include "tests/testing/test_util.h"

namespace attnscore::service {
namespace {

using attnscore::testing::WaitFor;
using testing::AlibiRequest;
using testing::FakeModelInfo;
using testing::FakeModelSet;
using testing::FakeScorer;
using testing::Floats;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr auto kRpcTimeout = std::chrono::seconds(20);

ServiceOptions DefaultOptions() {
  ServiceOptions options;
  options.batching.max_batch_size = 8;
  options.batching.max_queue_delay_us = 0;
  options.batching.max_enqueued_tasks = 64;
  options.batching.num_batch_threads = 1;
  options.max_message_bytes = 64 << 20;
  options.intra_op_threads = 3;
  return options;
}

class ServiceTest : public ::testing::Test {
 protected:
  void Start(const ServiceOptions& options = DefaultOptions(),
             std::shared_ptr<const scoring::ModelSet> models =
                 std::make_shared<const scoring::ModelSet>()) {
    metrics_ = std::make_unique<ServiceMetrics>(registry_);
    models_ = std::make_unique<ModelRegistry>(std::move(models));
    absl::StatusOr<std::unique_ptr<AttentionScorerService>> service =
        AttentionScorerService::Create(options, &scorer_, models_.get(),
                                       metrics_.get(), &clock_);
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(
        static_cast<int>(options.max_message_bytes));
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::AttentionScorer::NewStub(channel_);
  }

  void TearDown() override {
    scorer_.Release();
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now() +
                        std::chrono::seconds(5));
    }
    if (service_ != nullptr) service_->Shutdown();
  }

  grpc::Status Score(const v1::ScoreRequest& request,
                     v1::ScoreResponse* response,
                     std::chrono::milliseconds timeout = kRpcTimeout) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + timeout);
    return stub_->Score(&context, request, response);
  }

  // Score on another thread; the result lands in *status / *response when the
  // thread is joined.
  std::thread ScoreAsync(v1::ScoreRequest request, grpc::Status* status,
                         v1::ScoreResponse* response) {
    return std::thread([this, request = std::move(request), status, response] {
      *status = Score(request, response);
    });
  }

  std::string Metrics() const { return registry_.Serialize(); }

  // Declaration order is destruction order reversed: the service goes before
  // what it uses.
  FakeScorer scorer_;
  // The service's time: queue timeouts and deadlines. Stands still unless a
  // test advances it.
  batching::FakeClock clock_;
  observability::Registry registry_;
  std::unique_ptr<ServiceMetrics> metrics_;
  std::unique_ptr<ModelRegistry> models_;
  std::unique_ptr<AttentionScorerService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AttentionScorer::Stub> stub_;
};

TEST(StatusConversionTest, KeepsCodeAndMessage) {
  const grpc::Status s =
      ToGrpcStatus(absl::ResourceExhaustedError("too big: 5 > 4"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "too big: 5 > 4");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_EQ(ToGrpcStatus(absl::UnavailableError("x")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ToGrpcStatus(absl::DeadlineExceededError("x")).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST_F(ServiceTest, ScoreReturnsTheResultWithTiming) {
  Start();
  v1::ScoreRequest request = AlibiRequest(2, 2, 3, 4, 8, /*tag=*/1.0f);
  request.set_request_id("r1");
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  request.add_outputs(v1::CONTEXT);
  v1::ScoreResponse response;
  grpc::Status status = Score(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.request_id(), "r1");
  EXPECT_THAT(response.logits().shape(), ::testing::ElementsAre(2, 2, 3, 4));
  EXPECT_EQ(response.logits().dtype(), v1::FLOAT32);
  // logits[0,0,0,0] = 1000 * q[0] + k[0] = 1000 * 1 + 0.5.
  EXPECT_FLOAT_EQ(Floats(response.logits())[0], 1000.5f);
  EXPECT_THAT(response.probs().shape(), ::testing::ElementsAre(2, 2, 3, 4));
  EXPECT_THAT(response.context().shape(), ::testing::ElementsAre(2, 2, 3, 8));
  EXPECT_EQ(response.timing().batch_size(), 2);
  EXPECT_GE(response.timing().queue_us(), 0);
  EXPECT_GE(response.timing().compute_us(), 0);
  EXPECT_FALSE(response.has_error());
}

TEST_F(ServiceTest, InvalidRequestsMapToTheirStatusCodes) {
  ServiceOptions options = DefaultOptions();
  options.limits.max_output_bytes = 1000;
  Start(options);
  v1::ScoreRequest request = AlibiRequest();
  request.mutable_query()->mutable_data()->resize(10);
  v1::ScoreResponse response;
  grpc::Status status = Score(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("query.data"));

  request = AlibiRequest();
  request.mutable_relative()->set_model("nope");
  status = Score(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("nope"));

  // [1,2,16,16] float32 logits = 2048 bytes > 1000.
  status = Score(AlibiRequest(1, 2, 16, 16), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("2048"));
  EXPECT_THAT(status.error_message(), HasSubstr("1000"));
  EXPECT_TRUE(scorer_.calls().empty())
      << "invalid requests must never reach the scorer";
}

// A client sending bad requests as fast as it can costs the log at most the
// limiter's burst, then 10 lines a second, each saying how many it left out;
// the metrics count every refusal.
TEST_F(ServiceTest, RefusalsAreLoggedAtABoundedRate) {
  std::ostringstream out;
  ASSERT_TRUE(observability::SetupLogging(
                  observability::LogFormat::kText, "info",
                  std::make_shared<spdlog::sinks::ostream_sink_mt>(out))
                  .ok());
  Start();
  v1::ScoreRequest bad = AlibiRequest();
  bad.mutable_query()->mutable_data()->resize(10);
  v1::ScoreResponse response;
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(Score(bad, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  const auto refusal_lines = [&out] {
    int lines = 0;
    for (absl::string_view line : absl::StrSplit(out.str(), '\n')) {
      lines += absl::StrContains(line, "Score INVALID_ARGUMENT") ? 1 : 0;
    }
    return lines;
  };
  EXPECT_EQ(refusal_lines(), 20);
  clock_.AdvanceMicros(1'000'000);
  ASSERT_EQ(Score(bad, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(refusal_lines(), 21);
  EXPECT_THAT(out.str(), HasSubstr("(80 refusals since the last line left "
                                   "out)"));
  ASSERT_TRUE(
      observability::SetupLogging(observability::LogFormat::kText, "info")
          .ok());
}

TEST_F(ServiceTest, UnparseableRequestIsInvalidArgument) {
  Start();
  grpc::GenericStub generic(channel_);
  grpc::Slice garbage(std::string("\xff\xff\xff\xff garbage"));
  grpc::ByteBuffer request(&garbage, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(
      &context,
      absl::StrCat("/", v1::AttentionScorer::service_full_name(), "/Score"),
      grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
        status = std::move(s);
        done.Notify();
      });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("ScoreRequest"));
}

// Starts `method` with no request message and ends it: cancelled by the
// client, or (cancel false) left until its deadline, 50 ms, passes.
void EndCallBeforeItsRequest(const std::shared_ptr<grpc::Channel>& channel,
                             const std::string& method, bool cancel) {
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       (cancel ? std::chrono::milliseconds(kRpcTimeout)
                               : std::chrono::milliseconds(50)));
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      generic.PrepareCall(&context, method, &cq);
  void* tag = nullptr;
  bool ok = false;
  call->StartCall(&cq);
  ASSERT_TRUE(cq.Next(&tag, &ok));
  if (cancel) context.TryCancel();
  grpc::Status status;
  call->Finish(&status, &status);
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_EQ(status.error_code(), cancel ? grpc::StatusCode::CANCELLED
                                        : grpc::StatusCode::DEADLINE_EXCEEDED);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

// A call that ends before its request has arrived (the client cancels while
// sending, or its deadline passes) reaches the handler with no message: it
// is counted as what it was, never as an unparseable request.
TEST_F(ServiceTest, CallEndedBeforeItsRequestIsNotInvalid) {
  Start();
  // attnscore_requests_total of `method` and `code`.
  const auto count = [this](absl::string_view method, absl::string_view code) {
    const std::string key =
        absl::StrCat("attnscore_requests_total{method=\"", method, "\",code=\"",
                     code, "\",client=\"anonymous\"} ");
    int n = 0;
    for (absl::string_view line : absl::StrSplit(Metrics(), '\n')) {
      if (absl::ConsumePrefix(&line, key)) {
        EXPECT_TRUE(absl::SimpleAtoi(line, &n)) << line;
      }
    }
    return n;
  };
  const auto wait_for = [](const std::function<bool()>& done) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!done() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    return done();
  };
  for (const char* method : {"Score", "ScoreChunked"}) {
    SCOPED_TRACE(method);
    const std::string path = absl::StrCat(
        "/", v1::AttentionScorer::service_full_name(), "/", method);
    EndCallBeforeItsRequest(channel_, path, /*cancel=*/true);
    EXPECT_TRUE(wait_for([&] { return count(method, "CANCELLED") == 1; }));
    // Past its deadline the client cancels too, and the server may see that
    // before its own timer: either code, never INVALID_ARGUMENT.
    EndCallBeforeItsRequest(channel_, path, /*cancel=*/false);
    EXPECT_TRUE(wait_for([&] {
      return count(method, "CANCELLED") + count(method, "DEADLINE_EXCEEDED") ==
             2;
    }));
    EXPECT_EQ(count(method, "INVALID_ARGUMENT"), 0);
  }
  EXPECT_TRUE(scorer_.calls().empty());
}

TEST_F(ServiceTest, ConcurrentRequestsAreBatchedAndSplitExactly) {
  ServiceOptions options = DefaultOptions();
  options.batching.max_batch_size = 4;
  // Long enough that the batch closes because it is full, not because of the
  // timeout.
  options.batching.max_queue_delay_us = 10'000'000;
  Start(options);
  constexpr int kRequests = 4;
  std::vector<grpc::Status> statuses(kRequests);
  std::vector<v1::ScoreResponse> responses(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    v1::ScoreRequest request =
        AlibiRequest(1, 2, 3, 4, 8, /*tag=*/static_cast<float>(i + 1));
    request.set_request_id(absl::StrCat("c", i));
    threads.push_back(ScoreAsync(request, &statuses[i], &responses[i]));
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_EQ(responses[i].request_id(), absl::StrCat("c", i));
    EXPECT_EQ(responses[i].timing().batch_size(), kRequests);
    // Each request gets its own rows of the batch output.
    const std::vector<float> logits = Floats(responses[i].logits());
    ASSERT_EQ(logits.size(), 1u * 2 * 3 * 4);
    EXPECT_FLOAT_EQ(logits[0], 1000.0f * (i + 1) + 0.5f);
  }
  ASSERT_EQ(scorer_.calls().size(), 1u);
  EXPECT_EQ(scorer_.calls()[0].num_items, 4u);
}

// A scorer that computes a batch in passes (Scorer::ItemsPerPass, as the CPU
// path does for large items) gets one call per pass, and each pass's requests
// are answered before the next pass computes.
TEST_F(ServiceTest, BatchComputedInPassesIsAnsweredPassByPass) {
  ServiceOptions options = DefaultOptions();
  options.batching.max_batch_size = 2;
  options.batching.max_queue_delay_us = 10'000'000;  // closes when full
  Start(options);
  scorer_.SetItemsPerPass(1);
  scorer_.HoldFrom(1);  // the first pass runs, the second waits
  grpc::Status s1, s2;
  v1::ScoreResponse r1, r2;
  absl::Notification first_answered;
  std::thread t1([&] {
    s1 = Score(AlibiRequest(1, 2, 3, 4, 8, 1.0f), &r1);
    first_answered.Notify();
  });
  ASSERT_TRUE(WaitFor([&] { return service_->QueueDepth() == 1; }));
  std::thread t2 = ScoreAsync(AlibiRequest(1, 2, 3, 4, 8, 2.0f), &s2, &r2);
  ASSERT_TRUE(scorer_.WaitForCalls(2));
  // The second pass is held: the first request has its answer already.
  EXPECT_TRUE(first_answered.WaitForNotificationWithTimeout(absl::Seconds(10)))
      << "the first pass waited for the second";
  scorer_.Release();
  t1.join();
  t2.join();
  ASSERT_TRUE(s1.ok()) << s1.error_message();
  ASSERT_TRUE(s2.ok()) << s2.error_message();
  EXPECT_FLOAT_EQ(Floats(r1.logits())[0], 1000.5f);
  EXPECT_FLOAT_EQ(Floats(r2.logits())[0], 2000.5f);
  // Both ran in one batch of two, computed one item at a time.
  EXPECT_EQ(r1.timing().batch_size(), 2);
  EXPECT_EQ(r2.timing().batch_size(), 2);
  const std::vector<FakeScorer::Call> calls = scorer_.calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].num_items, 1u);
  EXPECT_EQ(calls[1].num_items, 1u);
}

TEST_F(ServiceTest, DifferentSignaturesAreNotBatchedTogether) {
  ServiceOptions options = DefaultOptions();
  options.batching.max_batch_size = 2;
  options.batching.max_queue_delay_us = 200'000;
  Start(options);
  grpc::Status s1, s2;
  v1::ScoreResponse r1, r2;
  std::thread t1 = ScoreAsync(AlibiRequest(1, 2, 3, 4), &s1, &r1);
  std::thread t2 = ScoreAsync(AlibiRequest(1, 2, 3, 5), &s2, &r2);  // other Lk
  // Both wait, each in its own open batch, until the queue delay passes.
  ASSERT_TRUE(WaitFor([&] { return service_->QueueDepth() == 2; }));
  clock_.AdvanceMicros(200'000);
  t1.join();
  t2.join();
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_EQ(r1.timing().batch_size(), 1);
  EXPECT_EQ(r2.timing().batch_size(), 1);
  EXPECT_EQ(scorer_.calls().size(), 2u);
}

TEST_F(ServiceTest, FullQueueIsUnavailableAtOnce) {
  ServiceOptions options = DefaultOptions();
  options.batching.max_batch_size = 1;
  options.batching.max_enqueued_tasks = 1;
  Start(options);
  scorer_.Hold();
  grpc::Status s1, s2;
  v1::ScoreResponse r1, r2;
  std::thread t1 = ScoreAsync(AlibiRequest(), &s1, &r1);
  ASSERT_TRUE(scorer_.WaitForCalls(1));  // the worker is busy with the first
  std::thread t2 = ScoreAsync(AlibiRequest(), &s2, &r2);
  ASSERT_TRUE(WaitFor(
      [&] { return service_->QueueDepth() == 1; }));  // the second waits
  // Answered while the scorer is still held: a call that waited for room
  // would not return before the Release below.
  v1::ScoreResponse r3;
  grpc::Status s3 = Score(AlibiRequest(), &r3);
  EXPECT_EQ(s3.error_code(), grpc::StatusCode::UNAVAILABLE)
      << s3.error_message();
  scorer_.Release();
  t1.join();
  t2.join();
  EXPECT_TRUE(s1.ok()) << s1.error_message();
  EXPECT_TRUE(s2.ok()) << s2.error_message();
  EXPECT_THAT(
      Metrics(),
      HasSubstr(
          "attnscore_requests_total{method=\"Score\",code=\"UNAVAILABLE\","
          "client=\"anonymous\"} 1"));
}

TEST_F(ServiceTest, ExpiredRequestIsDroppedBeforeCompute) {
  Start();
  scorer_.Hold();
  grpc::Status s1;
  v1::ScoreResponse r1;
  std::thread t1 = ScoreAsync(AlibiRequest(), &s1, &r1);
  ASSERT_TRUE(scorer_.WaitForCalls(1));
  v1::ScoreResponse r2;
  grpc::Status s2 = Score(AlibiRequest(), &r2, std::chrono::milliseconds(200));
  EXPECT_EQ(s2.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server's deadline is the client's 200 ms from the request's receipt, on
  // the service's clock, a little later than the client's (gRPC rounds the
  // timeout up): 300 ms on that clock is well past it.
  clock_.AdvanceMicros(300'000);
  scorer_.Release();
  t1.join();
  EXPECT_TRUE(s1.ok());
  ASSERT_TRUE(WaitFor([&] {
    return Metrics().find(
               "code=\"DEADLINE_EXCEEDED\",client=\"anonymous\"} 1") !=
           std::string::npos;
  })) << Metrics();
  EXPECT_EQ(scorer_.calls().size(), 1u) << "the expired request was computed";
}

TEST_F(ServiceTest, CancelledRequestIsDroppedBeforeCompute) {
  Start();
  scorer_.Hold();
  grpc::Status s1;
  v1::ScoreResponse r1;
  std::thread t1 = ScoreAsync(AlibiRequest(), &s1, &r1);
  ASSERT_TRUE(scorer_.WaitForCalls(1));
  grpc::ClientContext context;
  grpc::Status s2;
  v1::ScoreResponse r2;
  std::thread t2([&] { s2 = stub_->Score(&context, AlibiRequest(), &r2); });
  ASSERT_TRUE(WaitFor([&] { return service_->QueueDepth() == 1; }));
  context.TryCancel();
  t2.join();
  EXPECT_EQ(s2.error_code(), grpc::StatusCode::CANCELLED);
  // Let the cancellation reach the server before the worker looks at the queued
  // request.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  scorer_.Release();
  t1.join();
  EXPECT_TRUE(s1.ok());
  ASSERT_TRUE(WaitFor([&] {
    return Metrics().find(
               "method=\"Score\",code=\"CANCELLED\",client=\"anonymous\"} 1") !=
           std::string::npos;
  })) << Metrics();
  EXPECT_EQ(scorer_.calls().size(), 1u) << "the cancelled request was computed";
}

TEST_F(ServiceTest, FailedBatchIsRetriedOneByOne) {
  ServiceOptions options = DefaultOptions();
  options.batching.max_batch_size = 2;
  options.batching.max_queue_delay_us = 10'000'000;
  Start(options);
  grpc::Status s1, s2;
  v1::ScoreResponse r1, r2;
  std::thread t1 =
      ScoreAsync(AlibiRequest(1, 2, 3, 4, 8, FakeScorer::kPoison), &s1, &r1);
  std::thread t2 = ScoreAsync(AlibiRequest(1, 2, 3, 4, 8, 2.0f), &s2, &r2);
  t1.join();
  t2.join();
  EXPECT_EQ(s1.error_code(), grpc::StatusCode::INTERNAL);
  ASSERT_TRUE(s2.ok()) << s2.error_message();
  EXPECT_EQ(r2.timing().batch_size(), 1);
  EXPECT_FLOAT_EQ(Floats(r2.logits())[0], 2000.5f);
  EXPECT_EQ(scorer_.calls().size(), 3u);  // the pair, then each alone
}

TEST_F(ServiceTest, StreamIsPipelinedAndSurvivesABadRequest) {
  Start();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  auto stream = stub_->ScoreStream(&context);
  for (int i = 0; i < 5; ++i) {
    v1::ScoreRequest request =
        AlibiRequest(1, 2, 3, 4, 8, static_cast<float>(i));
    request.set_request_id(absl::StrCat("s", i));
    if (i == 2) request.mutable_key()->mutable_data()->resize(3);  // bad
    ASSERT_TRUE(stream->Write(request));
  }
  ASSERT_TRUE(stream->WritesDone());
  std::set<std::string> seen;
  v1::ScoreResponse response;
  while (stream->Read(&response)) {
    seen.insert(response.request_id());
    if (response.request_id() == "s2") {
      EXPECT_EQ(response.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(response.error().message(), HasSubstr("key.data"));
      EXPECT_FALSE(response.has_logits());
    } else {
      EXPECT_FALSE(response.has_error()) << response.error().message();
      const int i = response.request_id()[1] - '0';
      EXPECT_FLOAT_EQ(Floats(response.logits())[0], 1000.0f * i + 0.5f);
    }
  }
  EXPECT_EQ(seen, (std::set<std::string>{"s0", "s1", "s2", "s3", "s4"}));
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(
      Metrics(),
      HasSubstr("attnscore_requests_total{method=\"ScoreStream\",code=\"OK\","
                "client=\"anonymous\"} 4"));
}

TEST_F(ServiceTest, StreamFlowControlAnswersEveryRequest) {
  ServiceOptions options = DefaultOptions();
  options.max_stream_backlog =
      2;  // reading pauses with two requests unanswered or unsent
  Start(options);
  constexpr int kRequests = 40;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  auto stream = stub_->ScoreStream(&context);
  std::thread writer([&] {
    for (int i = 0; i < kRequests; ++i) {
      v1::ScoreRequest request = AlibiRequest();
      request.set_request_id(absl::StrCat(i));
      if (!stream->Write(request)) return;
    }
    stream->WritesDone();
  });
  int received = 0;
  v1::ScoreResponse response;
  while (stream->Read(&response)) {
    EXPECT_FALSE(response.has_error());
    ++received;
  }
  writer.join();
  EXPECT_EQ(received, kRequests);
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServiceTest, CancelledStreamWithWorkInFlightCleansUp) {
  Start();
  scorer_.Hold();
  {
    grpc::ClientContext context;
    auto stream = stub_->ScoreStream(&context);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream->Write(AlibiRequest()));
    ASSERT_TRUE(scorer_.WaitForCalls(1));
    context.TryCancel();
    v1::ScoreResponse response;
    while (stream->Read(&response)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  scorer_.Release();
  // Every request of the stream is answered (the computing one, then the two
  // dropped ones).
  ASSERT_TRUE(WaitFor([&] {
    return Metrics().find("attnscore_in_flight_requests 0") !=
           std::string::npos;
  })) << Metrics();
}

TEST_F(ServiceTest, StreamsCancelledWhileAnsweringNeverBreakTheServer) {
  // Cancellation races the workers' writes: every interleaving must leave the
  // server healthy (run under ASan to see the lifetimes).
  Start();
  for (int round = 0; round < 20; ++round) {
    grpc::ClientContext context;
    auto stream = stub_->ScoreStream(&context);
    for (int i = 0; i < 20; ++i) {
      if (!stream->Write(AlibiRequest())) break;
    }
    v1::ScoreResponse response;
    for (int i = 0; i < round % 5 && stream->Read(&response); ++i) {
    }
    context.TryCancel();
    while (stream->Read(&response)) {
    }
    stream->Finish();
  }
  v1::ScoreResponse response;
  EXPECT_TRUE(Score(AlibiRequest(), &response).ok());
  ASSERT_TRUE(WaitFor([&] {
    return Metrics().find("attnscore_in_flight_requests 0") !=
           std::string::npos;
  })) << Metrics();
}

TEST_F(ServiceTest, ShutdownFinishesQueuedAndInFlightRequests) {
  ServiceOptions options = DefaultOptions();
  options.batching.max_batch_size = 1;
  Start(options);
  scorer_.Hold();
  grpc::Status s1, s2;
  v1::ScoreResponse r1, r2;
  std::thread t1 = ScoreAsync(AlibiRequest(), &s1, &r1);
  ASSERT_TRUE(scorer_.WaitForCalls(1));
  std::thread t2 = ScoreAsync(AlibiRequest(), &s2, &r2);
  ASSERT_TRUE(WaitFor([&] { return service_->QueueDepth() == 1; }));
  std::thread shutdown([&] {
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(10));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  scorer_.Release();
  shutdown.join();
  service_->Shutdown();
  t1.join();
  t2.join();
  EXPECT_TRUE(s1.ok()) << s1.error_message();
  EXPECT_TRUE(s2.ok()) << s2.error_message();
}

TEST_F(ServiceTest, WarmUpComputesOnceOnEveryBatchWorker) {
  ServiceOptions options = DefaultOptions();
  options.batching.num_batch_threads = 3;
  Start(options);
  EXPECT_TRUE(service_->WarmUp().ok());
  const std::vector<FakeScorer::Call> calls = scorer_.calls();
  ASSERT_EQ(calls.size(), 3u);
  std::set<std::thread::id> threads;
  for (const FakeScorer::Call& call : calls) {
    EXPECT_FALSE(call.relative);
    EXPECT_NE(call.thread, std::this_thread::get_id())
        << "on the workers, where requests compute";
    threads.insert(call.thread);
  }
  EXPECT_EQ(threads.size(), 3u);
  // Requests are served afterwards as before.
  grpc::ClientContext context;
  v1::ScoreResponse response;
  EXPECT_TRUE(stub_->Score(&context, AlibiRequest(), &response).ok());
}

TEST_F(ServiceTest, WarmUpAfterShutdownFailsAndLeavesTheServiceNotReady) {
  Start();
  service_->Shutdown();
  const absl::Status status = service_->WarmUp();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_TRUE(scorer_.calls().empty());
  EXPECT_FALSE(service_->ready());
}

TEST_F(ServiceTest, GetServerInfoReportsLimitsAndBatching) {
  ServiceOptions options = DefaultOptions();
  options.limits.max_heads = 12;
  options.limits.max_output_bytes = 12345;
  options.batching.max_batch_size = 7;
  options.batching.max_queue_delay_us = 321;
  Start(options);
  grpc::ClientContext context;
  v1::ServerInfo info;
  ASSERT_TRUE(
      stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
  EXPECT_FALSE(info.version().empty());
  EXPECT_EQ(info.device(), "fake");
  EXPECT_EQ(info.intra_op_threads(), 3);
  EXPECT_EQ(info.limits().max_heads(), 12);
  EXPECT_EQ(info.limits().max_output_bytes(), 12345);
  EXPECT_EQ(info.limits().max_message_bytes(), 64 << 20);
  EXPECT_EQ(info.batching().max_batch_size(), 7);
  EXPECT_EQ(info.batching().max_queue_delay_us(), 321);
  EXPECT_EQ(info.batching().max_queue(), 64);
  EXPECT_EQ(info.batching().batch_workers(), 1);
  EXPECT_EQ(info.limits().shm_prefix(), "");
  EXPECT_EQ(info.limits().max_shm_regions(), 64);
}

// ScoreChunked sends what Score sends, in order, in chunks of whole rows of
// at most reply_chunk_bytes (at least one row), the request_id and timing on
// the last chunk alone.
TEST_F(ServiceTest, ScoreChunkedSendsTheScoreReplyInWholeRows) {
  ServiceOptions options = DefaultOptions();
  options.reply_chunk_bytes = 40;  // two rows of 4 floats; one row of 8
  Start(options);
  v1::ScoreRequest request = AlibiRequest(2, 2, 3, 4, 8, /*tag=*/1.0f);
  request.set_request_id("chunky");
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  request.add_outputs(v1::CONTEXT);
  v1::ScoreResponse whole;
  ASSERT_TRUE(Score(request, &whole).ok());

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  std::unique_ptr<grpc::ClientReader<v1::ScoreChunk>> reader =
      stub_->ScoreChunked(&context, request);
  std::vector<v1::ScoreChunk> chunks;
  for (v1::ScoreChunk chunk; reader->Read(&chunk);) chunks.push_back(chunk);
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();

  const struct {
    v1::Output output;
    const v1::Tensor& tensor;
    size_t max_bytes;  // whole rows within 40 bytes, or one row
  } outputs[] = {{v1::LOGITS, whole.logits(), 32},
                 {v1::PROBS, whole.probs(), 32},
                 {v1::CONTEXT, whole.context(), 32}};
  size_t next = 0;
  for (const auto& want : outputs) {
    SCOPED_TRACE(v1::Output_Name(want.output));
    const size_t row_bytes =
        static_cast<size_t>(want.tensor.shape().rbegin()[0]) * sizeof(float);
    std::string bytes;
    while (next < chunks.size() && chunks[next].output() == want.output) {
      const v1::ScoreChunk& chunk = chunks[next++];
      EXPECT_EQ(chunk.dtype(), want.tensor.dtype());
      EXPECT_THAT(chunk.shape(),
                  ::testing::ElementsAreArray(want.tensor.shape()));
      EXPECT_EQ(chunk.offset(), bytes.size());
      EXPECT_EQ(chunk.data().size() % row_bytes, 0u);
      EXPECT_LE(chunk.data().size(), std::max(want.max_bytes, row_bytes));
      EXPECT_FALSE(chunk.has_shared_memory());
      bytes += chunk.data();
    }
    EXPECT_EQ(bytes, want.tensor.data());
  }
  EXPECT_EQ(next, chunks.size()) << "chunks of no output, or out of order";
  ASSERT_GE(chunks.size(), 9u);  // 96-byte logits in 32-byte chunks, ...
  for (size_t i = 0; i + 1 < chunks.size(); ++i) {
    EXPECT_TRUE(chunks[i].request_id().empty());
    EXPECT_FALSE(chunks[i].has_timing());
  }
  EXPECT_EQ(chunks.back().request_id(), "chunky");
  EXPECT_EQ(chunks.back().timing().batch_size(), 2);
  EXPECT_THAT(Metrics(),
              HasSubstr("attnscore_requests_total{method=\"ScoreChunked\","
                        "code=\"OK\",client=\"anonymous\"} 1"));

  grpc::ClientContext info_context;
  v1::ServerInfo info;
  ASSERT_TRUE(
      stub_->GetServerInfo(&info_context, v1::GetServerInfoRequest(), &info)
          .ok());
  EXPECT_EQ(info.limits().reply_chunk_bytes(), 40);
}

// A request that fails is the call's status, as for Score, with no chunk.
TEST_F(ServiceTest, ScoreChunkedFailuresAreTheCallsStatus) {
  ServiceOptions options = DefaultOptions();
  options.limits.max_output_bytes = 64;
  Start(options);
  v1::ScoreRequest request = AlibiRequest(2, 2, 3, 4, 8, /*tag=*/1.0f);
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::ScoreChunk>> reader =
      stub_->ScoreChunked(&context, request);
  v1::ScoreChunk chunk;
  EXPECT_FALSE(reader->Read(&chunk));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("64"));
  EXPECT_THAT(Metrics(),
              HasSubstr("attnscore_requests_total{method=\"ScoreChunked\","
                        "code=\"RESOURCE_EXHAUSTED\""));
}

// Waits (at most 10 s) until no request holds in-flight budget.
void ExpectInflightDrains(const AttentionScorerService& service) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (service.InflightBytes() != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(service.InflightBytes(), 0);
}

// Reads one chunk of `reader`'s reply, cancels the call and reads to its
// end, which is CANCELLED.
void CancelAfterTheFirstChunk(grpc::ClientContext& context,
                              grpc::ClientReader<v1::ScoreChunk>& reader) {
  v1::ScoreChunk chunk;
  ASSERT_TRUE(reader.Read(&chunk));
  context.TryCancel();
  while (reader.Read(&chunk)) {
  }
  EXPECT_EQ(reader.Finish().error_code(), grpc::StatusCode::CANCELLED);
}

// A client that goes away after its first chunk: the call ends, and the
// reply's share of the in-flight budget comes back.
TEST_F(ServiceTest, ScoreChunkedCancelledMidReplyCleansUp) {
  ServiceOptions options = DefaultOptions();
  options.reply_chunk_bytes = 16;
  Start(options);
  v1::ScoreRequest request = AlibiRequest(4, 4, 32, 32, 8, /*tag=*/1.0f);
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::ScoreChunk>> reader =
      stub_->ScoreChunked(&context, request);
  ASSERT_NO_FATAL_FAILURE(CancelAfterTheFirstChunk(context, *reader));
  ExpectInflightDrains(*service_);
}

// Reads a ScoreChunked reply's chunks and status.
struct ChunkedReply {
  std::vector<v1::ScoreChunk> chunks;
  grpc::Status status;
  // One output's bytes, in order.
  std::string Bytes(v1::Output output) const {
    std::string bytes;
    for (const v1::ScoreChunk& chunk : chunks) {
      if (chunk.output() == output) bytes += chunk.data();
    }
    return bytes;
  }
};

// Reads the first `n` chunks of `reader`'s reply into `reply`.
void ReadChunks(grpc::ClientReader<v1::ScoreChunk>& reader, int n,
                ChunkedReply& reply) {
  for (int i = 0; i < n; ++i) {
    v1::ScoreChunk chunk;
    ASSERT_TRUE(reader.Read(&chunk)) << "chunk " << i;
    reply.chunks.push_back(chunk);
  }
}

// Reads the rest of `reader`'s reply into `reply` on a thread while `scorer`
// is held; returns whether a chunk arrived within 200 ms, then releases the
// scorer and reads to the end.
bool ChunkArrivesWhileHeld(grpc::ClientReader<v1::ScoreChunk>& reader,
                           FakeScorer& scorer, ChunkedReply& reply) {
  std::atomic<bool> arrived{false};
  std::thread reading([&] {
    for (v1::ScoreChunk chunk; reader.Read(&chunk);) {
      arrived = true;
      reply.chunks.push_back(chunk);
    }
  });
  absl::SleepFor(absl::Milliseconds(200));
  const bool early = arrived.load();
  scorer.Release();
  reading.join();
  reply.status = reader.Finish();
  return early;
}

// A request scored alone streams its reply while it computes: the chunks of
// the rows the scorer has told final arrive while it is held, no chunk of a
// later row does, and once it ends the reply is Score's, the timing on its
// last chunk.
TEST_F(ServiceTest, ScoreChunkedSendsFinalRowsWhileComputing) {
  ServiceOptions options = DefaultOptions();
  options.reply_chunk_bytes = 32;  // two rows of 4 floats per chunk
  Start(options);
  v1::ScoreRequest request = AlibiRequest(1, 2, 5, 4, 8, /*tag=*/1.0f);
  request.set_request_id("streamed");
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  v1::ScoreResponse whole;
  ASSERT_TRUE(Score(request, &whole).ok());

  // 10 rows per output, 2 per chunk: rows 0-3 make the first two chunks.
  scorer_.ObserveRows(4);
  scorer_.HoldFrom(1);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  std::unique_ptr<grpc::ClientReader<v1::ScoreChunk>> reader =
      stub_->ScoreChunked(&context, request);
  ChunkedReply reply;
  ASSERT_NO_FATAL_FAILURE(ReadChunks(*reader, 2, reply)) << "of told rows";
  ASSERT_TRUE(scorer_.WaitForCalls(2));
  EXPECT_EQ(reply.chunks[0].offset(), 0u);
  EXPECT_EQ(reply.chunks[1].offset(), 32u);
  EXPECT_FALSE(reply.chunks[1].has_timing());
  // Nothing of row 4 on while the scorer is held.
  EXPECT_FALSE(ChunkArrivesWhileHeld(*reader, scorer_, reply))
      << "a chunk of rows still computing was sent";
  ASSERT_TRUE(reply.status.ok()) << reply.status.error_message();
  ASSERT_EQ(reply.chunks.size(), 10u);  // 5 of logits, 5 of probs
  EXPECT_EQ(reply.Bytes(v1::LOGITS), whole.logits().data());
  EXPECT_EQ(reply.Bytes(v1::PROBS), whole.probs().data());
  EXPECT_EQ(reply.chunks.back().request_id(), "streamed");
  EXPECT_TRUE(reply.chunks.back().has_timing());
  for (size_t i = 0; i + 1 < reply.chunks.size(); ++i) {
    EXPECT_FALSE(reply.chunks[i].has_timing()) << i;
  }
}

// Every row told before the compute ends: every chunk but the last goes, the
// last (with the timing) waits for the answer.
TEST_F(ServiceTest, ScoreChunkedLastChunkWaitsForTheAnswer) {
  ServiceOptions options = DefaultOptions();
  options.reply_chunk_bytes = 16;  // one row of 4 floats per chunk
  Start(options);
  v1::ScoreRequest request = AlibiRequest(1, 2, 3, 4, 8, /*tag=*/1.0f);
  v1::ScoreResponse whole;
  ASSERT_TRUE(Score(request, &whole).ok());
  scorer_.ObserveRows(6);  // all of them
  scorer_.HoldFrom(1);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  std::unique_ptr<grpc::ClientReader<v1::ScoreChunk>> reader =
      stub_->ScoreChunked(&context, request);
  ChunkedReply reply;
  ASSERT_NO_FATAL_FAILURE(ReadChunks(*reader, 5, reply));
  for (const v1::ScoreChunk& chunk : reply.chunks) {
    EXPECT_FALSE(chunk.has_timing());
  }
  EXPECT_FALSE(ChunkArrivesWhileHeld(*reader, scorer_, reply))
      << "the last chunk went before the answer";
  ASSERT_TRUE(reply.status.ok()) << reply.status.error_message();
  ASSERT_EQ(reply.chunks.size(), 6u);
  EXPECT_TRUE(reply.chunks.back().has_timing());
  EXPECT_EQ(reply.Bytes(v1::LOGITS), whole.logits().data());
}

// A request that fails after some of its reply was streamed ends with the
// failure as the call's status (the client drops the chunks), and its share
// of the in-flight budget comes back.
TEST_F(ServiceTest, ScoreChunkedStreamedThenFailedEndsWithTheFailure) {
  ServiceOptions options = DefaultOptions();
  options.reply_chunk_bytes = 16;
  Start(options);
  v1::ScoreRequest request =
      AlibiRequest(1, 2, 5, 4, 8, /*tag=*/FakeScorer::kPoison);
  scorer_.ObserveRows(6);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  std::unique_ptr<grpc::ClientReader<v1::ScoreChunk>> reader =
      stub_->ScoreChunked(&context, request);
  ChunkedReply reply;
  for (v1::ScoreChunk chunk; reader->Read(&chunk);) {
    reply.chunks.push_back(chunk);
  }
  reply.status = reader->Finish();
  EXPECT_EQ(reply.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(reply.status.error_message(), HasSubstr("poisoned"));
  EXPECT_LE(reply.chunks.size(), 6u);  // at most the told rows, one per chunk
  for (const v1::ScoreChunk& chunk : reply.chunks) {
    EXPECT_FALSE(chunk.has_timing());
  }
  ExpectInflightDrains(*service_);
}

// A client that goes away while its reply streams: the compute stops at its
// next check, the call ends CANCELLED, and the budget comes back.
TEST_F(ServiceTest, ScoreChunkedCancelledWhileStreamingCleansUp) {
  ServiceOptions options = DefaultOptions();
  options.reply_chunk_bytes = 16;
  Start(options);
  v1::ScoreRequest request = AlibiRequest(1, 2, 5, 4, 8, /*tag=*/1.0f);
  scorer_.ObserveRows(3);
  scorer_.Hold();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  std::unique_ptr<grpc::ClientReader<v1::ScoreChunk>> reader =
      stub_->ScoreChunked(&context, request);
  ASSERT_NO_FATAL_FAILURE(CancelAfterTheFirstChunk(context, *reader));
  EXPECT_TRUE(scorer_.WaitForStopped());
  ExpectInflightDrains(*service_);
}

TEST(ServiceOptionsTest, ReplyChunkBytesMustBePositive) {
  ServiceOptions options = DefaultOptions();
  options.reply_chunk_bytes = 0;
  FakeScorer scorer;
  observability::Registry registry;
  ServiceMetrics metrics(registry);
  ModelRegistry models(std::make_shared<const scoring::ModelSet>());
  absl::StatusOr<std::unique_ptr<AttentionScorerService>> service =
      AttentionScorerService::Create(options, &scorer, &models, &metrics);
  ASSERT_FALSE(service.ok());
  EXPECT_EQ(service.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(service.status().message(), HasSubstr("reply_chunk_bytes"));
}

TEST_F(ServiceTest, ListModelsAndRelativeRequests) {
  // What LoadModelDir reports for a tiny.safetensors with key_pos_embeddings
  // [16, 2, 8]: H=2, D=8, P=8.
  Start(DefaultOptions(), FakeModelSet({FakeModelInfo(
                              "tiny", "/models/tiny.safetensors", 2, 8, 8)}));

  grpc::ClientContext context;
  v1::ListModelsResponse list;
  ASSERT_TRUE(stub_->ListModels(&context, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).name(), "tiny");
  EXPECT_EQ(list.models(0).heads(), 2);
  EXPECT_EQ(list.models(0).head_dim(), 8);
  EXPECT_EQ(list.models(0).max_relative_positions(), 8);
  // The file name only, never the server's path.
  EXPECT_EQ(list.models(0).source(), "tiny.safetensors");

  v1::ScoreRequest request = AlibiRequest();
  request.mutable_relative()->set_model("tiny");
  v1::ScoreResponse response;
  grpc::Status status = Score(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(scorer_.calls().size(), 1u);
  EXPECT_TRUE(scorer_.calls()[0].relative);
}

TEST_F(ServiceTest, MetricsCountRequestsBytesAndBatches) {
  Start();
  v1::ScoreResponse response;
  ASSERT_TRUE(Score(AlibiRequest(), &response).ok());
  const std::string metrics = Metrics();
  EXPECT_THAT(metrics,
              HasSubstr("attnscore_requests_total{method=\"Score\",code=\"OK\","
                        "client=\"anonymous\"} 1"));
  EXPECT_THAT(
      metrics,
      HasSubstr(
          "attnscore_request_duration_seconds_count{method=\"Score\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("attnscore_queue_duration_seconds_count 1"));
  EXPECT_THAT(metrics, HasSubstr("attnscore_compute_duration_seconds_count 1"));
  EXPECT_THAT(metrics, HasSubstr("attnscore_batch_size_count 1"));
  EXPECT_THAT(metrics, HasSubstr("attnscore_compute_stopped_total 0\n"));
  EXPECT_THAT(metrics, HasSubstr("attnscore_queue_depth 0"));
  EXPECT_THAT(metrics, HasSubstr("attnscore_in_flight_requests 0"));
  for (const char* spin : {"attnscore_batch_worker_spins_total ",
                           "attnscore_batch_worker_spin_hits_total ",
                           "attnscore_batch_worker_spin_seconds_total "}) {
    EXPECT_THAT(metrics, HasSubstr(spin));
  }
  EXPECT_THAT(metrics,
              HasSubstr("attnscore_request_bytes_total{method=\"Score\"}"));
  EXPECT_THAT(metrics,
              HasSubstr("attnscore_response_bytes_total{method=\"Score\"}"));
}

// --- Limits, budgets and robustness (issue 9) ---

// Identity from the "x-client" metadata; none is UNAUTHENTICATED.
absl::StatusOr<std::string> HeaderIdentity(
    const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("x-client");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("x-client: required");
  }
  return std::string(it->second.data(), it->second.size());
}

// A Score call with raw request bytes, as a client that sends anything would.
grpc::Status RawScore(const std::shared_ptr<grpc::Channel>& channel,
                      const std::string& bytes) {
  grpc::GenericStub generic(channel);
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(
      &context,
      absl::StrCat("/", v1::AttentionScorer::service_full_name(), "/Score"),
      grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
        status = std::move(s);
        done.Notify();
      });
  if (!done.WaitForNotificationWithTimeout(absl::Seconds(20))) {
    context.TryCancel();
    done.WaitForNotification();
  }
  return status;
}

// The lease a request takes once validated: its bytes plus what it holds at
// its predicted peak.
int64_t LeaseOf(const v1::ScoreRequest& request) {
  absl::StatusOr<ValidatedRequest> validated =
      ValidateRequest(request, RequestLimits(), scoring::ModelSet());
  EXPECT_TRUE(validated.ok()) << validated.status();
  return static_cast<int64_t>(request.ByteSizeLong()) +
         validated->in_flight_bytes;
}

TEST_F(ServiceTest, FullBudgetRefusesBeforeParsingAndEmptiesAfterReplies) {
  const v1::ScoreRequest first = AlibiRequest(1, 2, 16, 16, 8);
  ServiceOptions options = DefaultOptions();
  const int64_t kBudget = 4 * LeaseOf(first);
  options.max_inflight_bytes = kBudget;
  options.max_inflight_per_client = 0;
  Start(options);
  scorer_.Hold();
  grpc::Status s1;
  v1::ScoreResponse r1;
  std::thread t1 = ScoreAsync(first, &s1, &r1);
  if (!scorer_.WaitForCalls(1)) {
    scorer_.Release();
    t1.join();
    FAIL() << s1.error_message();
  }
  const int64_t held = service_->InflightBytes();
  EXPECT_EQ(held, LeaseOf(first));
  EXPECT_THAT(Metrics(),
              HasSubstr(absl::StrCat("attnscore_inflight_bytes ", held)));
  // Garbage that would be INVALID_ARGUMENT once parsed: refused for its size
  // alone, so it was never parsed.
  const grpc::Status busy =
      RawScore(channel_, std::string(kBudget - held + 1, '\xff'));
  EXPECT_EQ(busy.error_code(), grpc::StatusCode::UNAVAILABLE)
      << busy.error_message();
  EXPECT_THAT(busy.error_message(), HasSubstr("--max-inflight-bytes"));
  // More than the whole budget can never fit.
  const grpc::Status never = RawScore(channel_, std::string(kBudget + 1, 'x'));
  EXPECT_EQ(never.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << never.error_message();
  scorer_.Release();
  t1.join();
  EXPECT_TRUE(s1.ok()) << s1.error_message();
  // Unary and stream replies give their bytes back once sent.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  auto stream = stub_->ScoreStream(&context);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream->Write(AlibiRequest()));
  stream->WritesDone();
  v1::ScoreResponse response;
  int replies = 0;
  while (stream->Read(&response)) ++replies;
  EXPECT_EQ(replies, 3);
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_TRUE(WaitFor([&] { return service_->InflightBytes() == 0; }))
      << service_->InflightBytes();
  EXPECT_THAT(Metrics(), HasSubstr("attnscore_inflight_bytes 0"));
}

TEST_F(ServiceTest, PredictedPeakOverTheBudgetIsRefusedAfterValidation) {
  ServiceOptions options = DefaultOptions();
  const v1::ScoreRequest request = AlibiRequest(1, 2, 64, 64, 8);
  // The wire bytes fit, the predicted peak does not.
  options.max_inflight_bytes =
      static_cast<int64_t>(request.ByteSizeLong()) + 100;
  options.max_inflight_per_client = 0;
  Start(options);
  v1::ScoreResponse response;
  const grpc::Status status = Score(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("--max-inflight-bytes"));
  EXPECT_TRUE(scorer_.calls().empty());
  // The refused request's own bytes are held until gRPC is done with the call.
  EXPECT_TRUE(WaitFor([&] { return service_->InflightBytes() == 0; }));
}

TEST_F(ServiceTest, PerClientCapLimitsOneIdentityOnly) {
  const v1::ScoreRequest request = AlibiRequest(1, 2, 16, 16, 8);
  const int64_t lease = LeaseOf(request);
  ServiceOptions options = DefaultOptions();
  options.authenticate = HeaderIdentity;
  options.max_inflight_bytes = 64 << 20;
  // One such request fits, a second one's bytes do not.
  options.max_inflight_per_client =
      lease + static_cast<int64_t>(request.ByteSizeLong()) / 2;
  options.batching.max_batch_size = 1;
  Start(options);
  scorer_.Hold();
  auto score_as = [&](const std::string& client, grpc::Status* status) {
    return std::thread([this, client, status, request] {
      grpc::ClientContext context;
      context.AddMetadata("x-client", client);
      context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
      v1::ScoreResponse response;
      *status = stub_->Score(&context, request, &response);
    });
  };
  grpc::Status alice1, alice2, bob;
  std::thread t1 = score_as("alice", &alice1);
  ASSERT_TRUE(scorer_.WaitForCalls(1));
  std::thread t2 = score_as("alice", &alice2);
  t2.join();
  EXPECT_EQ(alice2.error_code(), grpc::StatusCode::UNAVAILABLE)
      << alice2.error_message();
  EXPECT_THAT(alice2.error_message(), HasSubstr("--max-inflight-per-client"));
  std::thread t3 = score_as("bob", &bob);
  ASSERT_TRUE(WaitFor([&] { return service_->QueueDepth() == 1; }));
  scorer_.Release();
  t1.join();
  t3.join();
  EXPECT_TRUE(alice1.ok()) << alice1.error_message();
  EXPECT_TRUE(bob.ok()) << bob.error_message();
  const std::string metrics = Metrics();
  EXPECT_THAT(metrics,
              HasSubstr("{method=\"Score\",code=\"OK\",client=\"alice\"} 1"));
  EXPECT_THAT(metrics,
              HasSubstr("{method=\"Score\",code=\"OK\",client=\"bob\"} 1"));
  EXPECT_THAT(
      metrics,
      HasSubstr("{method=\"Score\",code=\"UNAVAILABLE\",client=\"alice\"} 1"));
}

// Options whose budget one request of `request`'s size fills to two thirds:
// more than half of it.
ServiceOptions TwoThirdsBudget(const v1::ScoreRequest& request) {
  ServiceOptions options = DefaultOptions();
  const int64_t lease = LeaseOf(request);
  options.max_inflight_bytes = lease + lease / 2;
  options.shared_memory.max_regions = 8;
  return options;
}

TEST_F(ServiceTest, AnonymousCallersHaveNoPerClientCapByDefault) {
  // Every caller is "anonymous": one identity's default share (half) would
  // be all the server ever used.
  const v1::ScoreRequest request = AlibiRequest(1, 2, 16, 16, 8);
  Start(TwoThirdsBudget(request));
  EXPECT_EQ(service_->options().max_inflight_per_client, 0);
  EXPECT_EQ(service_->options().shared_memory.PerClientCap(), 0);
  v1::ScoreResponse response;
  const grpc::Status status = Score(request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(ServiceTest, IdentifiedCallersGetHalfOfTheBudgetByDefault) {
  const v1::ScoreRequest request = AlibiRequest(1, 2, 16, 16, 8);
  ServiceOptions options = TwoThirdsBudget(request);
  options.authenticate = HeaderIdentity;
  Start(options);
  EXPECT_EQ(service_->options().max_inflight_per_client,
            options.max_inflight_bytes / 2);
  EXPECT_EQ(service_->options().shared_memory.PerClientCap(), 4);
  grpc::ClientContext context;
  context.AddMetadata("x-client", "alice");
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  v1::ScoreResponse response;
  const grpc::Status status = stub_->Score(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("--max-inflight-per-client"));
}

TEST_F(ServiceTest, AuthenticationErrorIsTheAnswerOfEveryMethod) {
  ServiceOptions options = DefaultOptions();
  options.authenticate = HeaderIdentity;
  Start(options);
  v1::ScoreResponse response;
  EXPECT_EQ(Score(AlibiRequest(), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  {
    grpc::ClientContext context;
    v1::ListModelsResponse list;
    EXPECT_EQ(stub_->ListModels(&context, {}, &list).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    v1::ServerInfo info;
    EXPECT_EQ(stub_->GetServerInfo(&context, {}, &info).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    auto stream = stub_->ScoreStream(&context);
    stream->Write(AlibiRequest());
    stream->WritesDone();
    while (stream->Read(&response)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    v1::RegisterSharedMemoryResponse registered;
    EXPECT_EQ(
        stub_->RegisterSharedMemory(&context, {}, &registered).error_code(),
        grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    v1::UnregisterSharedMemoryResponse unregistered;
    EXPECT_EQ(
        stub_->UnregisterSharedMemory(&context, {}, &unregistered).error_code(),
        grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    v1::SharedMemoryStatusResponse regions;
    EXPECT_EQ(stub_->SharedMemoryStatus(&context, {}, &regions).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_TRUE(scorer_.calls().empty());
  grpc::ClientContext context;
  context.AddMetadata("x-client", "carol");
  EXPECT_TRUE(stub_->Score(&context, AlibiRequest(), &response).ok());
  EXPECT_THAT(Metrics(), HasSubstr("client=\"carol\"} 1"));
}

TEST_F(ServiceTest, ClientLabelHasBoundedCardinality) {
  ServiceOptions options = DefaultOptions();
  options.authenticate = HeaderIdentity;
  Start(options);
  constexpr int kClients = ServiceMetrics::kMaxClientLabels + 8;
  for (int i = 0; i < kClients; ++i) {
    grpc::ClientContext context;
    context.AddMetadata("x-client", absl::StrCat("client-", i));
    v1::ServerInfo info;
    ASSERT_TRUE(stub_->GetServerInfo(&context, {}, &info).ok());
  }
  const std::string metrics = Metrics();
  std::set<std::string> labels;
  for (size_t at = metrics.find("client=\""); at != std::string::npos;
       at = metrics.find("client=\"", at + 1)) {
    labels.insert(metrics.substr(at, metrics.find('"', at + 8) - at));
  }
  EXPECT_EQ(labels.size(),
            static_cast<size_t>(ServiceMetrics::kMaxClientLabels) + 1);
  EXPECT_THAT(
      metrics,
      HasSubstr("{method=\"GetServerInfo\",code=\"OK\",client=\"other\"} 8"));
}

TEST_F(ServiceTest, MemoryCapIsResourceExhaustedWithNumbers) {
  ServiceOptions options = DefaultOptions();
  options.limits.max_request_memory = 10'000;
  Start(options);
  v1::ScoreResponse response;
  grpc::Status status = Score(AlibiRequest(1, 2, 64, 64, 8), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max-request-memory"));
  EXPECT_THAT(status.error_message(), HasSubstr("10000"));
  EXPECT_TRUE(scorer_.calls().empty());
}

TEST_F(ServiceTest, WorkCapIsResourceExhaustedWithNumbers) {
  ServiceOptions options = DefaultOptions();
  options.limits.max_request_work = 100;
  Start(options);
  v1::ScoreResponse response;
  const grpc::Status status = Score(AlibiRequest(), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max-request-work"));
  EXPECT_THAT(status.error_message(), HasSubstr("at most 100 units"));
  EXPECT_TRUE(scorer_.calls().empty());
}

TEST_F(ServiceTest, OverLongRequestIdIsInvalidArgumentNamingTheLength) {
  Start();
  v1::ScoreRequest request = AlibiRequest();
  request.set_request_id(std::string(5000, 'i'));
  v1::ScoreResponse response;
  const grpc::Status status = Score(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("request_id"));
  EXPECT_THAT(status.error_message(), HasSubstr("5000 bytes"));
  EXPECT_LT(status.error_message().size(), 300u);
}

TEST_F(ServiceTest, StreamStopsReadingWhileItsRepliesAreUnsent) {
  ServiceOptions options = DefaultOptions();
  // One unsent reply is enough to stop reading; the count bound is far off.
  options.max_stream_unsent_bytes = 1;
  options.max_stream_backlog = 64;
  options.batching.max_batch_size = 1;  // one call per request
  options.max_inflight_bytes = int64_t{1} << 30;
  Start(options);
  // 2 MiB of logits per reply (under the client's 4 MiB message limit): far
  // more than HTTP/2's windows let through while the client does not read.
  constexpr int kRequests = 64;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  // A client whose HTTP/2 window stays small (no BDP growth): what it does
  // not read stays unsent on the server.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
  auto stub = v1::AttentionScorer::NewStub(
      grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                grpc::InsecureChannelCredentials(), args));
  auto stream = stub->ScoreStream(&context);
  for (int i = 0; i < kRequests; ++i) {
    v1::ScoreRequest request = AlibiRequest(1, 2, 512, 512, 1);
    request.set_request_id(absl::StrCat(i));
    ASSERT_TRUE(stream->Write(request));
  }
  ASSERT_TRUE(scorer_.WaitForCalls(1));
  // Give the server time to read on, as it would without the bound.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const size_t computed_while_not_reading = scorer_.calls().size();
  // Each admitted request counts its 2 MiB reply against the 1-byte bound:
  // one is read, then nothing until its reply is sent (a few at most, if
  // the transport takes whole replies).
  EXPECT_LE(computed_while_not_reading, 4u);
  std::printf("computed while the client did not read: %zu of %d\n",
              computed_while_not_reading, kRequests);
  stream->WritesDone();
  int received = 0;
  v1::ScoreResponse response;
  while (stream->Read(&response)) {
    EXPECT_FALSE(response.has_error()) << response.error().message();
    ++received;
  }
  EXPECT_EQ(received, kRequests);
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(scorer_.calls().size(), static_cast<size_t>(kRequests));
}

TEST_F(ServiceTest, DrainAnswersAcceptedRequestsAndRefusesNewOnes) {
  ServiceOptions options = DefaultOptions();
  options.batching.max_batch_size = 1;
  Start(options);
  scorer_.Hold();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  auto stream = stub_->ScoreStream(&context);
  v1::ScoreRequest accepted = AlibiRequest();
  accepted.set_request_id("accepted");
  ASSERT_TRUE(stream->Write(accepted));
  ASSERT_TRUE(scorer_.WaitForCalls(1));
  service_->StartDrain();
  v1::ScoreRequest late = AlibiRequest();
  late.set_request_id("late");
  ASSERT_TRUE(stream->Write(late));
  v1::ScoreResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.request_id(), "late");
  EXPECT_EQ(response.error().code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(response.error().message(), HasSubstr("draining"));
  // Unary calls that still reach the service are refused the same way.
  v1::ScoreResponse unary;
  const grpc::Status refused = Score(AlibiRequest(), &unary);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(refused.error_message(), HasSubstr("draining"));
  scorer_.Release();
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.request_id(), "accepted");
  EXPECT_FALSE(response.has_error()) << response.error().message();
  stream->WritesDone();
  EXPECT_FALSE(stream->Read(&response));
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(scorer_.calls().size(), 1u);
}

TEST_F(ServiceTest, CancelledComputeIsStoppedBetweenTiles) {
  Start();
  scorer_.Hold();
  grpc::ClientContext context;
  grpc::Status status;
  v1::ScoreResponse response;
  std::thread t(
      [&] { status = stub_->Score(&context, AlibiRequest(), &response); });
  ASSERT_TRUE(scorer_.WaitForCalls(1));
  context.TryCancel();
  t.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  // The held scorer sees its StopFn turn true and leaves: no Release needed.
  ASSERT_TRUE(scorer_.WaitForStopped());
  ASSERT_TRUE(WaitFor([&] {
    return Metrics().find(
               "method=\"Score\",code=\"CANCELLED\",client=\"anonymous\"} 1") !=
           std::string::npos;
  })) << Metrics();
  EXPECT_THAT(Metrics(), HasSubstr("attnscore_compute_stopped_total 1\n"));
}

TEST_F(ServiceTest, ExpiredComputeIsStoppedBetweenTiles) {
  Start();
  scorer_.Hold();
  grpc::Status status;
  v1::ScoreResponse response;
  std::thread t([&] {
    status = Score(AlibiRequest(), &response, std::chrono::seconds(10));
  });
  ASSERT_TRUE(scorer_.WaitForCalls(1));
  // Past the deadline on the service's clock, long before gRPC's own.
  clock_.AdvanceMicros(20'000'000);
  ASSERT_TRUE(scorer_.WaitForStopped());
  t.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(status.error_message(), HasSubstr("during compute"));
  ASSERT_TRUE(WaitFor([&] {
    return Metrics().find(
               "method=\"Score\",code=\"DEADLINE_EXCEEDED\",client="
               "\"anonymous\"} 1") != std::string::npos;
  })) << Metrics();
  EXPECT_THAT(Metrics(), HasSubstr("attnscore_compute_stopped_total 1\n"));
}

TEST_F(ServiceTest, ExceptionsInTheWorkerAreAnsweredNotFatal) {
  ServiceOptions options = DefaultOptions();
  options.batching.max_batch_size = 2;
  options.batching.max_queue_delay_us = 10'000'000;
  Start(options);
  grpc::Status s1, s2;
  v1::ScoreResponse r1, r2;
  std::thread t1 = ScoreAsync(
      AlibiRequest(1, 2, 3, 4, 8, FakeScorer::kThrowBadAlloc), &s1, &r1);
  std::thread t2 = ScoreAsync(AlibiRequest(1, 2, 3, 4, 8, 2.0f), &s2, &r2);
  t1.join();
  t2.join();
  EXPECT_EQ(s1.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s1.error_message();
  EXPECT_THAT(s1.error_message(), HasSubstr("out of memory"));
  // The other request of the batch is computed on its own.
  EXPECT_TRUE(s2.ok()) << s2.error_message();

  // The worker lives on.
  v1::ScoreResponse response;
  std::thread t3 = ScoreAsync(AlibiRequest(), &s1, &r1);
  std::thread t4 = ScoreAsync(AlibiRequest(), &s2, &r2);
  t3.join();
  t4.join();
  EXPECT_TRUE(s1.ok() && s2.ok()) << s1.error_message() << s2.error_message();
}

TEST_F(ServiceTest, AnyExceptionOfTheScorerIsInternal) {
  Start();
  v1::ScoreResponse response;
  const grpc::Status thrown =
      Score(AlibiRequest(1, 2, 3, 4, 8, FakeScorer::kThrow), &response);
  EXPECT_EQ(thrown.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(thrown.error_message(), HasSubstr("fake scorer exception"));
  EXPECT_TRUE(Score(AlibiRequest(), &response).ok());
}

TEST_F(ServiceTest, GetServerInfoReportsTheNewLimits) {
  ServiceOptions options = DefaultOptions();
  options.max_inflight_bytes = 1 << 30;
  options.limits.max_request_memory = 123456;
  options.limits.max_request_work = 654321;
  options.max_stream_unsent_bytes = 777;
  Start(options);
  grpc::ClientContext context;
  v1::ServerInfo info;
  ASSERT_TRUE(stub_->GetServerInfo(&context, {}, &info).ok());
  EXPECT_EQ(info.limits().max_request_memory_bytes(), 123456);
  EXPECT_EQ(info.limits().max_request_work(), 654321);
  EXPECT_EQ(info.limits().max_inflight_bytes(), 1 << 30);
  // The default per-client share where every caller is anonymous: none.
  EXPECT_EQ(info.limits().max_inflight_per_client_bytes(), 0);
  EXPECT_EQ(info.limits().max_stream_unsent_bytes(), 777);
}

TEST_F(ServiceTest, DerivedBudgetDefaultIsPositive) {
  Start();
  EXPECT_GT(service_->options().max_inflight_bytes, 0);
  EXPECT_EQ(service_->options().max_inflight_per_client, 0);
}

// RegisterSharedMemory's request for `object`, whole.
v1::RegisterSharedMemoryRequest Registration(const std::string& name,
                                             const testing::ShmObject& object,
                                             uint64_t byte_size) {
  v1::RegisterSharedMemoryRequest request;
  request.set_name(name);
  request.set_key(object.key());
  request.set_byte_size(byte_size);
  return request;
}

void PlaceLogits(v1::ScoreRequest& request, const std::string& region,
                 uint64_t offset, uint64_t byte_size) {
  v1::OutputPlacement* placement = request.add_placements();
  placement->set_output(v1::LOGITS);
  placement->mutable_range()->set_region(region);
  placement->mutable_range()->set_offset(offset);
  placement->mutable_range()->set_byte_size(byte_size);
}

TEST_F(ServiceTest, PlacedOutputsAreWrittenToSharedMemoryNotTheReply) {
  ServiceOptions options = DefaultOptions();
  options.shared_memory.prefix = testing::kShmTestPrefix;
  Start(options);
  testing::ShmObject object(4096);
  {
    grpc::ClientContext context;
    v1::RegisterSharedMemoryResponse registered;
    const grpc::Status status = stub_->RegisterSharedMemory(
        &context, Registration("out", object, 4096), &registered);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  {
    grpc::ClientContext context;
    v1::SharedMemoryStatusResponse regions;
    ASSERT_TRUE(stub_->SharedMemoryStatus(&context, {}, &regions).ok());
    ASSERT_EQ(regions.regions_size(), 1);
    EXPECT_EQ(regions.regions(0).name(), "out");
    EXPECT_EQ(regions.regions(0).key(), object.key());
    EXPECT_EQ(regions.regions(0).byte_size(), 4096u);
  }
  // [2,2,3,4] float32 logits: 192 bytes, at offset 256; probs in the reply.
  v1::ScoreRequest request = AlibiRequest(2, 2, 3, 4, 8, /*tag=*/1.0f);
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  v1::ScoreResponse in_band;
  ASSERT_TRUE(Score(request, &in_band).ok());
  PlaceLogits(request, "out", 256, 1024);
  v1::ScoreResponse placed;
  const grpc::Status status = Score(request, &placed);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(placed.logits().data().empty());
  EXPECT_THAT(placed.logits().shape(), ::testing::ElementsAre(2, 2, 3, 4));
  EXPECT_EQ(placed.logits().dtype(), v1::FLOAT32);
  EXPECT_EQ(placed.logits().shared_memory().region(), "out");
  EXPECT_EQ(placed.logits().shared_memory().offset(), 256u);
  EXPECT_EQ(placed.logits().shared_memory().byte_size(), 192u);
  ASSERT_EQ(in_band.logits().data().size(), 192u);
  EXPECT_EQ(std::string(object.data() + 256, 192), in_band.logits().data());
  EXPECT_EQ(placed.probs().data(), in_band.probs().data());
  EXPECT_FALSE(placed.probs().has_shared_memory());
  // Once unregistered, the name is unknown.
  {
    grpc::ClientContext context;
    v1::UnregisterSharedMemoryRequest unregister;
    unregister.set_name("out");
    v1::UnregisterSharedMemoryResponse unregistered;
    ASSERT_TRUE(
        stub_->UnregisterSharedMemory(&context, unregister, &unregistered)
            .ok());
  }
  const grpc::Status gone = Score(request, &placed);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(gone.error_message(),
              HasSubstr("placements[0].range.region: shared-memory region "
                        "\"out\": none of that name is registered"));
  EXPECT_THAT(Metrics(),
              HasSubstr("{method=\"RegisterSharedMemory\",code=\"OK\","
                        "client=\"anonymous\"} 1"));
}

TEST_F(ServiceTest, SharedMemoryIsOffWithoutAPrefix) {
  Start();
  testing::ShmObject object(4096);
  grpc::ClientContext context;
  v1::RegisterSharedMemoryResponse registered;
  const grpc::Status status = stub_->RegisterSharedMemory(
      &context, Registration("out", object, 4096), &registered);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("--shm-prefix"));
  v1::ScoreRequest request = AlibiRequest();
  PlaceLogits(request, "out", 0, 4096);
  v1::ScoreResponse response;
  EXPECT_EQ(Score(request, &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(scorer_.calls().empty());
}

TEST_F(ServiceTest, SharedMemoryRegionsAreTheRegisteringIdentitysOwn) {
  ServiceOptions options = DefaultOptions();
  options.authenticate = HeaderIdentity;
  options.shared_memory.prefix = testing::kShmTestPrefix;
  Start(options);
  testing::ShmObject object(4096);
  {
    grpc::ClientContext context;
    context.AddMetadata("x-client", "alice");
    v1::RegisterSharedMemoryResponse registered;
    ASSERT_TRUE(stub_
                    ->RegisterSharedMemory(&context,
                                           Registration("out", object, 4096),
                                           &registered)
                    .ok());
  }
  v1::ScoreRequest request = AlibiRequest();
  PlaceLogits(request, "out", 0, 4096);
  {
    grpc::ClientContext context;
    context.AddMetadata("x-client", "bob");
    v1::ScoreResponse response;
    EXPECT_EQ(stub_->Score(&context, request, &response).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext context;
    context.AddMetadata("x-client", "bob");
    v1::SharedMemoryStatusResponse regions;
    ASSERT_TRUE(stub_->SharedMemoryStatus(&context, {}, &regions).ok());
    EXPECT_EQ(regions.regions_size(), 0);
  }
  {
    // Over ScoreStream too, resolved against the stream's identity.
    grpc::ClientContext context;
    context.AddMetadata("x-client", "alice");
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    auto stream = stub_->ScoreStream(&context);
    ASSERT_TRUE(stream->Write(request));
    stream->WritesDone();
    v1::ScoreResponse response;
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_FALSE(response.has_error()) << response.error().message();
    EXPECT_EQ(response.logits().shared_memory().region(), "out");
    EXPECT_TRUE(stream->Finish().ok());
  }
}

}  // namespace
}  // namespace attnscore::service
