// libFuzzer target: what the server does with a ScoreRequest's bytes before
// anything is queued: V1ScoreCodec::Parse (protobuf from gRPC's slices) and
// ValidateRequest with the server's default limits, against a model set of
// two stand-in relative models (so the relative path is reached). No LibTorch.
//
// Input: the first byte chooses how many slices (1-4) the rest is cut into,
// as gRPC may hand a message over in several.
#include <grpc/grpc.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "server/service/request_validation.h"
#include "server/service/v1_score_codec.h"
#include "tests/service/fake_models.h"

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
  attnscore::service::V1ScoreCodec codec;
  absl::StatusOr<attnscore::service::ValidatedRequest> request =
      codec.Parse(buffer, attnscore::service::RequestLimits{}, Models());
  if (!request.ok()) {
    // How ScoreStream reports the failure: the status goes back encoded.
    (void)codec.EncodeError(request.status());
  }
  return 0;
}
