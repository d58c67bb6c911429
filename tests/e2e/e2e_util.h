// Test support for the end-to-end tests: how they run the server, golden cases
// as ScoreRequests and the comparison of responses against them, model files
// for the relative cases, and a client for reflection. The server process,
// health checks and metrics scrapes are tests/testing/server_process.h's. No
// LibTorch.
//
// Thread safety: pure functions (GTest's EXPECT is thread-safe).
// Errors: absl::Status, or "" / a description of what differs for the
// comparisons.
#ifndef ATTNSCORE_TESTS_E2E_E2E_UTIL_H_
#define ATTNSCORE_TESTS_E2E_E2E_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnscore/v1/attnscore.pb.h"
#include "tests/testing/golden.h"
#include "tests/testing/server_process.h"

namespace attnscore::e2e {

// The spec's tolerance for float32 results: |a-b| <= 1e-4 + 1e-4*|b|, -inf
// positions exact.
inline constexpr double kAtol = 1e-4;
inline constexpr double kRtol = 1e-4;

// How the e2e tests run the server: metrics on a free port, info logs (tests
// wait for log lines), two intra-op threads, and no wait for readiness (tests
// probe health themselves, before and after warm-up); `args` come last and
// override those.
testing::ServerOptions E2eServerOptions(std::vector<std::string> args = {});

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

// grpc.reflection.v1alpha list_services.
absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel);

}  // namespace attnscore::e2e

#endif  // ATTNSCORE_TESTS_E2E_E2E_UTIL_H_
