// The fault suite (issue 9, requirement 6) against the real attnscore-server
// binary: SIGTERM with a full queue and open streams, SIGKILL under load and a
// restart on the same port, cancellation mid-compute, and clients that never
// read. Each test prints the request classes it tried, the faults it
// injected, its figures and the requests lost (which must be 0).
// `ctest -L fault`; the two-minute soak is soak_test.cc.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fault/fault_util.h"
#include "tests/testing/proc_stats.h"
#include "tests/testing/score_requests.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::fault {
namespace {

using ::attnscore::testing::CheckHealth;
using ::attnscore::testing::ServerOptions;
using ::attnscore::testing::ServerProcess;
using ::attnscore::testing::SmallAlibiRequest;
using ::attnscore::testing::WaitFor;
using HealthStatus = grpc::health::v1::HealthCheckResponse;
using Clock = std::chrono::steady_clock;

constexpr int64_t kGiB = int64_t{1} << 30;
// The service's log line once it refuses new requests. Not the signal
// thread's "<signal>: draining", which comes first: a call made right after
// that one could still be accepted, and then wait behind the queued work.
constexpr char kServiceDraining[] = "draining: new scoring requests get";
constexpr const char* kReadiness = v1::AttentionScorer::service_full_name();

std::unique_ptr<ServerProcess> StartServer(std::vector<std::string> args,
                                           bool metrics = false, int port = 0) {
  ServerOptions options;
  options.port = port;
  options.metrics = metrics;
  options.threads = 1;
  options.log_level = "info";
  options.extra_args = std::move(args);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

void PrintLogOnFailure(const ServerProcess* server) {
  if (server == nullptr || !::testing::Test::HasFailure()) return;
  const std::string log = server->Log();
  std::cerr << "server log (last 6000 bytes):\n"
            << log.substr(log.size() > 6000 ? log.size() - 6000 : 0);
}

void ExpectServing(const ServerProcess& server, const std::string& what) {
  const std::shared_ptr<grpc::Channel> channel = server.NewChannel();
  std::unique_ptr<v1::AttentionScorer::Stub> stub =
      v1::AttentionScorer::NewStub(channel);
  const UnaryCall call = Score(*stub, SmallAlibiRequest("after"));
  EXPECT_TRUE(call.status.ok()) << what << ": " << Describe(call.status);
  absl::StatusOr<HealthStatus::ServingStatus> ready =
      CheckHealth(channel, kReadiness);
  ASSERT_TRUE(ready.ok()) << what << ": " << ready.status();
  EXPECT_EQ(*ready, HealthStatus::SERVING) << what;
}

// Outcome counts by label, for the report.
class Tally {
 public:
  void Add(const std::string& label) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counts_[label];
  }
  std::vector<std::string> Lines(const std::string& prefix) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> lines;
    for (const auto& [label, n] : counts_) {
      lines.push_back(absl::StrCat(prefix, label, " x", n));
    }
    return lines;
  }
  int64_t Count(const std::string& label) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = counts_.find(label);
    return it == counts_.end() ? 0 : it->second;
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, int64_t> counts_;
};

// ---------------------------------------------------------------------------
// (a) SIGTERM with a full queue and open streams.

// Compute-heavy, reply-light; a few hundred ms each on one thread (for
// seq_len 1024; the time grows as its square).
v1::ScoreRequest SlowRequest(const std::string& id, int seq_len = 1024) {
  return testing::ContextOnlyRequest(id, 8, seq_len, 64);
}

// One ScoreStream whose responses a reader thread collects.
class CollectingStream {
 public:
  explicit CollectingStream(v1::AttentionScorer::Stub& stub) {
    context_.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::seconds(120));
    stream_ = stub.ScoreStream(&context_);
    reader_ = std::thread([this] {
      v1::ScoreResponse response;
      while (stream_->Read(&response)) {
        std::lock_guard<std::mutex> lock(mutex_);
        responses_[response.request_id()] = response;
      }
    });
  }
  ~CollectingStream() {
    if (finished_) return;
    context_.TryCancel();
    if (reader_.joinable()) reader_.join();
    stream_->Finish();
  }
  CollectingStream(const CollectingStream&) = delete;
  CollectingStream& operator=(const CollectingStream&) = delete;

  bool Write(const v1::ScoreRequest& request) {
    return stream_->Write(request);
  }
  // Half-closes, waits for the reader, returns the final status.
  grpc::Status Finish() {
    stream_->WritesDone();
    reader_.join();
    finished_ = true;
    return stream_->Finish();
  }
  // The response to `id`, if one came.
  const v1::ScoreResponse* Response(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = responses_.find(id);
    return it == responses_.end() ? nullptr : &it->second;
  }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ScoreRequest, v1::ScoreResponse>>
      stream_;
  mutable std::mutex mutex_;
  std::map<std::string, v1::ScoreResponse> responses_;
  bool finished_ = false;
  std::thread reader_;  // last: starts after the members it uses
};

// Unary senders that keep the queue full until told to stop: a refused call
// is sent again 20 ms later.
class QueueFiller {
 public:
  QueueFiller(ServerProcess& server, int threads, Tally* tally, int64_t* lost) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, &server, t, tally, lost] {
        std::unique_ptr<v1::AttentionScorer::Stub> stub =
            v1::AttentionScorer::NewStub(server.NewChannel());
        const auto give_up = Clock::now() + std::chrono::seconds(60);
        for (int i = 0; !stop_.load() && Clock::now() < give_up; ++i) {
          const UnaryCall call =
              Score(*stub, SlowRequest(absl::StrCat("unary", t, "-", i)));
          sent_.fetch_add(1);
          if (call.status.ok()) {
            tally->Add("unary accepted: OK");
          } else if (IsCleanRefusal(call.status)) {
            tally->Add("unary refused: UNAVAILABLE");
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
          } else {
            tally->Add("unary LOST: " + Describe(call.status));
            std::lock_guard<std::mutex> lock(mutex_);
            ++*lost;
          }
        }
      });
    }
  }
  ~QueueFiller() { Join(); }
  QueueFiller(const QueueFiller&) = delete;
  QueueFiller& operator=(const QueueFiller&) = delete;

  void Stop() { stop_.store(true); }
  void Join() {
    Stop();
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  int64_t sent() const { return sent_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> sent_{0};
  std::mutex mutex_;
  std::vector<std::thread> threads_;
};

bool QueueIsFull(const ServerProcess& server, int limit) {
  absl::StatusOr<std::string> metrics = server.ScrapeMetrics();
  return metrics.ok() &&
         ServerProcess::SumMetric(*metrics, "attnscore_queue_depth") >= limit;
}

// Checks every stream request: those written before SIGTERM answered (OK or
// a clean refusal), those written after it UNAVAILABLE (in the response, or
// as the stream's final status).
void CheckStream(CollectingStream& stream, int s, int before, bool wrote_after,
                 Tally* tally, int64_t* lost) {
  const grpc::Status final_status = stream.Finish();
  for (int i = 0; i < before; ++i) {
    const v1::ScoreResponse* r = stream.Response(absl::StrCat("s", s, "-", i));
    if (r != nullptr && !r->has_error()) {
      tally->Add("stream accepted: OK");
    } else if (r != nullptr && r->error().code() == grpc::UNAVAILABLE) {
      tally->Add("stream refused: UNAVAILABLE");
    } else {
      tally->Add("stream LOST (no answer)");
      ++*lost;
    }
  }
  const v1::ScoreResponse* after =
      stream.Response(absl::StrCat("s", s, "-after"));
  if (after != nullptr && after->has_error() &&
      after->error().code() == grpc::UNAVAILABLE) {
    tally->Add("stream request after SIGTERM: UNAVAILABLE");
  } else if (after == nullptr &&
             final_status.error_code() == grpc::UNAVAILABLE) {
    tally->Add("stream request after SIGTERM: stream ended UNAVAILABLE");
  } else {
    tally->Add(absl::StrCat("stream request after SIGTERM: WRONG (",
                            after == nullptr ? "no answer" : "answered",
                            wrote_after ? "" : ", write failed", ", final ",
                            Describe(final_status), ")"));
    ++*lost;
  }
}

TEST(FaultTest, SigtermWithFullQueueAndOpenStreams) {
  constexpr int kQueue = 6;
  constexpr int kStreams = 2;
  constexpr int kPerStream = 2;
  std::unique_ptr<ServerProcess> server =
      StartServer({"--max-batch-size=1", "--max-queue-delay-us=0",
                   absl::StrCat("--max-queue=", kQueue), "--batch-workers=1",
                   "--shutdown-grace=60"},
                  /*metrics=*/true);
  ASSERT_NE(server, nullptr);
  FaultReport report("sigterm");
  Tally tally;
  std::unique_ptr<v1::AttentionScorer::Stub> stub =
      v1::AttentionScorer::NewStub(server->NewChannel());
  std::vector<std::unique_ptr<CollectingStream>> streams;
  for (int s = 0; s < kStreams; ++s) {
    streams.push_back(std::make_unique<CollectingStream>(*stub));
    for (int i = 0; i < kPerStream; ++i) {
      ASSERT_TRUE(streams[s]->Write(SlowRequest(absl::StrCat("s", s, "-", i))));
    }
  }
  QueueFiller filler(*server, kQueue + 2, &tally, &report.lost);
  ASSERT_TRUE(WaitFor([&] { return QueueIsFull(*server, kQueue); },
                      absl::Seconds(30), absl::Milliseconds(5)))
      << "the queue never filled";
  // No unary call in transit when the signal lands (those would race the
  // drain): the ones sent so far are accepted or refused within milliseconds
  // on loopback, and the queue stays full (each request computes for longer).
  filler.Stop();
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  const bool still_full = QueueIsFull(*server, kQueue);
  const auto term_at = Clock::now();
  server->Signal(SIGTERM);
  report.faults.push_back(absl::StrCat("SIGTERM with the queue ",
                                       still_full ? "full" : "nearly full",
                                       " (", kQueue, " waiting, 1 computing)"));
  ASSERT_TRUE(server->WaitForLog(kServiceDraining, absl::Seconds(10)));
  std::vector<bool> wrote_after(kStreams);
  for (int s = 0; s < kStreams; ++s) {
    wrote_after[s] =
        streams[s]->Write(SlowRequest(absl::StrCat("s", s, "-after")));
  }
  // A new unary call during the drain.
  const UnaryCall late = Score(*stub, SmallAlibiRequest("late"));
  tally.Add("unary after SIGTERM: " +
            std::string(late.status.error_code() == grpc::UNAVAILABLE
                            ? "UNAVAILABLE"
                            : "WRONG " + Describe(late.status)));
  if (late.status.error_code() != grpc::UNAVAILABLE) ++report.lost;
  filler.Join();
  for (int s = 0; s < kStreams; ++s) {
    CheckStream(*streams[s], s, kPerStream, wrote_after[s], &tally,
                &report.lost);
  }
  const absl::StatusOr<int> code = server->Wait(absl::Seconds(60));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  report.requests = filler.sent() + int64_t{kStreams} * (kPerStream + 1) + 1;
  report.classes = tally.Lines("");
  report.figures.push_back(absl::StrCat(
      "exit ", *code, " ", SecondsSince(term_at), " s after SIGTERM"));
  report.Print();
  EXPECT_GE(tally.Count("unary accepted: OK"), 1);
  EXPECT_GE(tally.Count("unary refused: UNAVAILABLE"), 1) << "never full";
  EXPECT_EQ(report.lost, 0);
  PrintLogOnFailure(server.get());
}

// Calls that reach the server during the drain, while accepted work remains,
// get the service's own refusal (UNAVAILABLE "server is draining", which a
// client retries on another replica): the drain answers the accepted work
// before gRPC's shutdown, which would cancel a call it has not started
// (CANCELLED, not retried; 3 of 8 calls still on the wire when SIGTERM landed
// came back so in one CI run of the test above) and refuse new ones at the
// connection. The accepted work is still answered OK.
TEST(FaultTest, CallsDuringTheDrainGetTheServicesRefusal) {
  constexpr int kLate = 6;
  std::unique_ptr<ServerProcess> server =
      StartServer({"--max-batch-size=1", "--max-queue-delay-us=0",
                   "--batch-workers=1", "--shutdown-grace=60"},
                  /*metrics=*/true);
  ASSERT_NE(server, nullptr);
  FaultReport report("calls during the drain");
  Tally tally;
  std::unique_ptr<v1::AttentionScorer::Stub> stub =
      v1::AttentionScorer::NewStub(server->NewChannel());
  ASSERT_TRUE(Score(*stub, SmallAlibiRequest("connect")).status.ok());
  // Three slow requests: one computing, two queued (seconds of work). The
  // first is sent alone and seen computing (held in the budget, no longer
  // queued) before the others: a queue depth of 2 then means that all three
  // were accepted, not that two queued before the worker took one.
  std::vector<std::thread> slow;
  slow.reserve(3);
  const auto send_slow = [&](int i) {
    slow.emplace_back([&, i] {
      // The computing one is the longest (four times the others' work), so
      // that the other two surely queue behind it on a loaded machine.
      const UnaryCall call = Score(
          *stub, SlowRequest(absl::StrCat("slow", i), i == 0 ? 2048 : 1024));
      tally.Add("accepted before SIGTERM: " + Describe(call.status));
    });
  };
  send_slow(0);
  // EXPECT, not ASSERT, until the threads are joined.
  const bool computing = WaitFor(
      [&] {
        const absl::StatusOr<std::string> metrics = server->ScrapeMetrics();
        return metrics.ok() &&
               ServerProcess::SumMetric(*metrics, "attnscore_queue_depth") ==
                   0 &&
               ServerProcess::SumMetric(*metrics, "attnscore_inflight_bytes") >
                   0;
      },
      absl::Seconds(30), absl::Milliseconds(2));
  EXPECT_TRUE(computing) << "the first slow request never ran";
  send_slow(1);
  send_slow(2);
  const bool queued =
      computing && WaitFor([&] { return QueueIsFull(*server, 2); },
                           absl::Seconds(30), absl::Milliseconds(5));
  EXPECT_TRUE(queued) << "the slow requests never queued";
  server->Signal(SIGTERM);
  const bool draining = server->WaitForLog(kServiceDraining, absl::Seconds(10));
  EXPECT_TRUE(draining);
  report.faults.push_back("SIGTERM with 1 request computing and 2 queued");
  for (int i = 0; queued && draining && i < kLate; ++i) {
    const UnaryCall call =
        Score(*stub, SmallAlibiRequest(absl::StrCat("late", i)));
    const bool refused =
        call.status.error_code() == grpc::UNAVAILABLE &&
        absl::StrContains(call.status.error_message(), "server is draining");
    tally.Add(std::string(refused ? "during the drain: "
                                  : "during the drain WRONG: ") +
              Describe(call.status));
    if (!refused) ++report.lost;
  }
  for (std::thread& t : slow) t.join();
  report.lost += 3 - tally.Count("accepted before SIGTERM: OK");
  const absl::StatusOr<int> code = server->Wait(absl::Seconds(60));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  report.requests = 1 + 3 + kLate;
  report.classes = tally.Lines("");
  report.Print();
  EXPECT_EQ(report.lost, 0);
  PrintLogOnFailure(server.get());
}

// ---------------------------------------------------------------------------
// (b) SIGKILL under load, restart on the same port: the client recovers.

struct Outcome {
  Clock::time_point sent;
  Clock::time_point done;
  absl::Status status;
};

// Client-library load from `threads` threads, one small request every 10 ms
// each, until Stop().
class ClientLoad {
 public:
  ClientLoad(client::Client* c, int threads) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, c, t] {
        std::vector<float> q = testing::RampValues(48, 1);
        std::vector<float> k = testing::RampValues(64, 2);
        client::ScoreRequest request;
        request.query = {
            DType::kFloat32, {1, 2, 3, 8}, q.data(), size_t{48} * 4};
        request.key = {DType::kFloat32, {1, 2, 4, 8}, k.data(), size_t{64} * 4};
        client::CallOptions options;
        options.timeout = absl::Seconds(10);
        const auto give_up = Clock::now() + std::chrono::seconds(90);
        for (int i = 0; !stop_.load() && Clock::now() < give_up; ++i) {
          request.request_id = absl::StrCat("load", t, "-", i);
          const auto sent = Clock::now();
          absl::StatusOr<client::ScoreResult> r = c->Score(request, options);
          {
            std::lock_guard<std::mutex> lock(mutex_);
            outcomes_.push_back({sent, Clock::now(), r.status()});
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      });
    }
  }
  ~ClientLoad() { Stop(); }
  ClientLoad(const ClientLoad&) = delete;
  ClientLoad& operator=(const ClientLoad&) = delete;

  void Stop() {
    stop_.store(true);
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  // When the first success sent at or after `since` completed. Completion, not
  // sending: that call may have spent a while in the client's retries, and a
  // call sent while it did can still exhaust its own against the reconnecting
  // channel.
  std::optional<Clock::time_point> FirstSuccessSince(Clock::time_point since) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::optional<Clock::time_point> first;
    for (const Outcome& o : outcomes_) {
      if (o.sent >= since && o.status.ok() && (!first || o.done < *first)) {
        first = o.done;
      }
    }
    return first;
  }
  std::vector<Outcome> outcomes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return outcomes_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::vector<Outcome> outcomes_;
  std::vector<std::thread> threads_;
};

double MsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// One kill-and-restart cycle: the times that classify the outcomes.
struct Outage {
  Clock::time_point killed;
  Clock::time_point ready;
  Clock::time_point recovered;  // the first success after `ready` completed
};

TEST(FaultTest, SigkillUnderLoadAndRestartOnTheSamePort) {
  std::unique_ptr<ServerProcess> server = StartServer({});
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  client::ClientOptions options;
  options.target = server->target();
  absl::StatusOr<std::unique_ptr<client::Client>> c =
      client::Client::Create(options);
  ASSERT_TRUE(c.ok()) << c.status();
  FaultReport report("sigkill");
  ClientLoad load(c->get(), 2);
  std::vector<Outage> outages;
  for (int cycle = 0; cycle < 2; ++cycle) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    Outage outage;
    outage.killed = Clock::now();
    server->Signal(SIGKILL);
    ASSERT_TRUE(server->Wait(absl::Seconds(10)).ok());
    server = StartServer({}, false, port);
    ASSERT_NE(server, nullptr) << "restart on port " << port;
    outage.ready = Clock::now();
    report.faults.push_back(
        absl::StrCat("SIGKILL under load, restart on ", port));
    std::optional<Clock::time_point> recovered;
    ASSERT_TRUE(WaitFor(
        [&] {
          return (recovered = load.FirstSuccessSince(outage.ready)).has_value();
        },
        absl::Seconds(30), absl::Milliseconds(20)))
        << "the client did not recover within 30 s of the restart";
    outage.recovered = *recovered;
    outages.push_back(outage);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  load.Stop();
  // Before the first kill and after each recovery: every request succeeds.
  // In an outage: failures the client is told about (UNAVAILABLE) only.
  int64_t ok = 0, outage_failures = 0;
  for (const Outcome& o : load.outcomes()) {
    ++report.requests;
    bool in_outage = false;
    for (const Outage& out : outages) {
      // In flight at some point between the kill and the recovery.
      in_outage |= o.sent < out.recovered && o.done >= out.killed;
    }
    if (o.status.ok()) {
      ++ok;
    } else if (in_outage &&
               (o.status.code() == absl::StatusCode::kUnavailable)) {
      ++outage_failures;
    } else {
      ++report.lost;
      std::cout << "lost: " << o.status << "\n";
      for (const Outage& out : outages) {
        std::cout << "  sent, done, recovered ms after a kill: "
                  << MsBetween(out.killed, o.sent) << ", "
                  << MsBetween(out.killed, o.done) << ", "
                  << MsBetween(out.killed, out.recovered) << "\n";
      }
    }
  }
  report.classes = {
      absl::StrCat("small unary ALiBi through the client library: ", ok,
                   " OK, ", outage_failures, " UNAVAILABLE during outages")};
  for (const Outage& out : outages) {
    report.figures.push_back(absl::StrCat(
        "down ", std::chrono::duration<double>(out.ready - out.killed).count(),
        " s (kill to ready), client recovered ",
        std::chrono::duration<double>(out.recovered - out.ready).count(),
        " s after ready"));
  }
  report.Print();
  EXPECT_GT(ok, 0);
  EXPECT_EQ(report.lost, 0);
  ExpectServing(*server, "the restarted server");
  PrintLogOnFailure(server.get());
}

// ---------------------------------------------------------------------------
// (c) Cancellation mid-compute.

// The request and its uncancelled compute time: context only, Lq=Lk=4096,
// H2, D doubling from 32 until it takes 1.5 s or more (or the server's cost
// cap refuses it: then the largest accepted).
struct Calibrated {
  v1::ScoreRequest request;
  double seconds = 0;
};
Calibrated Calibrate(v1::AttentionScorer::Stub& stub,
                     std::vector<std::string>* figures) {
  Calibrated best;
  for (int64_t dim = 32; dim <= 1024; dim *= 2) {
    v1::ScoreRequest request =
        testing::ContextOnlyRequest(absl::StrCat("big-d", dim), 2, 4096, dim);
    const UnaryCall call = Score(stub, request);
    figures->push_back(absl::StrCat("uncancelled H2 L4096 D", dim, ": ",
                                    Describe(call.status), " in ", call.seconds,
                                    " s"));
    if (!call.status.ok()) break;
    best = {std::move(request), call.seconds};
    if (call.seconds >= 1.5) break;
  }
  return best;
}

// One of the server's series, summed over its labels (-1 when unreadable).
double ServerMetric(ServerProcess& server, const std::string& name) {
  const absl::StatusOr<std::string> metrics = server.ScrapeMetrics();
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return metrics.ok() ? ServerProcess::SumMetric(*metrics, name) : -1;
}

// A batch's queue time is observed as its compute begins.
constexpr const char* kComputesBegun = "attnscore_queue_duration_seconds_count";
constexpr const char* kComputesStopped = "attnscore_compute_stopped_total";

// One abandoned request: its status, whether its compute had begun when it
// was abandoned (and how long after the send it was seen to begin), and the
// seconds from the abandonment to the answer of a small request sent then.
struct Abandonment {
  grpc::Status status;
  bool mid_compute = false;
  double begun_after = 0;
  double next = 0;
};

// Sends `request` and abandons it: a client cancel `after` seconds into its
// compute (the server's metrics say when it begins), or a deadline `lead` +
// `after` seconds after the send, mid-compute when the compute began before
// it. On a loaded machine a large request may take longer than that to reach
// its compute; the caller then tries a longer lead.
Abandonment Abandon(ServerProcess& server, v1::AttentionScorer::Stub& stub,
                    const v1::ScoreRequest& request, double after,
                    bool use_deadline, double lead) {
  const double begun_before = ServerMetric(server, kComputesBegun);
  grpc::ClientContext context;
  const auto seconds = [](double s) {
    return std::chrono::microseconds(static_cast<int64_t>(s * 1e6));
  };
  const auto sent = Clock::now();
  const auto deadline = sent + seconds(lead + after);
  context.set_deadline(
      std::chrono::system_clock::now() +
      (use_deadline ? seconds(lead + after) : std::chrono::seconds(60)));
  Abandonment out;
  std::atomic<bool> done{false};
  v1::ScoreResponse response;
  std::thread big([&] {
    out.status = stub.Score(&context, request, &response);
    done = true;
  });
  // Until its compute begins (or the call ends first).
  std::optional<Clock::time_point> begun;
  while (!done && !begun) {
    if (ServerMetric(server, kComputesBegun) > begun_before) {
      begun = Clock::now();  // at or after the compute began
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  if (begun) {
    out.begun_after = std::chrono::duration<double>(*begun - sent).count();
  }
  if (use_deadline) {
    out.mid_compute = begun && *begun < deadline;
  } else {
    if (begun) std::this_thread::sleep_for(seconds(after));
    context.TryCancel();
    out.mid_compute = begun.has_value();
  }
  big.join();
  const auto start = Clock::now();
  const UnaryCall small = Score(stub, SmallAlibiRequest("small"));
  EXPECT_TRUE(small.status.ok()) << Describe(small.status);
  out.next = SecondsSince(start);
  return out;
}

TEST(FaultTest, CancellationMidComputeStopsTheCompute) {
  std::unique_ptr<ServerProcess> server = StartServer(
      {"--max-batch-size=1", "--max-queue-delay-us=0", "--batch-workers=1"},
      /*metrics=*/true);
  ASSERT_NE(server, nullptr);
  std::unique_ptr<v1::AttentionScorer::Stub> stub =
      v1::AttentionScorer::NewStub(server->NewChannel());
  FaultReport report("cancel");
  const Calibrated big = Calibrate(*stub, &report.figures);
  ASSERT_GT(big.seconds, 0.3) << "no request long enough to cancel";
  const double after = big.seconds / 5;
  double lead = 0.05;  // the deadline's allowance for reaching the compute
  for (bool use_deadline : {false, true}) {
    const std::string kind = use_deadline ? "deadline" : "client cancel";
    const grpc::StatusCode want =
        use_deadline ? grpc::DEADLINE_EXCEEDED : grpc::CANCELLED;
    Abandonment abandoned;
    for (int attempt = 0; attempt < 4 && !abandoned.mid_compute; ++attempt) {
      const double stopped_before = ServerMetric(*server, kComputesStopped);
      abandoned =
          Abandon(*server, *stub, big.request, after, use_deadline, lead);
      report.requests += 2;
      if (abandoned.status.error_code() != want) ++report.lost;
      report.classes.push_back(
          absl::StrCat(kind, " ", after,
                       " s into the compute: ", Describe(abandoned.status)));
      if (!abandoned.mid_compute) {
        report.figures.push_back(
            absl::StrCat(kind, ": abandoned before its compute began (", lead,
                         " s allowed to reach it); again with more"));
        lead *= 2;
        continue;
      }
      report.figures.push_back(absl::StrCat(
          kind, ": compute began ", abandoned.begun_after,
          " s after the send; next small request answered ", abandoned.next,
          " s after the abandonment (the uncancelled call takes ", big.seconds,
          " s)"));
      // The abandoned compute stopped between tiles rather than running to
      // its end: the small request, computed after it on the one batch
      // worker, was answered after the server counted it.
      EXPECT_EQ(ServerMetric(*server, kComputesStopped), stopped_before + 1)
          << kind;
      // The deadline's allowance: the way in as the cancel saw it, and a
      // little, so that the deadline still falls early in the compute.
      lead = std::max(lead, abandoned.begun_after + 0.1);
    }
    EXPECT_TRUE(abandoned.mid_compute)
        << kind << ": never abandoned mid-compute";
    report.faults.push_back(kind + " mid-compute");
  }
  report.requests += 4;
  report.Print();
  EXPECT_EQ(report.lost, 0);
  ExpectServing(*server, "after the cancellations");
  PrintLogOnFailure(server.get());
}

// ---------------------------------------------------------------------------
// (d) Clients that never read.

// A client-library client sending one small request every 50 ms until
// Stop(), with the library's default retries of UNAVAILABLE.
class WellBehavedClient {
 public:
  explicit WellBehavedClient(const std::string& target) {
    client::ClientOptions options;
    options.target = target;
    absl::StatusOr<std::unique_ptr<client::Client>> c =
        client::Client::Create(options);
    EXPECT_TRUE(c.ok()) << c.status();
    if (c.ok()) client_ = *std::move(c);
    thread_ = std::thread([this] { Run(); });
  }
  ~WellBehavedClient() { Stop(); }
  WellBehavedClient(const WellBehavedClient&) = delete;
  WellBehavedClient& operator=(const WellBehavedClient&) = delete;

  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int64_t ok() const { return ok_.load(); }
  int64_t failed() const { return failed_.load(); }
  double worst_seconds() const {
    return static_cast<double>(worst_ms_.load()) / 1000.0;
  }

 private:
  void Run() {
    if (client_ == nullptr) return;
    std::vector<float> q = testing::RampValues(48, 1);
    std::vector<float> k = testing::RampValues(64, 2);
    client::ScoreRequest request;
    request.query = {DType::kFloat32, {1, 2, 3, 8}, q.data(), size_t{48} * 4};
    request.key = {DType::kFloat32, {1, 2, 4, 8}, k.data(), size_t{64} * 4};
    client::CallOptions options;
    options.timeout = absl::Seconds(20);
    const auto give_up = Clock::now() + std::chrono::seconds(150);
    while (!stop_.load() && Clock::now() < give_up) {
      const auto start = Clock::now();
      absl::StatusOr<client::ScoreResult> r = client_->Score(request, options);
      const auto ms = static_cast<int64_t>(SecondsSince(start) * 1000);
      if (ms > worst_ms_.load()) worst_ms_.store(ms);
      if (r.ok()) {
        ok_.fetch_add(1);
      } else {
        failed_.fetch_add(1);
        std::cout << "well-behaved client failed: " << r.status() << "\n";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  std::unique_ptr<client::Client> client_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> ok_{0}, failed_{0}, worst_ms_{0};
  std::thread thread_;  // last: starts after the members it uses
};

// A ScoreStream that writes `count` large-reply requests and never reads.
// Write blocks once the server stops reading; Cancel() ends it.
class NonReadingStream {
 public:
  NonReadingStream(v1::AttentionScorer::Stub& stub, int index, int count) {
    context_.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::seconds(120));
    stream_ = stub.ScoreStream(&context_);
    thread_ = std::thread([this, index, count] {
      for (int i = 0; i < count; ++i) {
        if (!stream_->Write(testing::LargeReplyRequest(
                absl::StrCat("never-read", index, "-", i)))) {
          return;
        }
        written_.fetch_add(1);
      }
    });
  }
  ~NonReadingStream() { Cancel(); }
  NonReadingStream(const NonReadingStream&) = delete;
  NonReadingStream& operator=(const NonReadingStream&) = delete;

  void Cancel() {
    if (!thread_.joinable()) return;
    context_.TryCancel();
    thread_.join();
    stream_->Finish();  // CANCELLED, at once
  }
  int written() const { return written_.load(); }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ScoreRequest, v1::ScoreResponse>>
      stream_;
  std::atomic<int> written_{0};
  std::thread thread_;  // last: starts after the members it uses
};

// Attack (i): four streams that write 64 large-reply requests each and never
// read, held until every write went through or the server stopped reading (no
// write for 3 s), at most 30 s. The peak RSS sampled meanwhile.
int64_t HoldNonReadingStreams(v1::AttentionScorer::Stub& stub, pid_t pid,
                              FaultReport* report) {
  testing::RssSampler sampler(pid);
  std::vector<std::unique_ptr<NonReadingStream>> streams;
  streams.reserve(4);
  for (int s = 0; s < 4; ++s) {
    streams.push_back(std::make_unique<NonReadingStream>(stub, s, 64));
  }
  report->faults.push_back(
      "4 ScoreStreams x 64 requests for 16 MiB of logits, never read");
  int last = -1;
  auto last_change = Clock::now();
  const auto give_up = Clock::now() + std::chrono::seconds(30);
  while (Clock::now() < give_up &&
         Clock::now() - last_change < std::chrono::seconds(3)) {
    int total = 0;
    for (const auto& s : streams) total += s->written();
    if (total != last) last = total, last_change = Clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::string written;
  for (const auto& s : streams) absl::StrAppend(&written, s->written(), " ");
  report->figures.push_back(
      "requests written per stream (of 64) before the server stopped "
      "reading or all went through: " +
      written);
  report->requests += int64_t{4} * 64;
  streams.clear();  // cancels them
  return sampler.peak();
}

TEST(FaultTest, ClientsThatNeverReadLeaveTheServerUnderOneGiB) {
  // Default flags (the harness's --threads 1 aside).
  std::unique_ptr<ServerProcess> server = StartServer({});
  ASSERT_NE(server, nullptr);
  FaultReport report("never-read");
  std::unique_ptr<v1::AttentionScorer::Stub> stub =
      v1::AttentionScorer::NewStub(server->NewChannel());
  WellBehavedClient good(server->target());
  const int64_t before_streams = good.ok();
  const int64_t streams_peak =
      HoldNonReadingStreams(*stub, server->pid(), &report);
  const int64_t during_streams = good.ok() - before_streams;
  report.figures.push_back(absl::StrCat(
      "peak RSS while the streams were held: ", testing::MiB(streams_peak),
      "; well-behaved requests answered meanwhile: ", during_streams));
  const int64_t before_qod = good.ok();
  {
    testing::RssSampler sampler(server->pid());
    const UnaryCall qod = Score(*stub, testing::QueryOfDeathRequest());
    report.faults.push_back(
        "the query of death (ALiBi causal B1 H2 "
        "Lq=Lk=8192 D=Dv=1, context only)");
    ++report.requests;
    report.figures.push_back(
        absl::StrCat("query of death: ", Describe(qod.status), " in ",
                     qod.seconds, " s, peak RSS ", testing::MiB(sampler.peak()),
                     "; well-behaved requests answered meanwhile: ",
                     good.ok() - before_qod));
    EXPECT_TRUE(qod.status.ok()) << Describe(qod.status);
  }
  // At least one more well-behaved request after the attacks.
  const int64_t before_end = good.ok();
  EXPECT_TRUE(WaitFor([&] { return good.ok() > before_end; }, absl::Seconds(30),
                      absl::Milliseconds(10)));
  good.Stop();
  const testing::MemoryFigures memory = testing::ReadMemory(server->pid());
  report.figures.push_back(absl::StrCat(
      "server VmHWM ", testing::MiB(memory.hwm_bytes), ", VmRSS now ",
      testing::MiB(memory.rss_bytes), "; well-behaved client ", good.ok(),
      " OK, ", good.failed(), " failed, slowest ", good.worst_seconds(), " s"));
  report.classes = {"ScoreStream never read (16 MiB replies)",
                    "unary query of death",
                    "well-behaved unary small requests (client library)"};
  report.requests += good.ok() + good.failed();
  report.lost = good.failed();
  report.Print();
  EXPECT_GT(memory.hwm_bytes, 0);
  EXPECT_LT(memory.hwm_bytes, kGiB);
  EXPECT_GE(during_streams, 1) << "starved while the streams were held";
  EXPECT_EQ(report.lost, 0);
  ExpectServing(*server, "after the attacks");
  PrintLogOnFailure(server.get());
}

}  // namespace
}  // namespace attnscore::fault
