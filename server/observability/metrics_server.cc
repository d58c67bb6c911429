#include "server/observability/metrics_server.h"

#include <CivetServer.h>
#include <arpa/inet.h>
#include <civetweb.h>
#include <dlfcn.h>
#include <netdb.h>
#include <prometheus/exposer.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

// Debian's civetweb creates its threads with a fixed 100 KiB stack
// (USE_STACK_SIZE=102400), and glibc carves a thread's static TLS out of its
// stack: in the server, LibTorch's dependencies (OpenBLAS 60 KiB, glog 30 KiB,
// ...) need more than that, so pthread_create fails with EINVAL and the
// exposer cannot start. This definition, found before libc's by the dynamic
// linker whenever this file is linked in, raises any requested stack size to
// at least kMinThreadStackBytes (glibc's default is 8 MiB; a larger request
// is kept as is).
namespace {
constexpr size_t kMinThreadStackBytes = size_t{1} << 20;
}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr,
                                         size_t stack_size) {
  using SetStackSize = int (*)(pthread_attr_t*, size_t);
  static const auto libc_set_stack_size = reinterpret_cast<SetStackSize>(
      dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return libc_set_stack_size(attr, std::max(stack_size, kMinThreadStackBytes));
}

namespace attnscore::observability {
namespace {

constexpr char kHealthBody[] = "ok\n";

// Runs before civetweb dispatches a request: answers /healthz, and refuses
// what a scrape never sends (a body, a method other than GET or HEAD) before
// anything of it is read. Returns 0 to let civetweb dispatch (to /metrics, or
// 404), else the status code it sent.
int BeginRequest(mg_connection* conn) {
  const mg_request_info* request = mg_get_request_info(conn);
  const bool has_body = request->content_length > 0 ||
                        mg_get_header(conn, "Transfer-Encoding") != nullptr;
  if (has_body) {
    mg_send_http_error(conn, 413, "%s", "request bodies are not accepted\n");
    return 413;
  }
  const std::string method = request->request_method;
  if (method != "GET" && method != "HEAD") {
    mg_send_http_error(conn, 405, "%s", "only GET and HEAD are served\n");
    return 405;
  }
  if (std::strcmp(request->local_uri, "/healthz") == 0) {
    mg_send_http_ok(conn, "text/plain", sizeof(kHealthBody) - 1);
    if (method == "GET") mg_write(conn, kHealthBody, sizeof(kHealthBody) - 1);
    return 200;
  }
  return 0;
}

// civetweb's own errors (a failed bind, a bad option) go to our log rather
// than straight to stderr.
int LogMessage(const mg_connection*, const char* message) {
  spdlog::warn("metrics server: {}", message);
  return 1;
}

// Bit of mg_check_feature: built with IPv6 support.
constexpr unsigned kCivetFeatureIpv6 = 8;

// A numeric IPv4 address for civetweb's "listening_ports", which takes no
// names. IPv6 only if this civetweb has it (Debian's has not).
absl::StatusOr<std::string> NumericHost(const std::string& host) {
  const bool ipv6 = mg_check_feature(kCivetFeatureIpv6) != 0;
  addrinfo hints{};
  hints.ai_family = ipv6 ? AF_UNSPEC : AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int error = getaddrinfo(host.c_str(), nullptr, &hints, &found);
  if (error != 0 || found == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot resolve metrics host \"", host, "\" to an ",
        ipv6 ? "" : "IPv4 ", "address (", gai_strerror(error), ")",
        ipv6 ? "" : "; this civetweb (Debian's) is built without IPv6"));
  }
  char text[INET6_ADDRSTRLEN] = {};
  getnameinfo(found->ai_addr, found->ai_addrlen, text, sizeof(text), nullptr, 0,
              NI_NUMERICHOST);
  const bool v6 = found->ai_family == AF_INET6;
  freeaddrinfo(found);
  return v6 ? absl::StrCat("[", text, "]") : std::string(text);
}

// The address to connect to for reaching a socket bound to `host`.
std::string WakeHost(const std::string& numeric_host) {
  if (numeric_host == "0.0.0.0") return "127.0.0.1";
  if (numeric_host == "[::]") return "::1";
  if (numeric_host.front() == '[') {
    return numeric_host.substr(1, numeric_host.size() - 2);
  }
  return numeric_host;
}

// Connects to host:port and hangs up at once (refused when nothing listens).
void Poke(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) !=
      0) {
    return;
  }
  const int fd = socket(found->ai_family, SOCK_STREAM, 0);
  if (fd >= 0) {
    timeval timeout{0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    (void)connect(fd, found->ai_addr, found->ai_addrlen);
    close(fd);
  }
  freeaddrinfo(found);
}

std::vector<std::string> CivetOptions(const std::string& listening_port,
                                      const MetricsServerLimits& limits) {
  return {"listening_ports", listening_port, "num_threads",
          std::to_string(limits.serving_threads), "connection_queue",
          std::to_string(limits.connection_queue), "listen_backlog",
          std::to_string(limits.listen_backlog), "max_request_size",
          std::to_string(limits.max_request_header_bytes), "request_timeout_ms",
          std::to_string(limits.request_timeout_ms),
          // One request per connection: an idle keep-alive connection
          // (Prometheus keeps one) would otherwise hold a serving thread.
          "enable_keep_alive", "no"};
}

}  // namespace

absl::Status ParseHostPort(const std::string& host_port, std::string* host,
                           int* port) {
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", host_port, "\": ", why,
                     "; expected HOST:PORT, e.g. 127.0.0.1:9090 or 0.0.0.0:0"));
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
    const std::string& host_port, const Registry* registry,
    const MetricsServerLimits& limits) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("MetricsServer::Start: null registry");
  }
  std::string host;
  int port = 0;
  if (absl::Status status = ParseHostPort(host_port, &host, &port);
      !status.ok()) {
    return status;
  }
  absl::StatusOr<std::string> numeric = NumericHost(host);
  if (!numeric.ok()) return numeric.status();

  CivetCallbacks callbacks;  // zeroed by its constructor
  callbacks.begin_request = BeginRequest;
  callbacks.log_message = LogMessage;
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // civetweb copies the callbacks and options.
    exposer = std::make_unique<prometheus::Exposer>(
        CivetOptions(absl::StrCat(*numeric, ":", port), limits), &callbacks);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "metrics server cannot listen on ", host_port, ": ", e.what(),
        " (address in use, or not an address of this machine?)"));
  }
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty() || ports[0] <= 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics server on ", host_port, " reports no port"));
  }
  exposer->RegisterCollectable(registry->collectable());
  return std::unique_ptr<MetricsServer>(
      new MetricsServer(std::move(exposer), WakeHost(*numeric), ports[0]));
}

MetricsServer::MetricsServer(std::unique_ptr<prometheus::Exposer> exposer,
                             std::string wake_host, int port)
    : wake_host_(std::move(wake_host)),
      port_(port),
      exposer_(std::move(exposer)) {}

MetricsServer::~MetricsServer() { Stop(); }

void MetricsServer::Stop() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (exposer_ == nullptr) return;
  // civetweb's accept loop looks at its stop flag only between polls of the
  // listening socket, which wait up to 2 s; a connection ends the wait. Poke
  // until the exposer is gone (mg_stop sets the flag, then joins).
  std::atomic<bool> stopped{false};
  std::thread waker([&] {
    while (!stopped.load()) {
      Poke(wake_host_, port_);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  exposer_.reset();  // civetweb's mg_stop: closes, then joins its threads
  stopped = true;
  waker.join();
}

}  // namespace attnscore::observability
