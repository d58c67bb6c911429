// Every golden case through the scoring core, every output it holds: float32 to
// |a-b| <= 1e-4 + 1e-4|b| with identical -inf positions, then float16 and
// bfloat16 with error bounds derived from the data (see Bounds below).
#include "tests/testing/golden.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/expm1.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <cmath>

#include "gtest/gtest.h"
#include "server/scoring/alibi.h"
#include "server/scoring/aten_scorer.h"
#include "server/scoring/attention.h"
#include "server/scoring/relative_model.h"
#include "server/scoring/validation.h"
#include "tests/testing/test_util.h"

namespace attnscore::scoring {
namespace {

using ::attnscore::testing::CompareClose;
using ::attnscore::testing::CompareWithin;
using ::attnscore::testing::GoldenCase;

std::vector<float> Floats(const OutputTensor& t) {
  std::vector<float> out(t.size_bytes / ElementSize(t.dtype));
  DecodeFloats(t.data, out.size(), t.dtype, out.data());
  return out;
}

std::vector<float> Floats(const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(),
                            c.data_ptr<float>() + c.numel());
}

at::Tensor ToTensor(const std::vector<float>& values,
                    const std::vector<int64_t>& shape) {
  return at::tensor(values, at::kFloat).view(shape);
}

// The inputs of one case, re-encoded in `dtype` (bytes kept alive here).
struct Inputs {
  std::string q, k, v;
  ScoreItem item;
  ScoreSpec spec;
};

std::string Encode(const std::vector<float>& values, DType dtype) {
  std::string bytes(values.size() * ElementSize(dtype), '\0');
  EncodeFloats(values.data(), values.size(), dtype, bytes.data());
  return bytes;
}

std::shared_ptr<const RelativeModel> ModelOf(const GoldenCase& c) {
  absl::StatusOr<std::shared_ptr<const AtenRelativeModel>> model =
      AtenRelativeModel::Create(
          c.name, c.name,
          ToTensor(c.Floats("key_pos_embeddings"),
                   c.Shape("key_pos_embeddings")),
          ToTensor(c.Floats("key_pos_bias"), c.Shape("key_pos_bias")),
          ToTensor(c.Floats("query_pos_bias"), c.Shape("query_pos_bias")));
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : nullptr;
}

std::unique_ptr<Inputs> MakeInputs(const GoldenCase& c, DType dtype) {
  auto in = std::make_unique<Inputs>();
  in->q = Encode(c.Floats("q"), dtype);
  in->k = Encode(c.Floats("k"), dtype);
  in->item.query = TensorRef{dtype, c.Shape("q"), in->q.data(), in->q.size()};
  in->item.key = TensorRef{dtype, c.Shape("k"), in->k.data(), in->k.size()};
  if (c.has("v")) {
    in->v = Encode(c.Floats("v"), dtype);
    in->item.value = TensorRef{dtype, c.Shape("v"), in->v.data(), in->v.size()};
  }
  in->item.key_lengths = c.key_lengths();
  ScoreSpec& spec = in->spec;
  if (c.relative()) {
    spec.bias = RelativeBias{ModelOf(c)};
  } else {
    spec.bias =
        AlibiBias{c.has("slopes") ? c.Floats("slopes") : std::vector<float>()};
  }
  spec.causal = c.causal();
  spec.scale = c.scale();
  spec.want_logits = true;
  spec.want_probs = true;
  spec.want_context = c.has("v");
  spec.output_dtype = dtype;
  return in;
}

const std::vector<GoldenCase>& Cases() {
  return attnscore::testing::GoldenCases();
}

// Every test runs on each compute path of the test device (test_util.h).
class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(Cases().empty())
        << "no golden cases in " << attnscore::testing::GoldenDir();
    ScorerOptions options;
    options.device = attnscore::testing::TestDevice();
    absl::StatusOr<ComputePath> path = ParseComputePath(GetParam());
    ASSERT_TRUE(path.ok()) << path.status();
    options.compute_path = *path;
    absl::StatusOr<std::unique_ptr<Scorer>> scorer = CreateAtenScorer(options);
    ASSERT_TRUE(scorer.ok()) << scorer.status();
    scorer_ = *std::move(scorer);
  }
  std::unique_ptr<Scorer> scorer_;
};

TEST_P(GoldenTest, CoversEveryCaseKind) {
  int relative = 0, alibi = 0, with_lengths = 0, with_values = 0;
  for (const GoldenCase& c : Cases()) {
    (c.relative() ? relative : alibi)++;
    with_lengths += !c.key_lengths().empty();
    with_values += c.has("v");
  }
  EXPECT_GE(relative, 1);
  EXPECT_GE(alibi, 1);
  EXPECT_GE(with_lengths, 1);
  EXPECT_GE(with_values, 1);
  EXPECT_EQ(Cases().size(), 18u);
}

TEST_P(GoldenTest, AlibiSlopesMatchTheCases) {
  for (const GoldenCase& c : Cases()) {
    if (c.relative() || c.has("slopes")) continue;
    SCOPED_TRACE(c.name);
    EXPECT_EQ(CompareClose(AlibiSlopes(c.Int("heads")),
                           c.Floats("expected_slopes"), 0, 1e-7),
              "");
  }
}

TEST_P(GoldenTest, Float32MatchesEveryOutput) {
  for (const GoldenCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<Inputs> in = MakeInputs(c, DType::kFloat32);
    ASSERT_TRUE(ValidateItem(in->spec, in->item).ok())
        << ValidateItem(in->spec, in->item);
    absl::StatusOr<std::vector<ScoreResult>> out =
        scorer_->ScoreBatch(in->spec, absl::MakeConstSpan(&in->item, 1));
    ASSERT_TRUE(out.ok()) << out.status();
    const ScoreResult& r = (*out)[0];
    ASSERT_TRUE(r.logits && r.probs);
    EXPECT_EQ(r.logits->shape, c.Shape("expected_logits"));
    EXPECT_EQ(CompareClose(Floats(*r.logits), c.Floats("expected_logits"), 1e-4,
                           1e-4),
              "");
    EXPECT_EQ(
        CompareClose(Floats(*r.probs), c.Floats("expected_probs"), 1e-4, 1e-4),
        "");
    if (c.has("expected_context")) {
      ASSERT_TRUE(r.context);
      EXPECT_EQ(r.context->shape, c.Shape("expected_context"));
      EXPECT_EQ(CompareClose(Floats(*r.context), c.Floats("expected_context"),
                             1e-4, 1e-4),
                "");
    }
  }
}

// Error bounds for a 16-bit run, from the data. Inputs are rounded to the
// 16-bit format (unit roundoff u: 2^-11 for float16, 2^-8 for bfloat16) and
// everything else runs in float32, so:
//  logits: each product q_d k_d carries relative error <= 2u + u^2, the
//  positional products
//    q_d E_d and the query bias term u_h.k_d <= 2u (E, S, u stay float32), so
//    |dlogit| <= 2.1u * scale * (sum_d |q_d+u_d||k_d| + sum_d |q_d||E_rd|)
//    = 2.1u * A, where A is exactly the relative-attention logits of the
//    absolute values with S = 0 (ALiBi: bias 0); plus the final rounding of the
//    output, u|logit|, and float32 noise (1e-4 as in float32).
//  probs: softmax ratios move by at most exp(2 max_j |dlogit_j|) - 1 relative,
//  plus rounding. context: sum_j |dp_j||v_j| + u sum_j p_j|v_j| (v rounded) +
//  u|context|.
struct Bounds {
  std::vector<float> logits, probs, context;
};

Bounds ComputeBounds(const GoldenCase& c, double u) {
  const int64_t heads = c.Int("heads");
  at::Tensor q = ToTensor(c.Floats("q"), c.Shape("q")).abs();
  at::Tensor k = ToTensor(c.Floats("k"), c.Shape("k")).abs();
  AttentionConfig config;
  config.scale = c.scale().value_or(
      1.0 / std::sqrt(static_cast<double>(c.Int("head_dim"))));
  std::shared_ptr<const AtenRelativeModel> abs_model;
  if (c.relative()) {
    at::Tensor e =
        ToTensor(c.Floats("key_pos_embeddings"), c.Shape("key_pos_embeddings"))
            .abs();
    at::Tensor s = at::zeros(c.Shape("key_pos_bias"));
    at::Tensor qb =
        ToTensor(c.Floats("query_pos_bias"), c.Shape("query_pos_bias")).abs();
    abs_model = *AtenRelativeModel::Create("abs", "abs", e, s, qb);
    config.bias = ResolvedRelative{abs_model.get()};
  } else {
    config.bias = ResolvedAlibi{std::vector<float>(heads, 0.0f)};
  }
  at::Tensor magnitude =
      ComputeAttention(q, k, at::Tensor(), {}, config, nullptr).logits;
  at::Tensor expected_logits =
      ToTensor(c.Floats("expected_logits"), c.Shape("expected_logits"));
  at::Tensor finite_logits =
      at::where(at::isinf(expected_logits), at::zeros_like(expected_logits),
                expected_logits);
  at::Tensor dlogit = magnitude * (2.1 * u);
  Bounds b;
  b.logits = Floats(dlogit + u * finite_logits.abs() + 1e-4 +
                    1e-4 * finite_logits.abs());
  at::Tensor p =
      ToTensor(c.Floats("expected_probs"), c.Shape("expected_probs"));
  at::Tensor row_max = std::get<0>(dlogit.max(-1, /*keepdim=*/true));
  at::Tensor dp = p * at::expm1(2 * row_max);
  b.probs = Floats(dp + u * p + 1e-4 + 1e-4 * p);
  if (c.has("v")) {
    at::Tensor v = ToTensor(c.Floats("v"), c.Shape("v")).abs();
    at::Tensor ctx =
        ToTensor(c.Floats("expected_context"), c.Shape("expected_context"))
            .abs();
    b.context = Floats(at::matmul(dp, v) + u * at::matmul(p, v) + u * ctx +
                       1e-4 + 1e-4 * ctx);
  }
  return b;
}

void CheckSixteenBit(Scorer& scorer, DType dtype, double u) {
  for (const GoldenCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<Inputs> in = MakeInputs(c, dtype);
    absl::StatusOr<std::vector<ScoreResult>> out =
        scorer.ScoreBatch(in->spec, absl::MakeConstSpan(&in->item, 1));
    ASSERT_TRUE(out.ok()) << out.status();
    const ScoreResult& r = (*out)[0];
    ASSERT_EQ(r.logits->dtype, dtype);
    const Bounds bounds = ComputeBounds(c, u);
    EXPECT_EQ(CompareWithin(Floats(*r.logits), c.Floats("expected_logits"),
                            bounds.logits),
              "");
    EXPECT_EQ(CompareWithin(Floats(*r.probs), c.Floats("expected_probs"),
                            bounds.probs),
              "");
    if (c.has("v")) {
      EXPECT_EQ(CompareWithin(Floats(*r.context), c.Floats("expected_context"),
                              bounds.context),
                "");
    }
  }
}

TEST_P(GoldenTest, Float16WithinDerivedBounds) {
  CheckSixteenBit(*scorer_, DType::kFloat16, std::ldexp(1.0, -11));
}

TEST_P(GoldenTest, BFloat16WithinDerivedBounds) {
  CheckSixteenBit(*scorer_, DType::kBFloat16, std::ldexp(1.0, -8));
}

INSTANTIATE_TEST_SUITE_P(
    Paths, GoldenTest,
    ::testing::ValuesIn(attnscore::testing::TestComputePaths()),
    [](const ::testing::TestParamInfo<std::string>& info) {
      return info.param;
    });

}  // namespace
}  // namespace attnscore::scoring
