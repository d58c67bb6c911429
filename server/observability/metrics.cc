#include "server/observability/metrics.h"

#include <prometheus/check_names.h>
#include <prometheus/client_metric.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>
#include <utility>

namespace attnscore::observability {
namespace {

// What a family was registered with; a second registration must match it.
struct Definition {
  prometheus::MetricType type;
  std::string help;
  std::vector<std::string> label_names;
  std::vector<double> buckets;
  bool callback = false;

  bool operator==(const Definition& other) const {
    return !callback && !other.callback &&
           std::tie(type, help, label_names, buckets) ==
               std::tie(other.type, other.help, other.label_names,
                        other.buckets);
  }
};

struct Callback {
  std::string name;
  std::string help;
  prometheus::MetricType type;
  std::function<double()> fn;
};

// prometheus-cpp writes help text verbatim; the text format wants backslash
// and newline escaped.
std::string EscapeHelp(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void CheckLabelNames(const std::string& name,
                     const std::vector<std::string>& labels,
                     bool is_histogram) {
  for (size_t i = 0; i < labels.size(); ++i) {
    if (!prometheus::CheckLabelName(labels[i])) {
      internal::FatalDefinitionError(
          name + ": invalid label name \"" + labels[i] +
          "\": expected [a-zA-Z_][a-zA-Z0-9_]* not starting with __");
    }
    if (is_histogram && labels[i] == "le") {
      internal::FatalDefinitionError(
          name + ": label \"le\" is reserved for histogram buckets");
    }
    for (size_t j = 0; j < i; ++j) {
      if (labels[j] == labels[i]) {
        internal::FatalDefinitionError(name + ": duplicate label name \"" +
                                       labels[i] + "\"");
      }
    }
  }
}

void CheckMetricName(const std::string& name) {
  if (!prometheus::CheckMetricName(name)) {
    internal::FatalDefinitionError("invalid metric name \"" + name +
                                   "\": expected [a-zA-Z_:][a-zA-Z0-9_:]*");
  }
}

// Drops a trailing +Inf; aborts unless finite and strictly increasing.
std::vector<double> CheckBuckets(const std::string& name,
                                 std::vector<double> buckets) {
  if (!buckets.empty() && std::isinf(buckets.back()) && buckets.back() > 0) {
    buckets.pop_back();
  }
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (!std::isfinite(buckets[i]) ||
        (i > 0 && !(buckets[i - 1] < buckets[i]))) {
      internal::FatalDefinitionError(
          name +
          ": histogram buckets must be finite and strictly increasing; "
          "bucket " +
          std::to_string(i) + " is " + std::to_string(buckets[i]));
    }
  }
  return buckets;
}

// Puts `metric`'s labels (sorted by name, as prometheus-cpp keeps them) in
// the declared order.
void OrderLabels(const std::vector<std::string>& declared,
                 prometheus::ClientMetric& metric) {
  const auto rank = [&](const prometheus::ClientMetric::Label& label) {
    return std::find(declared.begin(), declared.end(), label.name) -
           declared.begin();
  };
  std::stable_sort(
      metric.label.begin(), metric.label.end(),
      [&](const auto& a, const auto& b) { return rank(a) < rank(b); });
}

bool ByLabelValues(const prometheus::ClientMetric& a,
                   const prometheus::ClientMetric& b) {
  return std::lexicographical_compare(
      a.label.begin(), a.label.end(), b.label.begin(), b.label.end(),
      [](const auto& x, const auto& y) { return x.value < y.value; });
}

prometheus::MetricFamily CallbackFamily(const Callback& callback) {
  prometheus::MetricFamily family;
  family.name = callback.name;
  family.help = callback.help;
  family.type = callback.type;
  prometheus::ClientMetric metric;
  const double value = callback.fn();
  if (callback.type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

}  // namespace

namespace internal {

void FatalDefinitionError(const std::string& what) {
  std::fprintf(stderr, "attnscore metrics: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace internal

// The prometheus-cpp registry, the facade families over it and the callback
// metrics; collected together as one Collectable.
class Registry::Impl final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;

  // Records `definition` under `name`: true if new, false if an identical
  // one exists; aborts on a conflicting one.
  bool Define(const std::string& name, Definition definition) {
    std::lock_guard<std::mutex> lock(mutex);
    auto [it, inserted] = definitions.try_emplace(name, definition);
    if (!inserted && !(it->second == definition)) {
      internal::FatalDefinitionError(
          name +
          " registered twice with different definitions (kind, help, labels "
          "or buckets; callback metrics can be registered only once)");
    }
    return inserted;
  }

  prometheus::Registry registry{prometheus::Registry::InsertBehavior::Throw};
  // Held by each Add*, so that a second registration of a name waits for the
  // first to finish. Never taken by Collect.
  std::mutex add_mutex;
  mutable std::mutex mutex;
  // Guarded by mutex. Nothing is ever removed.
  std::map<std::string, Definition> definitions;
  std::map<std::string, std::shared_ptr<void>> families;  // Family<M>
  std::vector<std::shared_ptr<const Callback>> callbacks;
};

std::vector<prometheus::MetricFamily> Registry::Impl::Collect() const {
  std::vector<prometheus::MetricFamily> out = registry.Collect();
  std::vector<std::shared_ptr<const Callback>> to_run;
  std::map<std::string, std::vector<std::string>> label_names;
  {
    std::lock_guard<std::mutex> lock(mutex);
    to_run = callbacks;
    for (const auto& [name, definition] : definitions) {
      if (!definition.label_names.empty()) {
        label_names.emplace(name, definition.label_names);
      }
    }
  }
  // Callbacks run without the lock: they may do anything, even register.
  for (const auto& callback : to_run) out.push_back(CallbackFamily(*callback));
  for (prometheus::MetricFamily& family : out) {
    auto it = label_names.find(family.name);
    if (it == label_names.end()) continue;
    for (auto& metric : family.metric) OrderLabels(it->second, metric);
    std::sort(family.metric.begin(), family.metric.end(), ByLabelValues);
  }
  out.erase(std::remove_if(out.begin(), out.end(),
                           [](const auto& f) { return f.metric.empty(); }),
            out.end());
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  if (!(start > 0) || !(factor > 1) || count < 1) {
    internal::FatalDefinitionError(
        "ExponentialBuckets needs start > 0, factor > 1, count >= 1; got "
        "start=" +
        std::to_string(start) + " factor=" + std::to_string(factor) +
        " count=" + std::to_string(count));
  }
  std::vector<double> out;
  out.reserve(count);
  double bound = start;
  for (int i = 0; i < count; ++i) {
    out.push_back(bound);
    bound *= factor;
  }
  return out;
}

Registry::Registry() : impl_(std::make_shared<Impl>()) {}

Registry::~Registry() = default;

template <typename M>
Family<M>& Registry::Add(const std::string& name, const std::string& help,
                         std::vector<std::string> label_names,
                         std::vector<double> buckets) {
  constexpr bool kHistogram = std::is_same_v<M, Histogram>;
  std::lock_guard<std::mutex> adding(impl_->add_mutex);
  CheckMetricName(name);
  CheckLabelNames(name, label_names, kHistogram);
  if constexpr (kHistogram) buckets = CheckBuckets(name, std::move(buckets));
  const prometheus::MetricType type = M::metric_type;
  if (!impl_->Define(name, {type, help, label_names, buckets})) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    return *std::static_pointer_cast<Family<M>>(impl_->families.at(name));
  }
  prometheus::Family<M>* family = nullptr;
  try {
    family = &prometheus::detail::Builder<M>()
                  .Name(name)
                  .Help(EscapeHelp(help))
                  .Register(impl_->registry);
  } catch (const std::exception& e) {
    internal::FatalDefinitionError(name + ": " + e.what());
  }
  const bool unlabelled = label_names.empty();
  auto facade = std::make_shared<Family<M>>(*family, std::move(label_names),
                                            std::move(buckets));
  if (unlabelled) facade->WithLabels({});
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->families.emplace(name, facade);
  return *facade;
}

Family<Counter>& Registry::AddCounter(const std::string& name,
                                      const std::string& help,
                                      std::vector<std::string> label_names) {
  return Add<Counter>(name, help, std::move(label_names), {});
}

Family<Gauge>& Registry::AddGauge(const std::string& name,
                                  const std::string& help,
                                  std::vector<std::string> label_names) {
  return Add<Gauge>(name, help, std::move(label_names), {});
}

Family<Histogram>& Registry::AddHistogram(
    const std::string& name, const std::string& help,
    std::vector<double> buckets, std::vector<std::string> label_names) {
  return Add<Histogram>(name, help, std::move(label_names), std::move(buckets));
}

void Registry::AddCallbackGauge(const std::string& name,
                                const std::string& help,
                                std::function<double()> fn) {
  CheckMetricName(name);
  std::lock_guard<std::mutex> adding(impl_->add_mutex);
  Definition definition{prometheus::MetricType::Gauge, help, {}, {}, true};
  impl_->Define(name, definition);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->callbacks.push_back(std::make_shared<const Callback>(
      Callback{name, EscapeHelp(help), definition.type, std::move(fn)}));
}

void Registry::AddCallbackCounter(const std::string& name,
                                  const std::string& help,
                                  std::function<double()> fn) {
  CheckMetricName(name);
  std::lock_guard<std::mutex> adding(impl_->add_mutex);
  Definition definition{prometheus::MetricType::Counter, help, {}, {}, true};
  impl_->Define(name, definition);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->callbacks.push_back(std::make_shared<const Callback>(
      Callback{name, EscapeHelp(help), definition.type, std::move(fn)}));
}

std::string Registry::Serialize() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, impl_->Collect());
  return out.str();
}

std::shared_ptr<prometheus::Collectable> Registry::collectable() const {
  return impl_;
}

}  // namespace attnscore::observability
