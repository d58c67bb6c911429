// The Open Inference Protocol parser (kserve_request_parser.h) against
// protobuf's: the same message from the same bytes however they are sliced,
// raw contents in pooled blocks scanned as their input's datatype, and the
// codec computing on those blocks. No LibTorch, no server.
#include "server/service/kserve_request_parser.h"

#include <google/protobuf/stubs/logging.h>
#include <grpcpp/support/byte_buffer.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/service/kserve_codec.h"
#include "server/service/kserve_request.h"
#include "tests/service/test_requests.h"

namespace attnscore::service::kserve {
namespace {

using inference::ModelInferRequest;
using service::testing::RandomlySliced;
using service::testing::Sliced;
using ::testing::HasSubstr;

std::string FloatBytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()),
                     values.size() * sizeof(float));
}

// FP32 query [1,2,3,4] and key [1,2,5,4], INT32 key_lengths [1], FP16 value
// left out; raw contents; `bad_key` >= 0 puts a NaN at that key index.
ModelInferRequest MakeRequest(int bad_key = -1) {
  ModelInferRequest request;
  request.set_model_name("alibi");
  request.set_id("infer-7");
  (*request.mutable_parameters())["causal"].set_bool_param(true);
  request.add_outputs()->set_name("logits");
  const auto add = [&](const char* name, const char* datatype,
                       const std::vector<int64_t>& shape, std::string bytes) {
    ModelInferRequest::InferInputTensor* input = request.add_inputs();
    input->set_name(name);
    input->set_datatype(datatype);
    for (int64_t d : shape) input->add_shape(d);
    request.add_raw_input_contents(std::move(bytes));
  };
  std::vector<float> query(24), key(40);
  for (size_t i = 0; i < query.size(); ++i) {
    query[i] = 0.1f * static_cast<float>(i);
  }
  for (size_t i = 0; i < key.size(); ++i) {
    key[i] = 1.5f - 0.05f * static_cast<float>(i);
  }
  if (bad_key >= 0) key[static_cast<size_t>(bad_key)] = std::nanf("");
  add("query", "FP32", {1, 2, 3, 4}, FloatBytes(query));
  add("key", "FP32", {1, 2, 5, 4}, FloatBytes(key));
  const int32_t length = 4;
  add("key_lengths", "INT32", {1},
      std::string(reinterpret_cast<const char*>(&length), 4));
  return request;
}

// The parsed message with each raw entry's bytes put back.
ModelInferRequest Reassembled(const ParsedInferRequest& parsed) {
  ModelInferRequest message = parsed.message;
  if (parsed.contents_in_message) return message;
  for (size_t i = 0; i < parsed.raw.size(); ++i) {
    EXPECT_TRUE(message.raw_input_contents(static_cast<int>(i)).empty());
    const ParsedTensorBytes& bytes = parsed.raw[i];
    message.set_raw_input_contents(
        static_cast<int>(i),
        bytes.block == nullptr
            ? std::string()
            : std::string(reinterpret_cast<const char*>(bytes.block.get()),
                          bytes.size));
  }
  return message;
}

void ExpectSameAsProtobuf(const grpc::ByteBuffer& buffer,
                          const std::string& bytes) {
  ModelInferRequest expected;
  const bool protobuf_ok = expected.ParseFromString(bytes);
  ParsedInferRequest parsed;
  const absl::Status status = ParseInferRequest(buffer, &parsed);
  ASSERT_EQ(status.ok(), protobuf_ok) << status;
  if (!protobuf_ok) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    return;
  }
  EXPECT_EQ(service::testing::CanonicalBytes(Reassembled(parsed)),
            service::testing::CanonicalBytes(expected));
}

const scoring::ModelSet& NoModels() {
  static const auto* models = new scoring::ModelSet();
  return *models;
}

TEST(KServeRequestParserTest, SameMessageAsProtobufHoweverItIsSliced) {
  const std::string bytes = MakeRequest().SerializeAsString();
  ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);
  std::mt19937 rng(5);
  for (int pieces : {2, 5, 17}) {
    for (int round = 0; round < 20; ++round) {
      ExpectSameAsProtobuf(RandomlySliced(bytes, pieces, rng), bytes);
    }
  }
}

TEST(KServeRequestParserTest, RawContentsAreScannedAsTheirInputsDatatype) {
  const ModelInferRequest request = MakeRequest();
  ParsedInferRequest parsed;
  ASSERT_TRUE(
      ParseInferRequest(Sliced(request.SerializeAsString(), {50}), &parsed)
          .ok());
  ASSERT_FALSE(parsed.contents_in_message);
  ASSERT_EQ(parsed.raw.size(), 3u);
  for (int i : {0, 1}) {
    const ParsedTensorBytes& raw = parsed.raw[static_cast<size_t>(i)];
    ASSERT_TRUE(raw.scan.has_value());
    EXPECT_EQ(raw.scan->dtype, DType::kFloat32);
    EXPECT_EQ(raw.scan->first_non_finite, scoring::FiniteScan::kAllFinite);
    ASSERT_EQ(raw.size, request.raw_input_contents(i).size());
    EXPECT_EQ(std::memcmp(raw.block.get(), request.raw_input_contents(i).data(),
                          raw.size),
              0);
  }
  EXPECT_EQ(parsed.raw[1].scan->max_abs, 1.5f);
  EXPECT_FALSE(parsed.raw[2].scan.has_value());  // INT32 key_lengths

  // The codec maps the item onto the blocks, with the parser's scans.
  KServeInferCodec codec;
  absl::StatusOr<ValidatedRequest> validated = codec.Parse(
      Sliced(request.SerializeAsString(), {}), RequestLimits{}, NoModels());
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_TRUE(validated->scans.key.has_value());
  EXPECT_EQ(validated->item.key_lengths, std::vector<int32_t>{4});
  EXPECT_EQ(codec.request_id(), "infer-7");
}

TEST(KServeRequestParserTest, NaNFoundWhileCopyingIsRefusedNamingTheInput) {
  const ModelInferRequest request = MakeRequest(/*bad_key=*/17);
  KServeInferCodec codec;
  const absl::StatusOr<ValidatedRequest> validated = codec.Parse(
      Sliced(request.SerializeAsString(), {}), RequestLimits{}, NoModels());
  ASSERT_FALSE(validated.ok());
  EXPECT_THAT(validated.status().message(),
              HasSubstr("key.data: expected finite values, got NaN or Inf at "
                        "flat index 17"));
}

TEST(KServeRequestParserTest, RawBeforeItsInputIsScannedByValidation) {
  // raw_input_contents first, inputs after: valid, but the parser cannot
  // know the datatype while copying; validation scans the block.
  const ModelInferRequest request = MakeRequest(/*bad_key=*/3);
  ModelInferRequest raw_only;
  *raw_only.mutable_raw_input_contents() = request.raw_input_contents();
  ModelInferRequest rest = request;
  rest.clear_raw_input_contents();
  const std::string bytes =
      raw_only.SerializeAsString() + rest.SerializeAsString();
  ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);
  ParsedInferRequest parsed;
  ASSERT_TRUE(ParseInferRequest(Sliced(bytes, {}), &parsed).ok());
  EXPECT_FALSE(parsed.raw[1].scan.has_value());
  KServeInferCodec codec;
  const absl::StatusOr<ValidatedRequest> validated =
      codec.Parse(Sliced(bytes, {}), RequestLimits{}, NoModels());
  ASSERT_FALSE(validated.ok());
  EXPECT_THAT(validated.status().message(), HasSubstr("flat index 3"));
}

TEST(KServeRequestParserTest, AFloodOfEntriesIsLeftToProtobuf) {
  // 1,000 empty raw entries: no valid request has more than 5; the fast path
  // stops keeping a block per entry and protobuf parses (and the mapping
  // refuses the count).
  ModelInferRequest request = MakeRequest();
  for (int i = 0; i < 1000; ++i) request.add_raw_input_contents("");
  const std::string bytes = request.SerializeAsString();
  ExpectSameAsProtobuf(Sliced(bytes, {}), bytes);
  ParsedInferRequest parsed;
  ASSERT_TRUE(ParseInferRequest(Sliced(bytes, {}), &parsed).ok());
  EXPECT_TRUE(parsed.contents_in_message);
  EXPECT_TRUE(parsed.raw.empty());
  KServeInferCodec codec;
  const absl::StatusOr<ValidatedRequest> validated =
      codec.Parse(Sliced(bytes, {}), RequestLimits{}, NoModels());
  ASSERT_FALSE(validated.ok());
  EXPECT_THAT(validated.status().message(),
              HasSubstr("raw_input_contents: expected one entry per input"));
}

TEST(KServeRequestParserTest, TruncationsAndGarbageGetProtobufsVerdict) {
  const std::string valid = MakeRequest().SerializeAsString();
  for (size_t length = 0; length < valid.size(); length += 3) {
    const std::string prefix = valid.substr(0, length);
    ExpectSameAsProtobuf(Sliced(prefix, {}), prefix);
  }
  // Corrupted strings make protobuf log each invalid UTF-8 one.
  google::protobuf::LogSilencer quiet;
  std::mt19937 rng(9);
  for (int round = 0; round < 2000; ++round) {
    std::string bytes = valid;
    for (int flips = 0; flips < 3; ++flips) {
      bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    ExpectSameAsProtobuf(RandomlySliced(bytes, 3, rng), bytes);
  }
}

}  // namespace
}  // namespace attnscore::service::kserve
