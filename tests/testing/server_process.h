// Test support: the real attnscore-server binary as a child process on a free
// loopback port, subprocesses with time limits, and the small clients tests
// probe a server with (grpc.health.v1 Check, HTTP GET of the metrics endpoint).
// Used by the end-to-end, client, CLI and install tests (target
// attnscore_server_process). Neither the client library nor LibTorch:
// readiness is probed through the generated grpc.health.v1 stub
// (attnscore_health_proto). TempDir, WaitFor and ReadFile are
// tests/testing/test_util.h's (included here for the tests that use them).
//
// Start() runs the server with `--listen 127.0.0.1:<port> --port-file <tmp>
// --shutdown-grace 5` and the ServerOptions below (the metrics endpoint on a
// free port when asked), waits for the port files and, unless told not to, for
// readiness (grpc.health.v1 SERVING for kReadinessService). The server's stdout
// and stderr go to a log file that Log() returns (tests print it on failure).
//
// Ownership: a ServerProcess owns its child; the destructor stops it (SIGTERM,
// then SIGKILL after a short grace period) and reaps it. Children also get
// SIGKILL when the thread that spawned them dies (PR_SET_PDEATHSIG), so a test
// killed by ctest's timeout leaves nothing behind.
// Thread safety: none; use ServerProcess and RunCommand from the test's main
// thread (PR_SET_PDEATHSIG follows the thread that forked).
// CheckHealth, HttpGet and SumMetric are safe from any thread.
// Errors: absl::Status naming what failed and, for the server, carrying the
// tail of its log. Every wait has a timeout; nothing here blocks forever.
#ifndef ATTNSCORE_TESTS_TESTING_SERVER_PROCESS_H_
#define ATTNSCORE_TESTS_TESTING_SERVER_PROCESS_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "grpc/health/v1/health.pb.h"
#include "tests/testing/test_util.h"

namespace attnscore::testing {

// The grpc.health.v1 service name whose SERVING status means "ready" (warm-up
// done, accepting Score calls); "" is liveness.
inline constexpr const char* kReadinessService =
    v1::AttentionScorer::service_full_name();

struct ServerOptions {
  int port = 0;            // 0: any free port
  std::string model_dir;   // --model-dir when not empty
  bool metrics = false;    // serve /metrics on a free port (metrics_port())
  bool wait_ready = true;  // Start() returns once readiness is SERVING
  int threads = 1;         // --threads: tests share two cores
  std::string log_level = "warn";  // --log-level; "info" to WaitForLog events
  // More server flags, after the ones above: the server takes the last value
  // of a repeated flag, so these override them.
  std::vector<std::string> extra_args;
};

class ServerProcess {
 public:
  // Starts the server built in this tree (ServerBinary()) and waits for its
  // port files (and readiness when options.wait_ready), up to `timeout` in
  // all. INTERNAL if it exits first, DEADLINE_EXCEEDED if it is too slow.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const ServerOptions& options = {},
      absl::Duration timeout = absl::Seconds(60));
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  int port() const { return port_; }
  // 0 unless options.metrics.
  int metrics_port() const { return metrics_port_; }
  // "127.0.0.1:<port>".
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }
  // False once the process has exited (reaps it).
  bool running();

  // A channel to target() without message size limits (score matrices are
  // large).
  std::shared_ptr<grpc::Channel> NewChannel() const;

  // Polls grpc.health.v1 readiness until SERVING.
  absl::Status WaitReady(absl::Duration timeout);
  // kill(pid(), signal) while the process runs.
  void Signal(int signal);
  // The exit code (128 + signal when killed), or DEADLINE_EXCEEDED.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // Everything the server wrote so far.
  std::string Log() const;
  // Whether Log() contains `text` within `timeout`.
  bool WaitForLog(const std::string& text, absl::Duration timeout) const;

  // GET /metrics (REQUIRES: options.metrics; FAILED_PRECONDITION otherwise).
  absl::StatusOr<std::string> ScrapeMetrics() const;
  // Sum of `name` over all label sets in a Prometheus text exposition; a
  // `name` that goes on into the labels (`m{code="OK"`) sums the series whose
  // labels start so.
  static double SumMetric(const std::string& exposition,
                          const std::string& name);

 private:
  ServerProcess() = default;

  std::unique_ptr<TempDir> dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  int exit_code_ = -1;
};

// grpc.health.v1.Health/Check of `service` ("" for liveness); a failed call
// as its gRPC code and message.
absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
            const std::string& service,
            absl::Duration timeout = absl::Seconds(20));

// GET http://127.0.0.1:`port``path` over HTTP/1.0, the body. Reads and writes
// time out after `timeout`: UNAVAILABLE when the connection fails or the status
// is not 200, DEADLINE_EXCEEDED on a stalled read, DATA_LOSS for a reply that
// is not HTTP.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path,
                                    absl::Duration timeout = absl::Seconds(5));

struct CommandResult {
  int exit_code = -1;  // 128 + signal when killed
  bool timed_out = false;
  std::string output;  // stdout and stderr, interleaved
};

// Runs `argv` with ATTNSCORE_* variables removed from the environment (so that
// the developer's settings cannot change a test), killing it after `timeout`.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         absl::Duration timeout = absl::Seconds(60));

// A start-up the server must refuse: its flags, the exit code (2: a flag or
// combination that cannot work, 1: something missing or unusable) and a part
// of the message it must print.
struct StartFailure {
  std::vector<std::string> args;
  int exit_code = 0;
  std::string message;
};

// ServerBinary() with `--listen 127.0.0.1:0 --metrics-listen off` and `args`,
// run until it exits (RunCommand): for start-ups that must fail.
CommandResult RunServerUntilExit(const std::vector<std::string>& args,
                                 absl::Duration timeout = absl::Seconds(60));

// Paths from the build (compile definitions). CliBinary() is "" when this tree
// does not build the `attnscore` CLI.
std::string ServerBinary();
std::string CliBinary();

}  // namespace attnscore::testing

#endif  // ATTNSCORE_TESTS_TESTING_SERVER_PROCESS_H_
