#include "server/observability/metrics_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/observability/metrics.h"

namespace attnscore::observability {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::unique_ptr<MetricsServer> StartOrDie(const std::string& address,
                                          const Registry* registry) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start(address, registry);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

httplib::Client LoopbackClient(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(2, 0);
  client.set_read_timeout(2, 0);
  return client;
}

TEST(MetricsServerTest, ServesMetricsOnAPickedPort) {
  Registry registry;
  Counter& requests =
      registry.AddCounter("attnscore_requests_total", "Requests.")
          .WithLabels({});
  requests.Increment(5);
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", &registry);
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->port(), 0);

  httplib::Client client = LoopbackClient(server->port());
  httplib::Result response = client.Get("/metrics");
  ASSERT_TRUE(response) << httplib::to_string(response.error());
  EXPECT_EQ(response->status, 200);
  // Text format 0.0.4, which Prometheus assumes for text/plain.
  EXPECT_THAT(response->get_header_value("Content-Type"),
              StartsWith("text/plain"));
  // Our families as the registry renders them, after prometheus-cpp's own
  // exposer_* series about the scrapes.
  EXPECT_THAT(response->body, HasSubstr(registry.Serialize()));
  EXPECT_THAT(response->body, HasSubstr("exposer_scrapes_total"));
  EXPECT_THAT(response->body, HasSubstr("attnscore_requests_total 5\n"));

  // Scrapes see updates made since the last one.
  requests.Increment();
  response = client.Get("/metrics");
  ASSERT_TRUE(response);
  EXPECT_THAT(response->body, HasSubstr("attnscore_requests_total 6\n"));
}

TEST(MetricsServerTest, ServesHealthzAndNotFound) {
  Registry registry;
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", &registry);
  ASSERT_NE(server, nullptr);
  httplib::Client client = LoopbackClient(server->port());
  httplib::Result health = client.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");
  httplib::Result missing = client.Get("/nope");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
}

TEST(MetricsServerTest, StopClosesTheSocketAndIsIdempotent) {
  Registry registry;
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", &registry);
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  httplib::Client client = LoopbackClient(port);
  ASSERT_TRUE(client.Get("/healthz"));
  server->Stop();
  EXPECT_FALSE(LoopbackClient(port).Get("/healthz"));
  server->Stop();
  server.reset();  // the destructor stops again: still fine
}

TEST(MetricsServerTest, StopRightAfterStartDoesNotHang) {
  Registry registry;
  for (int i = 0; i < 20; ++i) {
    std::unique_ptr<MetricsServer> server =
        StartOrDie("127.0.0.1:0", &registry);
    ASSERT_NE(server, nullptr);
  }
}

TEST(MetricsServerTest, RebindsAFixedPortAfterStop) {
  Registry registry;
  std::unique_ptr<MetricsServer> first = StartOrDie("127.0.0.1:0", &registry);
  ASSERT_NE(first, nullptr);
  const int port = first->port();

  absl::StatusOr<std::unique_ptr<MetricsServer>> clash =
      MetricsServer::Start("127.0.0.1:" + std::to_string(port), &registry);
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(clash.status().message(), HasSubstr(std::to_string(port)));

  first->Stop();
  std::unique_ptr<MetricsServer> second =
      StartOrDie("127.0.0.1:" + std::to_string(port), &registry);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->port(), port);
  EXPECT_TRUE(LoopbackClient(port).Get("/healthz"));
}

TEST(MetricsServerTest, ConcurrentScrapesWhileUpdating) {
  Registry registry;
  Counter& counter =
      registry.AddCounter("attnscore_c_total", "C.").WithLabels({});
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", &registry);
  ASSERT_NE(server, nullptr);
  std::atomic<bool> done{false};
  std::thread writer([&] {
    while (!done) counter.Increment();
  });
  constexpr int kScrapers = 3;
  std::vector<std::thread> scrapers;
  scrapers.reserve(kScrapers);
  std::atomic<int> ok{0};
  for (int t = 0; t < kScrapers; ++t) {
    scrapers.emplace_back([&] {
      httplib::Client client = LoopbackClient(server->port());
      for (int i = 0; i < 20; ++i) {
        httplib::Result r = client.Get("/metrics");
        if (r && r->status == 200 &&
            r->body.find("attnscore_c_total ") != std::string::npos) {
          ++ok;
        }
      }
    });
  }
  for (std::thread& t : scrapers) t.join();
  done = true;
  writer.join();
  EXPECT_EQ(ok, 60);
}

// A blocking TCP connection to 127.0.0.1:port with 5 s send and receive
// timeouts; -1 if it cannot connect.
int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` (as much as the server takes) and returns everything the
// server answers until it closes the connection (or 5 s pass: then *closed,
// when given, is false).
std::string Exchange(int port, const std::string& request,
                     bool* closed = nullptr) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return "";
  (void)send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string answer;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) {
    answer.append(buf, static_cast<size_t>(n));
  }
  if (closed != nullptr) *closed = n == 0;
  close(fd);
  return answer;
}

// The server ends each connection after one response, even to a client that
// asks for keep-alive (like Prometheus), so Stop has no idle connection to
// wait out.
TEST(MetricsServerTest, StopIsPromptAfterAKeepAliveClientScraped) {
  Registry registry;
  for (int i = 0; i < 5; ++i) {
    std::unique_ptr<MetricsServer> server =
        StartOrDie("127.0.0.1:0", &registry);
    ASSERT_NE(server, nullptr);
    httplib::Client client = LoopbackClient(server->port());
    client.set_keep_alive(true);
    httplib::Result response = client.Get("/metrics");
    ASSERT_TRUE(response);
    bool closed = false;
    EXPECT_THAT(Exchange(server->port(),
                         "GET /metrics HTTP/1.1\r\nHost: x\r\n"
                         "Connection: keep-alive\r\n\r\n",
                         &closed),
                StartsWith("HTTP/1.1 200"));
    EXPECT_TRUE(closed) << "the connection was left open after the response";
    server->Stop();  // with httplib's connection still held open by `client`
  }
}

// Threads of this process, from /proc/self/task.
int ThreadCount() {
  int count = 0;
  DIR* dir = opendir("/proc/self/task");
  while (const dirent* entry = readdir(dir)) count += entry->d_name[0] != '.';
  closedir(dir);
  return count;
}

void ExpectHealthy(int port) {
  httplib::Result health = LoopbackClient(port).Get("/healthz");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
}

TEST(MetricsServerTest, RefusesRequestBodiesBeforeReadingThem) {
  Registry registry;
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", &registry);
  ASSERT_NE(server, nullptr);
  // A 1 GiB body is announced but never sent: the answer comes, and the
  // connection closes, without waiting for it.
  bool closed = false;
  EXPECT_THAT(Exchange(server->port(),
                       "GET /metrics HTTP/1.1\r\nHost: x\r\n"
                       "Content-Length: 1073741824\r\n\r\nabc",
                       &closed),
              StartsWith("HTTP/1.1 413"));
  EXPECT_TRUE(closed) << "the server waited for the body";
  EXPECT_THAT(Exchange(server->port(),
                       "POST /healthz HTTP/1.1\r\nHost: x\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
              StartsWith("HTTP/1.1 413"));
  httplib::Result posted =
      LoopbackClient(server->port()).Post("/metrics", "", "text/plain");
  ASSERT_TRUE(posted);
  EXPECT_EQ(posted->status, 405);
  ExpectHealthy(server->port());
}

TEST(MetricsServerTest, RefusesOversizedHeaders) {
  Registry registry;
  MetricsServerLimits limits;
  std::unique_ptr<MetricsServer> server;
  {
    absl::StatusOr<std::unique_ptr<MetricsServer>> started =
        MetricsServer::Start("127.0.0.1:0", &registry, limits);
    ASSERT_TRUE(started.ok()) << started.status();
    server = std::move(*started);
  }
  const std::string huge(size_t{4} * limits.max_request_header_bytes, 'x');
  const std::string answer = Exchange(
      server->port(),
      "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + huge + "\r\n\r\n");
  EXPECT_THAT(answer, ::testing::Not(HasSubstr("exposer_scrapes_total")));
  // civetweb answers 400 ("Malformed message"), or just closes.
  if (!answer.empty()) {
    EXPECT_THAT(answer, ::testing::ContainsRegex("^HTTP/1\\.[01] 4(00|13) "));
  }
  // A header within the limit is served.
  const std::string fits(limits.max_request_header_bytes / 2, 'x');
  EXPECT_THAT(Exchange(server->port(),
                       "GET /healthz HTTP/1.1\r\nHost: x\r\n"
                       "X-Fits: " +
                           fits + "\r\n\r\n"),
              StartsWith("HTTP/1.1 200"));
  ExpectHealthy(server->port());
}

// One client connection of a burst, driven by RunBurst's poll loop.
struct BurstClient {
  int fd = -1;
  bool sent = false;
  bool done = false;
  std::string answer;
};

// Opens `n` non-blocking connections to the port at once, sends `request` on
// each as soon as it connects and reads each answer to EOF, all from this
// thread (so the process' thread count shows only the server's threads).
// Gives up after `timeout`. `*max_threads`: the most threads this process
// had meanwhile.
std::vector<BurstClient> RunBurst(int port, int n, const std::string& request,
                                  std::chrono::seconds timeout,
                                  int* max_threads) {
  std::vector<BurstClient> clients(n);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (BurstClient& c : clients) {
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    (void)connect(c.fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::vector<pollfd> fds;
    std::vector<BurstClient*> owners;
    for (BurstClient& c : clients) {
      if (c.done) continue;
      fds.push_back(
          {c.fd,
           static_cast<decltype(pollfd::events)>(c.sent ? POLLIN : POLLOUT),
           0});
      owners.push_back(&c);
    }
    if (fds.empty()) break;
    *max_threads = std::max(*max_threads, ThreadCount());
    if (poll(fds.data(), fds.size(), 100) <= 0) continue;
    for (size_t i = 0; i < fds.size(); ++i) {
      BurstClient& c = *owners[i];
      if (fds[i].revents == 0) continue;
      if (!c.sent) {
        c.sent = send(c.fd, request.data(), request.size(), MSG_NOSIGNAL) ==
                 static_cast<ssize_t>(request.size());
        c.done = !c.sent;
        continue;
      }
      char buf[4096];
      const ssize_t got = recv(c.fd, buf, sizeof(buf), 0);
      if (got > 0) c.answer.append(buf, static_cast<size_t>(got));
      c.done = got == 0 || (got < 0 && errno != EAGAIN);
    }
  }
  for (BurstClient& c : clients) close(c.fd);
  return clients;
}

// Many clients at once (more than the connection queue and the listen
// backlog together): all are answered, by the fixed pool of serving threads
// (the process gains no thread per connection).
TEST(MetricsServerTest, ABurstOfConnectionsIsServedByAFixedPool) {
  Registry registry;
  registry.AddCounter("attnscore_c_total", "C.");
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", &registry);
  ASSERT_NE(server, nullptr);
  const int threads_before = ThreadCount();
  constexpr int kConnections = 200;
  int max_threads = 0;
  const std::vector<BurstClient> clients = RunBurst(
      server->port(), kConnections, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
      std::chrono::seconds(30), &max_threads);
  int served = 0;
  for (const BurstClient& c : clients) {
    served += c.answer.rfind("HTTP/1.1 200", 0) == 0 &&
              c.answer.find("attnscore_c_total 0\n") != std::string::npos;
  }
  EXPECT_EQ(served, kConnections);
  EXPECT_EQ(max_threads, threads_before);
  ExpectHealthy(server->port());
}

TEST(MetricsServerTest, ServesOnIpv6LoopbackWhenAvailable) {
  Registry registry;
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("[::1]:0", &registry);
  if (!server.ok()) {
    // Debian's civetweb is built without IPv6: the error must say so.
    EXPECT_THAT(server.status().message(), HasSubstr("without IPv6"));
    GTEST_SKIP() << "no IPv6 listener: " << server.status();
  }
  httplib::Client client("::1", (*server)->port());
  client.set_connection_timeout(2, 0);
  httplib::Result r = client.Get("/healthz");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
}

TEST(MetricsServerTest, ResolvesAHostName) {
  Registry registry;
  std::unique_ptr<MetricsServer> server = StartOrDie("localhost:0", &registry);
  ASSERT_NE(server, nullptr);
  ExpectHealthy(server->port());
}

TEST(MetricsServerTest, RejectsMalformedAddresses) {
  Registry registry;
  for (const char* bad :
       {"", "localhost", "127.0.0.1:", ":9090", "127.0.0.1:70000",
        "127.0.0.1:-1", "127.0.0.1:9o", "::1:9090", "[::1", "[::1]9090"}) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> server =
        MetricsServer::Start(bad, &registry);
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
    EXPECT_THAT(server.status().message(), HasSubstr("expected HOST:PORT"))
        << bad;
  }
  EXPECT_EQ(MetricsServer::Start("127.0.0.1:0", nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MetricsServerTest, ParsesHostPort) {
  std::string host;
  int port = -1;
  ASSERT_TRUE(ParseHostPort("0.0.0.0:9090", &host, &port).ok());
  EXPECT_EQ(host, "0.0.0.0");
  EXPECT_EQ(port, 9090);
  ASSERT_TRUE(ParseHostPort("[::]:0", &host, &port).ok());
  EXPECT_EQ(host, "::");
  EXPECT_EQ(port, 0);
  ASSERT_TRUE(ParseHostPort("localhost:65535", &host, &port).ok());
  EXPECT_EQ(host, "localhost");
  EXPECT_EQ(port, 65535);
}

}  // namespace
}  // namespace attnscore::observability
