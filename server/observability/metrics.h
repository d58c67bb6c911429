// Prometheus metrics for the server: counters, gauges and histograms grouped
// into labelled families in a Registry, rendered as the Prometheus text
// exposition format 0.0.4. No LibTorch, no gRPC, no HTTP (metrics_server.h
// serves a Registry over HTTP).
//
// Ownership: the Registry owns every family and every metric in it; the
// references it hands out stay valid for the registry's lifetime (metrics are
// never removed), so hot paths look a metric up once and keep the reference.
// Thread safety: every method of every class here may be called from any
// thread. Counter, Gauge and Histogram updates are lock-free (atomics);
// Family::WithLabels takes a lock, which is why callers cache its result.
// Errors: a malformed definition (bad metric or label name, unsorted buckets,
// the same name registered twice with a different definition, the wrong number
// of label values) is a programming error, found the first time the code runs:
// it prints the reason to stderr and aborts. Nothing else fails.
//
// Naming conventions (followed by callers, not enforced here): the `attnscore_`
// prefix, base units (`_seconds`, `_bytes`), counters end in `_total`.
#ifndef ATTNSCORE_SERVER_OBSERVABILITY_METRICS_H_
#define ATTNSCORE_SERVER_OBSERVABILITY_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

namespace attnscore::observability {

// A monotonically increasing value (requests served, bytes sent).
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  // REQUIRES: v >= 0. A negative or NaN increment would break the counter's
  // monotonicity, which Prometheus' rate() relies on, so it is ignored.
  void Increment(double v = 1);
  double Value() const;

 private:
  std::atomic<double> value_{0};
};

// A value that goes up and down (in-flight requests, queue depth).
class Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double v);
  void Add(double v);  // negative to subtract
  double Value() const;

 private:
  std::atomic<double> value_{0};
};

// Counts observations into fixed buckets (durations, batch sizes). Buckets are
// upper bounds, inclusive (`le`), strictly increasing; an implicit +Inf bucket
// catches the rest (and NaN).
class Histogram {
 public:
  // REQUIRES: `upper_bounds` finite and strictly increasing (Registry checks).
  explicit Histogram(std::vector<double> upper_bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  void Observe(double v);
  // Observations so far; equals the +Inf bucket.
  uint64_t Count() const;
  double Sum() const;

  const std::vector<double>& upper_bounds() const { return upper_bounds_; }
  // Cumulative counts per bucket as exposed: one per upper bound, then +Inf.
  // A snapshot: concurrent observations may land in some buckets and not
  // others, but the result is always non-decreasing.
  std::vector<uint64_t> CumulativeCounts() const;

 private:
  const std::vector<double> upper_bounds_;
  // Non-cumulative, one per upper bound plus +Inf, so Observe touches one
  // bucket; the exposition sums them.
  const std::unique_ptr<std::atomic<uint64_t>[]> bucket_counts_;
  std::atomic<double> sum_{0};
};

// `count` bounds: start, start*factor, start*factor^2...
// REQUIRES: start > 0, factor > 1, count >= 1 (aborts otherwise).
std::vector<double> ExponentialBuckets(double start, double factor, int count);
// `count` bounds: start, start+width, start+2*width...
// REQUIRES: width > 0, count >= 1 (aborts otherwise).
std::vector<double> LinearBuckets(double start, double width, int count);

namespace internal {

// Implementation details of Family and Registry, declared here because
// Family derives from FamilyBase; API users need not read them.

// What the Registry needs of any family, whatever its metric type.
class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, std::string type,
             std::vector<std::string> label_names,
             std::vector<double> buckets = {});
  virtual ~FamilyBase() = default;
  FamilyBase(const FamilyBase&) = delete;
  FamilyBase& operator=(const FamilyBase&) = delete;

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::string& type() const { return type_; }  // "counter", ...
  const std::vector<std::string>& label_names() const { return label_names_; }
  // Histograms' upper bounds, shared by every series; empty otherwise.
  const std::vector<double>& buckets() const { return buckets_; }

  // Whether registering `other` under this name may return this family.
  virtual bool SameDefinition(const FamilyBase& other) const;

  // Appends HELP, TYPE and every sample line; nothing if there are no series.
  void AppendTo(std::string& out) const;

 protected:
  // Appends this family's sample lines only.
  virtual void AppendSamples(std::string& out) const = 0;

 private:
  const std::string name_;
  const std::string help_;
  const std::string type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> buckets_;
};

// Renders `{a="x",b="y"}` with escaped values, plus an optional extra label
// (histograms' `le`); empty string when there are no labels at all.
std::string FormatLabels(const std::vector<std::string>& names,
                         const std::vector<std::string>& values,
                         const char* extra_name = nullptr,
                         const std::string& extra_value = "");
// Sample values as the text format spells them: integers without a
// fraction, shortest round-trip otherwise, +Inf, -Inf, NaN.
std::string FormatValue(double v);

}  // namespace internal

// One metric name with many label-value combinations (series).
template <typename M>
class Family : public internal::FamilyBase {
 public:
  using Factory = std::function<std::unique_ptr<M>()>;
  Family(std::string name, std::string help, std::string type,
         std::vector<std::string> label_names, std::vector<double> buckets,
         Factory factory);

  // The series for these label values (in label_names() order), created on
  // first use. REQUIRES: label_values.size() == label_names().size() (aborts
  // otherwise). The reference is stable for the registry's lifetime; this
  // takes a lock, so cache it on hot paths.
  M& WithLabels(const std::vector<std::string>& label_values);

 protected:
  void AppendSamples(std::string& out) const override;

 private:
  const Factory factory_;
  // std::shared_mutex rather than absl::Mutex: Debian's absl is not built
  // for ThreadSanitizer, which then cannot see absl::Mutex's ordering.
  mutable std::shared_mutex mutex_;
  // Ordered, so the exposition is deterministic. Guarded by mutex_.
  std::map<std::vector<std::string>, std::unique_ptr<M>> series_;
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Each Add* registers a family. Registering a name again with the identical
  // definition returns the existing family (so two components may share one);
  // with any difference it aborts. A family without labels has its one series
  // created at once, so it is exposed (as 0) before its first update.
  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names = {});
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> label_names = {});
  // `buckets`: upper bounds, finite and strictly increasing; a trailing +Inf
  // is dropped (it is always implied). Label `le` is reserved.
  Family<Histogram>& AddHistogram(const std::string& name,
                                  const std::string& help,
                                  std::vector<double> buckets,
                                  std::vector<std::string> label_names = {});

  // A gauge computed at scrape time (queue depth, loaded models). `fn` runs on
  // the scraping thread, concurrently with anything else, without any registry
  // lock held; it must be thread-safe and must outlive the registry's last
  // Serialize call.
  void AddCallbackGauge(const std::string& name, const std::string& help,
                        std::function<double()> fn);

  // Every family, sorted by name, in the Prometheus text exposition format
  // 0.0.4 (serve with Content-Type `text/plain; version=0.0.4`).
  std::string Serialize() const;

 private:
  // Registers `family` under its name, or returns the existing one if the
  // definitions agree (aborts if they do not).
  internal::FamilyBase& Register(std::unique_ptr<internal::FamilyBase> family);

  mutable std::mutex mutex_;
  // Guarded by mutex_. Families are never removed.
  std::map<std::string, std::unique_ptr<internal::FamilyBase>> families_;
};

// Implementation details follow. API users need not read.

namespace internal {
// Prints "attnscore metrics: <what>" to stderr and aborts.
[[noreturn]] void FatalDefinitionError(const std::string& what);
}  // namespace internal

template <typename M>
Family<M>::Family(std::string name, std::string help, std::string type,
                  std::vector<std::string> label_names,
                  std::vector<double> buckets, Factory factory)
    : internal::FamilyBase(std::move(name), std::move(help), std::move(type),
                           std::move(label_names), std::move(buckets)),
      factory_(std::move(factory)) {}

template <typename M>
M& Family<M>::WithLabels(const std::vector<std::string>& label_values) {
  if (label_values.size() != label_names().size()) {
    internal::FatalDefinitionError(
        name() + " has " + std::to_string(label_names().size()) +
        " label(s) but WithLabels got " + std::to_string(label_values.size()) +
        " value(s)");
  }
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    auto it = series_.find(label_values);
    if (it != series_.end()) return *it->second;
  }
  std::unique_lock<std::shared_mutex> lock(mutex_);
  std::unique_ptr<M>& slot = series_[label_values];
  if (slot == nullptr) slot = factory_();
  return *slot;
}

// Defined in metrics.cc for the three metric types.
extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

}  // namespace attnscore::observability

#endif  // ATTNSCORE_SERVER_OBSERVABILITY_METRICS_H_
