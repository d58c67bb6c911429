// The zero-copy response encoder: its ByteBuffers must parse with the generated
// protobuf classes into exactly the message we meant (and be byte-identical to
// protobuf's own serialization), while the tensor bytes travel as slices over
// the scorer's memory, kept alive by `keepalive`.
#include "server/service/response_encoder.h"

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "attnscore/v1/attnscore.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnscore::service {
namespace {

using ::testing::HasSubstr;

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

v1::ScoreResponse Parse(const grpc::ByteBuffer& buffer) {
  v1::ScoreResponse response;
  EXPECT_TRUE(response.ParseFromString(Flatten(buffer)));
  return response;
}

// An output tensor over `bytes` (shared), as the scorer hands them out.
scoring::OutputTensor MakeTensor(
    DType dtype, std::vector<int64_t> shape,
    const std::shared_ptr<std::vector<char>>& bytes, size_t offset,
    size_t size) {
  scoring::OutputTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = bytes->data() + offset;
  t.size_bytes = size;
  t.keepalive = bytes;
  return t;
}

std::shared_ptr<std::vector<char>> PatternBytes(size_t n) {
  auto bytes = std::make_shared<std::vector<char>>(n);
  for (size_t i = 0; i < n; ++i) {
    (*bytes)[i] = static_cast<char>((i * 131 + 7) % 251);
  }
  return bytes;
}

v1::Timing MakeTiming() {
  v1::Timing timing;
  timing.set_queue_us(1234);
  timing.set_compute_us(98765);
  timing.set_batch_size(7);
  return timing;
}

void ExpectTensor(const v1::Tensor& actual, v1::DType dtype,
                  const std::vector<int64_t>& shape, const char* data,
                  size_t size) {
  EXPECT_EQ(actual.dtype(), dtype);
  EXPECT_THAT(actual.shape(), ::testing::ElementsAreArray(shape));
  ASSERT_EQ(actual.data().size(), size);
  EXPECT_EQ(std::memcmp(actual.data().data(), data, size), 0);
}

TEST(ResponseEncoderTest, AllThreeLargeTensorsRoundTripFieldByField) {
  // One shared buffer, as a batch output: logits (3 MiB float32), probs
  // (float16) and context (bfloat16) are views into it, so the slices must
  // share (not copy) it.
  const std::vector<int64_t> scores_shape = {2, 4, 256,
                                             384};  // 786432 elements
  const size_t logits_size = size_t{786432} * 4,
               probs_size = size_t{786432} * 2;
  const std::vector<int64_t> context_shape = {2, 4, 256, 64};
  const size_t context_size = size_t{2} * 4 * 256 * 64 * 2;
  auto bytes = PatternBytes(logits_size + probs_size + context_size);
  scoring::ScoreResult result;
  result.logits =
      MakeTensor(DType::kFloat32, scores_shape, bytes, 0, logits_size);
  result.probs =
      MakeTensor(DType::kFloat16, scores_shape, bytes, logits_size, probs_size);
  result.context = MakeTensor(DType::kBFloat16, context_shape, bytes,
                              logits_size + probs_size, context_size);

  const grpc::ByteBuffer buffer =
      EncodeScoreResponse("req-42", result, MakeTiming());
  const v1::ScoreResponse parsed = Parse(buffer);

  EXPECT_EQ(parsed.request_id(), "req-42");
  ExpectTensor(parsed.logits(), v1::FLOAT32, scores_shape, bytes->data(),
               logits_size);
  ExpectTensor(parsed.probs(), v1::FLOAT16, scores_shape,
               bytes->data() + logits_size, probs_size);
  ExpectTensor(parsed.context(), v1::BFLOAT16, context_shape,
               bytes->data() + logits_size + probs_size, context_size);
  EXPECT_EQ(parsed.timing().queue_us(), 1234);
  EXPECT_EQ(parsed.timing().compute_us(), 98765);
  EXPECT_EQ(parsed.timing().batch_size(), 7);
  EXPECT_FALSE(parsed.has_error());
  // Exactly protobuf's own bytes for the same message.
  EXPECT_EQ(Flatten(buffer), parsed.SerializeAsString());
}

TEST(ResponseEncoderTest, TensorBytesAreSlicesOverTheResultMemory) {
  auto bytes = PatternBytes(1 << 20);
  scoring::ScoreResult result;
  result.logits =
      MakeTensor(DType::kFloat32, {1, 1, 512, 512}, bytes, 0, bytes->size());
  std::weak_ptr<std::vector<char>> watch = bytes;
  {
    const grpc::ByteBuffer buffer =
        EncodeScoreResponse("", result, MakeTiming());
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(buffer.Dump(&slices).ok());
    bool found = false;
    for (const grpc::Slice& s : slices) {
      if (s.begin() == reinterpret_cast<const uint8_t*>(bytes->data())) {
        found = true;
        EXPECT_EQ(s.size(), bytes->size());
      }
    }
    EXPECT_TRUE(found)
        << "no slice references the result buffer: the data was copied";
    // The buffer keeps the memory alive after every other owner let go.
    result = scoring::ScoreResult();
    bytes.reset();
    EXPECT_FALSE(watch.expired());
    EXPECT_EQ(Parse(buffer).logits().data().size(), size_t{1} << 20);
  }
  // ...and releases it once gRPC (here: the last ByteBuffer and slices) is done
  // with it.
  EXPECT_TRUE(watch.expired());
}

TEST(ResponseEncoderTest, TensorWithoutKeepaliveIsCopied) {
  std::vector<char> bytes(4096, 'x');
  scoring::OutputTensor t;
  t.dtype = DType::kFloat32;
  t.shape = {1, 1, 32, 32};
  t.data = bytes.data();
  t.size_bytes = bytes.size();
  scoring::ScoreResult result;
  result.probs = t;
  const grpc::ByteBuffer buffer =
      EncodeScoreResponse("id", result, MakeTiming());
  bytes.assign(bytes.size(),
               'y');  // the encoder must not have kept a reference
  const v1::ScoreResponse parsed = Parse(buffer);
  EXPECT_EQ(parsed.probs().data(), std::string(4096, 'x'));
  EXPECT_FALSE(parsed.has_logits());
  EXPECT_FALSE(parsed.has_context());
}

TEST(ResponseEncoderTest, EmptyFieldsAreOmittedLikeProtobuf) {
  // No request id, no tensors: only the timing.
  const grpc::ByteBuffer buffer =
      EncodeScoreResponse("", scoring::ScoreResult(), v1::Timing());
  const v1::ScoreResponse parsed = Parse(buffer);
  EXPECT_EQ(parsed.request_id(), "");
  EXPECT_FALSE(parsed.has_logits());
  EXPECT_TRUE(parsed.has_timing());
  EXPECT_EQ(Flatten(buffer), parsed.SerializeAsString());

  // A tensor with no data: shape and dtype only, as protobuf writes it.
  auto bytes = std::make_shared<std::vector<char>>();
  scoring::ScoreResult empty;
  empty.context = MakeTensor(DType::kFloat32, {1, 1, 0, 4}, bytes, 0, 0);
  const grpc::ByteBuffer empty_buffer =
      EncodeScoreResponse("e", empty, MakeTiming());
  const v1::ScoreResponse empty_parsed = Parse(empty_buffer);
  EXPECT_TRUE(empty_parsed.has_context());
  EXPECT_THAT(empty_parsed.context().shape(),
              ::testing::ElementsAre(1, 1, 0, 4));
  EXPECT_TRUE(empty_parsed.context().data().empty());
  EXPECT_EQ(Flatten(empty_buffer), empty_parsed.SerializeAsString());
}

TEST(ResponseEncoderTest, LengthPrefixesAboveTwoByteVarints) {
  // Sizes whose varints need 1, 2, 3 and 4 bytes.
  for (size_t size :
       {size_t{100}, size_t{300}, size_t{70000}, size_t{3} << 21}) {
    auto bytes = PatternBytes(size);
    scoring::ScoreResult result;
    result.logits =
        MakeTensor(DType::kFloat16, {1, 1, 1, static_cast<int64_t>(size / 2)},
                   bytes, 0, size);
    const grpc::ByteBuffer buffer =
        EncodeScoreResponse("v", result, MakeTiming());
    const v1::ScoreResponse parsed = Parse(buffer);
    ExpectTensor(parsed.logits(), v1::FLOAT16,
                 {1, 1, 1, static_cast<int64_t>(size / 2)}, bytes->data(),
                 size);
    EXPECT_EQ(Flatten(buffer), parsed.SerializeAsString()) << size;
  }
}

TEST(ResponseEncoderTest, ErrorResponseCarriesCodeAndMessage) {
  const grpc::ByteBuffer buffer = EncodeErrorResponse(
      "bad-1", absl::InvalidArgumentError("query.shape: expected 4 dims"));
  const v1::ScoreResponse parsed = Parse(buffer);
  EXPECT_EQ(parsed.request_id(), "bad-1");
  EXPECT_EQ(parsed.error().code(), 3);  // INVALID_ARGUMENT
  EXPECT_THAT(parsed.error().message(), HasSubstr("query.shape"));
  EXPECT_FALSE(parsed.has_logits());
}

}  // namespace
}  // namespace attnscore::service
