// The real thing: Debian's Prometheus scrapes a MetricsServer over loopback
// and answers queries about what it scraped. Catches exposition details that
// a golden text cannot (Prometheus' parser is the judge).
#include <httplib.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/observability/metrics.h"
#include "server/observability/metrics_server.h"
#include "tests/observability/prometheus_harness.h"

namespace attnscore::observability {
namespace {

using attnscore::testing::PrometheusHarness;
using attnscore::testing::PrometheusOptions;

class PrometheusTest : public ::testing::Test {
 protected:
  // Fails rather than skips: scripts/install-deps.sh installs prometheus,
  // and a skipped check would look like a passed one.
  void SetUp() override {
    ASSERT_TRUE(PrometheusHarness::Available())
        << attnscore::testing::kPrometheusBinary
        << " is missing: run `make deps` (Debian package prometheus)";
  }
};

TEST_F(PrometheusTest, ScrapesAndQueriesOurMetrics) {
  Registry registry;
  auto& requests = registry.AddCounter("attnscore_requests_total",
                                       "Requests by method and status code.",
                                       {"method", "code"});
  requests.WithLabels({"Score", "OK"}).Increment(42);
  requests.WithLabels({"Score", "INVALID_ARGUMENT"}).Increment(3);
  // Label values that need escaping must survive Prometheus' parser.
  requests.WithLabels({"odd \"method\"\\\n", "OK"}).Increment(7);
  Histogram& latency =
      registry
          .AddHistogram("attnscore_request_duration_seconds", "Latency.",
                        ExponentialBuckets(0.001, 2, 12), {"method"})
          .WithLabels({"Score"});
  for (int i = 0; i < 10; ++i) latency.Observe(0.003);
  registry.AddCallbackGauge("attnscore_queue_depth", "Requests queued.",
                            [] { return 5.0; });

  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("127.0.0.1:0", &registry);
  ASSERT_TRUE(server.ok()) << server.status();

  PrometheusOptions options;
  options.targets = {"127.0.0.1:" + std::to_string((*server)->port())};
  absl::StatusOr<std::unique_ptr<PrometheusHarness>> prometheus =
      PrometheusHarness::Start(options);
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();
  PrometheusHarness& p = **prometheus;

  // `up` is 1 only if the scrape parsed: any exposition error makes it 0.
  absl::StatusOr<double> up =
      p.WaitForValue("up{job=\"attnscore\"}", absl::Seconds(30),
                     [](double v) { return v == 1; });
  ASSERT_TRUE(up.ok()) << up.status();

  absl::StatusOr<double> ok_requests =
      p.WaitForValue("attnscore_requests_total{method=\"Score\",code=\"OK\"}");
  ASSERT_TRUE(ok_requests.ok()) << ok_requests.status();
  EXPECT_EQ(*ok_requests, 42);

  absl::StatusOr<double> odd = p.WaitForValue(
      "attnscore_requests_total{method=\"odd \\\"method\\\"\\\\\\n\"}");
  ASSERT_TRUE(odd.ok()) << odd.status();
  EXPECT_EQ(*odd, 7);

  absl::StatusOr<double> depth = p.WaitForValue("attnscore_queue_depth");
  ASSERT_TRUE(depth.ok()) << depth.status();
  EXPECT_EQ(*depth, 5);

  absl::StatusOr<double> count =
      p.WaitForValue("attnscore_request_duration_seconds_count");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 10);
  // All ten observations are in the (0.002, 0.004] bucket, so Prometheus'
  // interpolation puts the median inside it.
  absl::StatusOr<double> median = p.WaitForValue(
      "histogram_quantile(0.5, attnscore_request_duration_seconds_bucket)");
  ASSERT_TRUE(median.ok()) << median.status();
  EXPECT_GT(*median, 0.002);
  EXPECT_LE(*median, 0.004);

  // A later update is picked up by a later scrape.
  requests.WithLabels({"Score", "OK"}).Increment(8);
  absl::StatusOr<double> updated =
      p.WaitForValue("attnscore_requests_total{method=\"Score\",code=\"OK\"}",
                     absl::Seconds(30), [](double v) { return v == 50; });
  ASSERT_TRUE(updated.ok()) << updated.status();

  p.Kill();
  (*server)->Stop();
}

TEST_F(PrometheusTest, ReportsATargetThatIsDown) {
  absl::StatusOr<int> unused_port = attnscore::testing::PickFreeLoopbackPort();
  ASSERT_TRUE(unused_port.ok());
  PrometheusOptions options;
  options.targets = {"127.0.0.1:" + std::to_string(*unused_port)};
  absl::StatusOr<std::unique_ptr<PrometheusHarness>> prometheus =
      PrometheusHarness::Start(options);
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();
  absl::StatusOr<double> up =
      (*prometheus)
          ->WaitForValue("up{job=\"attnscore\"}", absl::Seconds(30),
                         [](double v) { return v == 0; });
  ASSERT_TRUE(up.ok()) << up.status();
  // And a wait that cannot succeed ends on time with a useful message.
  absl::StatusOr<double> never =
      (*prometheus)->WaitForValue("attnscore_requests_total", absl::Seconds(2));
  EXPECT_EQ(never.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(never.status().message(), ::testing::HasSubstr("targets"));
}

}  // namespace
}  // namespace attnscore::observability
