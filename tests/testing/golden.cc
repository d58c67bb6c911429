#include "tests/testing/golden.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace attnscore::testing {

std::optional<float> GoldenCase::scale() const {
  const std::string& s = options.at("scale");
  if (s == "default") return std::nullopt;
  return std::stof(s);
}

std::vector<int32_t> GoldenCase::key_lengths() const {
  std::vector<int32_t> out;
  auto it = options.find("key_lengths");
  if (it == options.end()) return out;
  for (absl::string_view part : absl::StrSplit(it->second, ',')) {
    out.push_back(std::stoi(std::string{part}));
  }
  return out;
}

std::vector<float> GoldenCase::Floats(const std::string& tensor) const {
  absl::StatusOr<std::vector<float>> values = file.ReadFloats(tensor);
  EXPECT_TRUE(values.ok()) << values.status();
  return values.ok() ? *values : std::vector<float>();
}

std::vector<int64_t> GoldenCase::Shape(const std::string& tensor) const {
  const SafetensorsFile::Tensor* t = file.Find(tensor);
  EXPECT_NE(t, nullptr) << name << ": no tensor " << tensor;
  return t != nullptr ? t->shape : std::vector<int64_t>();
}

std::string GoldenDir() { return ATTNSCORE_GOLDEN_DIR; }

const std::vector<GoldenCase>& GoldenCases() {
  static const auto* cases = [] {
    absl::StatusOr<std::vector<GoldenCase>> loaded = LoadGoldenCases();
    if (!loaded.ok()) {
      ADD_FAILURE() << loaded.status();
      return new std::vector<GoldenCase>();
    }
    return new std::vector<GoldenCase>(*std::move(loaded));
  }();
  return *cases;
}

absl::StatusOr<std::vector<GoldenCase>> LoadGoldenCases() {
  const std::string index_path = GoldenDir() + "/index.json";
  std::ifstream in(index_path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(index_path, ": golden index missing"));
  }
  nlohmann::json index =
      nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!index.is_array() || index.empty()) {
    return absl::DataLossError(
        absl::StrCat(index_path, ": expected a non-empty JSON array"));
  }
  std::vector<GoldenCase> cases;
  for (const nlohmann::json& entry : index) {
    std::map<std::string, std::string> options;
    for (auto it = entry.begin(); it != entry.end(); ++it) {
      options[it.key()] = it->is_string() ? it->get<std::string>() : it->dump();
    }
    const std::string name = options["case"];
    absl::StatusOr<SafetensorsFile> file =
        SafetensorsFile::Read(GoldenDir() + "/" + name);
    if (!file.ok()) return file.status();
    cases.push_back(GoldenCase{name, std::move(options), *std::move(file)});
  }
  return cases;
}

namespace {

std::string Compare(const std::vector<float>& actual,
                    const std::vector<float>& expected,
                    const std::function<double(size_t)>& bound) {
  if (actual.size() != expected.size()) {
    return absl::StrCat("size ", actual.size(), ", expected ", expected.size());
  }
  std::ostringstream out;
  size_t bad = 0;
  double worst = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const float a = actual[i];
    const float e = expected[i];
    bool ok;
    if (std::isinf(e) || std::isinf(a)) {
      ok = a == e;  // -inf positions must match exactly
    } else if (std::isnan(a) || std::isnan(e)) {
      ok = false;
    } else {
      const double diff = std::fabs(static_cast<double>(a) - e);
      ok = diff <= bound(i);
      worst = std::max(worst, diff);
    }
    if (!ok && bad++ < 5) {
      out << " [" << i << "] got " << a << " expected " << e << " (bound "
          << bound(i) << ");";
    }
  }
  if (bad == 0) return "";
  return absl::StrCat(bad, " of ", actual.size(),
                      " elements differ, max finite diff ", worst, ":",
                      out.str());
}

}  // namespace

std::string CompareClose(const std::vector<float>& actual,
                         const std::vector<float>& expected, double atol,
                         double rtol) {
  return Compare(actual, expected, [&](size_t i) {
    return atol + rtol * std::fabs(static_cast<double>(expected[i]));
  });
}

std::string CompareWithin(const std::vector<float>& actual,
                          const std::vector<float>& expected,
                          const std::vector<float>& bound) {
  return Compare(actual, expected,
                 [&](size_t i) { return static_cast<double>(bound[i]); });
}

}  // namespace attnscore::testing
