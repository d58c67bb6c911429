// Every golden case through the real attnscore-server binary, over Score and
// over one ScoreStream, compared to the reference within |a-b| <= 1e-4 +
// 1e-4*|b| (exact -inf positions); and concurrent clients whose requests are
// batched together (timing.batch_size > 1) and still get exactly their own rows
// back.
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/golden.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::e2e {
namespace {

using ::attnscore::testing::ServerProcess;
using ::attnscore::testing::TempDir;

constexpr auto kRpcTimeout = std::chrono::seconds(30);

class GoldenE2eTest : public ::testing::Test {
 protected:
  // One server for the suite: starting the binary costs a LibTorch load.
  static void SetUpTestSuite() {
    absl::StatusOr<std::vector<testing::GoldenCase>> cases =
        testing::LoadGoldenCases();
    ASSERT_TRUE(cases.ok()) << "golden cases (" << testing::GoldenDir()
                            << ") are required: " << cases.status();
    cases_ = new std::vector<testing::GoldenCase>(*std::move(cases));
    models_ = new TempDir();
    ASSERT_TRUE(WriteRelativeModels(*cases_, models_->path()).ok());
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(
            E2eServerOptions({"--model-dir=" + models_->path()}));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete models_;
    delete cases_;
    server_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    stub_ = v1::AttentionScorer::NewStub(server_->NewChannel());
  }
  void TearDown() override {
    if (HasFailure() && server_ != nullptr) {
      std::cerr << "server log:\n" << server_->Log();
    }
  }

  static std::vector<testing::GoldenCase>* cases_;
  static TempDir* models_;
  static ServerProcess* server_;
  std::unique_ptr<v1::AttentionScorer::Stub> stub_;
};

std::vector<testing::GoldenCase>* GoldenE2eTest::cases_ = nullptr;
TempDir* GoldenE2eTest::models_ = nullptr;
ServerProcess* GoldenE2eTest::server_ = nullptr;

TEST_F(GoldenE2eTest, EveryCaseThroughScore) {
  ASSERT_GE(cases_->size(), 1u);
  for (const testing::GoldenCase& c : *cases_) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    v1::ScoreResponse response;
    grpc::Status status = stub_->Score(&context, GoldenRequest(c), &response);
    ASSERT_TRUE(status.ok()) << c.name << ": " << status.error_message();
    EXPECT_EQ(response.request_id(), c.name);
    EXPECT_EQ(CompareGolden(c, response), "");
    EXPECT_GE(response.timing().batch_size(), c.Int("batch"));
  }
}

TEST_F(GoldenE2eTest, EveryCaseThroughOneStream) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  auto stream = stub_->ScoreStream(&context);
  std::map<std::string, const testing::GoldenCase*> by_id;
  // Pipelined: everything is sent before anything is read.
  for (const testing::GoldenCase& c : *cases_) {
    by_id[c.name] = &c;
    ASSERT_TRUE(stream->Write(GoldenRequest(c)));
  }
  ASSERT_TRUE(stream->WritesDone());
  size_t received = 0;
  v1::ScoreResponse response;
  while (stream->Read(&response)) {
    ++received;
    auto it = by_id.find(response.request_id());
    ASSERT_NE(it, by_id.end())
        << "unexpected request_id " << response.request_id();
    EXPECT_EQ(CompareGolden(*it->second, response), "");
    by_id.erase(it);
  }
  EXPECT_EQ(received, cases_->size());
  EXPECT_TRUE(by_id.empty());
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// A server whose batches close only when full (4 items): requests for item
// subsets of one case (same signature, B 1 + 1 + 2) sent at once must be
// computed as one batch of 4 and split back.
TEST(GoldenBatchingE2eTest, ConcurrentClientsAreBatchedAndExact) {
  absl::StatusOr<std::vector<testing::GoldenCase>> cases =
      testing::LoadGoldenCases();
  ASSERT_TRUE(cases.ok()) << cases.status();
  TempDir models;
  ASSERT_TRUE(WriteRelativeModels(*cases, models.path()).ok());
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      E2eServerOptions({"--model-dir=" + models.path(), "--max-batch-size=4",
                        "--max-queue-delay-us=20000000"}));
  ASSERT_TRUE(server.ok()) << server.status();

  for (const char* name :
       {"alibi_key_lengths.safetensors", "relative_causal.safetensors"}) {
    const testing::GoldenCase* c = nullptr;
    for (const testing::GoldenCase& candidate : *cases) {
      if (candidate.name == name) c = &candidate;
    }
    ASSERT_NE(c, nullptr) << name;
    const std::vector<std::vector<int>> groups = {{1}, {0}, {1, 0}};
    std::vector<grpc::Status> statuses(groups.size());
    std::vector<v1::ScoreResponse> responses(groups.size());
    std::vector<std::thread> clients;
    for (size_t g = 0; g < groups.size(); ++g) {
      // One channel per client: separate connections, as separate services
      // would have.
      clients.emplace_back([&, g] {
        auto stub = v1::AttentionScorer::NewStub((*server)->NewChannel());
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
        statuses[g] = stub->Score(
            &context, GoldenRequestForItems(*c, groups[g]), &responses[g]);
      });
    }
    for (std::thread& t : clients) t.join();
    for (size_t g = 0; g < groups.size(); ++g) {
      ASSERT_TRUE(statuses[g].ok())
          << name << ": " << statuses[g].error_message() << "\n"
          << (*server)->Log();
      EXPECT_EQ(responses[g].timing().batch_size(), 4)
          << name << " group " << g;
      EXPECT_EQ(CompareGoldenItems(*c, groups[g], responses[g]), "")
          << name << " group " << g;
    }
  }
}

}  // namespace
}  // namespace attnscore::e2e
