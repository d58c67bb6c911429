// The Open Inference Protocol mapping (kserve_request.h), its zero-copy reply
// (kserve_codec.h) and the reserved model name (model_registry.h), on
// stand-in models: no LibTorch, no server.
#include "server/service/kserve_request.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/service/kserve_codec.h"
#include "server/service/model_registry.h"
#include "server/service/shared_memory.h"
#include "tests/service/fake_models.h"
#include "tests/service/shm_object.h"

namespace attnscore::service::kserve {
namespace {

using inference::ModelInferRequest;
using service::testing::FakeModelInfo;
using service::testing::FakeModelSet;

// query/key [1,2,3,4] FP32 (values 0.1 * i), raw or typed.
ModelInferRequest MakeRequest(bool raw) {
  ModelInferRequest request;
  request.set_model_name("alibi");
  std::vector<float> values(24);
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = 0.1f * static_cast<float>(i);
  }
  for (const char* name : {"query", "key"}) {
    ModelInferRequest::InferInputTensor* input = request.add_inputs();
    input->set_name(name);
    input->set_datatype("FP32");
    for (int64_t dim : {1, 2, 3, 4}) input->add_shape(dim);
    if (raw) {
      request.add_raw_input_contents(std::string(
          reinterpret_cast<const char*>(values.data()), values.size() * 4));
    } else {
      input->mutable_contents()->mutable_fp32_contents()->Add(values.begin(),
                                                              values.end());
    }
  }
  return request;
}

const scoring::ModelSet& NoModels() {
  static const auto* models = new scoring::ModelSet();
  return *models;
}

TEST(KServeRequestTest, RawAndTypedContentsMapToTheSameItemInPlace) {
  for (bool raw : {true, false}) {
    ModelInferRequest request = MakeRequest(raw);
    absl::StatusOr<MappedInfer> mapped =
        MapInferRequest(request, RequestLimits{}, NoModels());
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    const scoring::ScoreItem& item = mapped->validated.item;
    EXPECT_EQ(item.query.shape, (std::vector<int64_t>{1, 2, 3, 4}));
    EXPECT_EQ(item.query.size_bytes, 96u);
    const void* expected =
        raw ? static_cast<const void*>(request.raw_input_contents(0).data())
            : request.inputs(0).contents().fp32_contents().data();
    EXPECT_EQ(item.query.data, expected) << "tensor bytes are read in place";
    EXPECT_TRUE(mapped->validated.spec.want_logits);
    EXPECT_EQ(mapped->outputs, std::vector<Output>{Output::kLogits});
    EXPECT_FALSE(mapped->validated.spec.causal);
  }
}

TEST(KServeRequestTest, ParametersOutputsAndKeyLengths) {
  ModelInferRequest request = MakeRequest(/*raw=*/false);
  (*request.mutable_parameters())["causal"].set_bool_param(true);
  (*request.mutable_parameters())["scale"].set_double_param(0.5);
  (*request.mutable_parameters())["output_dtype"].set_string_param("BF16");
  request.add_outputs()->set_name("probs");
  request.add_outputs()->set_name("logits");
  ModelInferRequest::InferInputTensor* lengths = request.add_inputs();
  lengths->set_name("key_lengths");
  lengths->set_datatype("INT32");
  lengths->add_shape(1);
  lengths->mutable_contents()->add_int_contents(2);
  absl::StatusOr<MappedInfer> mapped =
      MapInferRequest(request, RequestLimits{}, NoModels());
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  const scoring::ScoreSpec& spec = mapped->validated.spec;
  EXPECT_TRUE(spec.causal);
  EXPECT_EQ(spec.scale, 0.5f);
  EXPECT_EQ(spec.output_dtype, DType::kBFloat16);
  EXPECT_EQ(mapped->outputs,
            (std::vector<Output>{Output::kProbs, Output::kLogits}));
  EXPECT_EQ(mapped->validated.item.key_lengths, std::vector<int32_t>{2});
}

TEST(KServeRequestTest, ErrorsNameTheInputParameterOrOutput) {
  struct Case {
    const char* what;
    void (*edit)(ModelInferRequest&);
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"unknown input",
       [](ModelInferRequest& r) { r.mutable_inputs(1)->set_name("keys"); },
       absl::StatusCode::kInvalidArgument, "inputs[1].name: expected query"},
      {"duplicate input",
       [](ModelInferRequest& r) { r.mutable_inputs(1)->set_name("query"); },
       absl::StatusCode::kInvalidArgument, "\"query\" is already inputs[0]"},
      {"typed FP16",
       [](ModelInferRequest& r) { r.mutable_inputs(0)->set_datatype("FP16"); },
       absl::StatusCode::kInvalidArgument,
       "query: FP16 data must be sent in raw"},
      {"short data",
       [](ModelInferRequest& r) { r.mutable_inputs(1)->set_shape(3, 5); },
       absl::StatusCode::kInvalidArgument,
       "key: shape [1,2,3,5] of FP32 needs 120 bytes"},
      {"missing key",
       [](ModelInferRequest& r) { r.mutable_inputs()->RemoveLast(); },
       absl::StatusCode::kInvalidArgument, "expected an input named \"key\""},
      {"unknown model", [](ModelInferRequest& r) { r.set_model_name("gpt"); },
       absl::StatusCode::kNotFound, "got \"gpt\""},
      {"unknown version",
       [](ModelInferRequest& r) { r.set_model_version("7"); },
       absl::StatusCode::kNotFound, "version: expected \"1\""},
      {"unknown output",
       [](ModelInferRequest& r) { r.add_outputs()->set_name("attn"); },
       absl::StatusCode::kInvalidArgument, "outputs[0].name: expected logits"},
      {"bad layout",
       [](ModelInferRequest& r) {
         (*r.mutable_parameters())["layout"].set_string_param("HBSD");
       },
       absl::StatusCode::kInvalidArgument, "parameters.layout: expected BHSD"},
      {"bool as string",
       [](ModelInferRequest& r) {
         (*r.mutable_parameters())["causal"].set_string_param("true");
       },
       absl::StatusCode::kInvalidArgument,
       "parameters.causal: expected a bool"},
  };
  for (const Case& c : cases) {
    ModelInferRequest request = MakeRequest(/*raw=*/false);
    c.edit(request);
    absl::StatusOr<MappedInfer> mapped =
        MapInferRequest(request, RequestLimits{}, NoModels());
    ASSERT_FALSE(mapped.ok()) << c.what;
    EXPECT_EQ(mapped.status().code(), c.code) << c.what;
    EXPECT_NE(mapped.status().message().find(c.message), std::string::npos)
        << c.what << ": " << mapped.status();
  }
  ModelInferRequest request = MakeRequest(/*raw=*/true);
  request.add_raw_input_contents("");
  absl::StatusOr<MappedInfer> mapped =
      MapInferRequest(request, RequestLimits{}, NoModels());
  EXPECT_NE(
      mapped.status().message().find(
          "raw_input_contents: expected one entry per input not in shared "
          "memory (2), got 3"),
      std::string::npos)
      << mapped.status();
}

// Triton's output parameters for system shared memory become placements
// (resolved later against the caller's regions, output_placement.h); other
// output parameters, or half of the pair, are refused naming the parameter.
TEST(KServeRequestTest, SharedMemoryOutputParametersBecomePlacements) {
  ModelInferRequest request = MakeRequest(/*raw=*/true);
  request.add_outputs()->set_name("logits");
  auto* probs = request.add_outputs();
  probs->set_name("probs");
  (*probs->mutable_parameters())["shared_memory_region"].set_string_param(
      "out");
  (*probs->mutable_parameters())["shared_memory_byte_size"].set_int64_param(96);
  (*probs->mutable_parameters())["shared_memory_offset"].set_int64_param(4096);
  absl::StatusOr<MappedInfer> mapped =
      MapInferRequest(request, RequestLimits{}, NoModels());
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  ASSERT_EQ(mapped->placements.size(), 1u);
  const PlacementRequest& placed = mapped->placements[0];
  EXPECT_EQ(placed.output, v1::PROBS);
  EXPECT_EQ(placed.range.region(), "out");
  EXPECT_EQ(placed.range.offset(), 4096u);
  EXPECT_EQ(placed.range.byte_size(), 96u);
  EXPECT_EQ(placed.size_field, "outputs[1].parameters.shared_memory_byte_size");

  struct Case {
    const char* what;
    void (*edit)(ModelInferRequest::InferRequestedOutputTensor&);
    const char* message;
  };
  const Case cases[] = {
      {"no size",
       [](ModelInferRequest::InferRequestedOutputTensor& o) {
         o.mutable_parameters()->erase("shared_memory_byte_size");
       },
       "outputs[1].parameters.shared_memory_byte_size: expected the range's "
       "bytes"},
      {"no region",
       [](ModelInferRequest::InferRequestedOutputTensor& o) {
         o.mutable_parameters()->erase("shared_memory_region");
       },
       "outputs[1].parameters.shared_memory_region: expected the region's "
       "name"},
      {"negative offset",
       [](ModelInferRequest::InferRequestedOutputTensor& o) {
         (*o.mutable_parameters())["shared_memory_offset"].set_int64_param(-1);
       },
       "shared_memory_offset: expected an int64 >= 0, got -1"},
      {"size as a string",
       [](ModelInferRequest::InferRequestedOutputTensor& o) {
         (*o.mutable_parameters())["shared_memory_byte_size"].set_string_param(
             "96");
       },
       "shared_memory_byte_size: expected an int64 >= 0, got a string"},
      {"other parameter",
       [](ModelInferRequest::InferRequestedOutputTensor& o) {
         (*o.mutable_parameters())["classification"].set_int64_param(3);
       },
       "outputs[1].parameters.classification: expected shared_memory_region"},
  };
  for (const Case& c : cases) {
    ModelInferRequest edited = request;
    c.edit(*edited.mutable_outputs(1));
    mapped = MapInferRequest(edited, RequestLimits{}, NoModels());
    ASSERT_FALSE(mapped.ok()) << c.what;
    EXPECT_EQ(mapped.status().code(), absl::StatusCode::kInvalidArgument)
        << c.what;
    EXPECT_NE(mapped.status().message().find(c.message), std::string::npos)
        << c.what << ": " << mapped.status();
  }
}

// An input in shared memory has no raw_input_contents entry (the others keep
// theirs, in order) and is read where the caller resolved its range.
TEST(KServeRequestTest, SharedMemoryInputsAreReadWhereResolved) {
  ModelInferRequest request = MakeRequest(/*raw=*/true);
  auto* query = request.mutable_inputs(0);
  (*query->mutable_parameters())["shared_memory_region"].set_string_param("in");
  (*query->mutable_parameters())["shared_memory_byte_size"].set_int64_param(96);
  (*query->mutable_parameters())["shared_memory_offset"].set_int64_param(128);
  absl::StatusOr<std::vector<SharedInputRequest>> shared =
      SharedInputRequests(request);
  ASSERT_TRUE(shared.ok()) << shared.status();
  ASSERT_EQ(shared->size(), 1u);
  EXPECT_EQ((*shared)[0].input, 0);
  EXPECT_EQ((*shared)[0].range.region(), "in");
  EXPECT_EQ((*shared)[0].range.offset(), 128u);
  EXPECT_EQ((*shared)[0].region_field,
            "inputs[0].parameters.shared_memory_region");

  // Without the query's entry: one raw entry, the key's.
  request.mutable_raw_input_contents()->DeleteSubrange(0, 1);
  std::vector<float> region(24, 0.5f);
  std::vector<std::optional<TensorBytesView>> views(2);
  views[0] = TensorBytesView{region.data(), 96, {}};
  absl::StatusOr<MappedInfer> mapped =
      MapInferRequest(request, RequestLimits{}, NoModels(), {}, views);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(mapped->validated.item.query.data, region.data());
  EXPECT_EQ(mapped->validated.item.key.data,
            request.raw_input_contents(0).data());

  // A range of the wrong size names where the bytes were.
  views[0]->size = 92;
  mapped = MapInferRequest(request, RequestLimits{}, NoModels(), {}, views);
  EXPECT_NE(mapped.status().message().find(
                "needs 96 bytes, got 92 in inputs[0]'s shared-memory range"),
            std::string::npos)
      << mapped.status();
  // Unresolved (no view), the input's parameters are refused.
  mapped = MapInferRequest(request, RequestLimits{}, NoModels());
  EXPECT_NE(mapped.status().message().find(
                "query: expected no input parameters but the shared-memory"),
            std::string::npos)
      << mapped.status();
  // And the raw entries must match the inputs not in shared memory.
  request.add_raw_input_contents("");
  views[0]->size = 96;
  mapped = MapInferRequest(request, RequestLimits{}, NoModels(), {}, views);
  EXPECT_NE(mapped.status().message().find(
                "raw_input_contents: expected one entry per input not in "
                "shared memory (1), got 2"),
            std::string::npos)
      << mapped.status();
}

TEST(KServeRequestTest, RelativeModelsByNameAndTheirLimits) {
  auto models = FakeModelSet({FakeModelInfo("xl", "xl.safetensors", 2, 4, 8)});
  ModelInferRequest request = MakeRequest(/*raw=*/true);
  request.set_model_name("xl");
  absl::StatusOr<MappedInfer> mapped =
      MapInferRequest(request, RequestLimits{}, *models);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_TRUE(std::holds_alternative<scoring::RelativeBias>(
      mapped->validated.spec.bias));
  RequestLimits limits;
  limits.max_heads = 1;
  mapped = MapInferRequest(request, limits, *models);
  EXPECT_NE(mapped.status().message().find("--max-heads"), std::string::npos)
      << mapped.status();
}

TEST(KServeCodecTest, ReplyParsesAsAModelInferResponseWithTheBytesInPlace) {
  auto keep = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3});
  scoring::ScoreResult result;
  result.probs = scoring::OutputTensor{
      DType::kFloat32, {1, 1, 1, 3}, keep->data(), 12, keep};
  result.logits =
      scoring::OutputTensor{DType::kFloat32, {1, 1, 1, 0}, nullptr, 0, nullptr};
  grpc::ByteBuffer buffer =
      EncodeInferResponse("alibi", "id-1", {Output::kProbs, Output::kLogits},
                          result, BatchTiming{5, 6, 7});
  grpc::ProtoBufferReader reader(&buffer);
  inference::ModelInferResponse response;
  ASSERT_TRUE(response.ParseFromZeroCopyStream(&reader));
  EXPECT_EQ(response.model_name(), "alibi");
  EXPECT_EQ(response.model_version(), "1");
  EXPECT_EQ(response.id(), "id-1");
  EXPECT_EQ(response.parameters().at("batch_size").int64_param(), 7);
  ASSERT_EQ(response.outputs_size(), 2);
  EXPECT_EQ(response.outputs(0).name(), "probs");
  EXPECT_EQ(response.outputs(0).datatype(), "FP32");
  ASSERT_EQ(response.raw_output_contents_size(), 2);
  EXPECT_EQ(response.raw_output_contents(0),
            std::string(reinterpret_cast<const char*>(keep->data()), 12));
  EXPECT_EQ(response.raw_output_contents(1), "");
}

// A placed output, as Triton's server answers it: an empty raw entry (the
// entries stay aligned with the outputs) and its range in its parameters.
TEST(KServeCodecTest, PlacedOutputsHaveAnEmptyEntryAndTheirRange) {
  auto keep = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3});
  scoring::ScoreResult result;
  result.probs = scoring::OutputTensor{
      DType::kFloat32, {1, 1, 1, 3}, keep->data(), 12, keep};
  result.logits = result.probs;
  v1::SharedMemoryRange range;
  range.set_region("out");
  range.set_offset(64);
  range.set_byte_size(12);
  PlacedRanges placed;
  placed.logits = &range;
  grpc::ByteBuffer buffer =
      EncodeInferResponse("alibi", "id-2", {Output::kLogits, Output::kProbs},
                          result, BatchTiming{5, 6, 7}, placed);
  grpc::ProtoBufferReader reader(&buffer);
  inference::ModelInferResponse response;
  ASSERT_TRUE(response.ParseFromZeroCopyStream(&reader));
  ASSERT_EQ(response.outputs_size(), 2);
  ASSERT_EQ(response.raw_output_contents_size(), 2);
  EXPECT_EQ(response.raw_output_contents(0), "");
  EXPECT_EQ(response.raw_output_contents(1).size(), 12u);
  const auto& parameters = response.outputs(0).parameters();
  EXPECT_EQ(parameters.at("shared_memory_region").string_param(), "out");
  EXPECT_EQ(parameters.at("shared_memory_offset").int64_param(), 64);
  EXPECT_EQ(parameters.at("shared_memory_byte_size").int64_param(), 12);
  EXPECT_TRUE(response.outputs(1).parameters().empty());
  EXPECT_EQ(response.outputs(0).shape_size(), 4);
}

// The codec resolves inputs in shared memory against the caller's regions;
// the scorer then reads them in place, and a region whose object shrank
// meanwhile (the read faulted and was given zero pages) fails the request.
TEST(KServeCodecTest, InputsReadFromSharedMemoryAndATruncatedRegionAborts) {
  SharedMemoryOptions options;
  options.prefix = service::testing::kShmTestPrefix;
  SharedMemoryRegistry registry(options);
  service::testing::ShmObject object(4096);
  SharedMemorySpec spec;
  spec.name = "in";
  spec.key = object.key();
  spec.byte_size = 4096;
  ASSERT_TRUE(registry.Register("anonymous", spec).ok());

  ModelInferRequest request = MakeRequest(/*raw=*/true);
  auto* key = request.mutable_inputs(1);
  (*key->mutable_parameters())["shared_memory_region"].set_string_param("in");
  (*key->mutable_parameters())["shared_memory_byte_size"].set_int64_param(96);
  (*key->mutable_parameters())["shared_memory_offset"].set_int64_param(64);
  request.mutable_raw_input_contents()->RemoveLast();
  const std::string bytes = request.SerializeAsString();
  grpc::Slice slice(bytes.data(), bytes.size());
  const grpc::ByteBuffer buffer(&slice, 1);

  KServeInferCodec codec(&registry, "anonymous");
  absl::StatusOr<ValidatedRequest> validated =
      codec.Parse(buffer, RequestLimits{}, NoModels());
  ASSERT_TRUE(validated.ok()) << validated.status();
  std::shared_ptr<const MappedRegion> region =
      *registry.Find("anonymous", "in");
  EXPECT_EQ(validated->item.key.data, region->At(64));  // in place
  EXPECT_EQ(validated->item.key.size_bytes, 96u);
  // Another identity has no region "in".
  KServeInferCodec stranger(&registry, "someone-else");
  EXPECT_EQ(stranger.Parse(buffer, RequestLimits{}, NoModels()).status().code(),
            absl::StatusCode::kNotFound);
  // The logits placed over the key's bytes: the scorer would write them while
  // it still reads the key.
  ModelInferRequest overlapping = request;
  auto* logits = overlapping.add_outputs();
  logits->set_name("logits");
  (*logits->mutable_parameters())["shared_memory_region"].set_string_param(
      "in");
  (*logits->mutable_parameters())["shared_memory_byte_size"].set_int64_param(
      72);
  (*logits->mutable_parameters())["shared_memory_offset"].set_int64_param(100);
  const std::string overlapping_bytes = overlapping.SerializeAsString();
  grpc::Slice overlapping_slice(overlapping_bytes.data(),
                                overlapping_bytes.size());
  const grpc::ByteBuffer overlapping_buffer(&overlapping_slice, 1);
  KServeInferCodec refused(&registry, "anonymous");
  const absl::Status overlap =
      refused.Parse(overlapping_buffer, RequestLimits{}, NoModels()).status();
  EXPECT_EQ(overlap.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(overlap.message().find("got [100, 172) overlapping"),
            std::string::npos)
      << overlap;
  EXPECT_NE(overlap.message().find("[64, 160)"), std::string::npos) << overlap;

  auto keep = std::make_shared<std::vector<float>>(24, 1.0f);
  scoring::ScoreResult result;
  result.logits = scoring::OutputTensor{
      DType::kFloat32, {1, 2, 3, 3}, keep->data(), 72, keep};
  EXPECT_TRUE(codec.EncodeResult(result, BatchTiming{}).ok());
  object.Truncate(0);
  // The scorer's read of the key, after the client shrank the object.
  float first = 0;
  std::memcpy(&first, validated->item.key.data, sizeof(first));
  EXPECT_EQ(first, 0.0f);  // the zero page put in the vanished one's place
  region.reset();
  const absl::Status aborted =
      codec.EncodeResult(result, BatchTiming{}).status();
  EXPECT_EQ(aborted.code(), absl::StatusCode::kAborted) << aborted;
}

TEST(ModelRegistryTest, AParameterSetNamedAlibiIsRefusedAndReloadKeepsTheSet) {
  bool clash = false;
  auto loader = [&clash](const std::string&)
      -> absl::StatusOr<std::shared_ptr<const scoring::ModelSet>> {
    return FakeModelSet({FakeModelInfo(
        clash ? "alibi" : "xl", clash ? "/m/alibi.pt" : "/m/xl.pt", 2, 4, 8)});
  };
  clash = true;
  absl::StatusOr<std::unique_ptr<ModelRegistry>> refused =
      ModelRegistry::Create("/m", loader);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find(
                "named \"alibi\" (/m/alibi.pt) clashes with the built-in"),
            std::string::npos)
      << refused.status();

  clash = false;
  absl::StatusOr<std::unique_ptr<ModelRegistry>> registry =
      ModelRegistry::Create("/m", loader);
  ASSERT_TRUE(registry.ok()) << registry.status();
  clash = true;
  EXPECT_EQ((*registry)->Reload().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ModelNames(*(*registry)->Current()), "xl");
}

}  // namespace
}  // namespace attnscore::service::kserve
