// The soak of the fault suite (issue 9, requirement 6): two minutes of small
// mixed requests at a fixed 50 requests/s against the real attnscore-server
// binary (unary ALiBi and relative, float16, every output, a long-lived
// ScoreStream, bad requests, the small methods); the server's RSS may grow by
// at most max(10%, 32 MiB) from minute 1 to minute 2, and no request is lost.
// `ctest -L soak` (also in `-L fault`).
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "tests/fault/fault_util.h"
#include "tests/testing/proc_stats.h"
#include "tests/testing/score_requests.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::fault {
namespace {

using ::attnscore::testing::ServerProcess;
using ::attnscore::testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr int kRate = 50;           // requests per second
constexpr int kMinuteSeconds = 60;  // the soak is two of these
constexpr int64_t kMiB = int64_t{1} << 20;

// H=2, D=8, P=8: the relative model "tiny".
absl::Status WriteModel(const std::string& path) {
  SafetensorsWriter writer;
  for (const auto& [name, shape] :
       std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"key_pos_embeddings", {16, 2, 8}},
           {"key_pos_bias", {16, 2}},
           {"query_pos_bias", {2, 8}}}) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (absl::Status s = writer.AddFloats(
            name, shape, testing::RampValues(static_cast<size_t>(n), 0.1f));
        !s.ok()) {
      return s;
    }
  }
  return writer.Write(path);
}

// The request kinds, taken in turn; each says whether it should succeed.
struct Kind {
  std::string name;
  std::function<v1::ScoreRequest(int)> make;
  grpc::StatusCode expected;
};

std::vector<Kind> Kinds() {
  return {
      {"alibi logits",
       [](int i) { return testing::SmallAlibiRequest(absl::StrCat("a", i)); },
       grpc::OK},
      {"relative logits+probs",
       [](int i) {
         v1::ScoreRequest r =
             testing::SmallRelativeRequest(absl::StrCat("r", i), "tiny");
         r.add_outputs(v1::LOGITS);
         r.add_outputs(v1::PROBS);
         return r;
       },
       grpc::OK},
      {"float16 causal context, key_lengths",
       [](int i) {
         v1::ScoreRequest r;
         r.set_request_id(absl::StrCat("h", i));
         r.mutable_alibi();
         *r.mutable_query() = testing::ConstantTensor16({2, 2, 4, 16}, 0.5f);
         *r.mutable_key() = testing::ConstantTensor16({2, 2, 8, 16}, 0.25f);
         *r.mutable_value() = testing::ConstantTensor16({2, 2, 8, 16}, 1.0f);
         r.set_causal(true);
         r.add_key_lengths(8);
         r.add_key_lengths(5);
         r.add_outputs(v1::CONTEXT);
         return r;
       },
       grpc::OK},
      {"medium every output",
       [](int i) {
         v1::ScoreRequest r =
             testing::ContextOnlyRequest(absl::StrCat("m", i), 4, 64, 32);
         r.add_outputs(v1::LOGITS);
         r.add_outputs(v1::PROBS);
         return r;
       },
       grpc::OK},
      {"NaN in the query (INVALID_ARGUMENT)",
       [](int i) {
         v1::ScoreRequest r = testing::SmallAlibiRequest(absl::StrCat("n", i));
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(r.mutable_query()->mutable_data()->data(), &nan, 4);
         return r;
       },
       grpc::INVALID_ARGUMENT},
      {"unknown model (NOT_FOUND)",
       [](int i) {
         return testing::SmallRelativeRequest(absl::StrCat("u", i), "nope");
       },
       grpc::NOT_FOUND},
  };
}

// Outcomes by kind: "<kind>: <code>" -> count; and the lost ones.
class Outcomes {
 public:
  void Add(const std::string& kind, const grpc::Status& status,
           grpc::StatusCode expected) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counts_[absl::StrCat(kind, ": ", CodeName(status.error_code()))];
    if (status.error_code() != expected) {
      ++lost_;
      if (lost_ <= 10) {
        std::cout << "lost: " << kind << ": " << Describe(status) << "\n";
      }
    }
  }
  int64_t lost() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return lost_;
  }
  std::vector<std::string> Lines() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> lines;
    for (const auto& [label, n] : counts_) {
      lines.push_back(absl::StrCat(label, " x", n));
    }
    return lines;
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, int64_t> counts_;
  int64_t lost_ = 0;
};

// A ScoreStream open for the whole soak; a reader thread counts responses.
class SoakStream {
 public:
  explicit SoakStream(v1::AttentionScorer::Stub& stub) {
    context_.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::seconds(200));
    stream_ = stub.ScoreStream(&context_);
    reader_ = std::thread([this] {
      v1::ScoreResponse response;
      while (stream_->Read(&response)) {
        (response.has_error() ? errors_ : ok_).fetch_add(1);
      }
    });
  }
  ~SoakStream() {
    if (reader_.joinable()) {
      context_.TryCancel();
      reader_.join();
      stream_->Finish();
    }
  }
  SoakStream(const SoakStream&) = delete;
  SoakStream& operator=(const SoakStream&) = delete;

  bool Write(const v1::ScoreRequest& request) {
    written_.fetch_add(1);
    return stream_->Write(request);
  }
  grpc::Status Finish() {
    stream_->WritesDone();
    reader_.join();
    return stream_->Finish();
  }
  int64_t written() const { return written_.load(); }
  int64_t ok() const { return ok_.load(); }
  int64_t errors() const { return errors_.load(); }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ScoreRequest, v1::ScoreResponse>>
      stream_;
  std::atomic<int64_t> written_{0}, ok_{0}, errors_{0};
  std::thread reader_;  // last: starts after the members it uses
};

// The mean of the RSS samples taken in seconds [from, to) of the soak.
int64_t MeanRss(const std::vector<int64_t>& per_second, int from, int to) {
  int64_t sum = 0;
  int n = 0;
  for (int s = from; s < to && s < static_cast<int>(per_second.size()); ++s) {
    if (per_second[s] > 0) sum += per_second[s], ++n;
  }
  return n == 0 ? 0 : sum / n;
}

// Sends request `i` of the schedule: unary kinds in turn, every 5th on the
// stream, every 50th a small method.
void SendOne(int i, v1::AttentionScorer::Stub& stub,
             const std::vector<Kind>& kinds, SoakStream& stream,
             Outcomes& outcomes) {
  if (i % 50 == 49) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(20));
    v1::ListModelsResponse models;
    outcomes.Add("ListModels",
                 stub.ListModels(&context, v1::ListModelsRequest(), &models),
                 grpc::OK);
    return;
  }
  if (i % 5 == 4) {
    if (!stream.Write(testing::SmallAlibiRequest(absl::StrCat("s", i)))) {
      outcomes.Add("stream write", grpc::Status(grpc::ABORTED, "write failed"),
                   grpc::OK);
    }
    return;
  }
  const Kind& kind = kinds[static_cast<size_t>(i) % kinds.size()];
  const UnaryCall call =
      Score(stub, kind.make(i), std::chrono::milliseconds(20000));
  outcomes.Add(kind.name, call.status, kind.expected);
}

TEST(SoakTest, TwoMinutesAtFiftyRequestsPerSecondKeepMemoryFlat) {
  TempDir models;
  ASSERT_TRUE(WriteModel(models.File("tiny.safetensors")).ok());
  testing::ServerOptions options;
  options.model_dir = models.path();
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<v1::AttentionScorer::Stub> stub =
      v1::AttentionScorer::NewStub((*server)->NewChannel());
  const std::vector<Kind> kinds = Kinds();
  Outcomes outcomes;
  SoakStream stream(*stub);
  std::vector<int64_t> rss_per_second(size_t{2} * kMinuteSeconds, 0);
  const auto start = Clock::now();
  const int total = kRate * 2 * kMinuteSeconds;
  int sent = 0;
  for (int i = 0; i < total; ++i) {
    // Fixed rate: request i is due at start + i/kRate; a late one goes at once.
    std::this_thread::sleep_until(
        start + std::chrono::microseconds(int64_t{i} * 1'000'000 / kRate));
    const int second = i / kRate;
    if (i % kRate == kRate - 1) {
      rss_per_second[second] =
          testing::ReadProcStatusBytes((*server)->pid(), "VmRSS").value_or(0);
    }
    SendOne(i, *stub, kinds, stream, outcomes);
    ++sent;
    if (!(*server)->running()) break;
  }
  const double elapsed = SecondsSince(start);
  const grpc::Status stream_status = stream.Finish();
  // Every stream request is a good one: an error or no answer is a loss.
  const int64_t stream_lost = stream.written() - stream.ok();
  FaultReport report("soak");
  report.classes = outcomes.Lines();
  report.classes.push_back(absl::StrCat("stream alibi: ", stream.ok(), " OK, ",
                                        stream.errors(), " errors, final ",
                                        Describe(stream_status)));
  report.faults = {"none: a fixed rate of mixed traffic for two minutes"};
  report.requests = sent;
  report.lost = outcomes.lost() + stream_lost + (stream_status.ok() ? 0 : 1);
  // Minute 1 and minute 2: the mean of each minute's last 10 seconds.
  const int64_t minute1 = MeanRss(rss_per_second, 50, 60);
  const int64_t minute2 = MeanRss(rss_per_second, 110, 120);
  const int64_t allowed = std::max<int64_t>(minute1 / 10, 32 * kMiB);
  report.figures = {
      absl::StrCat(sent, " requests in ", elapsed, " s (",
                   sent / std::max(elapsed, 1e-9), " req/s)"),
      absl::StrCat("RSS at minute 1 ", testing::MiB(minute1), ", minute 2 ",
                   testing::MiB(minute2), ", growth ",
                   testing::MiB(minute2 - minute1), " (allowed ",
                   testing::MiB(allowed), ")"),
      absl::StrCat(
          "VmHWM ",
          testing::MiB(testing::ReadMemory((*server)->pid()).hwm_bytes))};
  report.Print();
  ASSERT_EQ(sent, total) << "the server exited during the soak";
  EXPECT_GT(minute1, 0);
  EXPECT_LE(minute2 - minute1, allowed);
  EXPECT_EQ(report.lost, 0);
}

}  // namespace
}  // namespace attnscore::fault
