// Test support for the fault suite (issue 9, requirement 6): the report every
// fault test prints (request classes tried, faults injected, requests lost,
// and its figures), how a call's outcome is classified, and small gRPC helpers
// over the generated v1 stub. No LibTorch.
//
// A request is "lost" when the client cannot tell what became of it: a
// failure that is neither the server's own clean status (OK, an error for a
// bad request, UNAVAILABLE asking to retry) nor, where a test allows it, an
// outage the client was told about; or a request that never got an answer.
//
// Thread safety: FaultReport is not synchronised (fill it from the test's main
// thread); the free functions are thread-safe.
// Errors: none; outcomes are data.
#ifndef ATTNSCORE_TESTS_FAULT_FAULT_UTIL_H_
#define ATTNSCORE_TESTS_FAULT_FAULT_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "attnscore/v1/attnscore.grpc.pb.h"

namespace attnscore::fault {

struct FaultReport {
  explicit FaultReport(std::string name) : test(std::move(name)) {}

  std::string test;
  std::vector<std::string> classes;  // request classes tried, with counts
  std::vector<std::string> faults;   // faults injected
  std::vector<std::string> figures;  // measurements
  int64_t requests = 0;              // requests sent in all
  int64_t lost = 0;

  // The report, one "FAULT <test> <section>: ..." line each, on stdout.
  void Print() const;
};

// The server refused the call in a way a client can act on: UNAVAILABLE with
// the server's own message (queue full, budget full, draining: "retry",
// "draining", "shut down").
bool IsCleanRefusal(const grpc::Status& status);

// "OK", "UNAVAILABLE", ...
std::string CodeName(grpc::StatusCode code);

// "OK", "UNAVAILABLE: <message>", ...
std::string Describe(const grpc::Status& status);

// A unary Score on `stub` with a deadline of `timeout`.
struct UnaryCall {
  grpc::Status status;
  v1::ScoreResponse response;
  double seconds = 0;  // the call's wall time
};
UnaryCall Score(v1::AttentionScorer::Stub& stub,
                const v1::ScoreRequest& request,
                std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Seconds since `start`.
double SecondsSince(std::chrono::steady_clock::time_point start);

}  // namespace attnscore::fault

#endif  // ATTNSCORE_TESTS_FAULT_FAULT_UTIL_H_
