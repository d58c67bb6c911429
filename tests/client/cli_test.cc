// The `attnscore` CLI as a subprocess against real servers: every golden case
// through `score`, `health` exit codes, `models`/`info` JSON, `load` reports
// (JSON consistency, CSV, open loop, streams, the error-rate exit code),
// `load` through round_robin over three servers with one of them SIGKILLed
// mid-run (no failed request reported), `health --wait` for a server that
// starts late, and the CLI exiting once its work is done.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/client/golden_support.h"
#include "tests/testing/golden.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::testing {
namespace {

using ::testing::HasSubstr;

CommandResult Cli(const std::vector<std::string>& args,
                  absl::Duration timeout = absl::Seconds(60)) {
  std::vector<std::string> argv = {CliBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult result = RunCommand(argv, timeout);
  EXPECT_FALSE(result.timed_out) << absl::StrJoin(argv, " ") << "\n"
                                 << result.output;
  return result;
}

std::unique_ptr<ServerProcess> StartServer(const ServerOptions& options = {}) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// Checks the invariants every `load --format json` report must satisfy.
void ExpectConsistentReport(const nlohmann::json& j) {
  const int64_t count = j["count"].get<int64_t>();
  EXPECT_EQ(count, j["ok"].get<int64_t>() + j["errors"].get<int64_t>());
  int64_t by_code = 0;
  for (const auto& [code, n] : j["status_codes"].items()) {
    by_code += n.get<int64_t>();
  }
  EXPECT_EQ(by_code, count);
  EXPECT_EQ(j["status_codes"].value("OK", 0), j["ok"].get<int64_t>());
  int64_t in_histogram = 0;
  for (const auto& bucket : j["histogram"]) {
    in_histogram += bucket["count"].get<int64_t>();
  }
  EXPECT_EQ(in_histogram, count);
  int64_t by_kind = 0;
  for (const auto& kind : j["kinds"]) by_kind += kind["count"].get<int64_t>();
  EXPECT_EQ(by_kind, count);
  const auto& latency = j["latency_ms"];
  double previous = latency["fastest"].get<double>();
  for (const char* p :
       {"p10", "p25", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99"}) {
    const double value = latency[p].get<double>();
    EXPECT_GE(value, previous) << p;
    previous = value;
  }
  EXPECT_LE(previous, latency["slowest"].get<double>());
  EXPECT_GE(latency["average"].get<double>(), latency["fastest"].get<double>());
  EXPECT_LE(latency["average"].get<double>(), latency["slowest"].get<double>());
  // RPS is count over the run's wall time.
  const double total_s = j["total_ms"].get<double>() / 1000;
  ASSERT_GT(total_s, 0);
  EXPECT_NEAR(j["rps"].get<double>(), count / total_s,
              1e-6 * count / total_s + 1e-9);
  // A request's latency cannot exceed the whole run.
  EXPECT_LE(latency["slowest"].get<double>(), j["total_ms"].get<double>() + 1);
}

nlohmann::json LoadJson(const std::string& path) {
  const std::string text = ReadFileOrEmpty(path);
  nlohmann::json j =
      nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << text;
  return j;
}

TEST(CliTest, EveryGoldenCaseThroughScore) {
  absl::StatusOr<std::vector<GoldenCase>> cases = LoadGoldenCases();
  ASSERT_TRUE(cases.ok()) << cases.status();
  TempDir dir;
  const std::string models = dir.File("models");
  std::filesystem::create_directory(models);
  ASSERT_TRUE(WriteGoldenModels(*cases, models).ok());
  ServerOptions options;
  options.model_dir = models;
  std::unique_ptr<ServerProcess> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  int n = 0;
  for (const GoldenCase& golden : *cases) {
    SCOPED_TRACE(golden.name);
    const std::string out = dir.File(CaseStem(golden) + ".out.safetensors");
    std::vector<std::string> args = {
        "score",     GoldenDir() + "/" + golden.name,
        "--target",  server->target(),
        "--outputs", golden.has("v") ? "logits,probs,context" : "logits,probs",
        "-o",        out};
    // The golden file as it is; only the server-side model name is ours.
    if (golden.relative()) {
      args.insert(args.end(), {"--model", CaseStem(golden)});
    }
    // Exercise the stream path on every other case, and the chunked replies
    // (ScoreChunked, whatever the size) on every third.
    if (n % 2 == 1) args.push_back("--stream");
    if (n++ % 3 == 0) args.insert(args.end(), {"--chunked-reply-bytes", "1"});
    CommandResult run = Cli(args);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Read(out);
    ASSERT_TRUE(file.ok()) << file.status();
    client::ScoreResult result;
    for (const char* name : {"logits", "probs", "context"}) {
      const SafetensorsFile::Tensor* t = file->Find(name);
      if (t == nullptr) continue;
      std::optional<client::Tensor>& slot =
          std::string(name) == "logits"  ? result.logits
          : std::string(name) == "probs" ? result.probs
                                         : result.context;
      slot = *client::Tensor::FromBytes(DType::kFloat32, t->shape,
                                        t->bytes.data(), t->bytes.size());
    }
    EXPECT_EQ(CompareWithGolden(golden, result), "");
    EXPECT_EQ(file->metadata().at("causal"), golden.options.at("causal"));
    EXPECT_EQ(file->metadata().at("mode"), golden.options.at("mode"));
  }
}

TEST(CliTest, ScoreReportsErrors) {
  std::unique_ptr<ServerProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  const std::string relative = GoldenDir() + "/relative_causal.safetensors";
  CommandResult run = Cli({"score", relative, "--target", server->target()});
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_THAT(run.output, HasSubstr("--model"));
  run = Cli(
      {"score", relative, "--target", server->target(), "--model", "absent"});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("NOT_FOUND"));
  EXPECT_THAT(run.output, HasSubstr("absent"));
  run =
      Cli({"score", "/nonexistent.safetensors", "--target", server->target()});
  EXPECT_EQ(run.exit_code, 2) << run.output;
  run = Cli({"score", "--bogus-flag"});
  EXPECT_EQ(run.exit_code, 2) << run.output;
  for (const char* backoff : {"0", "soon"}) {
    run = Cli({"models", "--target", server->target(),
               "--max-reconnect-backoff", backoff});
    EXPECT_EQ(run.exit_code, 2) << backoff << ": " << run.output;
    EXPECT_THAT(run.output, HasSubstr("--max-reconnect-backoff")) << backoff;
  }
  run = Cli({"models", "--target", server->target(), "--max-reconnect-backoff",
             "200ms"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  run = Cli(
      {"models", "--target", server->target(), "--chunked-reply-bytes", "-1"});
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_THAT(run.output, HasSubstr("--chunked-reply-bytes"));
}

TEST(CliTest, HealthModelsAndInfo) {
  ServerOptions slow;
  // Readiness stays NOT_SERVING for a while after the port opens.
  slow.extra_args = {"--warmup-delay-ms", "2000"};
  slow.wait_ready = false;
  std::unique_ptr<ServerProcess> server = StartServer(slow);
  ASSERT_NE(server, nullptr);
  CommandResult run =
      Cli({"health", "--target", server->target(), "--service", ""});
  EXPECT_EQ(run.exit_code, 0) << run.output;  // liveness
  run = Cli({"health", "--target", server->target()});
  EXPECT_EQ(run.exit_code, 1) << run.output;  // readiness, still warming up
  EXPECT_THAT(run.output, HasSubstr("NOT_SERVING"));
  run = Cli({"health", "--target", server->target(), "--wait", "30s"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("SERVING"));
  run = Cli(
      {"health", "--target", server->target(), "--service", "no.such.Service"});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("SERVICE_UNKNOWN"));

  run = Cli({"info", "--target", server->target(), "--format", "json"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  nlohmann::json info = nlohmann::json::parse(run.output);
  EXPECT_EQ(info["device"], "cpu");
  EXPECT_GT(info["limits"]["max_output_bytes"].get<int64_t>(), 0);
  EXPECT_EQ(info["shared_memory"]["prefix"], "");  // off by default
  EXPECT_EQ(info["shared_memory"]["max_regions"].get<int64_t>(), 64);
  // What the server computes on, and who chose it.
  EXPECT_FALSE(info["kernels"]["isa"].get<std::string>().empty());
  EXPECT_FALSE(info["kernels"]["cpu_model"].get<std::string>().empty());
  EXPECT_FALSE(info["kernels"]["omp_wait_source"].get<std::string>().empty());
  EXPECT_TRUE(info["kernels"].contains("below_cpu"));
  const std::string isa = info["kernels"]["isa"];
  const std::string below = info["kernels"]["below_cpu"];
  run = Cli({"info", "--target", server->target()});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("shared memory     off"));
  EXPECT_THAT(run.output,
              HasSubstr("kernels           isa " + isa + ", BLAS "));
  // The warning line exactly when the server reports a cost (an operator's
  // OPENBLAS_CORETYPE below the CPU in this test's environment, say).
  EXPECT_EQ(run.output.find("kernels warning   ") != std::string::npos,
            !below.empty())
      << run.output;
  run = Cli({"models", "--target", server->target(), "--format", "json"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_TRUE(nlohmann::json::parse(run.output).is_array());

  const int port = server->port();
  server.reset();
  run = Cli({"health", "--target", absl::StrCat("127.0.0.1:", port),
             "--timeout", "2s"});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("UNAVAILABLE"));
}

// A loopback port that was free a moment ago.
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    port = ntohs(address.sin_port);
  }
  close(fd);
  return port;
}

// `health --wait` started before the server: it must answer SERVING soon after
// the server is ready, not when gRPC's growing reconnect backoff (1 s, 2.6 s,
// 5.2 s, ...) and its 5 s backup poll next notice the connection. Before the
// client library shortened the poll and the CLI capped the backoff at 1 s it
// answered 7-9 s after readiness here; now within about 1 s.
TEST(CliTest, HealthWaitAnswersSoonAfterALateServerIsReady) {
  ServerOptions options;
  options.port = FreePort();
  ASSERT_GT(options.port, 0);
  CommandResult run;
  absl::Time answered;
  std::thread probe([&] {
    run =
        RunCommand({CliBinary(), "health", "--target",
                    absl::StrCat("127.0.0.1:", options.port), "--wait", "60s"},
                   absl::Seconds(90));
    answered = absl::Now();
  });
  // Its first attempts find nothing listening.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  std::unique_ptr<ServerProcess> server = StartServer(options);
  const absl::Time ready = absl::Now();
  probe.join();
  ASSERT_NE(server, nullptr);
  EXPECT_FALSE(run.timed_out);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("SERVING"));
  EXPECT_LT(answered - ready, absl::Seconds(3))
      << "answered " << absl::FormatDuration(answered - ready)
      << " after the server was ready";
}

// The CLI exits once its report is written. gRPC 1.51's final shutdown, run by
// the last channel's destructor, could wait 10 s for a backup poller: about
// one `load` in two that followed a busier one sat there (the client library
// now keeps gRPC initialised for the life of the process).
TEST(CliTest, ExitsOnceItsWorkIsDone) {
  std::unique_ptr<ServerProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  TempDir dir;
  const std::string report = dir.File("report.json");
  for (int round = 0; round < 4; ++round) {
    CommandResult busy =
        Cli({"load", "--target", server->target(), "--preset", "decode", "-c",
             "64", "-n", "50", "--warmup", "0"});
    ASSERT_EQ(busy.exit_code, 0) << busy.output;
    const absl::Time start = absl::Now();
    CommandResult lone = Cli({"load", "--target", server->target(), "--preset",
                              "decode", "-c", "1", "-n", "20", "--warmup", "0",
                              "--format", "json", "-o", report});
    const absl::Duration wall = absl::Now() - start;
    ASSERT_EQ(lone.exit_code, 0) << lone.output;
    const nlohmann::json j = LoadJson(report);
    const absl::Duration work = absl::Milliseconds(j["total_ms"].get<double>());
    EXPECT_LT(wall - work, absl::Seconds(3))
        << "round " << round << ": the process ran "
        << absl::FormatDuration(wall) << " for " << absl::FormatDuration(work)
        << " of load";
  }
}

// --shared-memory: every request names its inputs in a region registered for
// the run, and the run leaves no registration behind. A server without
// shared memory refuses it before anything is sent.
TEST(CliTest, LoadWithSharedMemoryInputs) {
  ServerOptions options;
  options.metrics = true;
  options.extra_args = {"--shm-prefix", "attnscore-test-"};
  std::unique_ptr<ServerProcess> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  TempDir dir;
  const std::string report = dir.File("report.json");
  CommandResult run =
      Cli({"load", "--target", server->target(), "--preset", "mixed",
           "--outputs", "logits,context", "-c", "4", "-n", "40",
           "--shared-memory", "--format", "json", "-o", report});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json j = LoadJson(report);
  ExpectConsistentReport(j);
  EXPECT_EQ(j["ok"], 40) << j["errors_by_message"].dump();
  EXPECT_EQ(j["options"]["inputs"], "shared memory");
  // The requests carried ranges: far fewer bytes reached the server than the
  // inputs' (a decode request alone has 8 MiB of keys and values).
  absl::StatusOr<std::string> metrics = server->ScrapeMetrics();
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_LT(ServerProcess::SumMetric(*metrics, "attnscore_request_bytes_total"),
            1 << 20);
  // And unregistered the region when it was done (the CLI runs as the same
  // anonymous identity as this client).
  client::ClientOptions client_options;
  client_options.target = server->target();
  absl::StatusOr<std::unique_ptr<client::Client>> client =
      client::Client::Create(client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<std::vector<client::SharedMemoryRegistration>> regions =
      (*client)->SharedMemoryStatus();
  ASSERT_TRUE(regions.ok()) << regions.status();
  EXPECT_TRUE(regions->empty()) << (*regions)[0].name;
  run = Cli({"load", "--target", server->target(), "-n", "4", "--format",
             "json", "-o", report});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(LoadJson(report)["options"]["inputs"], "in the request");
  EXPECT_EQ(LoadJson(report)["options"]["outputs"], "in the reply");

  // --shared-outputs: the server writes the outputs into the region, one
  // slot per request in flight, and the replies carry ranges: far fewer
  // bytes than the 40 x 128 KiB of logits and probs.
  absl::StatusOr<std::string> before = server->ScrapeMetrics();
  ASSERT_TRUE(before.ok()) << before.status();
  run = Cli({"load", "--target", server->target(), "--preset", "decode",
             "--outputs", "logits,probs", "-c", "4", "-n", "40",
             "--shared-memory", "--shared-outputs", "--format", "json", "-o",
             report});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json placed = LoadJson(report);
  ExpectConsistentReport(placed);
  EXPECT_EQ(placed["ok"], 40) << placed["errors_by_message"].dump();
  EXPECT_EQ(placed["options"]["outputs"], "shared memory");
  absl::StatusOr<std::string> after = server->ScrapeMetrics();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_LT(
      ServerProcess::SumMetric(*after, "attnscore_response_bytes_total") -
          ServerProcess::SumMetric(*before, "attnscore_response_bytes_total"),
      256 << 10);
  run = Cli(
      {"load", "--target", server->target(), "-n", "4", "--shared-outputs"});
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("--shared-memory"));

  // --timeout is the measured requests' deadline: one that no call can meet
  // fails every request (counted), not the run's set-up and clean-up (the
  // region's registration and removal get at least 10 s).
  // (Requests that take milliseconds: gRPC's deadline timer is coarser than
  // 1 us, and a decode step can finish before it fires.)
  run = Cli({"load", "--target", server->target(), "--timeout", "1us",
             "--shape", "1,8,1024,1024,64", "-c", "1", "-n", "3",
             "--shared-memory", "--shared-outputs", "--max-error-rate", "1",
             "--format", "json", "-o", report});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(LoadJson(report)["status_codes"]["DEADLINE_EXCEEDED"], 3)
      << LoadJson(report)["errors_by_message"].dump();
  regions = (*client)->SharedMemoryStatus();
  ASSERT_TRUE(regions.ok()) << regions.status();
  EXPECT_TRUE(regions->empty()) << (*regions)[0].name;

  std::unique_ptr<ServerProcess> plain = StartServer();
  ASSERT_NE(plain, nullptr);
  run =
      Cli({"load", "--target", plain->target(), "-n", "4", "--shared-memory"});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("--shared-memory: the server has shared "
                                    "memory off"));
}

TEST(CliTest, LoadJsonReportIsConsistent) {
  std::unique_ptr<ServerProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  TempDir dir;
  const std::string report = dir.File("report.json");
  CommandResult run =
      Cli({"load", "--target", server->target(), "-c", "4", "-n", "120",
           "--shape", "1,4,16,16,32:3", "--shape", "2,4,1,64,32", "--format",
           "json", "-o", report, "--warmup", "8"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json j = LoadJson(report);
  ExpectConsistentReport(j);
  EXPECT_EQ(j["count"], 120);
  EXPECT_EQ(j["errors"], 0);
  EXPECT_EQ(j["kinds"].size(), 2u);
  EXPECT_EQ(j["kinds"][0]["name"], "B1,H4,Lq16,Lk16,D32");
  EXPECT_GE(j["server"]["batch_size"]["mean"].get<double>(), 1.0);
  EXPECT_GT(j["server"]["compute_ms"]["p50"].get<double>(), 0.0);
  EXPECT_FALSE(j["open_loop"].get<bool>());

  // CSV: a header, one row per kind, and "all".
  run = Cli({"load", "--target", server->target(), "-c", "2", "-n", "20",
             "--preset", "decode", "--format", "csv"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::vector<std::string> lines =
      absl::StrSplit(run.output, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << run.output;
  EXPECT_THAT(lines[2], HasSubstr("all,20,20,0,"));
}

TEST(CliTest, LoadOpenLoopAndStreams) {
  std::unique_ptr<ServerProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  TempDir dir;
  // Open loop: 60 requests at 100/s take about 0.6 s whatever the latency.
  const std::string open = dir.File("open.json");
  CommandResult run =
      Cli({"load", "--target", server->target(), "-r", "100", "-n", "60",
           "--shape", "1,2,8,8,16", "--format", "json", "-o", open});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  nlohmann::json j = LoadJson(open);
  ExpectConsistentReport(j);
  EXPECT_TRUE(j["open_loop"].get<bool>());
  EXPECT_EQ(j["count"], 60);
  EXPECT_GE(j["total_ms"].get<double>(), 590 - 1);
  EXPECT_LE(j["rps"].get<double>(), 102);

  // Streams over two connections, with outputs and dtypes.
  const std::string streamed = dir.File("stream.json");
  run = Cli({"load",
             "--target",
             server->target(),
             "--stream",
             "--connections",
             "2",
             "-c",
             "8",
             "-n",
             "80",
             "--shape",
             "1,2,8,8,16",
             "--outputs",
             "probs,context",
             "--dtype",
             "F16",
             "--format",
             "json",
             "-o",
             streamed});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  j = LoadJson(streamed);
  ExpectConsistentReport(j);
  EXPECT_EQ(j["count"], 80);
  EXPECT_EQ(j["ok"], 80);
  EXPECT_EQ(j["options"]["transport"], "ScoreStream");

  // Duration-bounded run.
  run = Cli({"load", "--target", server->target(), "-z", "0.5s", "-c", "2",
             "--shape", "1,2,8,8,16", "--format", "json"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  j = nlohmann::json::parse(run.output);
  ExpectConsistentReport(j);
  EXPECT_GT(j["count"].get<int64_t>(), 0);
}

TEST(CliTest, LoadExitCodeFollowsTheErrorRate) {
  ServerOptions options;
  options.extra_args = {"--max-seq-len", "32"};
  std::unique_ptr<ServerProcess> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  // Lk 64 > the server's limit: every request fails with INVALID_ARGUMENT.
  TempDir dir;
  const std::string report = dir.File("report.json");
  CommandResult run =
      Cli({"load", "--target", server->target(), "-c", "2", "-n", "10",
           "--shape", "1,2,8,64,16", "--format", "json", "-o", report});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("exceeds --max-error-rate"));
  nlohmann::json j = LoadJson(report);
  ExpectConsistentReport(j);
  EXPECT_EQ(j["errors"], 10);
  EXPECT_EQ(j["status_codes"]["INVALID_ARGUMENT"], 10);
  EXPECT_EQ(j["errors_by_message"].size(), 1u);
  // Tolerated at 100%.
  run = Cli({"load", "--target", server->target(), "-c", "2", "-n", "10",
             "--shape", "1,2,8,64,16", "--max-error-rate", "1", "--format",
             "csv"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  // A model the server does not have: refused before sending, as a usage error.
  run = Cli({"load", "--target", server->target(), "--mode", "relative",
             "--model", "nope", "-n", "5"});
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_THAT(run.output, HasSubstr("nope"));
}

// A load test measures each request as the server answered it: no retries
// unless --retry-attempts asks for them (they would hide the server's
// UNAVAILABLE and count their backoff as latency).
TEST(CliTest, LoadSendsEachRequestOnceUnlessAskedToRetry) {
  // One request waits in the queue for 2 s (the batching delay); the queue
  // holds no other, so the rest are refused UNAVAILABLE at once.
  ServerOptions options;
  options.metrics = true;
  options.extra_args = {"--max-queue",          "1",
                        "--max-queue-delay-us", "2000000",
                        "--max-batch-size",     "64"};
  std::unique_ptr<ServerProcess> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  TempDir dir;
  const std::string report = dir.File("report.json");
  const std::string unavailable =
      "attnscore_requests_total{method=\"Score\",code=\"UNAVAILABLE\"";
  CommandResult run =
      Cli({"load", "--target", server->target(), "-c", "4", "-n", "4",
           "--shape", "1,2,8,8,16", "--max-error-rate", "1", "--format", "json",
           "-o", report});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  nlohmann::json j = LoadJson(report);
  EXPECT_EQ(j["options"]["retries"], "none (each request sent once)");
  const int refused = j["status_codes"].value("UNAVAILABLE", 0);
  EXPECT_GE(refused, 1) << j.dump();
  absl::StatusOr<std::string> metrics = server->ScrapeMetrics();
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(ServerProcess::SumMetric(*metrics, unavailable), refused)
      << *metrics;

  // Asked to retry: the server refuses more attempts than the report counts
  // failures, and the report says so.
  run = Cli({"load", "--target", server->target(), "--retry-attempts", "5",
             "-c", "4", "-n", "4", "--shape", "1,2,8,8,16", "--max-error-rate",
             "1", "--format", "json", "-o", report});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  j = LoadJson(report);
  EXPECT_THAT(j["options"]["retries"].get<std::string>(),
              HasSubstr("up to 5 attempts"));
  metrics = server->ScrapeMetrics();
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_GT(ServerProcess::SumMetric(*metrics, unavailable) - refused,
            j["status_codes"].value("UNAVAILABLE", 0))
      << *metrics;
}

TEST(CliTest, LoadSurvivesAServerKilledMidRun) {
  std::vector<std::unique_ptr<ServerProcess>> servers;
  std::vector<std::string> targets;
  for (int i = 0; i < 3; ++i) {
    ServerOptions options;
    options.metrics = true;
    servers.push_back(StartServer(options));
    ASSERT_NE(servers.back(), nullptr);
    targets.push_back(servers.back()->target());
  }
  TempDir dir;
  const std::string report = dir.File("report.json");
  const std::vector<std::string> argv = {
      CliBinary(), "load", "--target", absl::StrJoin(targets, ","), "--lb",
      "round_robin", "-z", "4s", "-c", "4", "--shape", "1,4,16,256,32",
      "--timeout", "10s",
      // What a client with retries sees
      // (load sends once by default).
      "--retry-attempts", "5", "--max-error-rate", "0", "--format", "json",
      "-o", report};
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    // Every replica has served traffic before the kill: round_robin spreads it.
    for (const auto& server : servers) {
      absl::StatusOr<std::string> metrics = server->ScrapeMetrics();
      EXPECT_TRUE(metrics.ok()) << metrics.status();
      if (metrics.ok()) {
        EXPECT_GT(
            ServerProcess::SumMetric(*metrics, "attnscore_requests_total"), 0)
            << server->target();
      }
    }
    servers[1]->Signal(SIGKILL);
  });
  CommandResult run = RunCommand(argv, absl::Seconds(60));
  killer.join();
  EXPECT_FALSE(run.timed_out);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  absl::StatusOr<int> killed = servers[1]->Wait(absl::Seconds(10));
  ASSERT_TRUE(killed.ok());
  EXPECT_EQ(*killed, 128 + SIGKILL);
  const nlohmann::json j = LoadJson(report);
  ExpectConsistentReport(j);
  EXPECT_GT(j["count"].get<int64_t>(), 20);
  EXPECT_EQ(j["errors"], 0) << j["errors_by_message"].dump();
}

}  // namespace
}  // namespace attnscore::testing
