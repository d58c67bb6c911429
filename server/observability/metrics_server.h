// Serves a Registry over HTTP for Prometheus to scrape (cpp-httplib):
//   GET /metrics  the registry in text format 0.0.4 (text/plain; version=0.0.4)
//   GET /healthz  "ok": the process is up (gRPC health says whether it is
//                 ready to score; this only says the metrics endpoint is).
//
// Ownership: the caller keeps `registry` alive until Stop() has returned (or
// the server is destroyed). The server owns its listening socket and threads.
// Thread safety: port() and Stop() may be called from any thread, Stop() more
// than once. Requests are served on the server's own threads, which only read
// the registry (itself thread-safe).
// Errors: Start returns INVALID_ARGUMENT for a malformed address and
// UNAVAILABLE when the address cannot be bound (in use, not local).
#ifndef ATTNSCORE_SERVER_OBSERVABILITY_METRICS_SERVER_H_
#define ATTNSCORE_SERVER_OBSERVABILITY_METRICS_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/observability/metrics.h"

namespace attnscore::observability {

// The Content-Type of the text exposition format.
inline constexpr char kMetricsContentType[] = "text/plain; version=0.0.4";

class MetricsServer {
 public:
  // `host_port` is "HOST:PORT", IPv6 hosts in brackets ("[::1]:9090"); port 0
  // picks a free port (see port()). Returns once the socket is listening: a
  // scrape sent after Start returns is served.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& host_port, const Registry* registry);

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  ~MetricsServer();  // calls Stop()

  // The port actually bound.
  int port() const;

  // Closes the listening socket, then waits for requests being served to
  // finish (each bounded by socket timeouts of a few seconds; connections
  // are not kept alive between requests, so idle clients do not delay it).
  // Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

// Splits "HOST:PORT" / "[V6HOST]:PORT" into a host (brackets removed) and a
// port in [0, 65535]. Exposed for the server's own flag validation.
absl::Status ParseHostPort(const std::string& host_port, std::string* host,
                           int* port);

}  // namespace attnscore::observability

#endif  // ATTNSCORE_SERVER_OBSERVABILITY_METRICS_SERVER_H_
