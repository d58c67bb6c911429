// Every bad-input class gets the right status code and a message naming the
// field, the expected and the actual value; good requests map onto the scorer's
// spec and item.
#include "server/service/request_validation.h"

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/scoring/resource_estimate.h"
#include "tests/service/fake_models.h"
#include "tests/service/test_requests.h"

namespace attnscore::service {
namespace {

using scoring::AlibiBias;
using scoring::RelativeBias;
using testing::AlibiRequest;
using ::testing::AllOf;
using testing::FakeModelInfo;
using testing::FakeModelSet;
using testing::Float32Tensor;
using ::testing::HasSubstr;
using testing::SetFloat;

class RequestValidationTest : public ::testing::Test {
 protected:
  absl::StatusOr<ValidatedRequest> Validate(const v1::ScoreRequest& request) {
    return ValidateRequest(request, limits_, models_);
  }
  // Expects `code` and every one of `parts` in the message.
  void ExpectError(const v1::ScoreRequest& request, absl::StatusCode code,
                   const std::vector<std::string>& parts) {
    absl::StatusOr<ValidatedRequest> result = Validate(request);
    ASSERT_FALSE(result.ok())
        << "accepted: " << request.ShortDebugString().substr(0, 200);
    EXPECT_EQ(result.status().code(), code) << result.status();
    for (const std::string& part : parts) {
      EXPECT_THAT(std::string(result.status().message()), HasSubstr(part));
    }
  }

  RequestLimits limits_;
  scoring::ModelSet models_;
};

TEST_F(RequestValidationTest, GoodRequestMapsOntoSpecAndItem) {
  v1::ScoreRequest request = AlibiRequest(2, 4, 3, 5, 8);
  request.set_layout(v1::BHSD);
  request.add_outputs(v1::PROBS);
  request.add_outputs(v1::CONTEXT);
  request.set_causal(true);
  request.set_scale(0.25f);
  request.add_key_lengths(5);
  request.add_key_lengths(2);
  request.set_output_dtype(v1::BFLOAT16);
  absl::StatusOr<ValidatedRequest> v = Validate(request);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->batch, 2);
  EXPECT_EQ(v->spec.layout, Layout::kBHSD);
  EXPECT_TRUE(std::holds_alternative<AlibiBias>(v->spec.bias));
  EXPECT_FALSE(v->spec.want_logits);
  EXPECT_TRUE(v->spec.want_probs);
  EXPECT_TRUE(v->spec.want_context);
  EXPECT_TRUE(v->spec.causal);
  EXPECT_EQ(v->spec.scale, 0.25f);
  EXPECT_EQ(v->spec.output_dtype, DType::kBFloat16);
  EXPECT_THAT(v->item.key_lengths, ::testing::ElementsAre(5, 2));
  // The tensors are read in place from the request: no copy.
  EXPECT_EQ(v->item.query.data, request.query().data().data());
  ASSERT_TRUE(v->item.value.has_value());
  EXPECT_EQ(v->item.value->data, request.value().data().data());
  // probs [2,4,3,5] + context [2,4,3,8], bfloat16.
  EXPECT_EQ(v->output_bytes, (2 * 4 * 3 * 5 + 2 * 4 * 3 * 8) * 2);
}

TEST_F(RequestValidationTest, DefaultsLogitsQueryDtypeBhsdAlibi) {
  v1::ScoreRequest request = AlibiRequest();
  request.clear_bias();
  absl::StatusOr<ValidatedRequest> v = Validate(request);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->spec.want_logits);
  EXPECT_FALSE(v->spec.want_probs);
  EXPECT_EQ(v->spec.output_dtype, DType::kFloat32);
  EXPECT_EQ(v->spec.layout, Layout::kBHSD);
  ASSERT_TRUE(std::holds_alternative<AlibiBias>(v->spec.bias));
  EXPECT_TRUE(std::get<AlibiBias>(v->spec.bias).slopes.empty());
  EXPECT_FALSE(v->spec.scale.has_value());
  // The value is not needed for logits: validated, but not passed on (it would
  // split batches).
  EXPECT_FALSE(v->item.value.has_value());
}

TEST_F(RequestValidationTest, OtherLayoutsReadDimsInTheirOrder) {
  // BSHD [B, Lq, H, D] and SBHD [Lq, B, H, D]: B=2, H=3, Lq=4, Lk=5, D=8.
  v1::ScoreRequest bshd;
  bshd.set_layout(v1::BSHD);
  *bshd.mutable_query() = Float32Tensor({2, 4, 3, 8});
  *bshd.mutable_key() = Float32Tensor({2, 5, 3, 8});
  absl::StatusOr<ValidatedRequest> v = Validate(bshd);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->batch, 2);
  EXPECT_EQ(v->output_bytes, 2 * 3 * 4 * 5 * 4);

  v1::ScoreRequest sbhd;
  sbhd.set_layout(v1::SBHD);
  *sbhd.mutable_query() = Float32Tensor({4, 2, 3, 8});
  *sbhd.mutable_key() = Float32Tensor({5, 2, 3, 8});
  v = Validate(sbhd);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->batch, 2);
  EXPECT_EQ(v->spec.layout, Layout::kSBHD);
}

TEST_F(RequestValidationTest, EnumValues) {
  v1::ScoreRequest request = AlibiRequest();
  request.set_layout(static_cast<v1::Layout>(9));
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"layout", "BHSD", "got 9"});

  request = AlibiRequest();
  request.add_outputs(v1::OUTPUT_UNSPECIFIED);
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"outputs[0]", "LOGITS, PROBS or CONTEXT", "OUTPUT_UNSPECIFIED"});
  request = AlibiRequest();
  request.add_outputs(v1::LOGITS);
  request.add_outputs(static_cast<v1::Output>(17));
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"outputs[1]", "got 17"});

  request = AlibiRequest();
  request.mutable_query()->set_dtype(v1::DTYPE_UNSPECIFIED);
  ExpectError(
      request, absl::StatusCode::kInvalidArgument,
      {"query.dtype", "FLOAT32, FLOAT16 or BFLOAT16", "DTYPE_UNSPECIFIED"});
  request = AlibiRequest();
  request.mutable_key()->set_dtype(static_cast<v1::DType>(8));
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"key.dtype", "got 8"});
  request = AlibiRequest();
  request.set_output_dtype(static_cast<v1::DType>(5));
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"output_dtype", "got 5"});
}

TEST_F(RequestValidationTest, MissingTensors) {
  v1::ScoreRequest request = AlibiRequest();
  request.clear_query();
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"query", "required"});
  request = AlibiRequest();
  request.clear_key();
  ExpectError(request, absl::StatusCode::kInvalidArgument, {"key", "required"});
  request = AlibiRequest();
  request.clear_value();
  request.add_outputs(v1::CONTEXT);
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"value", "CONTEXT"});
}

TEST_F(RequestValidationTest, ShapesAgainstBytes) {
  v1::ScoreRequest request = AlibiRequest();
  request.mutable_query()->mutable_shape()->RemoveLast();
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"query.shape", "4 dims"});

  request = AlibiRequest();
  request.mutable_key()->set_shape(2, 0);
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"key.shape[2]", "> 0", "got 0"});
  request = AlibiRequest();
  request.mutable_key()->set_shape(1, -2);
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"key.shape[1]", "got -2"});

  // q [1,2,3,8] float32 is 192 bytes.
  request = AlibiRequest();
  request.mutable_query()->mutable_data()->resize(190);
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"query.data", "192", "190"});

  // Declared far larger than any buffer: no overflow, just a mismatch.
  request = AlibiRequest();
  request.mutable_query()->set_shape(0, int64_t{1} << 40);
  ExpectError(request, absl::StatusCode::kInvalidArgument, {"query"});
}

TEST_F(RequestValidationTest, TensorsMustAgree) {
  v1::ScoreRequest request = AlibiRequest();
  *request.mutable_key() =
      Float32Tensor({2, 2, 4, 8});  // B=2, the query's is 1
  ExpectError(request, absl::StatusCode::kInvalidArgument, {"key", "1", "2"});
  request = AlibiRequest();
  *request.mutable_key() = Float32Tensor({1, 2, 4, 16});  // D=16 vs 8
  ExpectError(request, absl::StatusCode::kInvalidArgument, {"key", "8", "16"});
  request = AlibiRequest();
  request.mutable_key()->set_dtype(v1::FLOAT16);
  request.mutable_key()->mutable_data()->resize(size_t{1} * 2 * 4 * 8 * 2);
  ExpectError(request, absl::StatusCode::kInvalidArgument, {"key.dtype"});
  request = AlibiRequest();
  request.add_outputs(v1::CONTEXT);
  *request.mutable_value() =
      Float32Tensor({1, 2, 6, 8});  // Lk 6 vs the key's 4
  ExpectError(request, absl::StatusCode::kInvalidArgument, {"value", "4", "6"});
}

TEST_F(RequestValidationTest, KeyLengthsCountAndRange) {
  v1::ScoreRequest request = AlibiRequest(2);
  request.add_key_lengths(4);
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"key_lengths", "2", "1"});
  request.add_key_lengths(5);  // Lk is 4
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"key_lengths[1]", "4", "5"});
  request.set_key_lengths(1, -1);
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"key_lengths[1]", "-1"});
  request.set_key_lengths(1, 0);  // zero is allowed: all keys hidden
  EXPECT_TRUE(Validate(request).ok());
}

TEST_F(RequestValidationTest, CausalNeedsLqAtMostLk) {
  v1::ScoreRequest request = AlibiRequest(1, 2, 5, 4);
  request.set_causal(true);
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"causal", "5", "4"});
  request.set_causal(false);
  EXPECT_TRUE(Validate(request).ok());
}

TEST_F(RequestValidationTest, ScaleFinitePositive) {
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    v1::ScoreRequest request = AlibiRequest();
    request.set_scale(bad);
    ExpectError(request, absl::StatusCode::kInvalidArgument, {"scale", "> 0"});
  }
}

TEST_F(RequestValidationTest, AlibiSlopes) {
  v1::ScoreRequest request = AlibiRequest(1, 2);
  request.mutable_alibi()->add_slopes(0.5f);
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"alibi.slopes", "2", "1"});
  request.mutable_alibi()->add_slopes(std::numeric_limits<float>::quiet_NaN());
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"alibi.slopes[1]", "finite"});
  request.mutable_alibi()->set_slopes(1, 0.25f);
  absl::StatusOr<ValidatedRequest> v = Validate(request);
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(std::holds_alternative<AlibiBias>(v->spec.bias));
  EXPECT_THAT(std::get<AlibiBias>(v->spec.bias).slopes,
              ::testing::ElementsAre(0.5f, 0.25f));
}

TEST_F(RequestValidationTest, NonFiniteInputsNameTheTensor) {
  v1::ScoreRequest request = AlibiRequest();
  SetFloat(*request.mutable_query(), 5,
           std::numeric_limits<float>::quiet_NaN());
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"query.data", "finite", "5"});
  request = AlibiRequest();
  SetFloat(*request.mutable_key(), 3, -std::numeric_limits<float>::infinity());
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"key.data", "finite"});
  request = AlibiRequest();
  request.add_outputs(v1::CONTEXT);
  SetFloat(*request.mutable_value(), 0, std::numeric_limits<float>::infinity());
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"value.data", "finite"});
}

TEST_F(RequestValidationTest, ParsersScanIsTakenInsteadOfASecondPass) {
  // Bytes held outside the message with scans that disagree with them: the
  // verdict follows the scans, which shows the bytes are not read again.
  const v1::ScoreRequest request = AlibiRequest();
  RequestTensorBytes bytes;
  const auto view = [](const v1::Tensor& t, scoring::FiniteScan scan) {
    return TensorBytesView{t.data().data(), t.data().size(), scan};
  };
  scoring::FiniteScan nan_at_4;
  nan_at_4.first_non_finite = 4;
  scoring::FiniteScan finite;
  finite.max_abs = 1.0f;
  bytes.query = view(request.query(), finite);
  bytes.key = view(request.key(), nan_at_4);
  bytes.value = view(request.value(), nan_at_4);
  absl::StatusOr<ValidatedRequest> v =
      ValidateRequest(request, limits_, models_, bytes);
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(v.status().message(),
              HasSubstr("key.data: expected finite values, got NaN or Inf at "
                        "flat index 4"));
  // The value's scan counts only when the context is wanted.
  bytes.key = view(request.key(), finite);
  v = ValidateRequest(request, limits_, models_, bytes);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->item.key.data, request.key().data().data());
  EXPECT_TRUE(v->scans.key.has_value());
  v1::ScoreRequest with_context = request;
  with_context.add_outputs(v1::CONTEXT);
  bytes.query = view(with_context.query(), finite);
  bytes.key = view(with_context.key(), finite);
  bytes.value = view(with_context.value(), nan_at_4);
  EXPECT_FALSE(ValidateRequest(with_context, limits_, models_, bytes).ok());
  // A scan made as another dtype is not taken: the bytes are read.
  bytes.value->scan->dtype = DType::kFloat16;
  v = ValidateRequest(with_context, limits_, models_, bytes);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->scans.value.has_value());
}

TEST_F(RequestValidationTest, ServerCaps) {
  limits_.max_heads = 2;
  limits_.max_head_dim = 8;
  limits_.max_seq_len = 4;
  EXPECT_TRUE(Validate(AlibiRequest(1, 2, 3, 4, 8)).ok());
  ExpectError(AlibiRequest(1, 3, 3, 4, 8), absl::StatusCode::kInvalidArgument,
              {"query.shape", "H <= 2", "--max-heads", "H=3"});
  ExpectError(AlibiRequest(1, 2, 3, 4, 16), absl::StatusCode::kInvalidArgument,
              {"query.shape", "D <= 8", "--max-head-dim", "D=16"});
  ExpectError(AlibiRequest(1, 2, 5, 5, 8), absl::StatusCode::kInvalidArgument,
              {"query.shape", "Lq <= 4", "--max-seq-len", "Lq=5"});
  ExpectError(AlibiRequest(1, 2, 3, 6, 8), absl::StatusCode::kInvalidArgument,
              {"key.shape", "Lk <= 4", "Lk=6"});
  v1::ScoreRequest request = AlibiRequest(1, 2, 3, 4, 8);
  request.add_outputs(v1::CONTEXT);
  *request.mutable_value() = Float32Tensor({1, 2, 4, 12});
  ExpectError(request, absl::StatusCode::kInvalidArgument,
              {"value.shape", "Dv <= 8", "Dv=12"});
}

TEST_F(RequestValidationTest,
       OutputSizeLimitIsResourceExhaustedWithTheNumbers) {
  // logits + probs [2,2,3,4] float32 = 2 * 192 bytes.
  v1::ScoreRequest request = AlibiRequest(2, 2, 3, 4, 8);
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  limits_.max_output_bytes = 384;
  EXPECT_TRUE(Validate(request).ok());
  limits_.max_output_bytes = 383;
  ExpectError(request, absl::StatusCode::kResourceExhausted,
              {"outputs", "383", "--max-output-bytes", "384",
               "logits [2,2,3,4] 192", "probs [2,2,3,4] 192"});
  // A 16-bit output dtype halves it.
  request.set_output_dtype(v1::FLOAT16);
  EXPECT_TRUE(Validate(request).ok());
}

class RelativeValidationTest : public RequestValidationTest {
 protected:
  void SetUp() override {
    // H=2, D=8, P=6: what LoadModelDir reports for a small.safetensors with
    // key_pos_embeddings [12, 2, 8], key_pos_bias [12, 2], query_pos_bias
    // [2, 8]. Validation reads only the description.
    models_ = *FakeModelSet(
        {FakeModelInfo("small", "/models/small.safetensors", 2, 8, 6)});
  }

  static v1::ScoreRequest RelativeRequest(const std::string& model,
                                          int64_t heads = 2, int64_t lq = 3,
                                          int64_t lk = 4, int64_t dim = 8) {
    v1::ScoreRequest request = AlibiRequest(1, heads, lq, lk, dim);
    request.mutable_relative()->set_model(model);
    return request;
  }
};

TEST_F(RelativeValidationTest, KnownModelResolves) {
  absl::StatusOr<ValidatedRequest> v = Validate(RelativeRequest("small"));
  ASSERT_TRUE(v.ok()) << v.status();
  const auto* relative = std::get_if<RelativeBias>(&v->spec.bias);
  ASSERT_NE(relative, nullptr) << "expected a relative bias";
  ASSERT_NE(relative->model, nullptr);
  EXPECT_EQ(relative->model->info().name, "small");
}

TEST_F(RelativeValidationTest, UnknownModelIsNotFoundAndListsTheLoadedOnes) {
  ExpectError(RelativeRequest("missing"), absl::StatusCode::kNotFound,
              {"relative.model", "\"missing\"", "small"});
  ExpectError(RelativeRequest(""), absl::StatusCode::kNotFound,
              {"relative.model", "small"});
}

TEST_F(RelativeValidationTest, ModelMustMatchHeadsDimAndCoverTheLengths) {
  ExpectError(RelativeRequest("small", 4), absl::StatusCode::kInvalidArgument,
              {"2", "4"});
  ExpectError(RelativeRequest("small", 2, 3, 4, 16),
              absl::StatusCode::kInvalidArgument, {"8", "16"});
  ExpectError(RelativeRequest("small", 2, 3, 7),
              absl::StatusCode::kInvalidArgument, {"6", "7"});
}

}  // namespace
}  // namespace attnscore::service

namespace attnscore::service {
namespace {

// The estimate ValidateMapped checks, for a request of these sizes.
scoring::ResourceEstimate EstimateFor(const v1::ScoreRequest& request) {
  absl::StatusOr<ValidatedRequest> validated =
      ValidateRequest(request, RequestLimits(), scoring::ModelSet());
  EXPECT_TRUE(validated.ok()) << validated.status();
  return scoring::EstimateResources(
      validated->spec,
      scoring::ProblemSizeOf(validated->spec, validated->item));
}

TEST(ResourceCapsTest, PeakMemoryOverTheCapIsResourceExhaustedWithNumbers) {
  v1::ScoreRequest request = testing::AlibiRequest(2, 2, 8, 8, 4);
  request.add_outputs(v1::PROBS);
  const scoring::ResourceEstimate estimate = EstimateFor(request);
  RequestLimits limits;
  limits.max_request_memory = estimate.peak_bytes;
  absl::StatusOr<ValidatedRequest> ok =
      ValidateRequest(request, limits, scoring::ModelSet());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->peak_bytes, estimate.peak_bytes);
  // The in-flight charge leaves out what only a first computation takes.
  EXPECT_EQ(ok->in_flight_bytes, estimate.in_flight_bytes());
  EXPECT_GT(estimate.first_compute_bytes, 0);
  EXPECT_EQ(ok->in_flight_bytes,
            estimate.peak_bytes - estimate.first_compute_bytes);
  EXPECT_EQ(ok->work, estimate.work);

  limits.max_request_memory = estimate.peak_bytes - 1;
  absl::StatusOr<ValidatedRequest> refused =
      ValidateRequest(request, limits, scoring::ModelSet());
  ASSERT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  const std::string message(refused.status().message());
  EXPECT_THAT(message, HasSubstr("--max-request-memory"));
  EXPECT_THAT(message, HasSubstr(absl::StrCat(estimate.peak_bytes - 1)));
  EXPECT_THAT(message, HasSubstr(absl::StrCat(estimate.peak_bytes, " bytes")));
  EXPECT_THAT(message, HasSubstr(estimate.breakdown));
  EXPECT_THAT(message, HasSubstr("B=2 H=2 Lq=8 Lk=8 D=4"));
}

TEST(ResourceCapsTest, WorkOverTheCapIsResourceExhaustedWithNumbers) {
  v1::ScoreRequest request = testing::AlibiRequest(3, 2, 4, 4, 4);
  const scoring::ResourceEstimate estimate = EstimateFor(request);
  RequestLimits limits;
  limits.max_request_work = estimate.work - 1;
  absl::StatusOr<ValidatedRequest> refused =
      ValidateRequest(request, limits, scoring::ModelSet());
  ASSERT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  const std::string message(refused.status().message());
  EXPECT_THAT(message, HasSubstr("--max-request-work"));
  EXPECT_THAT(message, HasSubstr(absl::StrCat(estimate.work, " units")));
  EXPECT_THAT(message, HasSubstr(absl::StrCat(estimate.work - 1)));
}

// The defaults against the cases issue 9 names: typical requests pass both
// caps; the flood of tiny rows (B=2,000,000, H=Lq=Lk=D=1, float16) is refused
// by the work cap, its per-row charge (calibrated on the blocked path) being
// what makes it expensive.
TEST(ResourceCapsTest, DefaultsAdmitTypicalRequestsAndRefuseTheTinyFlood) {
  const RequestLimits defaults;
  auto estimate = [](scoring::ProblemSize size, bool probs, bool context,
                     DType dtype) {
    scoring::ScoreSpec spec;
    spec.want_logits = true;
    spec.want_probs = probs;
    spec.want_context = context;
    spec.output_dtype = dtype;
    return scoring::EstimateResources(spec, size);
  };
  auto admitted = [&](const scoring::ResourceEstimate& e) {
    return e.work <= defaults.max_request_work &&
           e.peak_bytes <= defaults.max_request_memory;
  };
  const scoring::ResourceEstimate typical =
      estimate({8, 8, 512, 512, 64, 0}, true, false, DType::kFloat32);
  EXPECT_TRUE(admitted(typical))
      << "B8 H8 L512 D64 logits+probs: work " << typical.work << ", peak "
      << typical.peak_bytes;
  const scoring::ResourceEstimate every =
      estimate({8, 8, 512, 512, 64, 64}, true, true, DType::kFloat32);
  EXPECT_TRUE(admitted(every)) << "B8 H8 L512 D64 every output: work "
                               << every.work << ", peak " << every.peak_bytes;
  const scoring::ResourceEstimate decode =
      estimate({32, 8, 1, 2048, 128, 128}, true, true, DType::kFloat32);
  EXPECT_TRUE(admitted(decode))
      << "decode B32 H8 Lq1 Lk2048: work " << decode.work << ", peak "
      << decode.peak_bytes;
  const scoring::ResourceEstimate flood =
      estimate({2'000'000, 1, 1, 1, 1, 0}, false, false, DType::kFloat16);
  EXPECT_FALSE(admitted(flood))
      << "B=2,000,000 tiny items: work " << flood.work << " admitted under "
      << defaults.max_request_work;
  const scoring::ResourceEstimate long_context =
      estimate({1, 8, 4096, 4096, 128, 0}, false, false, DType::kFloat32);
  EXPECT_TRUE(admitted(long_context))
      << "B1 H8 L4096 D128 logits: work " << long_context.work << ", peak "
      << long_context.peak_bytes;
  // A long single sequence is over the work cap: minutes on a small CPU.
  const scoring::ResourceEstimate long_heads =
      estimate({1, 16, 16384, 16384, 64, 64}, false, true, DType::kFloat32);
  EXPECT_FALSE(admitted(long_heads)) << long_heads.work;
}

TEST(ClientStringTest, OverLongIdsAndModelNamesAreRefusedWithTheirLength) {
  v1::ScoreRequest request = testing::AlibiRequest();
  request.set_request_id(std::string(kMaxClientStringBytes, 'r'));
  EXPECT_TRUE(
      ValidateRequest(request, RequestLimits(), scoring::ModelSet()).ok());
  request.set_request_id(std::string(1000, 'r'));
  absl::Status status =
      ValidateRequest(request, RequestLimits(), scoring::ModelSet()).status();
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("request_id"));
  EXPECT_THAT(status.message(), HasSubstr("1000 bytes"));
  // Only a bounded prefix of it is echoed.
  EXPECT_LT(status.message().size(), 300u) << status.message();

  request = testing::AlibiRequest();
  request.mutable_relative()->set_model(std::string(300, 'm'));
  status =
      ValidateRequest(request, RequestLimits(), scoring::ModelSet()).status();
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("relative.model"));
  EXPECT_THAT(status.message(), HasSubstr("300 bytes"));
  EXPECT_LT(status.message().size(), 300u) << status.message();

  // Within the limit but unknown: NOT_FOUND echoing a bounded prefix.
  request.mutable_relative()->set_model(std::string(200, 'm'));
  status =
      ValidateRequest(request, RequestLimits(), scoring::ModelSet()).status();
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("...(200 bytes)"));
  EXPECT_LT(status.message().size(), 250u) << status.message();
}

TEST(ClientStringTest, LogFormIsABoundedEscapedPrefix) {
  EXPECT_EQ(ClientStringForLog("short"), "short");
  EXPECT_EQ(ClientStringForLog("a\nb\"c"), "a\\nb\\\"c");
  const std::string long_text(100, 'x');
  EXPECT_EQ(ClientStringForLog(long_text),
            std::string(kClientStringLogPrefix, 'x') + "...(100 bytes)");
}

}  // namespace
}  // namespace attnscore::service
