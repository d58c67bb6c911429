#include "client/load/report.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace attnscore::client::load {
namespace {

constexpr int kHistogramBuckets = 10;
constexpr int kBarWidth = 40;

double Ms(int64_t ns) { return static_cast<double>(ns) / 1e6; }
double Ms(double ns) { return ns / 1e6; }

std::string PercentileKey(double p) { return absl::StrCat("p", p); }

struct Mark {
  double mark_ms;
  int64_t count;
};

// ghz's response-time histogram: kHistogramBuckets equal-width buckets between
// the fastest and the slowest request, each labelled by its upper edge. Built
// from the log buckets (0.1% wide), each counted where its midpoint falls.
std::vector<Mark> LinearHistogram(const LogHistogram& h) {
  std::vector<Mark> marks;
  if (h.count() == 0) return marks;
  const double lo = static_cast<double>(h.min());
  const double hi = static_cast<double>(h.max());
  const double width = (hi - lo) / kHistogramBuckets;
  for (int i = 0; i < kHistogramBuckets; ++i) {
    marks.push_back({Ms(lo + width * (i + 1)), 0});
  }
  for (const LogHistogram::Bucket& b : h.Buckets()) {
    const double mid = std::clamp(
        (static_cast<double>(b.low) + static_cast<double>(b.high)) / 2, lo, hi);
    int index =
        width > 0 ? static_cast<int>(std::ceil((mid - lo) / width)) - 1 : 0;
    index = std::clamp(index, 0, kHistogramBuckets - 1);
    marks[static_cast<size_t>(index)].count += b.count;
  }
  return marks;
}

nlohmann::json PercentilesJson(const LogHistogram& h) {
  nlohmann::json out = nlohmann::json::object();
  out["fastest"] = Ms(h.min());
  out["slowest"] = Ms(h.max());
  out["average"] = Ms(h.mean());
  for (double p : kReportPercentiles) {
    out[PercentileKey(p)] = Ms(h.Percentile(p));
  }
  return out;
}

nlohmann::json ServerJson(const Stats& s) {
  nlohmann::json out;
  out["queue_ms"] = PercentilesJson(s.queue_ns);
  out["compute_ms"] = PercentilesJson(s.compute_ns);
  out["overhead_ms"] = PercentilesJson(s.overhead_ns);
  out["batch_size"] = {{"mean", s.batch_size.mean()},
                       {"p50", s.batch_size.Percentile(50)},
                       {"p99", s.batch_size.Percentile(99)},
                       {"max", s.batch_size.max()}};
  return out;
}

double Rps(int64_t count, absl::Duration elapsed) {
  const double s = absl::ToDoubleSeconds(elapsed);
  return s > 0 ? static_cast<double>(count) / s : 0.0;
}

std::string Json(const LoadResult& r, const ReportContext& context) {
  nlohmann::json out;
  out["options"] = context;
  out["count"] = r.all.count;
  out["ok"] = r.all.ok;
  out["errors"] = r.all.errors;
  out["error_rate"] = r.error_rate();
  out["total_ms"] = absl::ToDoubleMilliseconds(r.elapsed);
  out["rps"] = r.rps();
  out["latency_ms"] = PercentilesJson(r.all.latency_ns);
  nlohmann::json histogram = nlohmann::json::array();
  for (const Mark& m : LinearHistogram(r.all.latency_ns)) {
    histogram.push_back(
        {{"mark_ms", m.mark_ms},
         {"count", m.count},
         {"frequency", r.all.count > 0 ? static_cast<double>(m.count) /
                                             static_cast<double>(r.all.count)
                                       : 0.0}});
  }
  out["histogram"] = histogram;
  out["status_codes"] = r.status_codes;
  out["errors_by_message"] = r.error_messages;
  out["errors_by_message_dropped"] = r.error_messages_dropped;
  out["server"] = ServerJson(r.all);
  out["send_lag_ms"] = PercentilesJson(r.send_lag_ns);
  out["not_sent"] = r.not_sent;
  out["cancelled_at_drain"] = r.cancelled_at_drain;
  out["open_loop"] = r.open_loop;
  nlohmann::json kinds = nlohmann::json::array();
  for (size_t i = 0; i < r.kind_names.size(); ++i) {
    const Stats& s = r.by_kind[i];
    kinds.push_back({{"name", r.kind_names[i]},
                     {"count", s.count},
                     {"ok", s.ok},
                     {"errors", s.errors},
                     {"rps", Rps(s.count, r.elapsed)},
                     {"latency_ms", PercentilesJson(s.latency_ns)},
                     {"server", ServerJson(s)}});
  }
  out["kinds"] = kinds;
  // Replace, not throw, on invalid UTF-8 (an error message is the server's
  // text).
  return out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) +
         "\n";
}

std::string CsvRow(const std::string& name, const Stats& s,
                   absl::Duration elapsed) {
  std::vector<std::string> cells = {
      name,
      absl::StrCat(s.count),
      absl::StrCat(s.ok),
      absl::StrCat(s.errors),
      absl::StrFormat("%.3f", Rps(s.count, elapsed)),
      absl::StrFormat("%.4f", Ms(s.latency_ns.mean())),
      absl::StrFormat("%.4f", Ms(s.latency_ns.min()))};
  for (double p : kReportPercentiles) {
    cells.push_back(absl::StrFormat("%.4f", Ms(s.latency_ns.Percentile(p))));
  }
  cells.push_back(absl::StrFormat("%.4f", Ms(s.latency_ns.max())));
  for (const LogHistogram* h : {&s.queue_ns, &s.compute_ns, &s.overhead_ns}) {
    cells.push_back(absl::StrFormat("%.4f", Ms(h->Percentile(50))));
    cells.push_back(absl::StrFormat("%.4f", Ms(h->Percentile(99))));
  }
  cells.push_back(absl::StrFormat("%.3f", s.batch_size.mean()));
  return absl::StrJoin(cells, ",") + "\n";
}

std::string Csv(const LoadResult& r) {
  std::vector<std::string> header = {
      "kind", "count", "ok", "errors", "rps", "average_ms", "fastest_ms"};
  for (double p : kReportPercentiles) {
    header.push_back(absl::StrCat(PercentileKey(p), "_ms"));
  }
  header.insert(header.end(),
                {"slowest_ms", "queue_p50_ms", "queue_p99_ms", "compute_p50_ms",
                 "compute_p99_ms", "overhead_p50_ms", "overhead_p99_ms",
                 "batch_size_mean"});
  std::string out = absl::StrJoin(header, ",") + "\n";
  for (size_t i = 0; i < r.kind_names.size(); ++i) {
    // Kind names contain commas ("B1,H8,..."): quote them.
    out += CsvRow(absl::StrCat("\"", r.kind_names[i], "\""), r.by_kind[i],
                  r.elapsed);
  }
  out += CsvRow("all", r.all, r.elapsed);
  return out;
}

std::string FormatMs(int64_t ns) { return absl::StrFormat("%.3f ms", Ms(ns)); }

std::string Text(const LoadResult& r, const ReportContext& context) {
  std::string out;
  absl::StrAppend(&out, "Summary:\n");
  for (const auto& [key, value] : context) {
    absl::StrAppend(&out, "  ", key, ":\t", value, "\n");
  }
  absl::StrAppend(&out, "  Count:\t", r.all.count, "\n");
  absl::StrAppend(
      &out, "  Total:\t",
      absl::StrFormat("%.3f ms", absl::ToDoubleMilliseconds(r.elapsed)), "\n");
  absl::StrAppend(&out, "  Slowest:\t", FormatMs(r.all.latency_ns.max()), "\n");
  absl::StrAppend(&out, "  Fastest:\t", FormatMs(r.all.latency_ns.min()), "\n");
  absl::StrAppend(&out, "  Average:\t",
                  absl::StrFormat("%.3f ms", Ms(r.all.latency_ns.mean())),
                  "\n");
  absl::StrAppend(&out, "  Requests/sec:\t", absl::StrFormat("%.2f", r.rps()),
                  "\n");
  absl::StrAppend(&out, "  Error rate:\t",
                  absl::StrFormat("%.4f", r.error_rate()), "\n");
  if (r.open_loop) {
    absl::StrAppend(&out,
                    "  Open loop: latency from each request's intended send "
                    "time; send lag p50 ",
                    FormatMs(r.send_lag_ns.Percentile(50)), ", p99 ",
                    FormatMs(r.send_lag_ns.Percentile(99)), ", max ",
                    FormatMs(r.send_lag_ns.max()), "\n");
  }
  if (r.not_sent > 0) {
    absl::StrAppend(&out, "  Not sent (time bound):\t", r.not_sent, "\n");
  }
  if (r.cancelled_at_drain > 0) {
    absl::StrAppend(&out, "  Cancelled at drain:\t", r.cancelled_at_drain,
                    "\n");
  }

  absl::StrAppend(&out, "\nResponse time histogram:\n");
  const std::vector<Mark> marks = LinearHistogram(r.all.latency_ns);
  int64_t most = 1;
  for (const Mark& m : marks) most = std::max(most, m.count);
  for (const Mark& m : marks) {
    const int bar = static_cast<int>(m.count * kBarWidth / most);
    absl::StrAppend(&out,
                    absl::StrFormat("  %10.3f [%d]\t|", m.mark_ms, m.count),
                    std::string(static_cast<size_t>(bar), '#'), "\n");
  }

  absl::StrAppend(&out, "\nLatency distribution:\n");
  for (double p : kReportPercentiles) {
    absl::StrAppend(&out,
                    absl::StrFormat("  %6s %% in %s\n", absl::StrCat(p),
                                    FormatMs(r.all.latency_ns.Percentile(p))));
  }

  absl::StrAppend(&out, "\nStatus code distribution:\n");
  for (const auto& [code, n] : r.status_codes) {
    absl::StrAppend(&out, absl::StrFormat("  [%s]\t%d responses\n", code, n));
  }
  if (!r.error_messages.empty()) {
    absl::StrAppend(&out, "\nError distribution:\n");
    for (const auto& [message, n] : r.error_messages) {
      absl::StrAppend(&out, absl::StrFormat("  [%d]\t%s\n", n, message));
    }
    if (r.error_messages_dropped > 0) {
      absl::StrAppend(&out, absl::StrFormat("  [%d]\t(other messages)\n",
                                            r.error_messages_dropped));
    }
  }

  const auto server_line = [](const Stats& s) {
    return absl::StrFormat(
        "queue p50 %.3f p99 %.3f ms | compute p50 %.3f p99 %.3f ms | overhead "
        "p50 %.3f p99 "
        "%.3f ms | batch mean %.2f max %d",
        Ms(s.queue_ns.Percentile(50)), Ms(s.queue_ns.Percentile(99)),
        Ms(s.compute_ns.Percentile(50)), Ms(s.compute_ns.Percentile(99)),
        Ms(s.overhead_ns.Percentile(50)), Ms(s.overhead_ns.Percentile(99)),
        s.batch_size.mean(), s.batch_size.max());
  };
  absl::StrAppend(&out,
                  "\nServer timing (successful requests; overhead = latency - "
                  "queue - compute):\n  ",
                  server_line(r.all), "\n");

  absl::StrAppend(&out, "\nBy request kind:\n");
  for (size_t i = 0; i < r.kind_names.size(); ++i) {
    const Stats& s = r.by_kind[i];
    absl::StrAppend(
        &out, absl::StrFormat("  %s: count %d, errors %d, %.2f req/s, latency "
                              "avg %.3f p50 %.3f p99 "
                              "%.3f p99.9 %.3f max %.3f ms\n    %s\n",
                              r.kind_names[i], s.count, s.errors,
                              Rps(s.count, r.elapsed), Ms(s.latency_ns.mean()),
                              Ms(s.latency_ns.Percentile(50)),
                              Ms(s.latency_ns.Percentile(99)),
                              Ms(s.latency_ns.Percentile(99.9)),
                              Ms(s.latency_ns.max()), server_line(s)));
  }
  return out;
}

}  // namespace

std::string FormatReport(const LoadResult& result, const ReportContext& context,
                         ReportFormat format) {
  switch (format) {
    case ReportFormat::kJson:
      return Json(result, context);
    case ReportFormat::kCsv:
      return Csv(result);
    case ReportFormat::kText:
      break;
  }
  return Text(result, context);
}

}  // namespace attnscore::client::load
