// Prometheus metrics for the server: a thin facade over prometheus-cpp (core)
// that declares each family's label names once, so call sites pass label
// values in that order, and that adds gauges computed at scrape time. The
// metric objects are prometheus-cpp's own (Counter, Gauge, Histogram); the
// exposition is prometheus-cpp's TextSerializer, served by metrics_server.h.
//
// The exposition is deterministic: families sorted by name, series by label
// values, labels in declared order, families without series left out.
//
// Ownership: the Registry owns every family and every metric in it; the
// references it hands out stay valid for the registry's lifetime (metrics are
// never removed), so hot paths look a metric up once and keep the reference.
// collectable() shares ownership of the registry's contents with an exposer.
// Thread safety: every method of every class here may be called from any
// thread. Family::WithLabels takes a lock, which is why callers cache it.
// Errors: a malformed definition (bad metric or label name, unsorted buckets,
// the same name registered twice with a different definition, the wrong number
// of label values) is a programming error, found the first time the code runs:
// it prints the reason to stderr and aborts. Nothing else fails.
//
// Naming conventions (followed by callers, not enforced here): the `attnscore_`
// prefix, base units (`_seconds`, `_bytes`), counters end in `_total`.
#ifndef ATTNSCORE_SERVER_OBSERVABILITY_METRICS_H_
#define ATTNSCORE_SERVER_OBSERVABILITY_METRICS_H_

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/labels.h>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace attnscore::observability {

// prometheus-cpp's metric types. Counter::Increment ignores negative values;
// a Gauge moves with Increment/Decrement/Set; Histogram buckets are inclusive
// upper bounds (`le`) with an implicit +Inf.
using Counter = prometheus::Counter;
using Gauge = prometheus::Gauge;
using Histogram = prometheus::Histogram;

// `count` bounds: start, start*factor, start*factor^2...
// REQUIRES: start > 0, factor > 1, count >= 1 (aborts otherwise).
std::vector<double> ExponentialBuckets(double start, double factor, int count);

namespace internal {
// Prints "attnscore metrics: <what>" to stderr and aborts.
[[noreturn]] void FatalDefinitionError(const std::string& what);
}  // namespace internal

// One metric name with many label-value combinations (series).
template <typename M>
class Family {
 public:
  Family(prometheus::Family<M>& family, std::vector<std::string> label_names,
         std::vector<double> buckets)
      : family_(family),
        label_names_(std::move(label_names)),
        buckets_(std::move(buckets)) {}
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;

  // The series for these label values (in label_names() order), created on
  // first use. REQUIRES: label_values.size() == label_names().size() (aborts
  // otherwise). The reference is stable for the registry's lifetime; this
  // takes a lock, so cache it on hot paths.
  M& WithLabels(const std::vector<std::string>& label_values);

  const std::vector<std::string>& label_names() const { return label_names_; }

 private:
  prometheus::Family<M>& family_;
  const std::vector<std::string> label_names_;
  const std::vector<double> buckets_;  // histograms only
};

class Registry {
 public:
  Registry();
  ~Registry();
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

  // A gauge (or a counter) computed at scrape time: queue depth, loaded
  // models, the process' CPU time. `fn` runs on the scraping thread, without
  // any registry lock held; it must be thread-safe and must outlive the last
  // scrape (the metrics server's Stop, or the registry). Each name can be
  // registered once.
  void AddCallbackGauge(const std::string& name, const std::string& help,
                        std::function<double()> fn);
  void AddCallbackCounter(const std::string& name, const std::string& help,
                          std::function<double()> fn);

  // Every family in the Prometheus text exposition format 0.0.4.
  std::string Serialize() const;

  // What a prometheus::Exposer collects from (the same families Serialize
  // renders).
  std::shared_ptr<prometheus::Collectable> collectable() const;

 private:
  class Impl;

  // The prometheus-cpp family of `name`, created, or the existing one if the
  // definition matches (aborts otherwise).
  template <typename M>
  Family<M>& Add(const std::string& name, const std::string& help,
                 std::vector<std::string> label_names,
                 std::vector<double> buckets);

  const std::shared_ptr<Impl> impl_;
};

// Implementation details follow. API users need not read.

template <typename M>
M& Family<M>::WithLabels(const std::vector<std::string>& label_values) {
  if (label_values.size() != label_names_.size()) {
    internal::FatalDefinitionError(
        family_.GetName() + " has " + std::to_string(label_names_.size()) +
        " label(s) but WithLabels got " + std::to_string(label_values.size()) +
        " value(s)");
  }
  prometheus::Labels labels;
  for (size_t i = 0; i < label_names_.size(); ++i) {
    labels.emplace(label_names_[i], label_values[i]);
  }
  if constexpr (std::is_same_v<M, Histogram>) {
    return family_.Add(labels, buckets_);
  } else {
    return family_.Add(labels);
  }
}

}  // namespace attnscore::observability

#endif  // ATTNSCORE_SERVER_OBSERVABILITY_METRICS_H_
