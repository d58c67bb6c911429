// libFuzzer target: what the server does with a ModelInferRequest's bytes
// (Open Inference Protocol) before anything is queued: KServeInferCodec::Parse
// (kserve_request_parser.h from gRPC's slices, then the mapping and
// ValidateMapped with the server's default limits), and the parser checked
// against protobuf's own parse of the same bytes. No LibTorch.
//
// Input: fuzz/parser_checks.h (a slice count, then the message's bytes).
#include <grpc/grpc.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/parser_checks.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/scoring/validation.h"
#include "server/service/kserve_codec.h"
#include "server/service/kserve_request_parser.h"
#include "server/service/request_validation.h"
#include "tests/service/test_requests.h"

namespace {

namespace as = attnscore::service;

// The parser against protobuf on the same bytes: the same verdict, the same
// message with the raw contents put back, and each scan equal to a separate
// pass over its block. A difference traps.
void CheckParserAgreesWithProtobuf(const grpc::ByteBuffer& buffer,
                                   const std::string& bytes) {
  inference::ModelInferRequest expected;
  const bool protobuf_ok = expected.ParseFromString(bytes);
  as::kserve::ParsedInferRequest parsed;
  const bool ok = as::kserve::ParseInferRequest(buffer, &parsed).ok();
  if (ok != protobuf_ok) __builtin_trap();
  if (!ok) return;
  inference::ModelInferRequest message = parsed.message;
  if (!parsed.contents_in_message) {
    if (static_cast<size_t>(message.raw_input_contents_size()) !=
        parsed.raw.size()) {
      __builtin_trap();
    }
    for (size_t i = 0; i < parsed.raw.size(); ++i) {
      const as::ParsedTensorBytes& raw = parsed.raw[i];
      const char* data = reinterpret_cast<const char*>(raw.block.get());
      message.set_raw_input_contents(
          static_cast<int>(i),
          data == nullptr ? std::string() : std::string(data, raw.size));
      attnscore::fuzz::CheckScan(raw);
    }
  }
  if (as::testing::CanonicalBytes(message) !=
      as::testing::CanonicalBytes(expected)) {
    __builtin_trap();
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
  static const auto* models = new attnscore::scoring::ModelSet();
  as::kserve::KServeInferCodec codec;
  (void)codec.Parse(buffer, as::RequestLimits{}, *models);
  return 0;
}
