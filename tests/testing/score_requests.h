// Test support: the v1 ScoreRequests the hostile-input and fault suites send
// (small well-formed requests of every kind, the "query of death", the
// huge-B request, slow compute-heavy requests, requests with large replies),
// and a float64 reference for ALiBi context rows to check the answers that
// come back. Needs the generated v1 messages only (no gRPC, no LibTorch).
//
// Thread safety: pure functions. Errors: none; shapes are the caller's.
#ifndef ATTNSCORE_TESTS_TESTING_SCORE_REQUESTS_H_
#define ATTNSCORE_TESTS_TESTING_SCORE_REQUESTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "attnscore/v1/attnscore.pb.h"

namespace attnscore::testing {

// Deterministic values in [0, scale): a cheap pseudo-random ramp.
std::vector<float> RampValues(size_t n, float scale);
// A FLOAT32 tensor of `shape` holding RampValues.
v1::Tensor RampTensor32(const std::vector<int64_t>& shape, float scale);
// A FLOAT16 tensor of `shape` whose every element is `value` (exactly
// representable in binary16, e.g. 1.0).
v1::Tensor ConstantTensor16(const std::vector<int64_t>& shape, float value);

// ALiBi, B1 H2 Lq3 Lk4 D8 float32, logits: answered in milliseconds.
v1::ScoreRequest SmallAlibiRequest(const std::string& id);
// The same with the relative bias of `model` (H2 D8, P >= 4; no value).
v1::ScoreRequest SmallRelativeRequest(const std::string& id,
                                      const std::string& model);

// The query of death: ALiBi causal B1 H2 Lq=Lk=`len` D=Dv=1 float32,
// context only (a 64 KiB reply at len 8192), explicit slopes kQodSlopes.
inline constexpr float kQodSlopes[2] = {0.0625f, 0.00390625f};
v1::ScoreRequest QueryOfDeathRequest(int64_t len = 8192);
// float64 reference for row `row` of head `head` of QueryOfDeathRequest's
// context (the request's own inputs): softmax over the visible keys of
// q.k * scale(=1) - m_h * (i - j), times v.
double QueryOfDeathContext(const v1::ScoreRequest& request, int64_t head,
                           int64_t row);

// The cost-cap case: B=`batch` items of H=Lq=Lk=D=1 float16 (8 MB of
// input at 2,000,000), logits.
v1::ScoreRequest HugeBatchRequest(int64_t batch = 2'000'000);

// ALiBi B1 H`heads` Lq=Lk=`len` D=Dv=`dim` float32, context only, not causal:
// compute-heavy, reply-light (for cancellation and drains).
v1::ScoreRequest ContextOnlyRequest(const std::string& id, int64_t heads,
                                    int64_t len, int64_t dim);

// ALiBi B1 H16 Lq=Lk=512 D1 float32 logits: 64 KiB in, 16 MiB out (the issue's
// client-that-never-reads request).
v1::ScoreRequest LargeReplyRequest(const std::string& id);

}  // namespace attnscore::testing

#endif  // ATTNSCORE_TESTS_TESTING_SCORE_REQUESTS_H_
