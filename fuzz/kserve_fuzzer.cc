// libFuzzer target: what the server does with a ModelInferRequest's bytes
// (Open Inference Protocol) before anything is queued: KServeInferCodec::Parse
// (kserve_request_parser.h from gRPC's slices, then the mapping and
// ValidateMapped with the server's default limits), and the parser checked
// against protobuf's own parse of the same bytes. No LibTorch.
//
// Input: the first byte chooses how many slices (1-4) the rest is cut into,
// as gRPC may hand a message over in several.
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <grpc/grpc.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "inference/grpc_predict_v2.pb.h"
#include "server/scoring/validation.h"
#include "server/service/kserve_codec.h"
#include "server/service/kserve_request_parser.h"
#include "server/service/request_validation.h"

namespace {

namespace as = attnscore::service;

// The message's bytes with map entries in key order: two equal messages
// give the same bytes (a map's iteration order differs between instances).
std::string Canonical(const google::protobuf::MessageLite& message) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&coded);
  coded.Trim();
  return out;
}

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
      if (!raw.scan.has_value()) continue;
      attnscore::scoring::FiniteScanner scanner(raw.scan_dtype);
      scanner.Consume(raw.block.get(), raw.size);
      const attnscore::scoring::FiniteScan whole = scanner.Finish();
      if (whole.first_non_finite != raw.scan->first_non_finite ||
          (whole.first_non_finite ==
               attnscore::scoring::FiniteScan::kAllFinite &&
           whole.max_abs != raw.scan->max_abs)) {
        __builtin_trap();
      }
    }
  }
  if (Canonical(message) != Canonical(expected)) {
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
  static const auto* models = new attnscore::scoring::ModelSet();
  as::kserve::KServeInferCodec codec;
  (void)codec.Parse(buffer, as::RequestLimits{}, *models);
  return 0;
}
