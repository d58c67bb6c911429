#include "client/cli/common_flags.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/cli_checks.h"

namespace attnscore::cli {

void AddGlobalFlags(CLI::App& app, GlobalFlags& flags) {
  // TLS and credential variables are ATTNSCORE_CLIENT_*: `attnscore health`
  // runs inside the server's container, whose ATTNSCORE_* variables configure
  // the server (a server certificate must never be picked up as the probe's
  // client certificate).
  auto add = [&app](const std::string& name, auto& value,
                    const std::string& env, const std::string& help) {
    return app.add_option(name, value, help)
        ->envname("ATTNSCORE_" + env)
        ->capture_default_str();
  };
  add("--target", flags.target, "TARGET",
      "Server: host:port, dns:///name:port (every address, round-robin), "
      "ipv4:a:p,b:q, unix:/path (a server's --listen-unix socket), or a "
      "comma-separated list host:p,host2:q");
  add("-t,--timeout", flags.timeout, "TIMEOUT",
      "Deadline per call: seconds or a duration such as 500ms, 20s, 2m; inf "
      "for none");
  add("--lb", flags.load_balancing, "LB",
      "Load balancing over resolved addresses")
      ->check(CLI::IsMember({"round_robin", "pick_first"}));
  // No captured default: 0 stands for "not given" (GlobalFlags).
  app.add_option("--retry-attempts", flags.retry_attempts,
                 "Attempts per call on UNAVAILABLE (gRPC retry policy, at most "
                 "5; 1 disables retries). Default 5; `load` 1, so that each "
                 "request is measured as the server answered it")
      ->envname("ATTNSCORE_RETRY_ATTEMPTS")
      ->check(CLI::Range(1, 5));
  add("--retry-max-tokens", flags.retry_max_tokens, "RETRY_MAX_TOKENS",
      "gRPC retry throttling bucket (retries stop at half; 0 disables "
      "throttling)")
      ->check(CLI::Range(0, 1000));
  add("--max-reconnect-backoff", flags.max_reconnect_backoff,
      "MAX_RECONNECT_BACKOFF",
      "Longest wait between connection attempts to a backend that is down "
      "(the first waits 1s or this, whichever is shorter): how soon a "
      "restarted replica gets traffic again");
  add("--chunked-reply-bytes", flags.chunked_reply_bytes, "CHUNKED_REPLY_BYTES",
      "Replies of this many bytes and more are asked for in chunks "
      "(ScoreChunked), copied as they arrive; 0: always whole (Score)")
      ->transform(checks::ByteSize())
      ->check(checks::WholeNumber(0));
  app.add_flag("--tls", flags.tls, "Use TLS")->envname("ATTNSCORE_CLIENT_TLS");
  add("--tls-ca", flags.tls_ca, "CLIENT_TLS_CA",
      "PEM file of root certificates (default: the system's)");
  add("--tls-cert", flags.tls_cert, "CLIENT_TLS_CERT",
      "PEM client certificate chain (mutual TLS)");
  add("--tls-key", flags.tls_key, "CLIENT_TLS_KEY",
      "PEM client private key (mutual TLS)");
  add("--tls-server-name", flags.tls_server_name, "CLIENT_TLS_SERVER_NAME",
      "Expected server certificate name, when it differs from the target's "
      "host");
  add("--token", flags.token, "CLIENT_TOKEN",
      "Bearer token sent as 'authorization: Bearer <token>'");
  app.add_flag("--insecure-token", flags.insecure_token,
               "Allow --token over a plaintext connection")
      ->envname("ATTNSCORE_CLIENT_INSECURE_TOKEN");
}

absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view flag,
                                                 absl::string_view text) {
  double seconds;
  if (absl::SimpleAtod(text, &seconds)) {
    if (seconds < 0) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": negative"));
    }
    return absl::Seconds(seconds);
  }
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": '", text,
        "' is not a duration (seconds, or e.g. 500ms, 20s, 2m, inf)"));
  }
  return d;
}

absl::StatusOr<std::unique_ptr<client::Client>> MakeClient(
    const GlobalFlags& flags, int connections) {
  client::ClientOptions options;
  options.target = flags.target;
  absl::StatusOr<absl::Duration> timeout =
      ParseDurationFlag("--timeout", flags.timeout);
  if (!timeout.ok()) return timeout.status();
  options.default_timeout = *timeout;
  options.load_balancing = flags.load_balancing;
  absl::StatusOr<absl::Duration> max_backoff =
      ParseDurationFlag("--max-reconnect-backoff", flags.max_reconnect_backoff);
  if (!max_backoff.ok()) return max_backoff.status();
  if (*max_backoff < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-reconnect-backoff: expected at least 1ms, got ",
                     flags.max_reconnect_backoff));
  }
  options.reconnect.max_backoff = *max_backoff;
  options.reconnect.initial_backoff =
      std::min(options.reconnect.initial_backoff, *max_backoff);
  const int attempts =
      flags.retry_attempts > 0 ? flags.retry_attempts : kDefaultRetryAttempts;
  options.retry.max_attempts = attempts;
  options.retry.enabled = attempts > 1;
  options.retry.throttle_max_tokens = flags.retry_max_tokens;
  options.tls.enabled =
      flags.tls || !flags.tls_ca.empty() || !flags.tls_cert.empty();
  options.tls.ca_file = flags.tls_ca;
  options.tls.cert_file = flags.tls_cert;
  options.tls.key_file = flags.tls_key;
  options.tls.server_name_override = flags.tls_server_name;
  options.bearer_token = flags.token;
  options.allow_insecure_token = flags.insecure_token;
  options.connections = connections;
  options.chunked_reply_bytes = flags.chunked_reply_bytes;
  return client::Client::Create(std::move(options));
}

int Fail(absl::string_view command, const absl::Status& status, int exit_code) {
  std::fprintf(stderr, "attnscore %.*s: %s\n", static_cast<int>(command.size()),
               command.data(), status.ToString().c_str());
  return exit_code;
}

}  // namespace attnscore::cli
