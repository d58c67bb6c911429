// Test support: the shared golden reference cases (../shared/golden) and the
// comparison every test uses for them. No LibTorch, no gRPC, so scoring,
// service and client tests can all use it.
//
// Errors: loading fails (never skips) when the golden directory or a case is
// missing.
#ifndef ATTNSCORE_TESTS_TESTING_GOLDEN_H_
#define ATTNSCORE_TESTS_TESTING_GOLDEN_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"

namespace attnscore::testing {

struct GoldenCase {
  std::string name;  // file name, e.g. "alibi_causal_h8.safetensors"
  std::map<std::string, std::string>
      options;  // index.json entry, values as strings
  SafetensorsFile file;

  bool relative() const { return options.at("mode") == "relative"; }
  bool causal() const { return options.at("causal") == "true"; }
  int64_t Int(const std::string& key) const {
    return std::stoll(options.at(key));
  }
  // nullopt for "default" (1/sqrt(D)).
  std::optional<float> scale() const;
  std::vector<int32_t> key_lengths() const;  // empty when the case has none
  bool has(const std::string& tensor) const {
    return file.Find(tensor) != nullptr;
  }
  std::vector<float> Floats(
      const std::string& tensor) const;  // aborts the test if absent
  std::vector<int64_t> Shape(const std::string& tensor) const;
};

// The golden directory given at build time (ATTNSCORE_GOLDEN_DIR).
std::string GoldenDir();
// Every case listed in index.json, loaded.
absl::StatusOr<std::vector<GoldenCase>> LoadGoldenCases();
// The same, loaded once per process. A load error is a test failure
// (ADD_FAILURE; never a skip: the reference data is part of the test) and
// leaves the list empty.
const std::vector<GoldenCase>& GoldenCases();

// |actual - expected| <= atol + rtol * |expected| element-wise, with -inf (and
// +inf) required at exactly the same positions. Returns "" when close, else a
// description of the first mismatches.
std::string CompareClose(const std::vector<float>& actual,
                         const std::vector<float>& expected, double atol,
                         double rtol);
// Same with a per-element absolute bound.
std::string CompareWithin(const std::vector<float>& actual,
                          const std::vector<float>& expected,
                          const std::vector<float>& bound);

}  // namespace attnscore::testing

#endif  // ATTNSCORE_TESTS_TESTING_GOLDEN_H_
