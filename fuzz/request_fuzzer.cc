// libFuzzer target: what the server does with a ScoreRequest's bytes before
// anything is queued: V1ScoreCodec::Parse (score_request_parser.h from gRPC's
// slices) and ValidateRequest with the server's default limits, against a
// model set of two stand-in relative models (so the relative path is reached),
// and the parser checked against protobuf's own parse of the same bytes. No
// LibTorch.
//
// Input: the first byte chooses how many slices (1-4) the rest is cut into,
// as gRPC may hand a message over in several.
#include <grpc/grpc.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attnscore/v1/attnscore.pb.h"
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
    if (!t->scan.has_value()) continue;
    attnscore::scoring::FiniteScanner scanner(t->scan_dtype);
    scanner.Consume(t->block.get(), t->size);
    const attnscore::scoring::FiniteScan whole = scanner.Finish();
    if (whole.first_non_finite != t->scan->first_non_finite) __builtin_trap();
    if (whole.first_non_finite == attnscore::scoring::FiniteScan::kAllFinite &&
        whole.max_abs != t->scan->max_abs) {
      __builtin_trap();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  grpc_init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t pieces = data[0] % 4 + 1;
  const char* rest = reinterpret_cast<const char*>(data + 1);
  const size_t rest_size = size - 1;
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < pieces; ++i) {
    const size_t begin = rest_size * i / pieces;
    const size_t end = rest_size * (i + 1) / pieces;
    slices.emplace_back(rest + begin, end - begin);
  }
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  CheckParserAgreesWithProtobuf(buffer, std::string(rest, rest_size));
  attnscore::service::V1ScoreCodec codec;
  absl::StatusOr<attnscore::service::ValidatedRequest> request =
      codec.Parse(buffer, attnscore::service::RequestLimits{}, Models());
  if (!request.ok()) {
    // How ScoreStream reports the failure: the status goes back encoded.
    (void)codec.EncodeError(request.status());
  }
  return 0;
}
