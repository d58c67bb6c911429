// Test support: runs Debian's real Prometheus server (/usr/bin/prometheus)
// against /metrics endpoints on this machine and queries it over its HTTP API,
// so a test can check that what we expose is scraped and parsed as intended.
// Also lints an exposition with promtool. Used by the observability tests and
// by end-to-end tests that point it at the real server binary.
//
// Ownership: a PrometheusHarness owns the prometheus process and a temporary
// directory (config, TSDB, log); its destructor kills the process and removes
// the directory. The child also gets SIGKILL if the thread that started it
// dies, so a crashed test leaves no prometheus behind.
// Thread safety: one thread at a time per harness.
// Errors: absl::Status with prometheus' own log tail when it fails to start;
// DEADLINE_EXCEEDED when a waited-for value does not appear in time. Every
// wait is bounded. Everything listens and connects on 127.0.0.1 only.
#ifndef ATTNSCORE_TESTS_OBSERVABILITY_PROMETHEUS_HARNESS_H_
#define ATTNSCORE_TESTS_OBSERVABILITY_PROMETHEUS_HARNESS_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_util.h"

namespace attnscore::testing {

inline constexpr char kPrometheusBinary[] = "/usr/bin/prometheus";
inline constexpr char kPromtoolBinary[] = "/usr/bin/promtool";

struct PrometheusOptions {
  // "HOST:PORT" endpoints, all scraped in one job.
  std::vector<std::string> targets;
  std::string job = "attnscore";
  std::string metrics_path = "/metrics";
  // Also the global scrape and evaluation interval.
  absl::Duration scrape_interval = absl::Seconds(1);
  std::string binary = kPrometheusBinary;
  // How long Start waits for prometheus to report ready.
  absl::Duration startup_timeout = absl::Seconds(30);
};

class PrometheusHarness {
 public:
  // Whether `binary` exists and is executable (tests skip when it is not).
  static bool Available(const std::string& binary = kPrometheusBinary);

  // Writes prometheus.yml, starts prometheus on a free 127.0.0.1 port and
  // returns once its /-/ready answers 200.
  static absl::StatusOr<std::unique_ptr<PrometheusHarness>> Start(
      const PrometheusOptions& options);

  PrometheusHarness(const PrometheusHarness&) = delete;
  PrometheusHarness& operator=(const PrometheusHarness&) = delete;
  ~PrometheusHarness();

  int port() const { return port_; }
  // Prometheus' stdout and stderr so far, for failure messages.
  std::string Log() const;

  // An instant query (/api/v1/query); returns data.result, the JSON array of
  // {"metric": {...}, "value": [time, "value"]}.
  absl::StatusOr<nlohmann::json> Query(const std::string& promql);

  // Polls Query every 200 ms until it returns exactly one sample whose value
  // satisfies `done` (default: any value), and returns that value. On
  // timeout: DEADLINE_EXCEEDED with the last result and prometheus' log tail.
  absl::StatusOr<double> WaitForValue(
      const std::string& promql, absl::Duration timeout = absl::Seconds(30),
      const std::function<bool(double)>& done = nullptr);

  // The scrape targets as prometheus sees them (/api/v1/targets: health,
  // lastError...), for diagnosing a target that is down.
  absl::StatusOr<nlohmann::json> Targets();

  // SIGTERM, then SIGKILL if still running after 10 s. Idempotent.
  void Kill();

 private:
  PrometheusHarness() = default;
  // Writes the config and starts one prometheus on a freshly picked port;
  // returns once it is ready, or why not.
  absl::Status StartOnce(const PrometheusOptions& options);
  absl::StatusOr<nlohmann::json> GetApi(const std::string& path,
                                        const std::string& query_param);

  // config, TSDB and log; removed (after Kill) by the destructor
  TempDir dir_{"attnscore-prometheus-"};
  int port_ = 0;
  pid_t pid_ = -1;
};

// Runs `promtool check metrics` on an exposition: OK when promtool finds no
// problem, else FAILED_PRECONDITION with promtool's complaints.
absl::Status CheckMetricsWithPromtool(
    const std::string& exposition,
    const std::string& promtool = kPromtoolBinary);

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then
// released), for programs that must be told their port up front.
absl::StatusOr<int> PickFreeLoopbackPort();

}  // namespace attnscore::testing

#endif  // ATTNSCORE_TESTS_OBSERVABILITY_PROMETHEUS_HARNESS_H_
