// The client library without a server: tensors, the wire codec (against
// protobuf's own encoding, split into many slices), and option-independent
// helpers.
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
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

TEST(ClientOptionsTest, KeptResponseBytesMustNotBeNegative) {
  ClientOptions options;
  options.keep_response_bytes = -1;
  absl::Status s = Client::Create(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("keep_response_bytes: expected >= 0"));
  options.keep_response_bytes = 0;  // no reuse
  EXPECT_TRUE(Client::Create(options).ok());
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
TEST(ClientOptionsTest, ChannelArgsOverrideTheLibrarysOwn) {
  grpc::EnableDefaultHealthCheckService(true);
  // A server needs one service of its own; this one answers UNIMPLEMENTED.
  v1::AttentionScorer::CallbackService unimplemented;
  grpc::ServerBuilder builder;
  builder.RegisterService(&unimplemented);
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_NE(port, 0);
  server->GetHealthCheckService()->SetServingStatus("", true);

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

}  // namespace
}  // namespace attnscore::client
