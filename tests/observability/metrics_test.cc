#include "server/observability/metrics.h"

#include <cmath>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/observability/process_metrics.h"
#include "tests/observability/prometheus_harness.h"

namespace attnscore::observability {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(MetricsTest, GoldenExposition) {
  Registry registry;
  auto& requests = registry.AddCounter("attnscore_requests_total",
                                       "Requests by method and status code.",
                                       {"method", "code"});
  requests.WithLabels({"Score", "OK"}).Increment();
  requests.WithLabels({"Score", "OK"}).Increment(2);
  requests.WithLabels({"ListModels", "OK"}).Increment();
  Gauge& in_flight =
      registry
          .AddGauge("attnscore_in_flight_requests", "Requests being served.")
          .WithLabels({});
  in_flight.Set(3);
  in_flight.Decrement();
  // Powers of two keep the sum exact.
  Histogram& latency =
      registry
          .AddHistogram("attnscore_request_duration_seconds",
                        "Time from arrival to response.", {0.25, 1}, {"method"})
          .WithLabels({"Score"});
  latency.Observe(0.125);
  latency.Observe(0.25);  // on a bound: counted in that bucket (le)
  latency.Observe(0.5);
  latency.Observe(8);
  registry.AddCallbackGauge("attnscore_queue_depth", "Requests queued.",
                            [] { return 4.0; });

  EXPECT_EQ(
      registry.Serialize(),
      "# HELP attnscore_in_flight_requests Requests being served.\n"
      "# TYPE attnscore_in_flight_requests gauge\n"
      "attnscore_in_flight_requests 2\n"
      "# HELP attnscore_queue_depth Requests queued.\n"
      "# TYPE attnscore_queue_depth gauge\n"
      "attnscore_queue_depth 4\n"
      "# HELP attnscore_request_duration_seconds Time from arrival to "
      "response.\n"
      "# TYPE attnscore_request_duration_seconds histogram\n"
      "attnscore_request_duration_seconds_count{method=\"Score\"} 4\n"
      "attnscore_request_duration_seconds_sum{method=\"Score\"} 8.875\n"
      "attnscore_request_duration_seconds_bucket{method=\"Score\",le=\"0."
      "25\"} 2\n"
      "attnscore_request_duration_seconds_bucket{method=\"Score\",le=\"1\"}"
      " 3\n"
      "attnscore_request_duration_seconds_bucket{method=\"Score\",le=\"+"
      "Inf\"} 4\n"
      "# HELP attnscore_requests_total Requests by method and status "
      "code.\n"
      "# TYPE attnscore_requests_total counter\n"
      "attnscore_requests_total{method=\"ListModels\",code=\"OK\"} 1\n"
      "attnscore_requests_total{method=\"Score\",code=\"OK\"} 3\n");
}

TEST(MetricsTest, EscapesLabelValuesAndHelp) {
  Registry registry;
  registry
      .AddCounter("attnscore_errors_total",
                  "Help with a \\ backslash,\na newline and \"quotes\".",
                  {"message"})
      .WithLabels({"say \"hi\"\\now\nplease"})
      .Increment();
  EXPECT_EQ(
      registry.Serialize(),
      "# HELP attnscore_errors_total Help with a \\\\ backslash,\\na "
      "newline and \"quotes\".\n"
      "# TYPE attnscore_errors_total counter\n"
      "attnscore_errors_total{message=\"say \\\"hi\\\"\\\\now\\nplease\"} "
      "1\n");
}

TEST(MetricsTest, UnlabelledFamiliesAreExposedAtZeroLabelledOnesOnlyOnceUsed) {
  Registry registry;
  registry.AddCounter("attnscore_a_total", "A.");
  registry.AddCounter("attnscore_b_total", "B.", {"code"});
  registry.AddHistogram("attnscore_c_seconds", "C.", {1});
  EXPECT_EQ(registry.Serialize(),
            "# HELP attnscore_a_total A.\n"
            "# TYPE attnscore_a_total counter\n"
            "attnscore_a_total 0\n"
            "# HELP attnscore_c_seconds C.\n"
            "# TYPE attnscore_c_seconds histogram\n"
            "attnscore_c_seconds_count 0\n"
            "attnscore_c_seconds_sum 0\n"
            "attnscore_c_seconds_bucket{le=\"1\"} 0\n"
            "attnscore_c_seconds_bucket{le=\"+Inf\"} 0\n");
}

// The cumulative bucket counts of `h`, +Inf last.
std::vector<uint64_t> CumulativeCounts(const Histogram& h) {
  std::vector<uint64_t> out;
  for (const auto& bucket : h.Collect().histogram.bucket) {
    out.push_back(bucket.cumulative_count);
  }
  return out;
}

TEST(MetricsTest, HistogramBucketsAreCumulativeWithInf) {
  Registry registry;
  Histogram& h =
      registry
          .AddHistogram("attnscore_batch_size", "Items per batch.",
                        {1, 2, 4, 8, std::numeric_limits<double>::infinity()})
          .WithLabels({});
  for (double v : {1.0, 1.0, 3.0, 4.0, 5.0, 100.0, -1.0}) h.Observe(v);
  // +Inf was implied, not a fifth bound.
  EXPECT_THAT(CumulativeCounts(h), ElementsAre(3, 3, 5, 6, 7));
  EXPECT_EQ(h.Collect().histogram.sample_count, 7u);
  EXPECT_EQ(h.Collect().histogram.sample_sum, 113);
  EXPECT_THAT(registry.Serialize(),
              HasSubstr("attnscore_batch_size_count 7\n"
                        "attnscore_batch_size_sum 113\n"
                        "attnscore_batch_size_bucket{le=\"1\"} 3\n"
                        "attnscore_batch_size_bucket{le=\"2\"} 3\n"
                        "attnscore_batch_size_bucket{le=\"4\"} 5\n"
                        "attnscore_batch_size_bucket{le=\"8\"} 6\n"
                        "attnscore_batch_size_bucket{le=\"+Inf\"} 7\n"));
}

// The service's duration buckets must be exposed with the bounds as written.
TEST(MetricsTest, FormatsValuesAndBounds) {
  Registry registry;
  registry.AddHistogram("attnscore_d_seconds", "D.",
                        ExponentialBuckets(1e-4, 2, 18));
  registry.AddGauge("attnscore_g", "G.").WithLabels({}).Set(0.1);
  registry.AddGauge("attnscore_big", "B.").WithLabels({}).Set(1e6);
  registry.AddGauge("attnscore_inf", "I.")
      .WithLabels({})
      .Set(std::numeric_limits<double>::infinity());
  const std::string text = registry.Serialize();
  for (const char* le : {"0.0001", "0.0002", "0.0004", "0.0512", "0.1024",
                         "1.6384", "13.1072", "+Inf"}) {
    EXPECT_THAT(text, HasSubstr("attnscore_d_seconds_bucket{le=\"" +
                                std::string(le) + "\"} 0\n"));
  }
  EXPECT_THAT(text, HasSubstr("attnscore_g 0.1\n"));
  EXPECT_THAT(text, HasSubstr("attnscore_big 1000000\n"));
  EXPECT_THAT(text, HasSubstr("attnscore_inf +Inf\n"));
}

TEST(MetricsTest, CountersIgnoreNegativeIncrements) {
  Counter c;
  c.Increment(2);
  c.Increment(-1);
  c.Increment();
  EXPECT_EQ(c.Value(), 3);
}

TEST(MetricsTest, BucketHelpers) {
  EXPECT_THAT(ExponentialBuckets(0.001, 2, 4),
              ElementsAre(0.001, 0.002, 0.004, 0.008));
}

TEST(MetricsTest, ReRegisteringTheSameDefinitionReturnsTheSameFamily) {
  Registry registry;
  auto& a = registry.AddCounter("attnscore_x_total", "X.", {"code"});
  auto& b = registry.AddCounter("attnscore_x_total", "X.", {"code"});
  EXPECT_EQ(&a, &b);
  auto& h1 = registry.AddHistogram("attnscore_y_seconds", "Y.", {1, 2});
  auto& h2 = registry.AddHistogram("attnscore_y_seconds", "Y.", {1, 2});
  EXPECT_EQ(&h1, &h2);
  EXPECT_EQ(&a.WithLabels({"OK"}), &b.WithLabels({"OK"}));
}

TEST(MetricsTest, ConcurrentUpdatesSumExactly) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 100000;
  Registry registry;
  Counter& counter =
      registry.AddCounter("attnscore_c_total", "C.").WithLabels({});
  Gauge& gauge = registry.AddGauge("attnscore_g", "G.").WithLabels({});
  Histogram& histogram =
      registry.AddHistogram("attnscore_h", "H.", {0.5, 1.5}).WithLabels({});
  auto& labelled = registry.AddCounter("attnscore_l_total", "L.", {"thread"});
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Every thread also creates series and scrapes while others update.
      Counter& own = labelled.WithLabels({std::to_string(t % 3)});
      for (int i = 0; i < kPerThread; ++i) {
        counter.Increment();
        gauge.Increment(i % 2 == 0 ? 2 : -1);
        histogram.Observe(i % 2);
        own.Increment(0.5);
        if (i % 20000 == 0) {
          EXPECT_THAT(registry.Serialize(), HasSubstr("attnscore_c_total "));
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(counter.Value(), kThreads * kPerThread);
  EXPECT_EQ(gauge.Value(), kThreads * kPerThread / 2);
  EXPECT_EQ(histogram.Collect().histogram.sample_count,
            static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(histogram.Collect().histogram.sample_sum,
            kThreads * kPerThread / 2);
  EXPECT_THAT(CumulativeCounts(histogram),
              ElementsAre(kThreads * kPerThread / 2, kThreads * kPerThread,
                          kThreads * kPerThread));
  double labelled_total = 0;
  for (const char* t : {"0", "1", "2"}) {
    labelled_total += labelled.WithLabels({t}).Value();
  }
  EXPECT_EQ(labelled_total, kThreads * kPerThread * 0.5);
}

TEST(MetricsTest, CallbackGaugeRunsAtScrapeTimeAndMayUseTheRegistry) {
  Registry registry;
  double depth = 1;
  registry.AddCallbackGauge("attnscore_queue_depth", "Queued.", [&] {
    // A callback may touch the registry: Serialize holds no lock meanwhile.
    registry.AddCounter("attnscore_scrapes_total", "Scrapes.")
        .WithLabels({})
        .Increment();
    return depth;
  });
  EXPECT_THAT(registry.Serialize(), HasSubstr("attnscore_queue_depth 1\n"));
  depth = 7;
  EXPECT_THAT(registry.Serialize(), HasSubstr("attnscore_queue_depth 7\n"));
}

// The server's metric set as the issue lists it, linted by promtool (its
// naming rules: counters end in _total, base units, no reserved labels).
TEST(MetricsTest, PromtoolAcceptsServerStyleMetrics) {
  Registry registry;
  registry
      .AddCounter("attnscore_requests_total",
                  "Requests by gRPC method and status code.",
                  {"method", "code"})
      .WithLabels({"/attnscore.v1.AttentionScorer/Score", "OK"})
      .Increment();
  const std::vector<double> seconds = ExponentialBuckets(0.0001, 2, 20);
  for (const char* name : {"attnscore_request_duration_seconds",
                           "attnscore_queue_duration_seconds",
                           "attnscore_compute_duration_seconds"}) {
    registry.AddHistogram(name, "Duration.", seconds, {"method"})
        .WithLabels({"Score"})
        .Observe(0.01);
  }
  registry.AddHistogram("attnscore_batch_size", "Requests per batch.",
                        ExponentialBuckets(1, 2, 8));
  registry.AddCallbackGauge("attnscore_queue_depth", "Requests queued.",
                            [] { return 0; });
  registry.AddGauge("attnscore_in_flight_requests", "Requests in flight.");
  registry.AddCounter("attnscore_received_bytes_total", "Request bytes.");
  registry.AddCounter("attnscore_sent_bytes_total", "Response bytes.");
  registry.AddCallbackGauge("attnscore_loaded_models",
                            "Relative parameter sets loaded.",
                            [] { return 1; });
  registry
      .AddGauge("attnscore_build_info", "Build information; always 1.",
                {"version", "device"})
      .WithLabels({"0.1.0", "cpu"})
      .Set(1);
  absl::Status status =
      attnscore::testing::CheckMetricsWithPromtool(registry.Serialize());
  EXPECT_TRUE(status.ok()) << status;
}

// The value of the unlabelled series `name` in `exposition`, or NaN.
double SampleValue(const std::string& exposition, const std::string& name) {
  const std::string prefix = "\n" + name + " ";
  const size_t at = exposition.find(prefix);
  if (at == std::string::npos) return std::nan("");
  return std::strtod(exposition.c_str() + at + prefix.size(), nullptr);
}

TEST(MetricsTest, ProcessMetricsDescribeThisProcess) {
  Registry registry;
  AddProcessMetrics(registry);
  // Burn a little CPU so the counter has something to show.
  volatile double sink = 0;
  for (int i = 0; i < 20000000; ++i) sink = sink + i;
  const std::string text = registry.Serialize();
  EXPECT_THAT(text, HasSubstr("# TYPE process_cpu_seconds_total counter\n"));
  EXPECT_GT(SampleValue(text, "process_cpu_seconds_total"), 0);
  EXPECT_GT(SampleValue(text, "process_resident_memory_bytes"), 1 << 20);
  EXPECT_GE(SampleValue(text, "process_virtual_memory_bytes"),
            SampleValue(text, "process_resident_memory_bytes"));
  EXPECT_GE(SampleValue(text, "process_open_fds"), 3);
  EXPECT_GE(SampleValue(text, "process_max_fds"),
            SampleValue(text, "process_open_fds"));
  const double now = static_cast<double>(std::time(nullptr));
  const double start = SampleValue(text, "process_start_time_seconds");
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 3600);  // this test started within the hour
  absl::Status status = attnscore::testing::CheckMetricsWithPromtool(text);
  EXPECT_TRUE(status.ok()) << status;
}

TEST(MetricsTest, PromtoolCheckReportsProblems) {
  Registry registry;
  registry.AddCounter("attnscore_requests", "No _total suffix.");
  absl::Status status =
      attnscore::testing::CheckMetricsWithPromtool(registry.Serialize());
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("_total"));
}

using MetricsDeathTest = ::testing::Test;

TEST_F(MetricsDeathTest, DefinitionErrorsAbortWithTheReason) {
  Registry registry;
  auto& family = registry.AddCounter("attnscore_x_total", "X.", {"a", "b"});
  EXPECT_DEATH(family.WithLabels({"only one"}),
               "attnscore_x_total has 2 label\\(s\\) but WithLabels got 1");
  EXPECT_DEATH(registry.AddGauge("attnscore_x_total", "X.", {"a", "b"}),
               "registered twice");
  EXPECT_DEATH(
      registry.AddCounter("attnscore_x_total", "Other help.", {"a", "b"}),
      "registered twice");
  EXPECT_DEATH(registry.AddCounter("0bad", "Bad."), "invalid metric name");
  EXPECT_DEATH(registry.AddCounter("attnscore_y_total", "Y.", {"__reserved"}),
               "invalid label name");
  EXPECT_DEATH(registry.AddCounter("attnscore_y_total", "Y.", {"a", "a"}),
               "duplicate label name");
  EXPECT_DEATH(registry.AddHistogram("attnscore_h", "H.", {1}, {"le"}),
               "reserved");
  EXPECT_DEATH(registry.AddHistogram("attnscore_h", "H.", {2, 1}),
               "strictly increasing");
  EXPECT_DEATH(ExponentialBuckets(0, 2, 3), "ExponentialBuckets needs");
  registry.AddCallbackGauge("attnscore_cb", "CB.", [] { return 0; });
  EXPECT_DEATH(
      registry.AddCallbackGauge("attnscore_cb", "CB.", [] { return 0; }),
      "registered twice");
  EXPECT_DEATH(registry.AddGauge("attnscore_cb", "Other kind."),
               "registered twice");
}

}  // namespace
}  // namespace attnscore::observability
