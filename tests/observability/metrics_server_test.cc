#include "server/observability/metrics_server.h"

#include <httplib.h>

#include <atomic>
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
  EXPECT_THAT(response->get_header_value("Content-Type"),
              StartsWith("text/plain; version=0.0.4"));
  EXPECT_EQ(response->body, registry.Serialize());
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

TEST(MetricsServerTest, StopIsPromptAfterAKeepAliveClientScraped) {
  Registry registry;
  for (int i = 0; i < 5; ++i) {
    std::unique_ptr<MetricsServer> server =
        StartOrDie("127.0.0.1:0", &registry);
    ASSERT_NE(server, nullptr);
    httplib::Client client = LoopbackClient(server->port());
    client.set_keep_alive(true);  // like Prometheus
    httplib::Result response = client.Get("/metrics");
    ASSERT_TRUE(response);
    // The server ends each connection after one response, so no idle
    // connection is left for Stop to wait out.
    EXPECT_EQ(response->get_header_value("Connection"), "close");
    const auto start = std::chrono::steady_clock::now();
    server->Stop();
    EXPECT_LT(std::chrono::steady_clock::now() - start,
              std::chrono::milliseconds(500));
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

TEST(MetricsServerTest, ServesOnIpv6LoopbackWhenAvailable) {
  Registry registry;
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("[::1]:0", &registry);
  if (!server.ok()) GTEST_SKIP() << "no IPv6 loopback: " << server.status();
  httplib::Client client("::1", (*server)->port());
  client.set_connection_timeout(2, 0);
  httplib::Result r = client.Get("/healthz");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
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
