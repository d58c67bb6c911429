// Test support: real attnscore-server processes on loopback port 0,
// subprocesses with time limits, temporary directories and a minimal /metrics
// scrape. Used by the client library, CLI and install tests; any end-to-end
// test can link it (target attnscore_client_test_support).
//
// Ownership: a ServerProcess owns its child; the destructor stops it (SIGTERM,
// then SIGKILL after a grace period) and reaps it. Children also get SIGKILL
// when the test process dies (PR_SET_PDEATHSIG), so a test killed by ctest's
// timeout leaves nothing behind. TempDir removes its directory when destroyed.
// Thread safety: none; use from the test's main thread.
// Errors: absl::Status naming the command and carrying the tail of the child's
// log. Every wait has a timeout; nothing here blocks forever.
#ifndef ATTNSCORE_TESTS_CLIENT_SERVER_PROCESS_H_
#define ATTNSCORE_TESTS_CLIENT_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace attnscore::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on
// destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct ServerOptions {
  int port = 0;            // 0: any free port
  std::string model_dir;   // --model-dir when not empty
  bool metrics = false;    // serve /metrics on a free port (metrics_port())
  bool wait_ready = true;  // Start() returns once readiness is SERVING
  std::vector<std::string> extra_args;  // more server flags
};

class ServerProcess {
 public:
  // Starts the server built in this tree (ATTNSCORE_SERVER_BIN) and waits for
  // its port file (and readiness when options.wait_ready), up to `timeout`.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const ServerOptions& options = {},
      absl::Duration timeout = absl::Seconds(60));
  ~ServerProcess();

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }
  bool running();

  // Polls grpc.health.v1 readiness until SERVING.
  absl::Status WaitReady(absl::Duration timeout);
  void Signal(int signal);
  // The exit code (128 + signal when killed), or DEADLINE_EXCEEDED.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  std::string Log() const;

  // GET /metrics (REQUIRES: options.metrics).
  absl::StatusOr<std::string> ScrapeMetrics() const;
  // Sum of `name` over all label sets in a Prometheus text exposition.
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

struct CommandResult {
  int exit_code = -1;  // 128 + signal when killed
  bool timed_out = false;
  std::string output;  // stdout and stderr, interleaved
};

// Runs `argv` with ATTNSCORE_* variables removed from the environment (so that
// the developer's settings cannot change a test), killing it after `timeout`.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         absl::Duration timeout = absl::Seconds(60));

// Paths from the build (compile definitions).
std::string ServerBinary();
std::string CliBinary();

}  // namespace attnscore::testing

#endif  // ATTNSCORE_TESTS_CLIENT_SERVER_PROCESS_H_
