// Serves a Registry over HTTP for Prometheus to scrape, on prometheus-cpp's
// Exposer (civetweb):
//   GET /metrics  the registry in text format 0.0.4, plus prometheus-cpp's
//                 own exposer_* series about the scrapes
//   GET /healthz  "ok": the process is up (gRPC health says whether it is
//                 ready to score; this only says the metrics endpoint is).
// The endpoint faces the same network as the gRPC port, so it is bounded (see
// MetricsServerLimits): a fixed number of serving threads, a bounded queue of
// accepted connections, a request-header size limit, no request bodies (413),
// only GET and HEAD (405), a timeout per request, no keep-alive.
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
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "server/observability/metrics.h"

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace attnscore::observability {

// civetweb's limits for the endpoint, with why each value.
struct MetricsServerLimits {
  // "num_threads": scrapes are small and rare; two threads keep one slow
  // client from blocking Prometheus, and bound what a flood can occupy.
  int serving_threads = 2;
  // "connection_queue": accepted connections waiting for a serving thread.
  // When it is full civetweb stops accepting, so further connections wait in
  // the kernel's listen backlog instead of in memory here.
  int connection_queue = 16;
  // "listen_backlog": connections the kernel holds before accept; beyond it
  // new ones are refused (or retried by the client's SYN timer).
  int listen_backlog = 64;
  // "max_request_size": request line plus headers. A scrape needs well under
  // 1 KiB; a larger request is answered 413 and closed without buffering it.
  int max_request_header_bytes = 8192;
  // "request_timeout_ms": how long a client may take to send its request or
  // read the answer, so a stuck client holds a thread (and Stop) at most this.
  int request_timeout_ms = 5000;
};

class MetricsServer {
 public:
  // `host_port` is "HOST:PORT"; a host name is resolved to its first IPv4
  // address; port 0 picks a free port (see port()). IPv6 hosts ("[::1]:9090")
  // parse, but Debian's civetweb is built without IPv6: UNAVAILABLE saying so.
  // Returns once the socket is listening: a scrape sent after Start returns is
  // served.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& host_port, const Registry* registry,
      const MetricsServerLimits& limits = {});

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  ~MetricsServer();  // calls Stop()

  // The port actually bound.
  int port() const { return port_; }

  // Closes the listening socket and waits for requests being served to finish
  // (each bounded by request_timeout_ms; connections are not kept alive, so
  // idle clients do not delay it). Idempotent.
  void Stop();

 private:
  MetricsServer(std::unique_ptr<prometheus::Exposer> exposer,
                std::string wake_host, int port);

  // An address of the listening socket that this process can connect to
  // (127.0.0.1 for 0.0.0.0), for waking civetweb's accept loop on Stop.
  const std::string wake_host_;
  const int port_;
  std::mutex mutex_;
  std::unique_ptr<prometheus::Exposer> exposer_;  // guarded by mutex_
};

// Splits "HOST:PORT" / "[V6HOST]:PORT" into a host (brackets removed) and a
// port in [0, 65535]. Exposed for the server's own flag validation.
absl::Status ParseHostPort(const std::string& host_port, std::string* host,
                           int* port);

}  // namespace attnscore::observability

#endif  // ATTNSCORE_SERVER_OBSERVABILITY_METRICS_SERVER_H_
