// The service's own ScoreRequest parser against protobuf's: the same message
// from the same bytes however gRPC cuts them into slices, the tensors' bytes
// in pooled blocks, their NaN/Inf scan equal to a separate pass, and malformed
// bytes refused before anything of a claimed length is allocated.
#include "server/service/score_request_parser.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attnscore/v1/attnscore.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/scoring/buffer_pool.h"
#include "server/scoring/validation.h"
#include "server/service/request_validation.h"
#include "tests/service/fake_models.h"
#include "tests/service/test_requests.h"

namespace attnscore::service {
namespace {

using ::google::protobuf::io::CodedOutputStream;
using ::google::protobuf::io::StringOutputStream;
using testing::AlibiRequest;
using testing::Float32Tensor;
using ::testing::HasSubstr;
using testing::RandomlySliced;
using testing::Sliced;

// Parses `buffer` both ways; expects the same verdict and the same message.
void ExpectSameAsProtobuf(const grpc::ByteBuffer& buffer,
                          const std::string& bytes) {
  v1::ScoreRequest expected;
  const bool protobuf_ok = expected.ParseFromString(bytes);
  ParsedScoreRequest parsed;
  const absl::Status status = ParseScoreRequest(buffer, &parsed);
  ASSERT_EQ(status.ok(), protobuf_ok) << status;
  if (!protobuf_ok) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(),
                HasSubstr("expected a serialized attnscore.v1.ScoreRequest"));
    return;
  }
  if (!parsed.tensors_in_message) {
    EXPECT_TRUE(parsed.message.query().data().empty());
    EXPECT_TRUE(parsed.message.key().data().empty());
    EXPECT_TRUE(parsed.message.value().data().empty());
  }
  EXPECT_EQ(testing::Reassembled(parsed).SerializeAsString(),
            expected.SerializeAsString());
}

v1::ScoreRequest FullRequest() {
  v1::ScoreRequest request = AlibiRequest(2, 3, 5, 7, 16, 0.25f);
  request.set_request_id("req-17");
  request.mutable_alibi()->add_slopes(0.5f);
  request.mutable_alibi()->add_slopes(0.25f);
  request.mutable_alibi()->add_slopes(0.125f);
  request.set_causal(true);
  request.set_scale(0.3f);
  request.add_key_lengths(7);
  request.add_key_lengths(4);
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::CONTEXT);
  request.set_output_dtype(v1::BFLOAT16);
  request.set_layout(v1::BSHD);
  return request;
}

TEST(ScoreRequestParserTest, SameMessageAsProtobufHoweverItIsSliced) {
  const std::string bytes = FullRequest().SerializeAsString();
  ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);
  std::mt19937 rng(7);
  for (int pieces : {2, 3, 8, 64}) {
    for (int round = 0; round < 20; ++round) {
      SCOPED_TRACE(pieces);
      ExpectSameAsProtobuf(RandomlySliced(bytes, pieces, rng), bytes);
    }
  }
  // One byte per slice: every element and every varint cut.
  std::vector<size_t> every;
  for (size_t i = 1; i < bytes.size(); ++i) every.push_back(i);
  ExpectSameAsProtobuf(Sliced(bytes, every), bytes);
}

TEST(ScoreRequestParserTest, TensorBytesLandInPooledBlocks) {
  // A key over the pool's smallest class, so its block is pooled.
  const v1::ScoreRequest request = AlibiRequest(1, 4, 1, 1024, 64);
  const std::string bytes = request.SerializeAsString();
  const auto before = scoring::HostBufferPool().stats();
  {
    ParsedScoreRequest parsed;
    ASSERT_TRUE(ParseScoreRequest(Sliced(bytes, {1000, 5000}), &parsed).ok());
    ASSERT_EQ(parsed.key.size, request.key().data().size());
    EXPECT_EQ(std::memcmp(parsed.key.block.get(), request.key().data().data(),
                          parsed.key.size),
              0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(parsed.key.block.get()) %
                  scoring::BufferPool::kAlignment,
              0u);
    EXPECT_TRUE(parsed.message.key().data().empty());
  }
  // The block went back; the same request again is served from the pool.
  const auto released = scoring::HostBufferPool().stats();
  EXPECT_GE(released.cached_bytes,
            before.cached_bytes + size_t{1024} * 4 * 64 * 4);
  ParsedScoreRequest again;
  ASSERT_TRUE(ParseScoreRequest(Sliced(bytes, {}), &again).ok());
  EXPECT_GT(scoring::HostBufferPool().stats().hits, released.hits);
}

// The scan a separate pass over the whole of `data` gives.
scoring::FiniteScan WholeScan(DType dtype, const std::string& data) {
  scoring::FiniteScanner scanner(dtype);
  scanner.Consume(data.data(), data.size());
  return scanner.Finish();
}

// A request whose key has `dtype` and, when `bad` >= 0, a non-finite element
// at flat index `bad`; 16-bit values are a float32's top half (bfloat16) or a
// small half-precision pattern.
v1::ScoreRequest KeyWith(v1::DType dtype, int64_t bad, uint32_t bad_bits,
                         int64_t elements) {
  v1::ScoreRequest request;
  v1::Tensor* key = request.mutable_key();
  key->set_dtype(dtype);
  key->add_shape(elements);
  std::string data;
  const size_t width = dtype == v1::FLOAT32 ? 4 : 2;
  data.resize(static_cast<size_t>(elements) * width);
  for (int64_t i = 0; i < elements; ++i) {
    // Magnitudes up to 3.0, in every dtype's finite range.
    const float value = static_cast<float>(i % 97) / 32.0f - 1.5f;
    uint32_t bits = 0;
    std::memcpy(&bits, &value, 4);
    if (dtype == v1::FLOAT16) bits = (i % 97) | 0x3c00u;  // 1.0 .. 1.1
    if (dtype == v1::BFLOAT16) bits >>= 16;
    if (i == bad) bits = bad_bits;
    std::memcpy(&data[static_cast<size_t>(i) * width], &bits, width);
  }
  key->set_data(data);
  return request;
}

TEST(ScoreRequestParserTest, ScanWhileCopyingEqualsASeparatePass) {
  struct Kind {
    v1::DType proto;
    DType dtype;
    uint32_t nan;
    uint32_t inf;
  };
  const Kind kinds[] = {
      {v1::FLOAT32, DType::kFloat32, 0x7fc00000u, 0xff800000u},
      {v1::FLOAT16, DType::kFloat16, 0x7e00u, 0x7c00u},
      {v1::BFLOAT16, DType::kBFloat16, 0x7fc0u, 0xff80u}};
  std::mt19937 rng(11);
  // Past kScanPiece (32 KiB) and past a scan block, so pieces and blocks
  // both have boundaries inside the tensor.
  constexpr int64_t kElements = 50'001;
  for (const Kind& kind : kinds) {
    for (int64_t bad : {int64_t{-1}, int64_t{0}, int64_t{8191}, int64_t{8192},
                        int64_t{20'000}, kElements - 1}) {
      for (uint32_t bits : {kind.nan, kind.inf}) {
        SCOPED_TRACE(::testing::Message() << kind.proto << " bad " << bad);
        const v1::ScoreRequest request =
            KeyWith(kind.proto, bad, bits, kElements);
        const std::string bytes = request.SerializeAsString();
        ParsedScoreRequest parsed;
        ASSERT_TRUE(
            ParseScoreRequest(RandomlySliced(bytes, 9, rng), &parsed).ok());
        ASSERT_TRUE(parsed.key.scan.has_value());
        EXPECT_EQ(parsed.key.scan->dtype, kind.dtype);
        const scoring::FiniteScan expected =
            WholeScan(kind.dtype, request.key().data());
        EXPECT_EQ(parsed.key.scan->first_non_finite,
                  bad < 0 ? scoring::FiniteScan::kAllFinite
                          : static_cast<size_t>(bad));
        EXPECT_EQ(parsed.key.scan->first_non_finite, expected.first_non_finite);
        if (bad < 0) {
          EXPECT_EQ(parsed.key.scan->max_abs, expected.max_abs);
          EXPECT_GT(parsed.key.scan->max_abs, 1.0f);
        }
      }
    }
  }
}

// Field tags and values written one by one, in any order.
class WireWriter {
 public:
  WireWriter() : stream_(&bytes_), out_(&stream_) {}
  void Varint(int field, uint64_t value) {
    out_.WriteTag(static_cast<uint32_t>(field << 3));
    out_.WriteVarint64(value);
  }
  void Bytes(int field, const std::string& value) {
    out_.WriteTag(static_cast<uint32_t>(field << 3 | 2));
    out_.WriteVarint32(static_cast<uint32_t>(value.size()));
    out_.WriteString(value);
  }
  std::string Finish() {
    out_.Trim();
    return bytes_;
  }

 private:
  std::string bytes_;
  StringOutputStream stream_;
  CodedOutputStream out_;
};

// Float32 bytes of `values`.
std::string FloatBytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()),
                     values.size() * sizeof(float));
}

std::string TensorBytes(int dtype, const std::vector<int64_t>& shape,
                        const std::string& data, bool data_first) {
  WireWriter tensor;
  if (data_first) tensor.Bytes(3, data);
  tensor.Varint(1, static_cast<uint64_t>(dtype));
  for (int64_t d : shape) tensor.Varint(2, static_cast<uint64_t>(d));
  if (!data_first) tensor.Bytes(3, data);
  return tensor.Finish();
}

TEST(ScoreRequestParserTest, DataBeforeItsDtypeIsScannedByValidation) {
  // Bytes first, dtype after: unusual but valid. The parser cannot scan them
  // as they arrive; validation must then find the NaN itself.
  std::vector<float> key(size_t{1} * 2 * 4 * 8, 0.5f);
  key[13] = std::nanf("");
  WireWriter request;
  request.Bytes(
      4,
      TensorBytes(1, {1, 2, 3, 8},
                  FloatBytes(std::vector<float>(size_t{1} * 2 * 3 * 8, 0.25f)),
                  /*data_first=*/true));
  request.Bytes(5, TensorBytes(1, {1, 2, 4, 8}, FloatBytes(key),
                               /*data_first=*/true));
  const std::string bytes = request.Finish();
  ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);

  ParsedScoreRequest parsed;
  ASSERT_TRUE(ParseScoreRequest(Sliced(bytes, {}), &parsed).ok());
  EXPECT_FALSE(parsed.key.scan.has_value());  // scanned as nothing
  const auto models = testing::FakeModelSet({});
  const absl::StatusOr<ValidatedRequest> validated = ValidateRequest(
      parsed.message, RequestLimits{}, *models, parsed.tensor_bytes());
  ASSERT_FALSE(validated.ok());
  EXPECT_THAT(validated.status().message(),
              HasSubstr("key.data: expected finite values, got NaN or Inf at "
                        "flat index 13"));
}

TEST(ScoreRequestParserTest, ScanOfAnotherDtypeIsNotTrusted) {
  // The key's bytes arrive as FLOAT16 and a later `key` field makes them
  // FLOAT32. Read as float16 they hold an Inf (the low half 0x7c00 of the
  // float32 0x3f807c00, about 1.004); as float32 every value is finite. The
  // float16 scan must not decide: the request is valid.
  std::vector<float> key(size_t{1} * 1 * 2 * 4, 1.0f);
  const uint32_t bits = 0x3f807c00u;
  std::memcpy(&key[3], &bits, 4);
  WireWriter request;
  request.Bytes(4,
                TensorBytes(v1::FLOAT32, {1, 1, 1, 4}, FloatBytes({1, 1, 1, 1}),
                            /*data_first=*/false));
  request.Bytes(5, TensorBytes(v1::FLOAT16, {}, FloatBytes(key),
                               /*data_first=*/false));
  WireWriter retype;
  retype.Varint(1, v1::FLOAT32);
  for (int d : {1, 1, 2, 4}) retype.Varint(2, static_cast<uint64_t>(d));
  request.Bytes(5, retype.Finish());
  const std::string bytes = request.Finish();
  ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);

  ParsedScoreRequest parsed;
  ASSERT_TRUE(ParseScoreRequest(Sliced(bytes, {}), &parsed).ok());
  ASSERT_TRUE(parsed.key.scan.has_value());
  EXPECT_EQ(parsed.key.scan->dtype, DType::kFloat16);
  EXPECT_EQ(parsed.key.scan->first_non_finite, 6u);  // the float16 verdict
  EXPECT_EQ(parsed.message.key().dtype(), v1::FLOAT32);
  const auto models = testing::FakeModelSet({});
  const absl::StatusOr<ValidatedRequest> validated = ValidateRequest(
      parsed.message, RequestLimits{}, *models, parsed.tensor_bytes());
  EXPECT_TRUE(validated.ok()) << validated.status();
}

TEST(ScoreRequestParserTest, RepeatedTensorFieldsMergeAndTheLastDataWins) {
  WireWriter request;
  request.Bytes(5, TensorBytes(1, {1, 1, 2, 2}, FloatBytes({1, 2, 3, 4}),
                               /*data_first=*/false));
  WireWriter more;
  more.Bytes(3, FloatBytes({5, 6, 7, 8}));
  more.Varint(2, 9);
  request.Bytes(5, more.Finish());
  request.Varint(8, 1);  // causal, between the tensors
  request.Bytes(4, TensorBytes(1, {1, 1, 1, 2}, FloatBytes({9, 10}),
                               /*data_first=*/false));
  const std::string bytes = request.Finish();
  ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);
  ParsedScoreRequest parsed;
  ASSERT_TRUE(ParseScoreRequest(Sliced(bytes, {17}), &parsed).ok());
  ASSERT_EQ(parsed.key.size, 16u);
  float first = 0;
  std::memcpy(&first, parsed.key.block.get(), 4);
  EXPECT_EQ(first, 5.0f);
  EXPECT_EQ(parsed.message.key().shape_size(), 5);  // repeated: appended
  EXPECT_EQ(parsed.message.key().shape(4), 9);
}

TEST(ScoreRequestParserTest, TensorFieldOfAnotherWireTypeIsUnknown) {
  // Field 4 (query) as fixed32 and as a varint: unknown fields to protobuf,
  // which leave the query absent (found by the request fuzzer).
  std::string bytes;
  {
    StringOutputStream stream(&bytes);
    CodedOutputStream out(&stream);
    out.WriteTag(4 << 3 | 5);
    out.WriteLittleEndian32(0x25252525u);
    out.WriteTag(5 << 3);
    out.WriteVarint32(7);
  }
  ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);
  ParsedScoreRequest parsed;
  ASSERT_TRUE(ParseScoreRequest(Sliced(bytes, {}), &parsed).ok());
  EXPECT_FALSE(parsed.message.has_query());
  EXPECT_FALSE(parsed.message.has_key());
}

TEST(ScoreRequestParserTest, UnusualFormsAreLeftToProtobuf) {
  const v1::ScoreRequest request = AlibiRequest(1, 2, 3, 4, 8);
  const std::string canonical = request.SerializeAsString();
  // An unknown group (field 20) after the request; then a 6-byte tag for
  // field 8 (causal), which protobuf refuses (found by the request fuzzer).
  std::string with_group = canonical;
  with_group += "\xa3\x01";  // field 20, start group
  with_group += "\x08\x01";  // field 1 inside it
  with_group += "\xa4\x01";  // field 20, end group
  const std::string overlong_tag =
      canonical + std::string("\xc0\x80\x80\x80\x80\x00\x01", 7);
  for (const std::string& bytes : {with_group, overlong_tag}) {
    ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);
  }
  ParsedScoreRequest parsed;
  ASSERT_TRUE(ParseScoreRequest(Sliced(with_group, {100}), &parsed).ok());
  EXPECT_TRUE(parsed.tensors_in_message);
  EXPECT_EQ(parsed.key.block, nullptr);
  EXPECT_EQ(parsed.message.key().data(), request.key().data());
  // Validation then reads the message's own bytes.
  const auto models = testing::FakeModelSet({});
  const absl::StatusOr<ValidatedRequest> validated = ValidateRequest(
      parsed.message, RequestLimits{}, *models, parsed.tensor_bytes());
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_EQ(validated->item.key.data, parsed.message.key().data().data());
  EXPECT_FALSE(validated->scans.key.has_value());

  ParsedScoreRequest refused;
  EXPECT_FALSE(ParseScoreRequest(Sliced(overlong_tag, {}), &refused).ok());
}

TEST(ScoreRequestParserTest, EveryTruncationGetsProtobufsVerdict) {
  const std::string bytes = FullRequest().SerializeAsString();
  for (size_t length = 0; length < bytes.size(); length += 3) {
    SCOPED_TRACE(length);
    const std::string prefix = bytes.substr(0, length);
    ExpectSameAsProtobuf(Sliced(prefix, {}), prefix);
  }
}

TEST(ScoreRequestParserTest, TensorOneBytePastTheEndIsRefused) {
  // The query's length counts one byte more than the message holds (found
  // by the request fuzzer: the bound once left out the length's own byte).
  const std::string tensor =
      TensorBytes(v1::FLOAT32, {1, 1, 1, 2}, FloatBytes({1, 2}), false);
  std::string bytes;
  bytes += static_cast<char>(4 << 3 | 2);
  bytes += static_cast<char>(tensor.size() + 1);
  bytes += tensor;
  ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);
  ParsedScoreRequest parsed;
  EXPECT_FALSE(ParseScoreRequest(Sliced(bytes, {5}), &parsed).ok());
}

TEST(ScoreRequestParserTest, GarbageGetsProtobufsVerdict) {
  // Flipped request_id bytes make protobuf log each invalid UTF-8 string.
  google::protobuf::LogSilencer quiet;
  std::mt19937 rng(3);
  const std::string valid = FullRequest().SerializeAsString();
  for (int round = 0; round < 2000; ++round) {
    std::string bytes = valid.substr(0, 64 + round % 200);
    // Flip a few bytes: tags, wire types and lengths go wrong.
    for (int flips = 0; flips < 3; ++flips) {
      bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    ExpectSameAsProtobuf(RandomlySliced(bytes, 3, rng), bytes);
  }
}

TEST(ScoreRequestParserTest, LengthPastTheEndIsRefusedBeforeAllocating) {
  // A 30-byte message whose key claims 1 GiB of data.
  std::string tensor;
  {
    StringOutputStream stream(&tensor);
    CodedOutputStream out(&stream);
    out.WriteTag(1 << 3);
    out.WriteVarint32(1);
    out.WriteTag(3 << 3 | 2);
    out.WriteVarint32(1u << 30);
    out.WriteString("0123456789");
  }
  WireWriter request;
  request.Bytes(5, tensor);
  const std::string bytes = request.Finish();
  const auto before = scoring::HostBufferPool().stats();
  ParsedScoreRequest parsed;
  const absl::Status status = ParseScoreRequest(Sliced(bytes, {}), &parsed);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(scoring::HostBufferPool().stats().misses, before.misses);
  EXPECT_EQ(parsed.key.block, nullptr);
}

}  // namespace
}  // namespace attnscore::service
