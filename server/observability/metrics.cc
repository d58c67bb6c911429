#include "server/observability/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <typeinfo>
#include <utility>

namespace attnscore::observability {
namespace {

// C++17 has no atomic<double>::fetch_add; a CAS loop is lock-free and, for
// the contention a server sees, as cheap.
void AtomicAdd(std::atomic<double>& target, double v) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + v,
                                       std::memory_order_relaxed)) {
  }
}

static_assert(std::atomic<double>::is_always_lock_free,
              "metric updates must not take a lock");
static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "metric updates must not take a lock");

bool IsMetricNameChar(char c, bool first) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
      c == ':') {
    return true;
  }
  return !first && c >= '0' && c <= '9';
}

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool IsValidMetricName(const std::string& name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsMetricNameChar(name[i], i == 0)) return false;
  }
  return true;
}

// [a-zA-Z_][a-zA-Z0-9_]*, and names starting "__" are Prometheus' own.
bool IsValidLabelName(const std::string& name) {
  if (name.empty() || name.rfind("__", 0) == 0) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] == ':' || !IsMetricNameChar(name[i], i == 0)) return false;
  }
  return true;
}

void CheckNames(const std::string& name, const std::vector<std::string>& labels,
                bool is_histogram) {
  if (!IsValidMetricName(name)) {
    internal::FatalDefinitionError("invalid metric name \"" + name +
                                   "\": expected [a-zA-Z_:][a-zA-Z0-9_:]*");
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    if (!IsValidLabelName(labels[i])) {
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

// Backslash and newline always; the double quote only inside label values.
void AppendEscaped(std::string& out, const std::string& s, bool escape_quote) {
  for (char c : s) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '"':
        out += escape_quote ? "\\\"" : "\"";
        break;
      default:
        out += c;
    }
  }
}

void AppendSample(std::string& out, const std::string& name, const char* suffix,
                  const std::string& labels, double v) {
  out += name;
  out += suffix;
  out += labels;
  out += ' ';
  out += internal::FormatValue(v);
  out += '\n';
}

// One overload per metric type: the sample lines of one series.
void AppendSeries(const internal::FamilyBase& family,
                  const std::vector<std::string>& values, const Counter& m,
                  std::string& out) {
  AppendSample(out, family.name(), "",
               internal::FormatLabels(family.label_names(), values), m.Value());
}

void AppendSeries(const internal::FamilyBase& family,
                  const std::vector<std::string>& values, const Gauge& m,
                  std::string& out) {
  AppendSample(out, family.name(), "",
               internal::FormatLabels(family.label_names(), values), m.Value());
}

void AppendSeries(const internal::FamilyBase& family,
                  const std::vector<std::string>& values, const Histogram& m,
                  std::string& out) {
  // Read the buckets once and derive _count from them, so a scrape racing
  // with Observe still has _count equal to the +Inf bucket.
  const std::vector<uint64_t> cumulative = m.CumulativeCounts();
  const std::vector<double>& bounds = m.upper_bounds();
  for (size_t i = 0; i < cumulative.size(); ++i) {
    const std::string le =
        i < bounds.size() ? internal::FormatValue(bounds[i]) : "+Inf";
    AppendSample(out, family.name(), "_bucket",
                 internal::FormatLabels(family.label_names(), values, "le", le),
                 static_cast<double>(cumulative[i]));
  }
  const std::string labels =
      internal::FormatLabels(family.label_names(), values);
  AppendSample(out, family.name(), "_sum", labels, m.Sum());
  AppendSample(out, family.name(), "_count", labels,
               static_cast<double>(cumulative.back()));
}

class CallbackGaugeFamily : public internal::FamilyBase {
 public:
  CallbackGaugeFamily(std::string name, std::string help,
                      std::function<double()> fn)
      : FamilyBase(std::move(name), std::move(help), "gauge", {}),
        fn_(std::move(fn)) {}

  // Two callbacks cannot be compared, so a second registration is a mistake.
  bool SameDefinition(const FamilyBase&) const override { return false; }

 protected:
  void AppendSamples(std::string& out) const override {
    AppendSample(out, name(), "", "", fn_());
  }

 private:
  const std::function<double()> fn_;
};

}  // namespace

namespace internal {

void FatalDefinitionError(const std::string& what) {
  std::fprintf(stderr, "attnscore metrics: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

FamilyBase::FamilyBase(std::string name, std::string help, std::string type,
                       std::vector<std::string> label_names,
                       std::vector<double> buckets)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(std::move(type)),
      label_names_(std::move(label_names)),
      buckets_(std::move(buckets)) {}

bool FamilyBase::SameDefinition(const FamilyBase& other) const {
  // typeid tells a Family<Gauge> from a callback gauge of the same type name.
  return typeid(*this) == typeid(other) && help_ == other.help_ &&
         label_names_ == other.label_names_ && buckets_ == other.buckets_;
}

void FamilyBase::AppendTo(std::string& out) const {
  std::string samples;
  AppendSamples(samples);
  if (samples.empty()) return;
  out += "# HELP ";
  out += name_;
  out += ' ';
  AppendEscaped(out, help_, /*escape_quote=*/false);
  out += "\n# TYPE ";
  out += name_;
  out += ' ';
  out += type_;
  out += '\n';
  out += samples;
}

std::string FormatLabels(const std::vector<std::string>& names,
                         const std::vector<std::string>& values,
                         const char* extra_name,
                         const std::string& extra_value) {
  if (names.empty() && extra_name == nullptr) return "";
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ',';
    out += names[i];
    out += "=\"";
    AppendEscaped(out, values[i], /*escape_quote=*/true);
    out += '"';
  }
  if (extra_name != nullptr) {
    if (!names.empty()) out += ',';
    out += extra_name;
    out += "=\"";
    AppendEscaped(out, extra_value, /*escape_quote=*/true);
    out += '"';
  }
  out += '}';
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // Counts are the common case; print them as integers (1000000, not the
  // shortest form 1e+06) while every integer is exact in a double.
  constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
  if (v == std::trunc(v) && std::fabs(v) <= kMaxExactInteger) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  char buf[64];
  auto result = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, result.ptr);
}

}  // namespace internal

void Counter::Increment(double v) {
  if (!(v >= 0)) return;  // also rejects NaN
  AtomicAdd(value_, v);
}

double Counter::Value() const { return value_.load(std::memory_order_relaxed); }

void Gauge::Set(double v) { value_.store(v, std::memory_order_relaxed); }

void Gauge::Add(double v) { AtomicAdd(value_, v); }

double Gauge::Value() const { return value_.load(std::memory_order_relaxed); }

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      bucket_counts_(new std::atomic<uint64_t>[upper_bounds_.size() + 1]) {
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) bucket_counts_[i] = 0;
}

void Histogram::Observe(double v) {
  // First bound >= v; NaN compares false everywhere and lands in +Inf.
  size_t bucket = upper_bounds_.size();
  if (!std::isnan(v)) {
    bucket = std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), v) -
             upper_bounds_.begin();
  }
  bucket_counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, v);
}

uint64_t Histogram::Count() const { return CumulativeCounts().back(); }

double Histogram::Sum() const { return sum_.load(std::memory_order_relaxed); }

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> out(upper_bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    running += bucket_counts_[i].load(std::memory_order_relaxed);
    out[i] = running;
  }
  return out;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  if (!(start > 0) || !(factor > 1) || count < 1) {
    internal::FatalDefinitionError(
        "ExponentialBuckets needs start > 0, factor > 1, count >= 1; got "
        "start=" +
        internal::FormatValue(start) + " factor=" +
        internal::FormatValue(factor) + " count=" + std::to_string(count));
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

std::vector<double> LinearBuckets(double start, double width, int count) {
  if (!std::isfinite(start) || !(width > 0) || count < 1) {
    internal::FatalDefinitionError(
        "LinearBuckets needs a finite start, width > 0, count >= 1; got "
        "start=" +
        internal::FormatValue(start) + " width=" +
        internal::FormatValue(width) + " count=" + std::to_string(count));
  }
  std::vector<double> out;
  out.reserve(count);
  for (int i = 0; i < count; ++i) out.push_back(start + i * width);
  return out;
}

template <typename M>
void Family<M>::AppendSamples(std::string& out) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  for (const auto& [values, metric] : series_) {
    AppendSeries(*this, values, *metric, out);
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

internal::FamilyBase& Registry::Register(
    std::unique_ptr<internal::FamilyBase> family) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = families_.find(family->name());
  if (it != families_.end()) {
    if (!it->second->SameDefinition(*family)) {
      internal::FatalDefinitionError(
          family->name() +
          " registered twice with different definitions (kind, help, labels "
          "or buckets; callback gauges can be registered only once)");
    }
    return *it->second;
  }
  internal::FamilyBase& out = *family;
  families_.emplace(family->name(), std::move(family));
  return out;
}

Family<Counter>& Registry::AddCounter(const std::string& name,
                                      const std::string& help,
                                      std::vector<std::string> label_names) {
  CheckNames(name, label_names, /*is_histogram=*/false);
  const bool unlabelled = label_names.empty();
  auto& family =
      static_cast<Family<Counter>&>(Register(std::make_unique<Family<Counter>>(
          name, help, "counter", std::move(label_names), std::vector<double>{},
          [] { return std::make_unique<Counter>(); })));
  if (unlabelled) family.WithLabels({});
  return family;
}

Family<Gauge>& Registry::AddGauge(const std::string& name,
                                  const std::string& help,
                                  std::vector<std::string> label_names) {
  CheckNames(name, label_names, /*is_histogram=*/false);
  const bool unlabelled = label_names.empty();
  auto& family =
      static_cast<Family<Gauge>&>(Register(std::make_unique<Family<Gauge>>(
          name, help, "gauge", std::move(label_names), std::vector<double>{},
          [] { return std::make_unique<Gauge>(); })));
  if (unlabelled) family.WithLabels({});
  return family;
}

Family<Histogram>& Registry::AddHistogram(
    const std::string& name, const std::string& help,
    std::vector<double> buckets, std::vector<std::string> label_names) {
  CheckNames(name, label_names, /*is_histogram=*/true);
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
          std::to_string(i) + " is " + internal::FormatValue(buckets[i]));
    }
  }
  const bool unlabelled = label_names.empty();
  std::vector<double> bounds = buckets;
  auto& family = static_cast<Family<Histogram>&>(
      Register(std::make_unique<Family<Histogram>>(
          name, help, "histogram", std::move(label_names), std::move(buckets),
          [bounds] { return std::make_unique<Histogram>(bounds); })));
  if (unlabelled) family.WithLabels({});
  return family;
}

void Registry::AddCallbackGauge(const std::string& name,
                                const std::string& help,
                                std::function<double()> fn) {
  CheckNames(name, {}, /*is_histogram=*/false);
  Register(std::make_unique<CallbackGaugeFamily>(name, help, std::move(fn)));
}

std::string Registry::Serialize() const {
  // Collect the families under the lock, render without it: rendering runs
  // callbacks, which must be free to do anything (even register metrics).
  // Families are never removed, so the pointers stay valid.
  std::vector<const internal::FamilyBase*> families;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    families.reserve(families_.size());
    for (const auto& [name, family] : families_) {
      families.push_back(family.get());
    }
  }
  std::string out;
  for (const internal::FamilyBase* family : families) family->AppendTo(out);
  return out;
}

}  // namespace attnscore::observability
