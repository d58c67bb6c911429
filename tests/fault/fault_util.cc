#include "tests/fault/fault_util.h"

#include <iostream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnscore::fault {

void FaultReport::Print() const {
  const std::string prefix = absl::StrCat("FAULT ", test, " ");
  std::cout << prefix << "classes tried: " << absl::StrJoin(classes, "; ")
            << "\n"
            << prefix << "faults injected: " << absl::StrJoin(faults, "; ")
            << "\n";
  for (const std::string& figure : figures) {
    std::cout << prefix << "figure: " << figure << "\n";
  }
  std::cout << prefix << "requests: " << requests << ", lost: " << lost
            << std::endl;
}

bool IsCleanRefusal(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return false;
  const std::string& message = status.error_message();
  return absl::StrContains(message, "retry") ||
         absl::StrContains(message, "draining") ||
         absl::StrContains(message, "shut down");
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string Describe(const grpc::Status& status) {
  if (status.ok()) return "OK";
  return absl::StrCat(CodeName(status.error_code()), ": ",
                      status.error_message());
}

UnaryCall Score(v1::AttentionScorer::Stub& stub,
                const v1::ScoreRequest& request,
                std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  UnaryCall call;
  const auto start = std::chrono::steady_clock::now();
  call.status = stub.Score(&context, request, &call.response);
  call.seconds = SecondsSince(start);
  return call;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace attnscore::fault
