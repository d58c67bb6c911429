// Flags every `attnscore` subcommand shares (where the server is, how to reach
// it) and small helpers for the subcommands. Each flag also reads an
// ATTNSCORE_* environment variable, so a container or a CI job can point the
// tool at a deployment once; a flag on the command line wins.
//
// Exit codes used by every subcommand: 0 success, 1 the operation failed (RPC
// error, not serving, error rate over the limit), 2 usage or set-up error (bad
// flag, unreadable file).
//
// Thread safety: main-thread only.
#ifndef ATTNSCORE_CLIENT_CLI_COMMON_FLAGS_H_
#define ATTNSCORE_CLIENT_CLI_COMMON_FLAGS_H_

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace attnscore::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;

// Attempts per call when --retry-attempts is not given.
inline constexpr int kDefaultRetryAttempts = 5;

struct GlobalFlags {
  std::string target = "127.0.0.1:50051";
  std::string timeout = "30s";
  std::string load_balancing = "round_robin";
  // 0: not given: kDefaultRetryAttempts, 1 for `load` (each request is
  // measured as the server answered it). `health` always makes one attempt.
  int retry_attempts = 0;
  int retry_max_tokens = 100;
  std::string max_reconnect_backoff = "10s";
  // ClientOptions::chunked_reply_bytes.
  int64_t chunked_reply_bytes =
      attnscore::client::ClientOptions().chunked_reply_bytes;
  bool tls = false;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_server_name;
  std::string token;
  bool insecure_token = false;
};

void AddGlobalFlags(CLI::App& app, GlobalFlags& flags);

// "1.5" (seconds), or an absl duration such as "500ms", "20s", "2m"; "inf" for
// none.
absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view flag,
                                                 absl::string_view text);

// A client from the flags; `connections` independent channels.
absl::StatusOr<std::unique_ptr<client::Client>> MakeClient(
    const GlobalFlags& flags, int connections = 1);

// Prints "attnscore <command>: <status>" to stderr and returns `exit_code`.
int Fail(absl::string_view command, const absl::Status& status, int exit_code);

}  // namespace attnscore::cli

#endif  // ATTNSCORE_CLIENT_CLI_COMMON_FLAGS_H_
