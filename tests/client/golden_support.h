// Test support: golden cases as client requests, and a model directory that
// makes the server load each relative case's parameters under the case's name
// (its file stem).
//
// Ownership: requests view the GoldenCase's tensors; keep the case alive while
// they are in use.
// Errors: gtest assertions (EXPECT) for malformed cases.
#ifndef ATTNSCORE_TESTS_CLIENT_GOLDEN_SUPPORT_H_
#define ATTNSCORE_TESTS_CLIENT_GOLDEN_SUPPORT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/client.h"
#include "tests/testing/golden.h"

namespace attnscore::testing {

// "relative_causal.safetensors" -> "relative_causal": the model name the server
// gives it.
std::string CaseStem(const GoldenCase& golden);

// A view of tensor `name` of the case (F32 as stored).
client::TensorView GoldenView(const GoldenCase& golden,
                              const std::string& name);

// The request the case describes: q, k, (v), bias, causal, scale, key_lengths;
// every output the case has an expectation for.
client::ScoreRequest GoldenRequest(const GoldenCase& golden);

// Writes NAME.safetensors (key_pos_embeddings, key_pos_bias, query_pos_bias)
// for every relative case into `dir`.
absl::Status WriteGoldenModels(const std::vector<GoldenCase>& cases,
                               const std::string& dir);

// Compares every output the case has an expectation for with |a-b| <= 1e-4 +
// 1e-4|b| and exact -inf positions. "" when all match.
std::string CompareWithGolden(const GoldenCase& golden,
                              const client::ScoreResult& result);

}  // namespace attnscore::testing

#endif  // ATTNSCORE_TESTS_CLIENT_GOLDEN_SUPPORT_H_
