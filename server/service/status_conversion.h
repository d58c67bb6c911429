// The one place where an absl::Status becomes a grpc::Status. Everything below
// the gRPC handlers (validation, batching, scoring) speaks absl::Status;
// handlers convert exactly once, here.
//
// Thread safety: pure functions.
#ifndef ATTNSCORE_SERVER_SERVICE_STATUS_CONVERSION_H_
#define ATTNSCORE_SERVER_SERVICE_STATUS_CONVERSION_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace attnscore::service {

// Same code (absl and gRPC number their codes identically, google.rpc.Code),
// same message.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_STATUS_CONVERSION_H_
