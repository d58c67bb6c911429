#include "server/observability/metrics_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attnscore::observability {
namespace {

// Scrapes are small and rare; two threads keep one slow client from blocking
// Prometheus without the default pool's eight-plus threads per process.
constexpr size_t kServingThreads = 2;
// Bounds how long a stuck client can hold a serving thread (and so Stop).
constexpr int kSocketTimeoutSeconds = 5;
constexpr int kFirstRequestTimeoutSeconds = 2;

}  // namespace

struct MetricsServer::Impl {
  httplib::Server http;
  std::thread thread;
  int port = 0;
  // Set by the serving thread when listen_after_bind returns.
  std::atomic<bool> exited{false};
  std::mutex stop_mutex;
  bool stopped = false;  // guarded by stop_mutex
};

absl::Status ParseHostPort(const std::string& host_port, std::string* host,
                           int* port) {
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listen address \"", host_port, "\": ", why,
                     "; expected HOST:PORT, e.g. 127.0.0.1:9090 or [::1]:0"));
  };
  std::string port_text;
  if (!host_port.empty() && host_port[0] == '[') {
    const size_t close = host_port.find(']');
    if (close == std::string::npos || close + 1 >= host_port.size() ||
        host_port[close + 1] != ':') {
      return bad("unterminated IPv6 host or missing :PORT");
    }
    *host = host_port.substr(1, close - 1);
    port_text = host_port.substr(close + 2);
  } else {
    const size_t colon = host_port.rfind(':');
    if (colon == std::string::npos) return bad("missing :PORT");
    *host = host_port.substr(0, colon);
    if (host->find(':') != std::string::npos) {
      return bad("IPv6 hosts must be in brackets");
    }
    port_text = host_port.substr(colon + 1);
  }
  if (host->empty()) return bad("empty host");
  int parsed = 0;
  if (port_text.empty() ||
      port_text.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(port_text, &parsed) || parsed > 65535) {
    return bad(absl::StrCat("port \"", port_text, "\" is not in 0..65535"));
  }
  *port = parsed;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host_port, const Registry* registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("MetricsServer::Start: null registry");
  }
  std::string host;
  int port = 0;
  if (absl::Status status = ParseHostPort(host_port, &host, &port);
      !status.ok()) {
    return status;
  }

  auto impl = std::make_unique<Impl>();
  httplib::Server& http = impl->http;
  http.new_task_queue = [] { return new httplib::ThreadPool(kServingThreads); };
  http.set_read_timeout(kSocketTimeoutSeconds, 0);
  http.set_write_timeout(kSocketTimeoutSeconds, 0);
  // One request per connection. This httplib (0.11) checks for stop() only
  // between requests, so an idle keep-alive connection (Prometheus keeps
  // one) would hold Stop() for the whole keep-alive timeout. A new TCP
  // connection per scrape costs nothing at scrape rates.
  http.set_keep_alive_max_count(1);
  // With that, this only bounds the wait for a new connection's request.
  http.set_keep_alive_timeout(kFirstRequestTimeoutSeconds);
  // httplib's default also sets SO_REUSEPORT, which lets a second process
  // bind the same port and silently take half the scrapes. SO_REUSEADDR
  // alone still allows a restart while old connections sit in TIME_WAIT.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  http.Get("/metrics",
           [registry](const httplib::Request&, httplib::Response& response) {
             response.set_content(registry->Serialize(), kMetricsContentType);
           });
  http.Get("/healthz",
           [](const httplib::Request&, httplib::Response& response) {
             response.set_content("ok\n", "text/plain");
           });

  errno = 0;
  if (port == 0) {
    impl->port = http.bind_to_any_port(host);
  } else {
    impl->port = http.bind_to_port(host, port) ? port : -1;
  }
  if (impl->port <= 0) {
    const int bind_errno = errno;
    return absl::UnavailableError(absl::StrCat(
        "metrics server cannot listen on ", host_port,
        bind_errno != 0 ? absl::StrCat(": ", std::strerror(bind_errno)) : "",
        " (address in use, or not an address of this machine?)"));
  }

  Impl* raw = impl.get();
  impl->thread = std::thread([raw] {
    raw->http.listen_after_bind();
    raw->exited = true;
  });
  // httplib's stop() does nothing until the accept loop has marked itself
  // running, so a Stop() right after Start() would hang in join(); waiting
  // here closes that window. The socket is already listening (the kernel
  // queues connections), so this is only the thread's start-up.
  while (!impl->http.is_running() && !impl->exited) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (impl->exited) {
    impl->thread.join();
    return absl::UnavailableError(
        absl::StrCat("metrics server on ", host_port, " stopped at once"));
  }
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() { Stop(); }

int MetricsServer::port() const { return impl_->port; }

void MetricsServer::Stop() {
  std::lock_guard<std::mutex> lock(impl_->stop_mutex);
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->http.stop();
  impl_->thread.join();
}

}  // namespace attnscore::observability
