// Test support: the real attnscore-server binary as a child process on a free
// port.
//
// Start() runs it with `--listen 127.0.0.1:0 --port-file <tmp>` (and the
// metrics endpoint on a free port), waits for the port file, and returns; every
// wait is bounded. The child gets SIGKILL if the test process dies
// (PR_SET_PDEATHSIG) and in the destructor if still running, so a failing test
// never leaves a server behind. Its stdout and stderr go to a log file that
// Log() returns (tests print it on failure).
//
// Thread safety: none; use from the test's main thread (PR_SET_PDEATHSIG
// follows the thread that forked).
#ifndef ATTNSCORE_TESTS_E2E_SERVER_PROCESS_H_
#define ATTNSCORE_TESTS_E2E_SERVER_PROCESS_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attnscore::e2e {

// A fresh directory under the test temp dir, removed (recursively) on
// destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class ServerProcess {
 public:
  // `args` come after the listen/port-file flags (and may override them).
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      std::vector<std::string> args);
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const;
  pid_t pid() const { return pid_; }

  // A channel without message size limits (score matrices are large).
  std::shared_ptr<grpc::Channel> NewChannel() const;

  void Signal(int sig) const;
  // The exit code (or 128 + signal number if killed) once the process has
  // exited within `timeout`, else nullopt.
  std::optional<int> WaitForExit(std::chrono::milliseconds timeout);
  // Everything the server wrote so far.
  std::string Log() const;
  // Whether Log() contains `text` within `timeout`.
  bool WaitForLog(const std::string& text,
                  std::chrono::milliseconds timeout) const;

  // Path of the server binary (ATTNSCORE_BINARY_DIR/server/attnscore-server).
  static std::string BinaryPath();

 private:
  ServerProcess() = default;

  std::unique_ptr<TempDir> dir_;
  std::string log_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  int port_ = 0;
  int metrics_port_ = 0;
};

}  // namespace attnscore::e2e

#endif  // ATTNSCORE_TESTS_E2E_SERVER_PROCESS_H_
