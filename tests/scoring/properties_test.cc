// Properties of the scoring core that hold for any input: slopes, softmax rows,
// causal structure, layouts, batching, parameter files, validation messages,
// devices.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "bench/literal_port.h"
#include "common/aten_dtype.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/scoring/accelerator.h"
#include "server/scoring/alibi.h"
#include "server/scoring/aten_scorer.h"
#include "server/scoring/attention.h"
#include "server/scoring/model_loader.h"
#include "server/scoring/relative_model.h"
#include "server/scoring/validation.h"
#include "tests/testing/test_util.h"

#ifndef ATTNSCORE_LABML_FIXTURE_SCRIPT
#error "ATTNSCORE_LABML_FIXTURE_SCRIPT (make_labml_state_dict.py) is required"
#endif

namespace attnscore::scoring {
namespace {

using ::testing::HasSubstr;

// The paper's formula, written independently: 2^(-8k/n) for k = 1..n when n is
// a power of two; else the first 2^floor(log2 n) of those, then the odd-indexed
// k of the doubled set.
double PaperSlope(int n, int h) {
  int p = 1;
  while (p * 2 <= n) p *= 2;
  if (h < p) return std::pow(2.0, -8.0 * (h + 1) / p);
  return std::pow(2.0, -8.0 * (2 * (h - p) + 1) / (2 * p));
}

TEST(AlibiSlopesTest, MatchesPaperFormulaForOneToSixtyFourHeads) {
  for (int n = 1; n <= 64; ++n) {
    std::vector<float> slopes = AlibiSlopes(n);
    ASSERT_EQ(slopes.size(), static_cast<size_t>(n));
    for (int h = 0; h < n; ++h) {
      EXPECT_NEAR(slopes[h], PaperSlope(n, h), 1e-7 * PaperSlope(n, h))
          << "n=" << n << " h=" << h;
    }
  }
  EXPECT_FLOAT_EQ(AlibiSlopes(8)[0], 0.5f);
  EXPECT_FLOAT_EQ(AlibiSlopes(8)[7], 1.0f / 256);
}

struct Case {
  at::Tensor q, k, v;  // canonical float32
  std::shared_ptr<const AtenRelativeModel> model;
};

Case RandomCase(int64_t b, int64_t h, int64_t lq, int64_t lk, int64_t d,
                int64_t p = 0) {
  Case c;
  c.q = at::randn({b, h, lq, d});
  c.k = at::randn({b, h, lk, d});
  c.v = at::randn({b, h, lk, d});
  if (p > 0) {
    c.model =
        *AtenRelativeModel::Create("m", "test", at::randn({2 * p, h, d}),
                                   at::randn({2 * p, h}), at::randn({h, d}));
  }
  return c;
}

AttentionConfig Config(const Case& c, bool causal) {
  AttentionConfig config;
  config.causal = causal;
  config.scale = 1.0 / std::sqrt(static_cast<double>(c.q.size(3)));
  config.want_probs = true;
  config.want_context = true;
  if (c.model) {
    config.bias = ResolvedRelative{c.model.get()};
  } else {
    config.bias = ResolvedAlibi{AlibiSlopes(c.q.size(1))};
  }
  return config;
}

TEST(AttentionTest, ProbabilityRowsSumToOneAndCausalMasksTheFuture) {
  at::manual_seed(1);
  for (bool relative : {false, true}) {
    Case c = RandomCase(2, 4, 5, 9, 8, relative ? 16 : 0);
    AttentionResult r =
        ComputeAttention(c.q, c.k, c.v, {}, Config(c, true), nullptr);
    EXPECT_TRUE(at::allclose(r.probs.sum(-1), at::ones({2, 4, 5}), 1e-5, 1e-6));
    auto logits = r.logits.accessor<float, 4>();
    auto probs = r.probs.accessor<float, 4>();
    for (int64_t i = 0; i < 5; ++i) {
      for (int64_t j = 0; j < 9; ++j) {
        const bool visible = j <= 9 - 5 + i;  // bottom-right aligned
        EXPECT_EQ(std::isinf(logits[1][2][i][j]), !visible) << i << "," << j;
        if (!visible) {
          EXPECT_LT(logits[1][2][i][j], 0);
          EXPECT_EQ(probs[1][2][i][j], 0.0f);
        }
      }
    }
  }
}

TEST(AttentionTest, MatchesDirectFormula) {
  at::manual_seed(2);
  // ALiBi, bidirectional, Lq != Lk: logits = scale q.k - m_h |Lk - Lq + i - j|.
  Case c = RandomCase(1, 3, 4, 6, 8);
  AttentionConfig config = Config(c, false);
  AttentionResult r = ComputeAttention(c.q, c.k, c.v, {}, config, nullptr);
  const std::vector<float>& slopes =
      std::get<ResolvedAlibi>(config.bias).slopes;
  for (int64_t h = 0; h < 3; ++h) {
    for (int64_t i = 0; i < 4; ++i) {
      for (int64_t j = 0; j < 6; ++j) {
        const double dot = (c.q[0][h][i] * c.k[0][h][j]).sum().item<double>();
        const double want = config.scale * dot -
                            static_cast<double>(slopes[h]) *
                                static_cast<double>(std::abs(6 - 4 + i - j));
        EXPECT_NEAR(r.logits[0][h][i][j].item<double>(), want, 1e-5);
      }
    }
  }
  // Relative: scale ((q_i + u_h).k_j + q_i.E[r,h] + S[r,h]), r = P - Lk + Lq +
  // j - i.
  Case rc = RandomCase(2, 2, 3, 7, 4, 8);
  AttentionConfig rconfig = Config(rc, false);
  AttentionResult rr = ComputeAttention(rc.q, rc.k, rc.v, {}, rconfig, nullptr);
  const AtenRelativeModel& m = *rc.model;
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t h = 0; h < 2; ++h) {
      for (int64_t i = 0; i < 3; ++i) {
        for (int64_t j = 0; j < 7; ++j) {
          const int64_t rel = 8 - 7 + 3 + j - i;
          at::Tensor qi = rc.q[b][h][i];
          const double want =
              rconfig.scale *
              (((qi + m.query_pos_bias()[h]) * rc.k[b][h][j])
                   .sum()
                   .item<double>() +
               (qi * m.key_pos_embeddings()[rel][h]).sum().item<double>() +
               m.key_pos_bias()[rel][h].item<double>());
          EXPECT_NEAR(rr.logits[b][h][i][j].item<double>(), want, 1e-5);
        }
      }
    }
  }
}

// The fused per-(batch, head) core against the literal port of the seed
// algorithm (materialised ALiBi bias; labml einsum + shift_right) on shapes the
// golden cases do not cover.
TEST(AttentionTest, MatchesLiteralPortOnRandomShapes) {
  at::manual_seed(9);
  struct Dims {
    int64_t b, h, lq, lk, d;
  };
  for (Dims dims : {Dims{3, 5, 17, 17, 16}, Dims{2, 12, 7, 40, 32},
                    Dims{1, 3, 1, 64, 8}, Dims{4, 2, 33, 65, 8}}) {
    for (bool relative : {false, true}) {
      for (bool causal : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << dims.b << "," << dims.h << "," << dims.lq << ","
                     << dims.lk << "," << dims.d << " relative=" << relative
                     << " causal=" << causal);
        Case c = RandomCase(dims.b, dims.h, dims.lq, dims.lk, dims.d,
                            relative ? 80 : 0);
        AttentionConfig config = Config(c, causal);
        AttentionResult got =
            ComputeAttention(c.q, c.k, c.v, {}, config, nullptr);
        bench::LiteralResult want =
            relative
                ? bench::LiteralRelative(
                      c.q, c.k, c.model->key_pos_embeddings(),
                      c.model->key_pos_bias(), c.model->query_pos_bias(),
                      causal, config.scale, true)
                : bench::LiteralAlibi(
                      c.q, c.k, std::get<ResolvedAlibi>(config.bias).slopes,
                      causal, config.scale, true);
        EXPECT_TRUE(at::equal(at::isinf(got.logits), at::isinf(want.logits)));
        at::Tensor finite = at::isfinite(want.logits);
        EXPECT_TRUE(at::allclose(got.logits.masked_select(finite),
                                 want.logits.masked_select(finite), 1e-4,
                                 1e-4));
        EXPECT_TRUE(at::allclose(got.probs, want.probs, 1e-5, 1e-5));
        EXPECT_TRUE(
            at::allclose(got.context, at::matmul(want.probs, c.v), 1e-4, 1e-4));
      }
    }
  }
}

TEST(AttentionTest, KeyLengthZeroGivesZeroProbabilitiesAndContext) {
  at::manual_seed(3);
  Case c = RandomCase(3, 2, 4, 4, 8);
  std::vector<int32_t> lengths = {4, 0, 2};
  AttentionResult r =
      ComputeAttention(c.q, c.k, c.v, lengths, Config(c, false), nullptr);
  EXPECT_TRUE(at::isinf(r.logits[1]).all().item<bool>());
  EXPECT_TRUE(r.probs[1].eq(0).all().item<bool>());
  EXPECT_TRUE(r.context[1].eq(0).all().item<bool>());
  EXPECT_FALSE(at::isnan(r.probs).any().item<bool>());
  EXPECT_TRUE(at::isinf(r.logits[2].narrow(-1, 2, 2)).all().item<bool>());
  EXPECT_TRUE(r.probs[2].narrow(-1, 2, 2).eq(0).all().item<bool>());
  EXPECT_TRUE(at::allclose(r.probs[2].sum(-1), at::ones({2, 4})));
}

TEST(AttentionTest, StaticBiasCacheReturnsIdenticalResults) {
  at::manual_seed(4);
  Case c = RandomCase(2, 4, 6, 6, 8, 8);
  StaticBiasCache cache(1 << 20);
  AttentionConfig config = Config(c, true);
  AttentionResult cold = ComputeAttention(c.q, c.k, c.v, {}, config, &cache);
  AttentionResult warm = ComputeAttention(c.q, c.k, c.v, {}, config, &cache);
  AttentionResult none = ComputeAttention(c.q, c.k, c.v, {}, config, nullptr);
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_TRUE(at::equal(cold.logits, warm.logits));
  EXPECT_TRUE(at::equal(cold.logits, none.logits));
  // A different scale is a different relative bias, not a cache hit.
  config.scale = 1.0;
  AttentionResult other = ComputeAttention(c.q, c.k, c.v, {}, config, &cache);
  EXPECT_EQ(cache.entries(), 2u);
  EXPECT_FALSE(at::equal(other.logits, cold.logits));
  // Over budget: least recently used entries go. Each [4,1,6] entry is 96
  // bytes.
  StaticBiasCache tiny(size_t{4} * 96);
  AttentionConfig alibi = Config(RandomCase(1, 4, 1, 6, 8), true);
  for (int i = 0; i < 6; ++i) {
    tiny.GetOrCompute(std::to_string(i),
                      [&] { return StaticBias(alibi, 4, 1, 6); });
  }
  EXPECT_EQ(tiny.entries(), 4u);
  EXPECT_EQ(tiny.size_bytes(), 4u * 96);
  // Entries over a quarter of the budget are computed but not kept.
  tiny.GetOrCompute("big", [&] { return StaticBias(alibi, 4, 6, 6); });
  EXPECT_EQ(tiny.entries(), 4u);
}

// Scorer-level helpers: raw bytes in a layout.
struct Raw {
  std::string q, k, v;
  ScoreItem item;
};

std::string Bytes(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

Raw MakeRaw(const Case& c, Layout layout, DType dtype = DType::kFloat32) {
  auto to_layout = [&](const at::Tensor& t) {
    switch (layout) {
      case Layout::kBHSD:
        return t;
      case Layout::kBSHD:
        return t.permute({0, 2, 1, 3});
      case Layout::kSBHD:
        return t.permute({2, 0, 1, 3});
    }
    return t;
  };
  const at::ScalarType type = ToScalarType(dtype);
  Raw raw;
  at::Tensor q = to_layout(c.q).to(type).contiguous(),
             k = to_layout(c.k).to(type).contiguous(),
             v = to_layout(c.v).to(type).contiguous();
  raw.q = Bytes(q);
  raw.k = Bytes(k);
  raw.v = Bytes(v);
  raw.item.query =
      TensorRef{dtype, q.sizes().vec(), raw.q.data(), raw.q.size()};
  raw.item.key = TensorRef{dtype, k.sizes().vec(), raw.k.data(), raw.k.size()};
  raw.item.value =
      TensorRef{dtype, v.sizes().vec(), raw.v.data(), raw.v.size()};
  return raw;
}

at::Tensor AsTensor(const OutputTensor& t) {
  return at::from_blob(const_cast<void*>(t.data), t.shape, at::kFloat).clone();
}

// Runs on each compute path of the test device (test_util.h).
class ScorerTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ScorerOptions options;
    options.device = attnscore::testing::TestDevice();
    options.compute_path = *ParseComputePath(GetParam());
    scorer_ = *CreateAtenScorer(options);
  }
  ScoreSpec Spec(const Case& c, Layout layout, bool causal) {
    ScoreSpec spec;
    spec.layout = layout;
    spec.causal = causal;
    spec.want_logits = spec.want_probs = spec.want_context = true;
    if (c.model) spec.bias = RelativeBias{c.model};
    return spec;
  }
  std::unique_ptr<Scorer> scorer_;
};

TEST_P(ScorerTest, LayoutsGiveIdenticalResults) {
  at::manual_seed(5);
  for (bool relative : {false, true}) {
    Case c = RandomCase(2, 3, 5, 7, 8, relative ? 8 : 0);
    Raw canonical = MakeRaw(c, Layout::kBHSD);
    ScoreResult want =
        (*scorer_->ScoreBatch(Spec(c, Layout::kBHSD, true),
                              absl::MakeConstSpan(&canonical.item, 1)))[0];
    for (Layout layout : {Layout::kBSHD, Layout::kSBHD}) {
      SCOPED_TRACE(LayoutName(layout));
      Raw raw = MakeRaw(c, layout);
      ScoreResult got = (*scorer_->ScoreBatch(
          Spec(c, layout, true), absl::MakeConstSpan(&raw.item, 1)))[0];
      EXPECT_TRUE(at::equal(AsTensor(*got.logits), AsTensor(*want.logits)));
      EXPECT_TRUE(at::equal(AsTensor(*got.probs), AsTensor(*want.probs)));
      // Context comes back in the request's layout.
      at::Tensor ctx = AsTensor(*got.context);
      at::Tensor canonical_ctx = layout == Layout::kBSHD
                                     ? ctx.permute({0, 2, 1, 3})
                                     : ctx.permute({1, 2, 0, 3});
      EXPECT_TRUE(at::equal(canonical_ctx, AsTensor(*want.context)));
    }
  }
}

TEST_P(ScorerTest, BatchedItemsEqualSeparateRunsAndShareMemory) {
  at::manual_seed(6);
  for (Layout layout : {Layout::kBHSD, Layout::kSBHD}) {
    std::vector<Case> cases = {RandomCase(1, 2, 4, 6, 8),
                               RandomCase(3, 2, 4, 6, 8),
                               RandomCase(2, 2, 4, 6, 8)};
    std::vector<Raw> raws;
    raws.reserve(cases.size());
    for (const Case& c : cases) raws.push_back(MakeRaw(c, layout));
    raws[1].item.key_lengths = {6, 0, 3};
    std::vector<ScoreItem> items;
    items.reserve(raws.size());
    for (const Raw& r : raws) items.push_back(r.item);
    ScoreSpec spec = Spec(cases[0], layout, false);
    std::vector<ScoreResult> batched = *scorer_->ScoreBatch(spec, items);
    ASSERT_EQ(batched.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      ScoreResult alone =
          (*scorer_->ScoreBatch(spec, absl::MakeConstSpan(&items[i], 1)))[0];
      EXPECT_TRUE(
          at::equal(AsTensor(*batched[i].logits), AsTensor(*alone.logits)))
          << i;
      EXPECT_TRUE(
          at::equal(AsTensor(*batched[i].probs), AsTensor(*alone.probs)))
          << i;
      EXPECT_TRUE(
          at::equal(AsTensor(*batched[i].context), AsTensor(*alone.context)))
          << i;
    }
    // Logits of consecutive items are adjacent slices of one buffer: no copy
    // when splitting.
    EXPECT_EQ(static_cast<const char*>(batched[1].logits->data),
              static_cast<const char*>(batched[0].logits->data) +
                  batched[0].logits->size_bytes);
    EXPECT_EQ(batched[0].logits->keepalive.get(),
              batched[1].logits->keepalive.get());
  }
}

// Equal within float32 rounding (relative 1e-5), with the same -inf.
void ExpectClose(const OutputTensor& got, const OutputTensor& want,
                 const char* what) {
  const at::Tensor g = AsTensor(got), w = AsTensor(want);
  EXPECT_TRUE(at::equal(at::isinf(g), at::isinf(w))) << what;
  const at::Tensor finite = at::isfinite(w);
  EXPECT_TRUE(at::allclose(g.masked_select(finite), w.masked_select(finite),
                           1e-5, 1e-6))
      << what;
}

// 16-bit inputs give the results of their float32 values: the blocked path
// reads a lone item's keys and values in place and converts them per tile, a
// stacked batch converts them first; either way an item gets the same bits
// alone as batched with another (the cases are small enough to be stacked).
// The batched path's relative position term is one product over the batch's
// B * T query rows, whose rounding may differ with B (batched_attention.h):
// there, batched results are within float32 rounding of the item's alone.
TEST_P(ScorerTest, SixteenBitInputsGiveTheirFloat32ValuesResults) {
  at::manual_seed(21);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    for (Layout layout : {Layout::kBHSD, Layout::kBSHD}) {
      for (bool relative : {false, true}) {
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " ", LayoutName(layout),
                                  " relative ", relative));
        Case c = RandomCase(2, 3, 5, 40, 16, relative ? 64 : 0);
        // The float32 values the 16-bit inputs hold.
        Case rounded = c;
        for (at::Tensor* t : {&rounded.q, &rounded.k, &rounded.v}) {
          *t = t->to(ToScalarType(dtype)).to(at::kFloat);
        }
        const Raw sixteen = MakeRaw(c, layout, dtype);
        const Raw wide = MakeRaw(rounded, layout);
        const Raw other = MakeRaw(RandomCase(1, 3, 5, 40, 16), layout, dtype);
        const ScoreSpec spec = Spec(c, layout, true);
        const ScoreResult want =
            (*scorer_->ScoreBatch(spec, absl::MakeConstSpan(&wide.item, 1)))[0];
        const ScoreResult alone = (*scorer_->ScoreBatch(
            spec, absl::MakeConstSpan(&sixteen.item, 1)))[0];
        EXPECT_TRUE(at::equal(AsTensor(*alone.logits), AsTensor(*want.logits)));
        EXPECT_TRUE(at::equal(AsTensor(*alone.probs), AsTensor(*want.probs)));
        EXPECT_TRUE(
            at::equal(AsTensor(*alone.context), AsTensor(*want.context)));
        // The same bytes one byte off their alignment (a shared-memory
        // range may lie at any offset): staged, with the same results.
        std::string odd[3];
        ScoreItem shifted = sixteen.item;
        TensorRef* refs[] = {&shifted.query, &shifted.key, &*shifted.value};
        for (int i = 0; i < 3; ++i) {
          const auto* bytes = static_cast<const char*>(refs[i]->data);
          odd[i] = "-" + std::string(bytes, refs[i]->size_bytes);
          refs[i]->data = odd[i].data() + 1;
        }
        const ScoreResult unaligned =
            (*scorer_->ScoreBatch(spec, absl::MakeConstSpan(&shifted, 1)))[0];
        EXPECT_TRUE(
            at::equal(AsTensor(*unaligned.logits), AsTensor(*want.logits)));
        EXPECT_TRUE(
            at::equal(AsTensor(*unaligned.context), AsTensor(*want.context)));
        const std::vector<ScoreItem> pair = {sixteen.item, other.item};
        const ScoreResult batched = (*scorer_->ScoreBatch(spec, pair))[0];
        if (relative && GetParam() == "batched") {
          ExpectClose(*batched.logits, *alone.logits, "logits");
          ExpectClose(*batched.probs, *alone.probs, "probs");
          ExpectClose(*batched.context, *alone.context, "context");
          continue;
        }
        EXPECT_TRUE(
            at::equal(AsTensor(*batched.logits), AsTensor(*alone.logits)));
        EXPECT_TRUE(
            at::equal(AsTensor(*batched.probs), AsTensor(*alone.probs)));
        EXPECT_TRUE(
            at::equal(AsTensor(*batched.context), AsTensor(*alone.context)));
      }
    }
  }
}

// Past a megabyte of inputs the CPU scorer computes a batch item by item
// where each item's bytes lie instead of stacking them (aten_scorer.cc): the
// results must be those of separate runs all the same.
TEST_P(ScorerTest, LargeBatchesEqualSeparateRuns) {
  at::manual_seed(16);
  std::vector<Case> cases = {RandomCase(2, 4, 32, 512, 64),
                             RandomCase(1, 4, 32, 512, 64),
                             RandomCase(2, 4, 32, 512, 64)};
  std::vector<Raw> raws;
  raws.reserve(cases.size());
  for (const Case& c : cases) raws.push_back(MakeRaw(c, Layout::kBHSD));
  raws[2].item.key_lengths = {512, 100};
  std::vector<ScoreItem> items;
  items.reserve(raws.size());
  for (const Raw& r : raws) items.push_back(r.item);
  size_t bytes = 0;
  for (const ScoreItem& item : items) {
    bytes += item.query.size_bytes + item.key.size_bytes;
  }
  ASSERT_GT(bytes, size_t{1} << 20);
  const ScoreSpec spec = Spec(cases[0], Layout::kBHSD, true);
  const std::vector<ScoreResult> batched = *scorer_->ScoreBatch(spec, items);
  ASSERT_EQ(batched.size(), items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const ScoreResult alone =
        (*scorer_->ScoreBatch(spec, absl::MakeConstSpan(&items[i], 1)))[0];
    EXPECT_TRUE(
        at::equal(AsTensor(*batched[i].logits), AsTensor(*alone.logits)))
        << i;
    EXPECT_TRUE(at::equal(AsTensor(*batched[i].probs), AsTensor(*alone.probs)))
        << i;
    EXPECT_TRUE(
        at::equal(AsTensor(*batched[i].context), AsTensor(*alone.context)))
        << i;
  }
}

// Page-locks memory for its lifetime (PinHostMemory), failing the test when
// the driver refuses.
class PageLock {
 public:
  PageLock(void* data, size_t bytes) : data_(data) {
    EXPECT_TRUE(PinHostMemory(data, bytes)) << bytes << " bytes";
  }
  PageLock(PageLock&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)) {}
  PageLock& operator=(PageLock&&) = delete;
  ~PageLock() {
    if (data_ != nullptr) UnpinHostMemory(data_);
  }

 private:
  void* data_;
};

// Where a caller offers destinations (a client's shared memory), logits and
// probs land there with the bytes the scorer would have returned: written in
// place by the blocked path (items past a megabyte are scored one after the
// other, each alone), copied from the batch's output by the batched path (on
// a device, straight from it). Unusable destinations (misaligned, too small)
// are left alone and the scorer returns buffers of its own.
TEST_P(ScorerTest, DestinationsGetTheSameBytesInPlace) {
  at::manual_seed(17);
  for (bool relative : {false, true}) {
    for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
      SCOPED_TRACE(
          absl::StrCat(relative ? "relative " : "alibi ", DTypeName(dtype)));
      const int64_t positions = relative ? 512 : 0;
      std::vector<Case> cases = {RandomCase(2, 4, 32, 512, 64, positions),
                                 RandomCase(1, 4, 32, 512, 64, positions)};
      std::vector<Raw> raws;
      for (const Case& c : cases) raws.push_back(MakeRaw(c, Layout::kBHSD));
      ScoreSpec spec = Spec(cases[0], Layout::kBHSD, true);
      spec.output_dtype = dtype;
      std::vector<ScoreItem> items = {raws[0].item, raws[1].item};
      const std::vector<ScoreResult> want = *scorer_->ScoreBatch(spec, items);
      ASSERT_TRUE(ValidateItem(spec, items[0]).ok());
      ASSERT_TRUE(ValidateItem(spec, items[1]).ok());
      // Page-aligned blocks, the second item's probs one float off alignment
      // and its logits one byte short. On a GPU they are page-locked, as the
      // server locks shared-memory regions: the copies from the device into
      // them are then asynchronous DMAs.
      const size_t bytes0 = want[0].logits->size_bytes;
      const size_t bytes1 = want[1].logits->size_bytes;
      std::vector<std::vector<float>> memory;
      std::vector<PageLock> locks;
      auto block = [&](size_t bytes) {
        constexpr uintptr_t kPage = 4096;
        memory.emplace_back((bytes + 2 * kPage) / sizeof(float), -7.0f);
        const auto address = reinterpret_cast<uintptr_t>(memory.back().data());
        char* start =
            reinterpret_cast<char*>((address + kPage - 1) / kPage * kPage);
        if (attnscore::testing::TestDevice() != "cpu") {
          locks.emplace_back(start, (bytes + kPage) / kPage * kPage);
        }
        return start;
      };
      char* logits0 = block(bytes0);
      char* probs0 = block(bytes0);
      char* logits1 = block(bytes1);
      char* probs1 = block(bytes1) + sizeof(float);
      items[0].logits_destination = {logits0, bytes0, nullptr};
      items[0].probs_destination = {probs0, bytes0, nullptr};
      items[1].logits_destination = {logits1, bytes1 - 1, nullptr};
      items[1].probs_destination = {probs1, bytes1, nullptr};
      const std::vector<ScoreResult> got = *scorer_->ScoreBatch(spec, items);
      ASSERT_EQ(got.size(), 2u);
      EXPECT_EQ(got[0].logits->data, logits0);
      EXPECT_EQ(got[0].probs->data, probs0);
      EXPECT_NE(got[1].logits->data, logits1);  // too small
      EXPECT_NE(got[1].probs->data, probs1);    // misaligned
      for (size_t i = 0; i < 2; ++i) {
        for (auto field : {&ScoreResult::logits, &ScoreResult::probs,
                           &ScoreResult::context}) {
          const OutputTensor& a = *(got[i].*field);
          const OutputTensor& b = *(want[i].*field);
          ASSERT_EQ(a.size_bytes, b.size_bytes) << i;
          EXPECT_EQ(std::memcmp(a.data, b.data, a.size_bytes), 0) << i;
        }
      }
      // The unused destinations were not written.
      EXPECT_EQ(reinterpret_cast<const float*>(probs1)[0], -7.0f);
    }
  }
  // Small items are stacked into one pass on either path: the rows of those
  // that offer a destination are copied there, the others' returned.
  const Case tiny = RandomCase(1, 2, 3, 4, 8);
  const Raw a = MakeRaw(tiny, Layout::kBHSD);
  const Raw b = MakeRaw(tiny, Layout::kBHSD);
  std::vector<ScoreItem> small = {a.item, b.item};
  const ScoreSpec spec = Spec(tiny, Layout::kBHSD, true);
  const std::vector<ScoreResult> want = *scorer_->ScoreBatch(spec, small);
  alignas(64) float destination[64];
  std::fill(std::begin(destination), std::end(destination), -7.0f);
  small[0].logits_destination = {destination, sizeof(destination), nullptr};
  const std::vector<ScoreResult> stacked = *scorer_->ScoreBatch(spec, small);
  ASSERT_EQ(stacked[0].logits->data, destination);
  EXPECT_NE(stacked[0].probs->data, nullptr);
  EXPECT_NE(stacked[1].logits->data, destination);
  for (size_t i = 0; i < 2; ++i) {
    const OutputTensor& got = *stacked[i].logits;
    ASSERT_EQ(got.size_bytes, want[i].logits->size_bytes) << i;
    EXPECT_EQ(std::memcmp(got.data, want[i].logits->data, got.size_bytes), 0)
        << i;
  }
  // The item's 2 x 3 x 4 logits, and nothing past them.
  EXPECT_EQ(destination[24], -7.0f);
}

TEST_P(ScorerTest, OutputDtypesRoundOnce) {
  at::manual_seed(7);
  Case c = RandomCase(1, 2, 3, 3, 4);
  Raw raw = MakeRaw(c, Layout::kBHSD);
  ScoreSpec spec = Spec(c, Layout::kBHSD, false);
  ScoreResult f32 =
      (*scorer_->ScoreBatch(spec, absl::MakeConstSpan(&raw.item, 1)))[0];
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    spec.output_dtype = dtype;
    ScoreResult r =
        (*scorer_->ScoreBatch(spec, absl::MakeConstSpan(&raw.item, 1)))[0];
    ASSERT_EQ(r.probs->dtype, dtype);
    std::vector<float> want(f32.probs->size_bytes / 4);
    std::memcpy(want.data(), f32.probs->data, f32.probs->size_bytes);
    std::vector<float> got(want.size());
    DecodeFloats(r.probs->data, got.size(), dtype, got.data());
    for (size_t i = 0; i < got.size(); ++i) {
      std::vector<uint16_t> bits(1);
      EncodeFloats(&want[i], 1, dtype, bits.data());
      float rounded;
      DecodeFloats(bits.data(), 1, dtype, &rounded);
      EXPECT_EQ(got[i], rounded)
          << i;  // exactly the float32 result rounded to the output dtype
    }
  }
}

TEST_P(ScorerTest, ValidationNamesFieldExpectedAndActual) {
  Case c = RandomCase(2, 4, 3, 5, 8, 8);
  Raw raw = MakeRaw(c, Layout::kBHSD);
  ScoreSpec spec = Spec(c, Layout::kBHSD, true);
  EXPECT_TRUE(ValidateItem(spec, raw.item).ok())
      << ValidateItem(spec, raw.item);

  auto expect_error = [&](const ScoreSpec& s, const ScoreItem& item,
                          const std::string& text) {
    absl::Status status = ValidateItem(s, item);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(std::string(status.message()), HasSubstr(text));
  };
  ScoreItem item = raw.item;
  item.query.size_bytes -= 4;
  expect_error(spec, item,
               "query.data: expected 768 bytes for F32 [2,4,3,8], got 764");
  item = raw.item;
  item.key.shape = {2, 4, 5};
  expect_error(spec, item, "key.shape: expected 4 dims");
  item = raw.item;
  item.key_lengths = {5};
  expect_error(spec, item, "key_lengths: expected 2 values");
  item.key_lengths = {5, 6};
  expect_error(spec, item, "key_lengths[1]: expected 0..5");
  ScoreSpec big = spec;
  big.bias = RelativeBias{
      *AtenRelativeModel::Create("small", "t", at::randn({4, 4, 8}),
                                 at::randn({4, 4}), at::randn({4, 8}))};
  expect_error(big, raw.item, "model 'small' has P = 2");
  ScoreSpec wrong_heads = spec;
  wrong_heads.bias = RelativeBias{*AtenRelativeModel::Create(
      "h2", "t", at::randn({16, 2, 8}), at::randn({16, 2}), at::randn({2, 8}))};
  expect_error(wrong_heads, raw.item,
               "query heads: model 'h2' expects 2, got 4");
  ScoreSpec alibi = spec;
  alibi.bias = AlibiBias{{1, 2}};
  expect_error(alibi, raw.item, "alibi.slopes: expected 4 values");
  alibi.bias = AlibiBias{};
  alibi.scale = -1.0f;
  expect_error(alibi, raw.item, "scale: expected a finite value > 0, got -1");
  // Causal needs Lq <= Lk.
  Case wide = RandomCase(1, 1, 6, 5, 4);
  Raw wide_raw = MakeRaw(wide, Layout::kBHSD);
  ScoreSpec causal = Spec(wide, Layout::kBHSD, true);
  expect_error(causal, wide_raw.item,
               "causal: query length 6 exceeds key length 5");
  // NaN and Inf inputs, in every dtype.
  ScoreSpec plain = spec;
  plain.bias = AlibiBias{};
  std::string q = raw.q;
  const float nan = std::nanf("");
  std::memcpy(q.data() + 12, &nan, 4);
  item = raw.item;
  item.query.data = q.data();
  expect_error(
      plain, item,
      "query.data: expected finite values, got NaN or Inf at flat index 3");
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    std::vector<uint16_t> halves(raw.k.size() / 4);
    EncodeFloats(reinterpret_cast<const float*>(raw.k.data()), halves.size(),
                 dtype, halves.data());
    std::vector<uint16_t> qh(raw.q.size() / 4);
    EncodeFloats(reinterpret_cast<const float*>(raw.q.data()), qh.size(), dtype,
                 qh.data());
    const float inf = INFINITY;
    EncodeFloats(&inf, 1, dtype, &halves[7]);
    ScoreItem h = raw.item;
    h.value.reset();
    h.query = TensorRef{dtype, raw.item.query.shape, qh.data(), qh.size() * 2};
    h.key =
        TensorRef{dtype, raw.item.key.shape, halves.data(), halves.size() * 2};
    ScoreSpec no_context = plain;
    no_context.want_context = false;
    expect_error(
        no_context, h,
        "key.data: expected finite values, got NaN or Inf at flat index 7");
  }
  // Context without values; mixed dtypes.
  item = raw.item;
  item.value.reset();
  expect_error(plain, item, "value: required for the CONTEXT output");
  item = raw.item;
  item.key.dtype = DType::kFloat16;
  item.key.size_bytes /= 2;
  expect_error(plain, item, "key.dtype: expected F32");
}

// The input scan works in blocks of 2048 elements at the CPU's vector width
// (validation.cc): a NaN or Inf is found at its exact index in any block, a
// block's first or last element included, and the largest magnitude anywhere
// feeds the overflow bound.
TEST(InputScanTest, FindsNonFiniteAndLargestValuesPastTheFirstBlock) {
  const size_t count = 10000;
  const std::vector<int64_t> query_shape = {1, 2, 2, 2};
  const std::vector<int64_t> key_shape = {1, 2, 2500, 2};
  const std::vector<float> query(8, 0.5f);
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    std::vector<uint16_t> query16(query.size()), key16(count);
    // `v` in `dtype` (16-bit ones encoded into `halves`).
    auto ref = [dtype](const std::vector<float>& v,
                       std::vector<uint16_t>* halves,
                       const std::vector<int64_t>& shape) {
      if (dtype == DType::kFloat32) {
        return TensorRef{dtype, shape, v.data(), v.size() * 4};
      }
      EncodeFloats(v.data(), v.size(), dtype, halves->data());
      return TensorRef{dtype, shape, halves->data(), v.size() * 2};
    };
    auto validate = [&](const ScoreSpec& spec, const std::vector<float>& key) {
      ScoreItem item;
      item.query = ref(query, &query16, query_shape);
      item.key = ref(key, &key16, key_shape);
      return ValidateItem(spec, item);
    };
    const std::string name = DTypeName(dtype);
    ScoreSpec spec;
    const std::vector<float> plain(count, 0.5f);
    ASSERT_TRUE(validate(spec, plain).ok()) << name << validate(spec, plain);
    for (size_t index : {size_t{2047}, size_t{2048}, size_t{5000}, count - 1}) {
      for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
        std::vector<float> key = plain;
        key[index] = bad;
        EXPECT_EQ(validate(spec, key).message(),
                  absl::StrCat("key.data: expected finite values, got NaN or "
                               "Inf at flat index ",
                               index))
            << name << " " << index << " " << bad;
      }
    }
    // One large key far from the start: the logits' bound 1 * D 2 * 0.5 *
    // 30000 = 30000 fits float16 logits, 70000 would not.
    spec.output_dtype = DType::kFloat16;
    spec.scale = 1.0f;
    spec.bias = AlibiBias{{0.0f, 0.0f}};
    std::vector<float> key = plain;
    key[7777] = -30000.0f;
    EXPECT_TRUE(validate(spec, key).ok()) << name << validate(spec, key);
    if (dtype != DType::kFloat16) {  // 70000 is past float16's own range
      key[7777] = -70000.0f;
      EXPECT_THAT(std::string(validate(spec, key).message()),
                  HasSubstr("scale: logits could reach"))
          << name;
    }
  }
}

// A RelativeModel that is not the ATen one (as a service test might use): the
// API accepts it, the ATen scorer refuses it with a status.
class StandInModel final : public RelativeModel {
 public:
  explicit StandInModel(RelativeModelInfo info)
      : RelativeModel(std::move(info)) {}
};

// ValidateItem and BatchKey visit both Bias alternatives; the key's layout is
// pinned (the batcher groups by it).
TEST_P(ScorerTest, ValidateItemAndBatchKeyCoverBothBiasKinds) {
  Case c = RandomCase(2, 4, 3, 5, 8, 8);
  Raw raw = MakeRaw(c, Layout::kBHSD);
  const ScoreSpec relative = Spec(c, Layout::kBHSD, true);
  ASSERT_TRUE(std::holds_alternative<RelativeBias>(relative.bias));
  ScoreSpec alibi = relative;
  alibi.bias = AlibiBias{};
  EXPECT_TRUE(ValidateItem(relative, raw.item).ok());
  EXPECT_TRUE(ValidateItem(alibi, raw.item).ok());
  EXPECT_EQ(BatchKey(alibi, raw.item),
            "alibi|0|4|8|8|3|5|F32|BHSD|1|111|F32||");
  EXPECT_EQ(
      BatchKey(relative, raw.item),
      absl::StrCat("rel|", c.model->id(), "|4|8|8|3|5|F32|BHSD|1|111|F32||"));

  // Explicit slopes are part of the key, bit for bit.
  ScoreSpec sloped = alibi;
  sloped.bias = AlibiBias{{0.5f, 0.25f, 0.125f, 0.0625f}};
  EXPECT_TRUE(ValidateItem(sloped, raw.item).ok());
  std::string want = "alibi|0|4|8|8|3|5|F32|BHSD|1|111|F32||";
  const std::vector<float>& slopes = std::get<AlibiBias>(sloped.bias).slopes;
  want.append(reinterpret_cast<const char*>(slopes.data()),
              slopes.size() * sizeof(float));
  EXPECT_EQ(BatchKey(sloped, raw.item), want);

  // Another model with the same tensors is another key.
  ScoreSpec twin = relative;
  twin.bias = RelativeBias{*AtenRelativeModel::Create(
      "m", "test", c.model->key_pos_embeddings(), c.model->key_pos_bias(),
      c.model->query_pos_bias())};
  EXPECT_NE(BatchKey(twin, raw.item), BatchKey(relative, raw.item));

  ScoreSpec none = relative;
  none.bias = RelativeBias{};
  EXPECT_EQ(ValidateItem(none, raw.item).message(),
            "relative.model: expected a loaded parameter set, got none");
  EXPECT_EQ(BatchKey(none, raw.item), "rel|0|4|8|8|3|5|F32|BHSD|1|111|F32||");

  ScoreSpec stand_in = relative;
  stand_in.bias =
      RelativeBias{std::make_shared<const StandInModel>(c.model->info())};
  EXPECT_TRUE(ValidateItem(stand_in, raw.item).ok());
  EXPECT_NE(BatchKey(stand_in, raw.item), BatchKey(relative, raw.item));
  absl::StatusOr<std::vector<ScoreResult>> out =
      scorer_->ScoreBatch(stand_in, absl::MakeConstSpan(&raw.item, 1));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(out.status().message()),
              HasSubstr("relative.model: 'm' was not loaded by this scorer"));
}

TEST(ScorerCreateTest, ComputePaths) {
  EXPECT_EQ(*ParseComputePath("auto"), ComputePath::kAuto);
  EXPECT_EQ(*ParseComputePath("blocked"), ComputePath::kBlocked);
  EXPECT_EQ(*ParseComputePath("batched"), ComputePath::kBatched);
  absl::StatusOr<ComputePath> bad = ParseComputePath("fused");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("expected auto, blocked or batched, got 'fused'"));
  for (ComputePath path :
       {ComputePath::kAuto, ComputePath::kBlocked, ComputePath::kBatched}) {
    ScorerOptions options;
    options.compute_path = path;
    EXPECT_TRUE(CreateAtenScorer(options).ok());
  }
  if (at::hasCUDA()) {
    ScorerOptions options;
    options.device = "cuda";
    options.compute_path = ComputePath::kBlocked;
    absl::StatusOr<std::unique_ptr<Scorer>> blocked = CreateAtenScorer(options);
    EXPECT_EQ(blocked.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(blocked.status().message()),
                HasSubstr("blocked runs on the CPU only"));
  }
}

TEST(ScorerCreateTest, DevicesAndThreads) {
  absl::StatusOr<std::unique_ptr<Scorer>> cpu = CreateAtenScorer({"cpu", 2});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ((*cpu)->device(), "cpu");
  EXPECT_EQ(at::get_num_threads(),
            2);  // set explicitly, not LibTorch's default
  absl::StatusOr<std::unique_ptr<Scorer>> cuda =
      CreateAtenScorer({"cuda:0", 0});
  if (!at::hasCUDA()) {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(cuda.status().message()),
                HasSubstr("CUDA is not available"));
  }
  EXPECT_EQ(CreateAtenScorer({"tpu", 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateAtenScorer({"cpu", -1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(
    Paths, ScorerTest,
    ::testing::ValuesIn(attnscore::testing::TestComputePaths()),
    [](const ::testing::TestParamInfo<std::string>& info) {
      return info.param;
    });

class ParameterFileTest : public ::testing::Test {
 protected:
  static void AddTensor(SafetensorsWriter& writer, const std::string& name,
                        const at::Tensor& t) {
    ASSERT_TRUE(writer.Add(name, "F32", t.sizes().vec(), Bytes(t)).ok());
  }
  attnscore::testing::TempDir temp_{"attnscore_params_"};
  std::filesystem::path dir_ = temp_.path();
};

TEST_F(ParameterFileTest, SafetensorsRoundTripWithPrefixAndDirectoryLoad) {
  at::manual_seed(8);
  at::Tensor e = at::randn({8, 2, 4}), s = at::randn({8, 2}),
             u = at::randn({2, 4});
  SafetensorsWriter writer;
  AddTensor(writer, "layers.3.attn.key_pos_embeddings", e);
  AddTensor(writer, "layers.3.attn.key_pos_bias", s);
  AddTensor(writer, "layers.3.attn.query_pos_bias", u);
  AddTensor(writer, "layers.3.attn.query.linear.weight", at::randn({8, 8}));
  const std::string path = (dir_ / "xl.safetensors").string();
  ASSERT_TRUE(writer.Write(path).ok());

  absl::StatusOr<std::shared_ptr<const RelativeModel>> model =
      LoadRelativeModel(path, "xl", "layers.3.attn.");
  ASSERT_TRUE(model.ok()) << model.status();
  const AtenRelativeModel* aten = AsAten(**model);
  ASSERT_NE(aten, nullptr);
  EXPECT_TRUE(at::equal(aten->key_pos_embeddings(), e));
  EXPECT_TRUE(at::equal(aten->key_pos_bias(), s));
  EXPECT_TRUE(at::equal(aten->query_pos_bias(), u));
  EXPECT_EQ((*model)->info().max_relative_positions, 4);
  // Without a prefix, a unique nested match is found.
  ASSERT_TRUE(LoadRelativeModel(path, "xl").ok());

  absl::StatusOr<std::shared_ptr<const ModelSet>> set =
      LoadModelDir(dir_.string());
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_NE((*set)->Find("xl"), nullptr);
  EXPECT_EQ((*set)->Find("xl")->info().heads, 2);
  EXPECT_EQ((*set)->Find("missing"), nullptr);
}

// Moved from tests/service (RelativeValidationTest::SetUp and
// ListModelsAndRelativeRequests), which now use stand-in models so that they do
// not link LibTorch: what LoadModelDir reports for those two files.
TEST_F(ParameterFileTest, LoadModelDirDescribesSmallFloatFiles) {
  for (const auto& [name, p] :
       {std::pair<std::string, int64_t>{"small", 6}, {"tiny", 8}}) {
    SafetensorsWriter writer;  // H=2, D=8
    AddTensor(writer, "key_pos_embeddings", at::full({2 * p, 2, 8}, 0.1f));
    AddTensor(writer, "key_pos_bias", at::full({2 * p, 2}, 0.2f));
    AddTensor(writer, "query_pos_bias", at::full({2, 8}, 0.3f));
    ASSERT_TRUE(writer.Write((dir_ / (name + ".safetensors")).string()).ok());
  }
  absl::StatusOr<std::shared_ptr<const ModelSet>> set =
      LoadModelDir(dir_.string());
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ((*set)->models.size(), 2u);
  for (const auto& [name, p] :
       {std::pair<std::string, int64_t>{"small", 6}, {"tiny", 8}}) {
    std::shared_ptr<const RelativeModel> model = (*set)->Find(name);
    ASSERT_NE(model, nullptr) << name;
    EXPECT_EQ(model->info().name, name);
    EXPECT_EQ(model->info().heads, 2);
    EXPECT_EQ(model->info().head_dim, 8);
    EXPECT_EQ(model->info().max_relative_positions, p);
    EXPECT_THAT(model->info().source, HasSubstr(name + ".safetensors"));
  }
}

TEST_F(ParameterFileTest, BadShapesNameFileTensorAndExpectedShape) {
  SafetensorsWriter writer;
  AddTensor(writer, "key_pos_embeddings", at::randn({8, 2, 4}));
  AddTensor(writer, "key_pos_bias", at::randn({8, 3}));
  AddTensor(writer, "query_pos_bias", at::randn({2, 4}));
  const std::string path = (dir_ / "bad.safetensors").string();
  ASSERT_TRUE(writer.Write(path).ok());
  absl::Status status = LoadRelativeModel(path, "bad").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      std::string(status.message()),
      HasSubstr(
          path +
          ": tensor 'key_pos_bias' has shape [8,3], expected [8,2] (2P,H)"));
  // A broken file fails the whole directory, naming the file.
  absl::Status dir_status = LoadModelDir(dir_.string()).status();
  EXPECT_THAT(std::string(dir_status.message()), HasSubstr("bad.safetensors"));
  SafetensorsWriter missing;
  AddTensor(missing, "key_pos_embeddings", at::randn({8, 2, 4}));
  ASSERT_TRUE(missing.Write((dir_ / "missing.safetensors").string()).ok());
  EXPECT_THAT(std::string(LoadRelativeModel(
                              (dir_ / "missing.safetensors").string(), "m")
                              .status()
                              .message()),
              HasSubstr("no tensor 'key_pos_bias'"));
}

TEST_F(ParameterFileTest, LabmlStateDictRoundTrip) {
  // A real labml RelativeMultiHeadAttention when labml-nn is installed;
  // otherwise a module with the same parameter names. Either way
  // torch.save(module.state_dict()).
  const std::string pt = (dir_ / "labml.pt").string();
  const std::string ref = (dir_ / "labml_ref.safetensors").string();
  const std::string cmd = std::string(ATTNSCORE_VENV_PYTHON) + " " +
                          ATTNSCORE_LABML_FIXTURE_SCRIPT + " " + pt + " " + ref;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  absl::StatusOr<std::shared_ptr<const RelativeModel>> from_pt =
      LoadRelativeModel(pt, "labml");
  ASSERT_TRUE(from_pt.ok()) << from_pt.status();
  absl::StatusOr<std::shared_ptr<const RelativeModel>> from_st =
      LoadRelativeModel(ref, "labml");
  ASSERT_TRUE(from_st.ok()) << from_st.status();
  const AtenRelativeModel* pt_model = AsAten(**from_pt);
  const AtenRelativeModel* st_model = AsAten(**from_st);
  ASSERT_NE(pt_model, nullptr);
  ASSERT_NE(st_model, nullptr);
  EXPECT_TRUE(at::equal(pt_model->key_pos_embeddings(),
                        st_model->key_pos_embeddings()));
  EXPECT_TRUE(at::equal(pt_model->key_pos_bias(), st_model->key_pos_bias()));
  EXPECT_TRUE(
      at::equal(pt_model->query_pos_bias(), st_model->query_pos_bias()));
  EXPECT_EQ((*from_pt)->info().heads, 4);
}

}  // namespace
}  // namespace attnscore::scoring
