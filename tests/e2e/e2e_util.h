// Test support for the end-to-end tests: golden cases as ScoreRequests and the
// comparison of responses against them, model files for the relative cases, and
// small clients for health, reflection and the metrics endpoint. No LibTorch.
#ifndef ATTNSCORE_TESTS_E2E_E2E_UTIL_H_
#define ATTNSCORE_TESTS_E2E_E2E_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnscore/v1/attnscore.pb.h"
#include "grpc/health/v1/health.pb.h"
#include "tests/testing/golden.h"

namespace attnscore::e2e {

// The spec's tolerance for float32 results: |a-b| <= 1e-4 + 1e-4*|b|, -inf
// positions exact.
inline constexpr double kAtol = 1e-4;
inline constexpr double kRtol = 1e-4;

v1::Tensor Float32Tensor(const std::vector<float>& values,
                         const std::vector<int64_t>& shape);
// REQUIRES: FLOAT32 (EXPECT-fails otherwise).
std::vector<float> ToFloats(const v1::Tensor& tensor);

// The model name a relative case is served under: its file stem.
std::string ModelName(const testing::GoldenCase& c);
// Writes every relative case's parameters to `dir`/NAME.safetensors.
absl::Status WriteRelativeModels(const std::vector<testing::GoldenCase>& cases,
                                 const std::string& dir);

// The request for a golden case: its inputs and options, every output it has
// expectations for.
v1::ScoreRequest GoldenRequest(const testing::GoldenCase& c);
// "" if `response` matches the case's expected outputs within kAtol/kRtol, else
// what differs.
std::string CompareGolden(const testing::GoldenCase& c,
                          const v1::ScoreResponse& response);

// The same for a request made of some of the case's batch items, in the given
// order (tests that batched results are split back exactly): inputs and
// expectations are those rows.
v1::ScoreRequest GoldenRequestForItems(const testing::GoldenCase& c,
                                       const std::vector<int>& items);
std::string CompareGoldenItems(const testing::GoldenCase& c,
                               const std::vector<int>& items,
                               const v1::ScoreResponse& response);

// grpc.health.v1.Health/Check.
absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
            const std::string& service);
// grpc.reflection.v1alpha list_services.
absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel);
// GET http://127.0.0.1:port/path, the body (5 s timeout).
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

}  // namespace attnscore::e2e

#endif  // ATTNSCORE_TESTS_E2E_E2E_UTIL_H_
