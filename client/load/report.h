// Load test reports: ghz's summary (count, total, slowest/fastest/average, RPS,
// a response-time histogram, p10..p99, status-code and error distributions)
// plus p99.9/p99.99, send lag, the server's Timing (queue, compute, batch size)
// next to the client latency, and all of it per request kind. Text for people,
// JSON and CSV for machines.
//
// JSON keys (times in milliseconds): count, ok, errors, error_rate, total_ms,
// rps, latency_ms {fastest, slowest, average, p10, p25, p50, p75, p90, p95,
// p99, p99.9, p99.99}, histogram [{mark_ms, count, frequency}], status_codes
// {CODE: n}, errors_by_message {"CODE: message": n} (at most 50 distinct, the
// rest counted in errors_by_message_dropped), server {queue_ms, compute_ms,
// overhead_ms: like latency_ms; batch_size {mean, p50, p99, max}}, send_lag_ms,
// not_sent, cancelled_at_drain, open_loop, kinds [{name, count, ok, errors,
// rps, latency_ms, server}], and the run's options under "options".
// CSV: one row per request kind plus an "all" row.
//
// Thread safety: pure functions.
#ifndef ATTNSCORE_CLIENT_LOAD_REPORT_H_
#define ATTNSCORE_CLIENT_LOAD_REPORT_H_

#include <map>
#include <string>

#include "client/load/runner.h"

namespace attnscore::client::load {

enum class ReportFormat { kText, kJson, kCsv };

// Options echoed in the report (target, concurrency, ...), as strings.
using ReportContext = std::map<std::string, std::string>;

std::string FormatReport(const LoadResult& result, const ReportContext& context,
                         ReportFormat format);

// The percentiles every report lists.
inline constexpr double kReportPercentiles[] = {10, 25, 50,   75,   90,
                                                95, 99, 99.9, 99.99};

}  // namespace attnscore::client::load

#endif  // ATTNSCORE_CLIENT_LOAD_REPORT_H_
