// The client library without a server: tensors, the wire codec (against
// protobuf's own encoding, split into many slices), and option-independent
// helpers.
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "attnscore/v1/attnscore.pb.h"
#include "client/client.h"
#include "client/score_codec.h"
#include "client/tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnscore::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(TensorTest, FromFloatsRoundTripsEveryDtype) {
  const std::vector<float> values = {0.0f,      1.0f,     -2.5f,
                                     3.140625f, 65504.0f, -0.0078125f};
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    absl::StatusOr<Tensor> t = Tensor::FromFloats(dtype, {2, 3}, values);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->size_bytes(), 6 * ElementSize(dtype));
    EXPECT_EQ(t->num_elements(), 6);
    const std::vector<float> back = t->ToFloats();
    for (size_t i = 0; i < values.size(); ++i) {
      // Every value above is exact in float16 and bfloat16 except 65504
      // and 3.140625 in bf16.
      EXPECT_NEAR(back[i], values[i],
                  std::fabs(values[i]) * (dtype == DType::kBFloat16 ? 4e-3 : 0))
          << DTypeName(dtype) << " " << i;
    }
  }
}

TEST(TensorTest, RejectsMismatchedSizes) {
  EXPECT_EQ(Tensor::FromFloats(DType::kFloat32, {2, 3}, std::vector<float>(5))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  const float data[4] = {};
  absl::Status s = TensorView{DType::kFloat32, {2, 3}, data, 16}.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("[2, 3]"));
  EXPECT_THAT(s.message(), HasSubstr("24"));
  EXPECT_FALSE((TensorView{DType::kFloat32, {-1, 3}, data, 0}.Validate().ok()));
  EXPECT_FALSE((TensorView{DType::kFloat32, {2}, nullptr, 8}.Validate().ok()));
  EXPECT_EQ(NumElements({int64_t{1} << 40, int64_t{1} << 40}), -1);
}

TEST(TensorTest, CopyConvertAndRelease) {
  Tensor a =
      *Tensor::FromFloats(DType::kFloat32, {3}, std::vector<float>{1, 2, 3});
  Tensor b = a;
  static_cast<float*>(b.mutable_data())[0] = 9;
  EXPECT_THAT(a.ToFloats(), ElementsAre(1, 2, 3));
  EXPECT_THAT(b.ToFloats(), ElementsAre(9, 2, 3));
  Tensor h = a.ConvertTo(DType::kFloat16);
  EXPECT_EQ(h.dtype(), DType::kFloat16);
  EXPECT_THAT(h.ToFloats(), ElementsAre(1, 2, 3));
  TensorBytes bytes = std::move(b).ReleaseData();
  float first;
  std::memcpy(&first, bytes.get(), sizeof(first));
  EXPECT_EQ(first, 9);
}

TEST(LayoutTest, ParsesNames) {
  EXPECT_EQ(ParseLayout("bshd"), Layout::kBSHD);
  EXPECT_EQ(ParseLayout("SBHD"), Layout::kSBHD);
  EXPECT_EQ(ParseLayout("BHSD"), Layout::kBHSD);
  EXPECT_FALSE(ParseLayout("HBSD").has_value());
  EXPECT_STREQ(LayoutName(Layout::kSBHD), "SBHD");
}

// Splits a serialized message into slices of `chunk` bytes: the parser must not
// care where the slice boundaries fall (gRPC delivers whatever the transport
// read).
grpc::ByteBuffer Chunked(const std::string& bytes, size_t chunk) {
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < bytes.size(); i += chunk) {
    slices.emplace_back(bytes.data() + i, std::min(chunk, bytes.size() - i));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Flatten(grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

TEST(ScoreCodecTest, RequestBytesAreProtobufs) {
  std::vector<float> q(size_t{2} * 3 * 4 * 5), k(size_t{2} * 3 * 6 * 5),
      v(size_t{2} * 3 * 6 * 7);
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>(i) * 0.5f;
  for (size_t i = 0; i < k.size(); ++i) k[i] = -static_cast<float>(i);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 13);
  ScoreRequest request;
  request.request_id = "id-7";
  request.bias = Alibi{{0.5f, 0.25f, 0.125f}};
  request.query =
      TensorView{DType::kFloat32, {2, 3, 4, 5}, q.data(), q.size() * 4};
  request.key =
      TensorView{DType::kFloat32, {2, 3, 6, 5}, k.data(), k.size() * 4};
  request.value =
      TensorView{DType::kFloat32, {2, 3, 6, 7}, v.data(), v.size() * 4};
  request.layout = Layout::kSBHD;
  request.causal = true;
  request.scale = 0.75f;
  request.key_lengths = {6, 3};
  request.outputs = Outputs{true, false, true};
  request.output_dtype = DType::kBFloat16;

  for (internal::DataMode mode :
       {internal::DataMode::kReference, internal::DataMode::kCopy}) {
    absl::StatusOr<grpc::ByteBuffer> encoded =
        internal::EncodeScoreRequest(request, mode);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    const std::string wire = Flatten(*encoded);
    v1::ScoreRequest parsed;
    ASSERT_TRUE(parsed.ParseFromString(wire));
    EXPECT_EQ(parsed.request_id(), "id-7");
    EXPECT_THAT(parsed.alibi().slopes(), ElementsAre(0.5f, 0.25f, 0.125f));
    EXPECT_THAT(parsed.query().shape(), ElementsAre(2, 3, 4, 5));
    EXPECT_EQ(parsed.query().dtype(), v1::FLOAT32);
    EXPECT_EQ(
        parsed.query().data(),
        std::string(reinterpret_cast<const char*>(q.data()), q.size() * 4));
    EXPECT_EQ(
        parsed.key().data(),
        std::string(reinterpret_cast<const char*>(k.data()), k.size() * 4));
    EXPECT_EQ(
        parsed.value().data(),
        std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
    EXPECT_EQ(parsed.layout(), v1::SBHD);
    EXPECT_TRUE(parsed.causal());
    EXPECT_FLOAT_EQ(parsed.scale(), 0.75f);
    EXPECT_THAT(parsed.key_lengths(), ElementsAre(6, 3));
    EXPECT_THAT(parsed.outputs(), ElementsAre(v1::LOGITS, v1::CONTEXT));
    EXPECT_EQ(parsed.output_dtype(), v1::BFLOAT16);
    // Byte for byte what protobuf itself writes.
    EXPECT_EQ(wire, parsed.SerializeAsString());
  }

  ScoreRequest relative = request;
  relative.bias = Relative{"xl"};
  relative.value.reset();
  relative.scale.reset();
  absl::StatusOr<grpc::ByteBuffer> encoded =
      internal::EncodeScoreRequest(relative, internal::DataMode::kReference);
  ASSERT_TRUE(encoded.ok());
  v1::ScoreRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(*encoded)));
  EXPECT_EQ(parsed.relative().model(), "xl");
  EXPECT_FALSE(parsed.has_value());
  EXPECT_FALSE(parsed.has_scale());

  relative.key.size_bytes = 3;
  EXPECT_THAT(internal::EncodeScoreRequest(relative, internal::DataMode::kCopy)
                  .status()
                  .message(),
              HasSubstr("ScoreRequest.key"));
}

v1::ScoreResponse SampleResponse() {
  v1::ScoreResponse response;
  response.set_request_id("r-1");
  std::vector<float> logits(size_t{2} * 2 * 3 * 4);
  for (size_t i = 0; i < logits.size(); ++i) {
    logits[i] = static_cast<float>(i) - 7.5f;
  }
  logits[5] = -std::numeric_limits<float>::infinity();
  v1::Tensor* t = response.mutable_logits();
  t->set_dtype(v1::FLOAT32);
  for (int64_t d : {2, 2, 3, 4}) t->add_shape(d);
  t->set_data(std::string(reinterpret_cast<const char*>(logits.data()),
                          logits.size() * 4));
  v1::Tensor* c = response.mutable_context();
  c->set_dtype(v1::BFLOAT16);
  for (int64_t d : {1, 2, 3}) c->add_shape(d);
  c->set_data(std::string(12, '\x3f'));
  response.mutable_timing()->set_queue_us(12);
  response.mutable_timing()->set_compute_us(345);
  response.mutable_timing()->set_batch_size(6);
  return response;
}

TEST(ScoreCodecTest, ParsesResponsesAcrossAnySliceBoundaries) {
  const v1::ScoreResponse expected = SampleResponse();
  const std::string wire = expected.SerializeAsString();
  for (size_t chunk :
       {size_t{1}, size_t{3}, size_t{7}, size_t{64}, wire.size()}) {
    SCOPED_TRACE(chunk);
    grpc::ByteBuffer buffer = Chunked(wire, chunk);
    absl::StatusOr<internal::DecodedResponse> decoded =
        internal::DecodeScoreResponse(buffer);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    const ScoreResult& r = decoded->result;
    EXPECT_TRUE(decoded->error.ok());
    EXPECT_EQ(r.request_id, "r-1");
    ASSERT_TRUE(r.logits.has_value());
    EXPECT_FALSE(r.probs.has_value());
    ASSERT_TRUE(r.context.has_value());
    EXPECT_THAT(r.logits->shape(), ElementsAre(2, 2, 3, 4));
    EXPECT_EQ(std::string(static_cast<const char*>(r.logits->data()),
                          r.logits->size_bytes()),
              expected.logits().data());
    EXPECT_EQ(r.context->dtype(), DType::kBFloat16);
    EXPECT_EQ(r.context->size_bytes(), 12u);
    EXPECT_EQ(r.timing.queue_us, 12);
    EXPECT_EQ(r.timing.compute_us, 345);
    EXPECT_EQ(r.timing.batch_size, 6);
  }
}

// A response with float32 logits [1, 1, rows, 1024] whose values are `fill`.
std::string LargeResponseWire(int64_t rows, float fill) {
  v1::ScoreResponse response;
  v1::Tensor* t = response.mutable_logits();
  t->set_dtype(v1::FLOAT32);
  for (int64_t d : {int64_t{1}, int64_t{1}, rows, int64_t{1024}}) {
    t->add_shape(d);
  }
  const std::vector<float> values(static_cast<size_t>(rows) * 1024, fill);
  t->set_data(std::string(reinterpret_cast<const char*>(values.data()),
                          values.size() * sizeof(float)));
  return response.SerializeAsString();
}

// Tensors of 32 MiB and more come from the pool.
constexpr int64_t kPooledRows = 8192;  // [1, 1, 8192, 1024] float32: 32 MiB

TEST(ScoreCodecTest, LargeTensorsReuseThePoolsBlocks) {
  auto pool = std::make_shared<BufferPool>(size_t{64} << 20);
  const std::string first_wire = LargeResponseWire(kPooledRows, 1.5f);
  grpc::ByteBuffer first_buffer = Chunked(first_wire, 16 << 10);
  absl::StatusOr<internal::DecodedResponse> first =
      internal::DecodeScoreResponse(first_buffer, pool);
  ASSERT_TRUE(first.ok()) << first.status();
  const void* first_block = first->result.logits->data();
  EXPECT_EQ(pool->stats().misses, 1u);
  first = absl::UnknownError("results dropped");  // the block goes back
  EXPECT_EQ(pool->stats().cached_blocks, 1u);

  const std::string second_wire = LargeResponseWire(kPooledRows, -2.0f);
  grpc::ByteBuffer second_buffer = Chunked(second_wire, 16 << 10);
  absl::StatusOr<internal::DecodedResponse> second =
      internal::DecodeScoreResponse(second_buffer, pool);
  ASSERT_TRUE(second.ok()) << second.status();
  const Tensor& logits = *second->result.logits;
  EXPECT_EQ(logits.data(), first_block);
  EXPECT_EQ(pool->stats().hits, 1u);
  EXPECT_EQ(pool->stats().cached_blocks, 0u);
  const std::vector<float> values = logits.ToFloats();
  EXPECT_EQ(values.size(), size_t{kPooledRows} * 1024);
  EXPECT_TRUE(std::all_of(values.begin(), values.end(),
                          [](float v) { return v == -2.0f; }));

  // Released bytes keep the pool alive after its owner is gone; they go back
  // to it, and it frees them when the last holder lets go (checked under
  // ASan).
  const std::weak_ptr<BufferPool> watch = pool;
  {
    const TensorBytes bytes = std::move(*second->result.logits).ReleaseData();
    second = absl::UnknownError("results dropped");
    pool.reset();
    EXPECT_FALSE(watch.expired());
  }
  EXPECT_TRUE(watch.expired());
}

TEST(ScoreCodecTest, SmallerTensorsAndNoPoolAllocateFreshBytes) {
  auto pool = std::make_shared<BufferPool>(size_t{64} << 20);
  grpc::ByteBuffer small = Chunked(SampleResponse().SerializeAsString(), 64);
  absl::StatusOr<internal::DecodedResponse> decoded =
      internal::DecodeScoreResponse(small, pool);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  decoded = absl::UnknownError("results dropped");
  // 16 MiB, under 32 MiB: malloc's heap reuses them once it has seen them.
  grpc::ByteBuffer mid =
      Chunked(LargeResponseWire(kPooledRows / 2, 2.5f), 1 << 20);
  decoded = internal::DecodeScoreResponse(mid, pool);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->result.logits->ToFloats()[0], 2.5f);
  decoded = absl::UnknownError("results dropped");
  EXPECT_EQ(pool->stats().misses + pool->stats().hits, 0u);
  EXPECT_EQ(pool->stats().cached_blocks, 0u);
  grpc::ByteBuffer large =
      Chunked(LargeResponseWire(kPooledRows, 3.0f), 1 << 20);
  decoded = internal::DecodeScoreResponse(large, nullptr);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->result.logits->ToFloats()[0], 3.0f);
}

TEST(ScoreCodecTest, ParsesAnyFieldOrderUnpackedShapesAndUnknownFields) {
  // data before dtype and shape, shape unpacked, an unknown field (99) in
  // Tensor and response.
  std::string tensor;
  tensor += '\x1a';  // data, field 3
  tensor += '\x08';
  tensor += std::string(8, '\x00');
  tensor += '\x10';  // shape, field 2, varint (unpacked)
  tensor += '\x01';
  tensor += '\x10';
  tensor += '\x02';
  tensor += '\x08';  // dtype, field 1
  tensor += '\x01';
  tensor += "\x98\x06\x05";           // field 99, varint 5
  std::string wire = "\x98\x06\x2a";  // unknown field 99 first
  wire += '\x1a';                     // probs, field 3
  wire += static_cast<char>(tensor.size());
  wire += tensor;
  wire += "\x0a\x01z";  // request_id "z", after the tensors
  grpc::ByteBuffer buffer = Chunked(wire, 2);
  absl::StatusOr<internal::DecodedResponse> decoded =
      internal::DecodeScoreResponse(buffer);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(decoded->result.probs.has_value());
  EXPECT_THAT(decoded->result.probs->shape(), ElementsAre(1, 2));
  EXPECT_EQ(decoded->result.request_id, "z");
}

TEST(ScoreCodecTest, StreamErrorsAndMalformedResponses) {
  v1::ScoreResponse error;
  error.set_request_id("bad");
  error.mutable_error()->set_code(3);
  error.mutable_error()->set_message("query.shape: expected 4 dims, got 3");
  grpc::ByteBuffer buffer = Chunked(error.SerializeAsString(), 5);
  absl::StatusOr<internal::DecodedResponse> decoded =
      internal::DecodeScoreResponse(buffer);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->error.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(decoded->error.message(), "query.shape: expected 4 dims, got 3");
  EXPECT_EQ(decoded->result.request_id, "bad");

  // Shape and byte count disagree.
  v1::ScoreResponse bad = SampleResponse();
  bad.mutable_logits()->set_data("short");
  buffer = Chunked(bad.SerializeAsString(), 4);
  absl::Status s = internal::DecodeScoreResponse(buffer).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("logits"));

  // Truncated in the middle of the tensor data.
  std::string wire = SampleResponse().SerializeAsString();
  buffer = Chunked(wire.substr(0, wire.size() / 2), 16);
  EXPECT_EQ(internal::DecodeScoreResponse(buffer).status().code(),
            absl::StatusCode::kDataLoss);

  // Unknown dtype.
  v1::ScoreResponse odd = SampleResponse();
  odd.mutable_logits()->set_dtype(static_cast<v1::DType>(9));
  buffer = Chunked(odd.SerializeAsString(), 1000);
  EXPECT_EQ(internal::DecodeScoreResponse(buffer).status().code(),
            absl::StatusCode::kDataLoss);
}

// Large tensors take the huge-page allocation path (>= 8 MiB); their bytes
// must arrive intact across gRPC-sized slices.
TEST(ScoreCodecTest, ParsesLargeTensorsIntact) {
  v1::ScoreResponse response;
  v1::Tensor* t = response.mutable_logits();
  t->set_dtype(v1::FLOAT32);
  for (int64_t d : {1, 9, 512, 512}) t->add_shape(d);  // 9 MiB
  std::string data(size_t{9} * 512 * 512 * 4, '\0');
  for (size_t i = 0; i < data.size(); ++i) {
    data[i] = static_cast<char>((i * 131) >> 3);
  }
  t->set_data(data);
  grpc::ByteBuffer buffer = Chunked(response.SerializeAsString(), 1 << 20);
  absl::StatusOr<internal::DecodedResponse> decoded =
      internal::DecodeScoreResponse(buffer);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(decoded->result.logits.has_value());
  ASSERT_EQ(decoded->result.logits->size_bytes(), data.size());
  EXPECT_EQ(
      std::memcmp(decoded->result.logits->data(), data.data(), data.size()), 0);
}

ScoreRequest PlacedRequest(const std::vector<float>& q,
                           const std::vector<float>& k,
                           const std::vector<float>& v) {
  ScoreRequest request;
  request.request_id = "placed-1";
  request.query = TensorView{DType::kFloat32, {1, 2, 3, 4}, q.data(), 96};
  request.key = TensorView{DType::kFloat32, {1, 2, 5, 4}, k.data(), 160};
  request.value = TensorView{DType::kFloat32, {1, 2, 5, 6}, v.data(), 240};
  request.outputs = Outputs{true, true, true};
  request.output_dtype = DType::kFloat16;
  request.placements = {
      {Output::kLogits, {"out", 4096, 60}},
      {Output::kContext, {"other", 0, uint64_t{1} << 40}},
  };
  return request;
}

TEST(ScoreCodecTest, EncodesPlacements) {
  const std::vector<float> q(24, 1.0f), k(40, 2.0f), v(60, 3.0f);
  const ScoreRequest request = PlacedRequest(q, k, v);
  absl::StatusOr<grpc::ByteBuffer> encoded =
      internal::EncodeScoreRequest(request, internal::DataMode::kReference);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  const std::string wire = Flatten(*encoded);
  v1::ScoreRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  ASSERT_EQ(parsed.placements_size(), 2);
  EXPECT_EQ(parsed.placements(0).output(), v1::LOGITS);
  EXPECT_EQ(parsed.placements(0).range().region(), "out");
  EXPECT_EQ(parsed.placements(0).range().offset(), 4096u);
  EXPECT_EQ(parsed.placements(0).range().byte_size(), 60u);
  EXPECT_EQ(parsed.placements(1).output(), v1::CONTEXT);
  EXPECT_EQ(parsed.placements(1).range().region(), "other");
  EXPECT_EQ(parsed.placements(1).range().offset(), 0u);
  EXPECT_EQ(parsed.placements(1).range().byte_size(), uint64_t{1} << 40);
  // Placing an output does not stop asking for it: the server wants both.
  EXPECT_THAT(parsed.outputs(),
              ElementsAre(v1::LOGITS, v1::PROBS, v1::CONTEXT));
  EXPECT_EQ(parsed.output_dtype(), v1::FLOAT16);
  EXPECT_EQ(wire, parsed.SerializeAsString());

  ScoreRequest probs = request;
  probs.placements = {{Output::kProbs, {"p", 8, 16}}};
  encoded = internal::EncodeScoreRequest(probs, internal::DataMode::kCopy);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  ASSERT_TRUE(parsed.ParseFromString(Flatten(*encoded)));
  ASSERT_EQ(parsed.placements_size(), 1);
  EXPECT_EQ(parsed.placements(0).output(), v1::PROBS);

  probs.placements.clear();
  encoded = internal::EncodeScoreRequest(probs, internal::DataMode::kCopy);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  ASSERT_TRUE(parsed.ParseFromString(Flatten(*encoded)));
  EXPECT_EQ(parsed.placements_size(), 0);
}

TEST(ScoreCodecTest, EncodesSharedInputsAsRangesWithoutBytes) {
  const std::vector<float> q(24, 1.0f);
  ScoreRequest request = PlacedRequest(q, {}, {});
  request.placements.clear();
  // Key and value in shared memory: their views give dtype and shape only.
  request.key = TensorView{DType::kFloat32, {1, 2, 5, 4}, nullptr, 0};
  request.value = TensorView{DType::kBFloat16, {1, 2, 5, 6}, nullptr, 0};
  request.shared_inputs.key = SharedMemoryRange{"in", 0, 160};
  request.shared_inputs.value = SharedMemoryRange{"in", 4096, 120};
  for (internal::DataMode mode :
       {internal::DataMode::kReference, internal::DataMode::kCopy}) {
    absl::StatusOr<grpc::ByteBuffer> encoded =
        internal::EncodeScoreRequest(request, mode);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    const std::string wire = Flatten(*encoded);
    v1::ScoreRequest parsed;
    ASSERT_TRUE(parsed.ParseFromString(wire));
    EXPECT_EQ(parsed.query().data().size(), 96u);
    EXPECT_FALSE(parsed.query().has_shared_memory());
    EXPECT_TRUE(parsed.key().data().empty());
    EXPECT_EQ(parsed.key().dtype(), v1::FLOAT32);
    EXPECT_THAT(parsed.key().shape(), ElementsAre(1, 2, 5, 4));
    EXPECT_EQ(parsed.key().shared_memory().region(), "in");
    EXPECT_EQ(parsed.key().shared_memory().offset(), 0u);
    EXPECT_EQ(parsed.key().shared_memory().byte_size(), 160u);
    EXPECT_TRUE(parsed.value().data().empty());
    EXPECT_EQ(parsed.value().dtype(), v1::BFLOAT16);
    EXPECT_EQ(parsed.value().shared_memory().offset(), 4096u);
    EXPECT_EQ(parsed.value().shared_memory().byte_size(), 120u);
    // Byte for byte what protobuf writes: fields in order, nothing twice.
    EXPECT_EQ(wire, parsed.SerializeAsString());
  }

  // A value range needs the value's dtype and shape.
  request.value.reset();
  absl::Status s =
      internal::EncodeScoreRequest(request, internal::DataMode::kCopy).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("shared_inputs.value"));
  // A tensor sent in-band is still checked.
  request.shared_inputs.value.reset();
  request.shared_inputs.key.reset();
  s = internal::EncodeScoreRequest(request, internal::DataMode::kCopy).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("ScoreRequest.key"));
}

// Sets `tensor` to a placed output: dtype and shape, no data, the range.
void Place(v1::Tensor& tensor, v1::DType dtype,
           const std::vector<int64_t>& shape, const std::string& region,
           uint64_t offset, uint64_t byte_size) {
  tensor.Clear();
  tensor.set_dtype(dtype);
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.mutable_shared_memory()->set_region(region);
  tensor.mutable_shared_memory()->set_offset(offset);
  tensor.mutable_shared_memory()->set_byte_size(byte_size);
}

// SampleResponse with its logits [2, 2, 3, 4] float32 (192 bytes) placed in
// region "out" at 4096, and probs placed too; the context stays in band.
v1::ScoreResponse PlacedResponse() {
  v1::ScoreResponse response = SampleResponse();
  Place(*response.mutable_logits(), v1::FLOAT32, {2, 2, 3, 4}, "out", 4096,
        192);
  Place(*response.mutable_probs(), v1::BFLOAT16, {1, 2, 3, 4}, "probs-region",
        0, 1000);
  return response;
}

TEST(ScoreCodecTest, DecodesPlacedOutputs) {
  const std::string wire = PlacedResponse().SerializeAsString();
  for (size_t chunk : {size_t{1}, size_t{5}, wire.size()}) {
    SCOPED_TRACE(chunk);
    grpc::ByteBuffer buffer = Chunked(wire, chunk);
    absl::StatusOr<internal::DecodedResponse> decoded =
        internal::DecodeScoreResponse(buffer);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    const ScoreResult& r = decoded->result;
    EXPECT_FALSE(r.logits.has_value());
    EXPECT_FALSE(r.probs.has_value());
    ASSERT_TRUE(r.context.has_value());
    EXPECT_EQ(r.context->size_bytes(), 12u);
    EXPECT_EQ(r.request_id, "r-1");
    EXPECT_EQ(r.timing.compute_us, 345);
    ASSERT_EQ(r.placed.size(), 2u);
    const PlacedOutput& logits = r.placed[0];
    EXPECT_EQ(logits.output, Output::kLogits);
    EXPECT_EQ(logits.dtype, DType::kFloat32);
    EXPECT_THAT(logits.shape, ElementsAre(2, 2, 3, 4));
    EXPECT_EQ(logits.range.region, "out");
    EXPECT_EQ(logits.range.offset, 4096u);
    EXPECT_EQ(logits.range.byte_size, 192u);  // exactly the output's bytes
    const PlacedOutput& probs = r.placed[1];
    EXPECT_EQ(probs.output, Output::kProbs);
    EXPECT_EQ(probs.dtype, DType::kBFloat16);
    EXPECT_THAT(probs.shape, ElementsAre(1, 2, 3, 4));
    EXPECT_EQ(probs.range.region, "probs-region");
    EXPECT_EQ(probs.range.offset, 0u);
    EXPECT_EQ(probs.range.byte_size, 1000u);
  }
}

// The status of decoding `response`: OK, or what was wrong.
absl::Status DecodeStatus(const v1::ScoreResponse& response) {
  grpc::ByteBuffer buffer = Chunked(response.SerializeAsString(), 7);
  return internal::DecodeScoreResponse(buffer).status();
}

TEST(ScoreCodecTest, RejectsMalformedPlacedOutputs) {
  // Bytes in the reply as well as a range: which are the output?
  v1::ScoreResponse with_data = PlacedResponse();
  with_data.mutable_logits()->set_data(std::string(192, '\0'));
  absl::Status s = DecodeStatus(with_data);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("logits"));
  EXPECT_THAT(s.message(), HasSubstr("data holds 192 bytes"));

  // One byte short of the shape's 192.
  v1::ScoreResponse too_small = PlacedResponse();
  too_small.mutable_logits()->mutable_shared_memory()->set_byte_size(191);
  s = DecodeStatus(too_small);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("[2, 2, 3, 4]"));
  EXPECT_THAT(s.message(), HasSubstr("191"));

  // A shape whose byte count overflows cannot fit any range.
  v1::ScoreResponse huge = PlacedResponse();
  Place(*huge.mutable_probs(), v1::FLOAT32,
        {int64_t{1} << 31, int64_t{1} << 31, 4}, "p", 0, ~uint64_t{0});
  s = DecodeStatus(huge);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("probs"));

  v1::ScoreResponse no_region = PlacedResponse();
  no_region.mutable_logits()->mutable_shared_memory()->clear_region();
  s = DecodeStatus(no_region);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("region"));

  v1::ScoreResponse odd_dtype = PlacedResponse();
  odd_dtype.mutable_logits()->set_dtype(static_cast<v1::DType>(9));
  s = DecodeStatus(odd_dtype);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("dtype 9"));

  // A range that is present but empty places nothing: an empty output fits.
  v1::ScoreResponse empty = PlacedResponse();
  Place(*empty.mutable_logits(), v1::FLOAT32, {1, 1, 0, 4}, "out", 0, 0);
  EXPECT_TRUE(DecodeStatus(empty).ok());
  empty.mutable_logits()->add_shape(1);  // [1, 1, 0, 4, 1]: still empty
  EXPECT_TRUE(DecodeStatus(empty).ok());
  Place(*empty.mutable_logits(), v1::FLOAT32, {1}, "out", 0, 0);
  EXPECT_EQ(DecodeStatus(empty).code(), absl::StatusCode::kDataLoss);

  // A truncated range message.
  std::string tensor = "\x08\x01\x10\x01";  // dtype FLOAT32, shape [1]
  tensor += "\x22\x05\x0a\x03ou";           // shared_memory: region "ou(t)"
  std::string wire = "\x12";                // logits, field 2
  wire += static_cast<char>(tensor.size());
  wire += tensor;
  grpc::ByteBuffer buffer = Chunked(wire, 3);
  s = internal::DecodeScoreResponse(buffer).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("logits.shared_memory"));
}

// -----------------------------------------------------------------------------
// ScoreChunked replies.

// A chunk of `output` [1, 1, rows, cols] float32 covering `data` at `offset`.
v1::ScoreChunk FloatChunk(v1::Output output, int64_t rows, int64_t cols,
                          uint64_t offset, const std::vector<float>& data) {
  v1::ScoreChunk chunk;
  chunk.set_output(output);
  chunk.set_dtype(v1::FLOAT32);
  for (int64_t d : {int64_t{1}, int64_t{1}, rows, cols}) chunk.add_shape(d);
  chunk.set_offset(offset);
  chunk.set_data(std::string(reinterpret_cast<const char*>(data.data()),
                             data.size() * sizeof(float)));
  return chunk;
}

std::vector<float> Iota(size_t n, float from) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = from + static_cast<float>(i);
  return v;
}

std::vector<float> Slice(const std::vector<float>& v, size_t begin,
                         size_t end) {
  return {v.begin() + static_cast<std::ptrdiff_t>(begin),
          v.begin() + static_cast<std::ptrdiff_t>(end)};
}

// The chunks of logits [1, 1, 3, 4], one row then two, and of probs placed in
// shared memory; request_id and timing on the last.
std::vector<v1::ScoreChunk> SampleChunks() {
  const std::vector<float> logits = Iota(12, -5.0f);
  std::vector<v1::ScoreChunk> chunks = {
      FloatChunk(v1::LOGITS, 3, 4, 0, Slice(logits, 0, 4)),
      FloatChunk(v1::LOGITS, 3, 4, 16, Slice(logits, 4, 12))};
  v1::ScoreChunk probs;
  probs.set_output(v1::PROBS);
  probs.set_dtype(v1::FLOAT32);
  for (int64_t d : {1, 1, 3, 4}) probs.add_shape(d);
  probs.mutable_shared_memory()->set_region("out");
  probs.mutable_shared_memory()->set_offset(128);
  probs.mutable_shared_memory()->set_byte_size(48);
  probs.set_request_id("c-1");
  probs.mutable_timing()->set_compute_us(77);
  chunks.push_back(probs);
  return chunks;
}

absl::StatusOr<ScoreResult> Assemble(const std::vector<v1::ScoreChunk>& chunks,
                                     size_t slice_bytes = 5,
                                     size_t max_bytes = size_t{1} << 20) {
  internal::ChunkAssembler assembler(nullptr, max_bytes);
  for (const v1::ScoreChunk& chunk : chunks) {
    grpc::ByteBuffer buffer = Chunked(chunk.SerializeAsString(), slice_bytes);
    if (absl::Status s = assembler.Add(buffer); !s.ok()) return s;
  }
  return assembler.Finish();
}

TEST(ChunkAssemblerTest, AssemblesOutputsAcrossAnySliceBoundaries) {
  for (size_t slice : {size_t{1}, size_t{5}, size_t{4096}}) {
    SCOPED_TRACE(slice);
    absl::StatusOr<ScoreResult> result = Assemble(SampleChunks(), slice);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE(result->logits.has_value());
    EXPECT_THAT(result->logits->shape(), ElementsAre(1, 1, 3, 4));
    EXPECT_EQ(result->logits->ToFloats(), Iota(12, -5.0f));
    EXPECT_FALSE(result->probs.has_value());
    ASSERT_EQ(result->placed.size(), 1u);
    EXPECT_EQ(result->placed[0].output, Output::kProbs);
    EXPECT_EQ(result->placed[0].range.region, "out");
    EXPECT_EQ(result->placed[0].range.offset, 128u);
    EXPECT_EQ(result->request_id, "c-1");
    EXPECT_EQ(result->timing.compute_us, 77);
  }
}

TEST(ChunkAssemblerTest, EmptyOutputIsOneChunkWithoutData) {
  v1::ScoreChunk empty = FloatChunk(v1::CONTEXT, 0, 8, 0, {});
  absl::StatusOr<ScoreResult> result = Assemble({empty});
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->context.has_value());
  EXPECT_EQ(result->context->size_bytes(), 0u);
}

TEST(ChunkAssemblerTest, MalformedRepliesAreDataLoss) {
  const std::vector<float> logits = Iota(12, 0.0f);
  const v1::ScoreChunk first =
      FloatChunk(v1::LOGITS, 3, 4, 0, Slice(logits, 0, 4));
  const v1::ScoreChunk rest =
      FloatChunk(v1::LOGITS, 3, 4, 16, Slice(logits, 4, 12));
  v1::ScoreChunk gap = rest;
  gap.set_offset(20);
  v1::ScoreChunk past_end = rest;
  past_end.set_data(past_end.data() + std::string(4, '\0'));
  v1::ScoreChunk reshaped = rest;
  reshaped.set_shape(2, 2);
  v1::ScoreChunk retyped = rest;
  retyped.set_dtype(v1::BFLOAT16);
  const v1::ScoreChunk probs = FloatChunk(v1::PROBS, 3, 4, 0, logits);
  v1::ScoreChunk both = rest;
  both.mutable_shared_memory()->set_region("r");
  both.mutable_shared_memory()->set_byte_size(48);
  v1::ScoreChunk unknown_output = first;
  unknown_output.set_output(static_cast<v1::Output>(7));
  v1::ScoreChunk unknown_dtype = first;
  unknown_dtype.set_dtype(static_cast<v1::DType>(9));
  v1::ScoreChunk huge = first;
  huge.set_shape(2, int64_t{1} << 40);
  v1::ScoreChunk trailer;
  trailer.set_request_id("r");
  const struct {
    const char* name;
    std::vector<v1::ScoreChunk> chunks;
    const char* message;
  } cases[] = {
      {"gap", {first, gap}, "offset 20, expected at most 32 at offset 16"},
      {"past the end",
       {first, past_end},
       "36 bytes at offset 16, expected at most 32"},
      {"reshaped", {first, reshaped}, "shape"},
      {"retyped", {first, retyped}, "dtype"},
      {"incomplete at the end", {first}, "ended after 16 of 48 bytes"},
      {"next output before the end", {first, probs}, "16 of 48 bytes"},
      {"output again",
       {first, rest, FloatChunk(v1::LOGITS, 3, 4, 0, logits)},
       "at offset 0, expected at most 0 at offset 48"},
      {"out of order", {probs, first, rest}, "in order"},
      {"data and shared_memory", {first, both}, "shared_memory"},
      {"unknown output", {unknown_output}, "output 7"},
      {"unknown dtype", {unknown_dtype}, "dtype 9"},
      {"over the request's outputs", {huge}, "over the"},
      {"no output", {trailer}, "without any output"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<ScoreResult> result = Assemble(c.chunks);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(result.status().message(), HasSubstr(c.message));
  }
  // Bytes that are not a message at all; and nothing is accepted after an
  // error.
  internal::ChunkAssembler assembler(nullptr, 1 << 20);
  grpc::ByteBuffer junk = Chunked(std::string("\x2a\xff\xff\xff\x0f", 5), 2);
  EXPECT_EQ(assembler.Add(junk).code(), absl::StatusCode::kDataLoss);
  grpc::ByteBuffer good = Chunked(first.SerializeAsString(), 7);
  EXPECT_EQ(assembler.Add(good).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(assembler.Finish().status().code(), absl::StatusCode::kDataLoss);
}

// A server with Score, and ScoreChunked when `chunked` (else gRPC's
// UNIMPLEMENTED, as from a server that predates it): logits [1, 1, Lq, Lk]
// of 0, 1, 2, ... either way, chunked in rows.
class FakeScoreService final : public v1::AttentionScorer::Service {
 public:
  grpc::Status Score(grpc::ServerContext* /*context*/,
                     const v1::ScoreRequest* request,
                     v1::ScoreResponse* response) override {
    ++score_calls;
    const auto [rows, cols] = Dims(*request);
    v1::Tensor* logits = response->mutable_logits();
    logits->set_dtype(v1::FLOAT32);
    for (int64_t d : {int64_t{1}, int64_t{1}, rows, cols}) logits->add_shape(d);
    const std::vector<float> values = Iota(static_cast<size_t>(rows * cols), 0);
    logits->set_data(std::string(reinterpret_cast<const char*>(values.data()),
                                 values.size() * sizeof(float)));
    response->set_request_id(request->request_id());
    return grpc::Status::OK;
  }
  grpc::Status ScoreChunked(
      grpc::ServerContext* context, const v1::ScoreRequest* request,
      grpc::ServerWriter<v1::ScoreChunk>* writer) override {
    ++chunked_calls;
    if (!chunked) {
      return v1::AttentionScorer::Service::ScoreChunked(context, request,
                                                        writer);
    }
    const auto [rows, cols] = Dims(*request);
    const std::vector<float> values = Iota(static_cast<size_t>(rows * cols), 0);
    for (int64_t r = 0; r < rows; ++r) {
      const size_t row = static_cast<size_t>(r * cols);
      v1::ScoreChunk chunk =
          FloatChunk(v1::LOGITS, rows, cols, row * sizeof(float),
                     Slice(values, row, row + static_cast<size_t>(cols)));
      if (r + 1 == rows) chunk.set_request_id(request->request_id());
      if (malformed && r == 1) chunk.set_offset(chunk.offset() + 4);
      writer->Write(chunk);
    }
    return grpc::Status::OK;
  }

  bool chunked = true;
  bool malformed = false;
  std::atomic<int> score_calls{0};
  std::atomic<int> chunked_calls{0};

 private:
  static std::pair<int64_t, int64_t> Dims(const v1::ScoreRequest& request) {
    return {request.query().shape(2), request.key().shape(2)};
  }
};

// A gRPC server in this process for `service` on a free loopback port.
std::unique_ptr<grpc::Server> StartInProcess(grpc::Service* service,
                                             int* port) {
  grpc::ServerBuilder builder;
  builder.RegisterService(service);
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           port);
  return builder.BuildAndStart();
}

class ChunkedCallsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartInProcess(&service_, &port_);
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(5));
  }
  std::unique_ptr<Client> Connect(int64_t chunked_reply_bytes) {
    ClientOptions options;
    options.target = absl::StrCat("127.0.0.1:", port_);
    options.retry.enabled = false;
    options.chunked_reply_bytes = chunked_reply_bytes;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }
  // q [1, 1, 5, 2], k [1, 1, 6, 2]: logits [1, 1, 5, 6] float32, 120 bytes.
  absl::StatusOr<ScoreResult> ScoreOnce(Client& client) {
    ScoreRequest request;
    request.request_id = "fake";
    request.query = query_.view();
    request.key = key_.view();
    CallOptions call;
    call.timeout = absl::Seconds(20);
    return client.Score(request, call);
  }

  FakeScoreService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  Tensor query_ = *Tensor::FromFloats(DType::kFloat32, {1, 1, 5, 2},
                                      std::vector<float>(10, 1.0f));
  Tensor key_ = *Tensor::FromFloats(DType::kFloat32, {1, 1, 6, 2},
                                    std::vector<float>(12, 1.0f));
};

TEST_F(ChunkedCallsTest, LargeRepliesComeInChunksAndSmallOnesWhole) {
  std::unique_ptr<Client> client = Connect(/*chunked_reply_bytes=*/120);
  absl::StatusOr<ScoreResult> result = ScoreOnce(*client);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(service_.chunked_calls, 1);
  EXPECT_EQ(service_.score_calls, 0);
  EXPECT_EQ(result->request_id, "fake");
  EXPECT_EQ(result->logits->ToFloats(), Iota(30, 0));
  // Over the threshold's 121 bytes: Score.
  client = Connect(121);
  result = ScoreOnce(*client);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(service_.chunked_calls, 1);
  EXPECT_EQ(service_.score_calls, 1);
  EXPECT_EQ(result->logits->ToFloats(), Iota(30, 0));
  client = Connect(0);  // never
  ASSERT_TRUE(ScoreOnce(*client).ok());
  EXPECT_EQ(service_.chunked_calls, 1);
}

TEST_F(ChunkedCallsTest, AServerWithoutScoreChunkedIsAskedWithScore) {
  service_.chunked = false;
  std::unique_ptr<Client> client = Connect(1);
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<ScoreResult> result = ScoreOnce(*client);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->logits->ToFloats(), Iota(30, 0));
  }
  // Tried once; Score from then on.
  EXPECT_EQ(service_.chunked_calls, 1);
  EXPECT_EQ(service_.score_calls, 3);
}

TEST_F(ChunkedCallsTest, AMalformedReplyIsDataLoss) {
  service_.malformed = true;
  std::unique_ptr<Client> client = Connect(1);
  absl::StatusOr<ScoreResult> result = ScoreOnce(*client);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(result.status().message(), HasSubstr("offset 28"));
}

TEST(ClientOptionsTest, ChunkedReplyBytesMustNotBeNegative) {
  ClientOptions options;
  options.chunked_reply_bytes = -1;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(), HasSubstr("chunked_reply_bytes"));
}

// A gRPC server in this process that records the shared-memory calls it gets
// and answers with what the test set.
class FakeShmService final : public v1::AttentionScorer::Service {
 public:
  grpc::Status RegisterSharedMemory(
      grpc::ServerContext* context,
      const v1::RegisterSharedMemoryRequest* request,
      v1::RegisterSharedMemoryResponse* /*response*/) override {
    registered.push_back(*request);
    Record(*context);
    absl::SleepFor(delay);
    return answer;
  }
  grpc::Status UnregisterSharedMemory(
      grpc::ServerContext* context,
      const v1::UnregisterSharedMemoryRequest* request,
      v1::UnregisterSharedMemoryResponse* /*response*/) override {
    unregistered.push_back(request->name());
    Record(*context);
    return answer;
  }
  grpc::Status SharedMemoryStatus(
      grpc::ServerContext* context,
      const v1::SharedMemoryStatusRequest* /*request*/,
      v1::SharedMemoryStatusResponse* response) override {
    Record(*context);
    *response = status;
    return answer;
  }
  grpc::Status GetServerInfo(grpc::ServerContext* context,
                             const v1::GetServerInfoRequest* /*request*/,
                             v1::ServerInfo* response) override {
    Record(*context);
    *response = info;
    return answer;
  }

  // Set before the calls, read after them (gRPC's sync server runs a handler
  // before the call returns to the client).
  grpc::Status answer;
  absl::Duration delay;  // before RegisterSharedMemory answers
  v1::SharedMemoryStatusResponse status;
  v1::ServerInfo info;
  std::vector<v1::RegisterSharedMemoryRequest> registered;
  std::vector<std::string> unregistered;
  std::vector<std::string> authorization;  // per call; "" when absent
  std::vector<std::string> test_header;    // per call: "x-test"

 private:
  void Record(const grpc::ServerContext& context) {
    for (auto [key, list] : {std::pair{"authorization", &authorization},
                             std::pair{"x-test", &test_header}}) {
      auto it = context.client_metadata().find(key);
      list->push_back(it == context.client_metadata().end()
                          ? std::string()
                          : std::string(it->second.data(), it->second.size()));
    }
  }
};

class SharedMemoryCallsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartInProcess(&service_, &port_);
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
    ClientOptions options;
    options.target = absl::StrCat("127.0.0.1:", port_);
    options.retry.enabled = false;
    options.bearer_token = "secret";
    options.allow_insecure_token = true;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    call_.timeout = absl::Seconds(20);
    call_.wait_for_ready = true;
    call_.metadata = {{"x-test", "shm"}};
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(5));
  }

  FakeShmService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<Client> client_;
  CallOptions call_;
};

TEST_F(SharedMemoryCallsTest,
       RegisterSendsTheRegistrationWithTheCallsMetadata) {
  ASSERT_TRUE(client_
                  ->RegisterSharedMemory(
                      {"out", "attnscore-x-1", 8192, uint64_t{3} << 32}, call_)
                  .ok());
  ASSERT_EQ(service_.registered.size(), 1u);
  const v1::RegisterSharedMemoryRequest& r = service_.registered[0];
  EXPECT_EQ(r.name(), "out");
  EXPECT_EQ(r.key(), "attnscore-x-1");
  EXPECT_EQ(r.offset(), 8192u);
  EXPECT_EQ(r.byte_size(), uint64_t{3} << 32);
  EXPECT_THAT(service_.authorization, ElementsAre("Bearer secret"));
  EXPECT_THAT(service_.test_header, ElementsAre("shm"));
}

TEST_F(SharedMemoryCallsTest, ServerErrorsComeBackVerbatim) {
  service_.answer = grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                                 "region 'out' is already registered");
  absl::Status s = client_->RegisterSharedMemory({"out", "k", 0, 1}, call_);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(s.message(), "region 'out' is already registered");
  service_.answer = grpc::Status(grpc::StatusCode::NOT_FOUND, "no region 'x'");
  s = client_->UnregisterSharedMemory("x", call_);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no region 'x'");
  service_.answer =
      grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "shm is off");
  EXPECT_EQ(client_->SharedMemoryStatus(call_).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(SharedMemoryCallsTest, UnregisterSendsTheName) {
  ASSERT_TRUE(client_->UnregisterSharedMemory("region-7", call_).ok());
  EXPECT_THAT(service_.unregistered, ElementsAre("region-7"));
  EXPECT_THAT(service_.authorization, ElementsAre("Bearer secret"));
}

TEST_F(SharedMemoryCallsTest, StatusListsTheRegions) {
  for (const auto& [name, key, offset, size] :
       {std::tuple{"a", "attnscore-a", 0, 4096},
        std::tuple{"b", "attnscore-b", 4096, 100}}) {
    v1::SharedMemoryRegionStatus* r = service_.status.add_regions();
    r->set_name(name);
    r->set_key(key);
    r->set_offset(offset);
    r->set_byte_size(size);
  }
  absl::StatusOr<std::vector<SharedMemoryRegistration>> regions =
      client_->SharedMemoryStatus(call_);
  ASSERT_TRUE(regions.ok()) << regions.status();
  ASSERT_EQ(regions->size(), 2u);
  EXPECT_EQ((*regions)[0].name, "a");
  EXPECT_EQ((*regions)[0].key, "attnscore-a");
  EXPECT_EQ((*regions)[0].offset, 0u);
  EXPECT_EQ((*regions)[0].byte_size, 4096u);
  EXPECT_EQ((*regions)[1].name, "b");
  EXPECT_EQ((*regions)[1].key, "attnscore-b");
  EXPECT_EQ((*regions)[1].offset, 4096u);
  EXPECT_EQ((*regions)[1].byte_size, 100u);
  EXPECT_THAT(service_.test_header, ElementsAre("shm"));
}

TEST_F(SharedMemoryCallsTest, ServerInfoCarriesTheSharedMemoryLimits) {
  service_.info.set_version("9.9");
  service_.info.mutable_limits()->set_shm_prefix("attnscore-");
  service_.info.mutable_limits()->set_max_shm_regions(17);
  service_.info.mutable_limits()->set_max_seq_len(4096);
  absl::StatusOr<ServerInfo> info = client_->GetServerInfo(call_);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->version, "9.9");
  EXPECT_EQ(info->shm_prefix, "attnscore-");
  EXPECT_EQ(info->max_shm_regions, 17);
  EXPECT_EQ(info->max_seq_len, 4096);
}

TEST_F(SharedMemoryCallsTest, CancellationAndDeadlineApply) {
  CallOptions cancelled = call_;
  cancelled.cancellation = std::make_shared<CancellationToken>();
  cancelled.cancellation->Cancel();
  EXPECT_EQ(client_->RegisterSharedMemory({"out", "k", 0, 1}, cancelled).code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(client_->UnregisterSharedMemory("out", cancelled).code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(client_->SharedMemoryStatus(cancelled).status().code(),
            absl::StatusCode::kCancelled);
  // None of them reached the server.
  EXPECT_TRUE(service_.registered.empty());
  EXPECT_TRUE(service_.unregistered.empty());
  EXPECT_TRUE(service_.authorization.empty());
  // A server slower than the call's timeout: the call ends at the deadline.
  service_.delay = absl::Milliseconds(500);
  CallOptions short_timeout = call_;
  short_timeout.timeout = absl::Milliseconds(50);
  EXPECT_EQ(
      client_->RegisterSharedMemory({"out", "k", 0, 1}, short_timeout).code(),
      absl::StatusCode::kDeadlineExceeded);
}

TEST(ClientOptionsTest, KeptResponseBytesMustNotBeNegative) {
  ClientOptions options;
  options.keep_response_bytes = -1;
  absl::Status s = Client::Create(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("keep_response_bytes: expected >= 0"));
  options.keep_response_bytes = 0;  // no reuse
  EXPECT_TRUE(Client::Create(options).ok());
}

TEST(ClientOptionsTest, SocketReadBoundMustNotBeNegative) {
  ClientOptions options;
  options.max_socket_read_bytes = -1;
  absl::Status s = Client::Create(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("max_socket_read_bytes: expected >= 0"));
  options.max_socket_read_bytes = 0;  // gRPC's own sizing
  EXPECT_TRUE(Client::Create(options).ok());
}

// Restores GRPC_EXPERIMENTS (or its absence) when the test ends.
class GrpcExperimentsVariable {
 public:
  GrpcExperimentsVariable() {
    if (const char* value = std::getenv(kName)) saved_ = value;
  }
  ~GrpcExperimentsVariable() {
    if (saved_.has_value()) {
      setenv(kName, saved_->c_str(), /*overwrite=*/1);
    } else {
      unsetenv(kName);
    }
  }
  GrpcExperimentsVariable(const GrpcExperimentsVariable&) = delete;
  GrpcExperimentsVariable& operator=(const GrpcExperimentsVariable&) = delete;

  static constexpr const char* kName = "GRPC_EXPERIMENTS";

 private:
  std::optional<std::string> saved_;
};

TEST(PreferBoundedSocketReadsTest, TurnsOffReadChunksWhereUnset) {
  const GrpcExperimentsVariable restore;
  unsetenv(GrpcExperimentsVariable::kName);
  PreferBoundedSocketReads();
  const char* value = std::getenv(GrpcExperimentsVariable::kName);
  ASSERT_NE(value, nullptr);
  EXPECT_STREQ(value, "-tcp_read_chunks");
}

TEST(PreferBoundedSocketReadsTest, LeavesTheOperatorsChoice) {
  const GrpcExperimentsVariable restore;
  setenv(GrpcExperimentsVariable::kName, "tcp_read_chunks", /*overwrite=*/1);
  PreferBoundedSocketReads();
  EXPECT_STREQ(std::getenv(GrpcExperimentsVariable::kName), "tcp_read_chunks");
  setenv(GrpcExperimentsVariable::kName, "", /*overwrite=*/1);
  PreferBoundedSocketReads();  // set, if empty: still the operator's
  EXPECT_STREQ(std::getenv(GrpcExperimentsVariable::kName), "");
}

TEST(ClientOptionsTest, ChannelArgsNeedGrpcNames) {
  for (const char* name : {"http2.lookahead_bytes", "grpc.", ""}) {
    ClientOptions options;
    options.channel_args = {{name, 1}};
    absl::Status s = Client::Create(options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(s.message(), HasSubstr("channel_args")) << name;
  }
  ClientOptions options;
  options.channel_args = {{"grpc.http2.lookahead_bytes", 1 << 20},
                          {"grpc.http2.max_frame_size", 1 << 20}};
  EXPECT_TRUE(Client::Create(options).ok());
}

// channel_args reach the channel and win over the library's own arguments: a
// receive limit of 1 byte overrides max_receive_message_bytes (unlimited), so
// a health check against an in-process gRPC server fails RESOURCE_EXHAUSTED.
// An in-process gRPC server on 127.0.0.1:`*port` (0: any; the port is written
// back) whose health service says SERVING, serving `service` (a server needs
// one of its own).
std::unique_ptr<grpc::Server> StartHealthServer(
    v1::AttentionScorer::CallbackService& service, int* port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  const int wanted = *port;
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", wanted),
                           grpc::InsecureServerCredentials(), port);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *port == 0) return nullptr;
  server->GetHealthCheckService()->SetServingStatus("", true);
  return server;
}

TEST(ClientOptionsTest, ChannelArgsOverrideTheLibrarysOwn) {
  v1::AttentionScorer::CallbackService unimplemented;  // UNIMPLEMENTED
  int port = 0;
  std::unique_ptr<grpc::Server> server =
      StartHealthServer(unimplemented, &port);
  ASSERT_NE(server, nullptr);

  ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port);
  options.retry.enabled = false;
  CallOptions call;
  call.timeout = absl::Seconds(20);
  call.wait_for_ready = true;
  {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    absl::StatusOr<ServingStatus> status = (*client)->Health("", call);
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_EQ(*status, ServingStatus::kServing);
  }
  options.channel_args = {{GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 1}};
  {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    EXPECT_EQ((*client)->Health("", call).status().code(),
              absl::StatusCode::kResourceExhausted);
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

TEST(ClientOptionsTest, ReconnectBackoffMustBeOrdered) {
  ClientOptions options;
  options.reconnect.initial_backoff = absl::Seconds(2);
  options.reconnect.max_backoff = absl::Seconds(1);
  absl::Status s = Client::Create(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              HasSubstr("reconnect: expected 1ms <= initial_backoff <= "
                        "max_backoff, got initial_backoff 2s, max_backoff 1s"));
  options.reconnect.initial_backoff = absl::ZeroDuration();
  EXPECT_EQ(Client::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.reconnect.initial_backoff = absl::Milliseconds(100);
  EXPECT_TRUE(Client::Create(options).ok());
}

// Counts the ListModels calls it answers (with an empty list).
class CountingScorer final : public v1::AttentionScorer::CallbackService {
 public:
  grpc::ServerUnaryReactor* ListModels(
      grpc::CallbackServerContext* context,
      const v1::ListModelsRequest* /*request*/,
      v1::ListModelsResponse* /*response*/) override {
    calls.fetch_add(1);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  std::atomic<int> calls{0};
};

// Calls ListModels fail-fast (failures expected: a backend may be down) for
// `duration`.
void CallFor(Client& client, absl::Duration duration) {
  CallOptions call;
  call.timeout = absl::Seconds(2);
  for (absl::Time end = absl::Now() + duration; absl::Now() < end;) {
    (void)client.ListModels(call);
    absl::SleepFor(absl::Milliseconds(5));
  }
}

// The reconnect backoff reaches the channel. Two backends under round_robin
// traffic; one goes away for 3 s and comes back on its port. gRPC's default
// backoff tries it at about 0, 1, 2.6 and 5.2 s after it left (each step
// +-20%, so the fourth attempt is never before 4.1 s); with 100 ms the client
// finds it within a fraction of the 1 s the test waits.
TEST(ClientOptionsTest, ReconnectsWithinItsMaximumBackoff) {
  CountingScorer stays;
  CountingScorer returns;
  int stays_port = 0;
  int returns_port = 0;
  std::unique_ptr<grpc::Server> a = StartHealthServer(stays, &stays_port);
  std::unique_ptr<grpc::Server> b = StartHealthServer(returns, &returns_port);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);

  ClientOptions options;
  options.targets = {absl::StrCat("127.0.0.1:", stays_port),
                     absl::StrCat("127.0.0.1:", returns_port)};
  options.retry.enabled = false;
  options.reconnect.initial_backoff = absl::Milliseconds(100);
  options.reconnect.max_backoff = absl::Milliseconds(100);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  CallFor(**client, absl::Milliseconds(300));
  ASSERT_GT(returns.calls.load(), 0) << "round_robin never used the second";

  b->Shutdown(std::chrono::system_clock::now());
  b.reset();
  returns.calls = 0;
  CallFor(**client, absl::Seconds(3));
  b = StartHealthServer(returns, &returns_port);
  ASSERT_NE(b, nullptr) << "port " << returns_port << " was taken meanwhile";
  CallFor(**client, absl::Seconds(1));
  EXPECT_GT(returns.calls.load(), 0)
      << "the backend that came back got no call within 1 s";
  b->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  a->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

}  // namespace
}  // namespace attnscore::client
