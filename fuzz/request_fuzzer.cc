// libFuzzer target: what the server does with a ScoreRequest's bytes before
// anything is queued: V1ScoreCodec::Parse (score_request_parser.h from gRPC's
// slices) and ValidateRequest with the server's default limits, against a
// model set of two stand-in relative models (so the relative path is reached),
// and the parser checked against protobuf's own parse of the same bytes. No
// LibTorch.
//
// Input: fuzz/parser_checks.h (a slice count, then the message's bytes).
#include <grpc/grpc.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "attnscore/v1/attnscore.pb.h"
#include "fuzz/parser_checks.h"
#include "server/scoring/validation.h"
#include "server/service/request_validation.h"
#include "server/service/score_request_parser.h"
#include "server/service/v1_score_codec.h"
#include "tests/service/fake_models.h"
#include "tests/service/test_requests.h"

namespace {

const attnscore::scoring::ModelSet& Models() {
  static const std::shared_ptr<const attnscore::scoring::ModelSet> models =
      attnscore::service::testing::FakeModelSet(
          {attnscore::service::testing::FakeModelInfo("txl", "txl.safetensors",
                                                      2, 4, 16),
           attnscore::service::testing::FakeModelInfo(
               "wide", "wide.safetensors", 8, 64, 512)});
  return *models;
}

// The service's own parser (score_request_parser.h) against protobuf's on the
// same bytes: the same verdict, the same message, and each scan the parser
// made equal to a separate pass over the block. A difference traps.
void CheckParserAgreesWithProtobuf(const grpc::ByteBuffer& buffer,
                                   const std::string& bytes) {
  namespace as = attnscore::service;
  attnscore::v1::ScoreRequest expected;
  const bool protobuf_ok = expected.ParseFromString(bytes);
  as::ParsedScoreRequest parsed;
  const bool ok = as::ParseScoreRequest(buffer, &parsed).ok();
  if (ok != protobuf_ok) __builtin_trap();
  if (!ok) return;
  if (as::testing::Reassembled(parsed).SerializeAsString() !=
      expected.SerializeAsString()) {
    __builtin_trap();
  }
  for (const as::ParsedTensorBytes* t :
       {&parsed.query, &parsed.key, &parsed.value}) {
    attnscore::fuzz::CheckScan(*t);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  grpc_init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const attnscore::fuzz::SlicedInput input =
      attnscore::fuzz::SliceInput(data, size);
  const grpc::ByteBuffer& buffer = input.buffer;
  CheckParserAgreesWithProtobuf(buffer, input.bytes);
  attnscore::service::V1ScoreCodec codec;
  absl::StatusOr<attnscore::service::ValidatedRequest> request =
      codec.Parse(buffer, attnscore::service::RequestLimits{}, Models());
  if (!request.ok()) {
    // How ScoreStream reports the failure: the status goes back encoded.
    (void)codec.EncodeError(request.status());
  }
  return 0;
}
