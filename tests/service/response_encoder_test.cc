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

v1::ScoreChunk ParseChunk(const grpc::ByteBuffer& buffer) {
  v1::ScoreChunk chunk;
  EXPECT_TRUE(chunk.ParseFromString(Flatten(buffer)));
  return chunk;
}

// ScoreChunked's messages: each output's bytes in runs of whole rows, as
// sub-slices of the result's memory (kept alive until the last goes); an
// output placed in shared memory as one chunk with its range; an empty output
// as one chunk without data; request_id and timing on the last chunk.
TEST(ResponseEncoderTest, ChunksAreWholeRowsOverTheResultMemory) {
  auto bytes = PatternBytes(3 * 10 * 4 + 16);
  scoring::ScoreResult result;
  result.logits = MakeTensor(DType::kFloat32, {1, 1, 3, 10}, bytes, 0, 120);
  result.probs = MakeTensor(DType::kFloat32, {1, 1, 3, 10}, bytes, 0, 120);
  result.context = MakeTensor(DType::kBFloat16, {1, 1, 0, 8}, bytes, 120, 0);
  v1::SharedMemoryRange range;
  range.set_region("r");
  range.set_offset(64);
  range.set_byte_size(120);
  PlacedRanges placed;
  placed.probs = &range;
  std::weak_ptr<std::vector<char>> watch = bytes;
  {
    // 100 bytes: two 40-byte rows per chunk.
    const std::vector<grpc::ByteBuffer> messages =
        EncodeScoreChunks("id-7", result, MakeTiming(), placed, 100);
    result = scoring::ScoreResult();
    bytes.reset();
    EXPECT_FALSE(watch.expired());
    ASSERT_EQ(messages.size(), 4u);
    const v1::ScoreChunk first = ParseChunk(messages[0]);
    const v1::ScoreChunk second = ParseChunk(messages[1]);
    EXPECT_EQ(first.output(), v1::LOGITS);
    EXPECT_EQ(first.dtype(), v1::FLOAT32);
    EXPECT_THAT(first.shape(), ::testing::ElementsAre(1, 1, 3, 10));
    EXPECT_EQ(first.offset(), 0u);
    EXPECT_EQ(first.data().size(), 80u);
    EXPECT_EQ(second.output(), v1::LOGITS);
    EXPECT_EQ(second.offset(), 80u);
    EXPECT_EQ(second.data().size(), 40u);
    EXPECT_EQ(first.data() + second.data(),
              std::string(PatternBytes(120)->data(), 120));
    const v1::ScoreChunk probs = ParseChunk(messages[2]);
    EXPECT_EQ(probs.output(), v1::PROBS);
    EXPECT_TRUE(probs.data().empty());
    EXPECT_EQ(probs.shared_memory().region(), "r");
    EXPECT_EQ(probs.shared_memory().offset(), 64u);
    const v1::ScoreChunk context = ParseChunk(messages[3]);
    EXPECT_EQ(context.output(), v1::CONTEXT);
    EXPECT_EQ(context.dtype(), v1::BFLOAT16);
    EXPECT_THAT(context.shape(), ::testing::ElementsAre(1, 1, 0, 8));
    EXPECT_TRUE(context.data().empty());
    EXPECT_EQ(context.request_id(), "id-7");
    EXPECT_EQ(context.timing().compute_us(), 98765);
    for (size_t i = 0; i < 3; ++i) {
      const v1::ScoreChunk chunk = ParseChunk(messages[i]);
      EXPECT_TRUE(chunk.request_id().empty());
      EXPECT_FALSE(chunk.has_timing());
    }
    // Byte-identical to protobuf's own encoding of the same message.
    EXPECT_EQ(Flatten(messages[0]), first.SerializeAsString());
    EXPECT_EQ(Flatten(messages[3]), context.SerializeAsString());
  }
  EXPECT_TRUE(watch.expired());
}

// A row larger than the chunk size still travels whole, one per chunk.
TEST(ResponseEncoderTest, ChunksHoldAtLeastOneRow) {
  auto bytes = PatternBytes(size_t{2} * 64 * 2);
  scoring::ScoreResult result;
  result.logits =
      MakeTensor(DType::kFloat16, {1, 1, 2, 64}, bytes, 0, bytes->size());
  const std::vector<grpc::ByteBuffer> messages =
      EncodeScoreChunks("", result, MakeTiming(), {}, 1);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(ParseChunk(messages[0]).data().size(), 128u);
  EXPECT_EQ(ParseChunk(messages[1]).offset(), 128u);
  EXPECT_EQ(ParseChunk(messages[1]).data().size(), 128u);
}

// EncodeScoreChunks' row_ends: per message, the rows it holds the end of,
// counted over every dimension but the last; its offsets and sizes agree.
TEST(ResponseEncoderTest, ChunkRowEndsFollowTheChunks) {
  // The row ends of EncodeScoreChunks(result, chunk_bytes).
  const auto row_ends = [](const scoring::ScoreResult& result,
                           int64_t chunk_bytes) {
    std::vector<int64_t> ends;
    EncodeScoreChunks("", result, MakeTiming(), {}, chunk_bytes, &ends);
    return ends;
  };
  auto bytes = PatternBytes(size_t{4} * 2 * 3 * 10);
  scoring::ScoreResult result;
  // [2, 3, 10] float32 rows (40 bytes) and bfloat16 rows (20 bytes): 6 each.
  result.logits = MakeTensor(DType::kFloat32, {1, 2, 3, 10}, bytes, 0, 240);
  result.probs = MakeTensor(DType::kBFloat16, {1, 2, 3, 10}, bytes, 0, 120);
  for (const int64_t chunk_bytes : {1, 45, 100, 1000}) {
    SCOPED_TRACE(chunk_bytes);
    std::vector<int64_t> ends;
    const std::vector<grpc::ByteBuffer> messages =
        EncodeScoreChunks("", result, MakeTiming(), {}, chunk_bytes, &ends);
    ASSERT_EQ(ends.size(), messages.size());
    for (size_t i = 0; i < messages.size(); ++i) {
      const v1::ScoreChunk chunk = ParseChunk(messages[i]);
      const size_t row_bytes = chunk.output() == v1::LOGITS ? 40 : 20;
      EXPECT_EQ(static_cast<size_t>(ends[i]),
                (chunk.offset() + chunk.data().size()) / row_bytes)
          << "message " << i;
    }
    EXPECT_EQ(ends.back(), 6);
  }
  // 100 bytes: float32 rows two per chunk, bfloat16 five per chunk.
  EXPECT_THAT(row_ends(result, 100), ::testing::ElementsAre(2, 4, 6, 5, 6));
  // An empty output: one message, no rows.
  scoring::ScoreResult empty;
  empty.logits = MakeTensor(DType::kFloat32, {1, 1, 0, 10}, bytes, 0, 0);
  EXPECT_THAT(row_ends(empty, 100), ::testing::ElementsAre(0));
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
