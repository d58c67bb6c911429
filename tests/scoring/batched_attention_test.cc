// The batched accelerator path (batched_attention.h) on the CPU, so that its
// math is checked in every CI run: every golden case to the float32 tolerance
// with identical -inf positions (all outputs, then the context alone), 16-bit
// inputs against the per-block core on the same rounded inputs, and random
// shapes against ComputeAttention (ALiBi and relative, causal and not, key
// lengths including 0, decode steps, several query tiles).
#include "server/scoring/batched_attention.h"

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/aten_dtype.h"
#include "common/dtype.h"
#include "common/layout.h"
#include "gtest/gtest.h"
#include "server/scoring/alibi.h"
#include "server/scoring/attention.h"
#include "server/scoring/batched_estimate.h"
#include "server/scoring/fused_attention.h"
#include "server/scoring/relative_model.h"
#include "server/scoring/staging.h"
#include "tests/scoring/memory_probe.h"
#include "tests/testing/golden.h"
#include "tests/testing/test_util.h"

namespace attnscore::scoring {
namespace {

using ::attnscore::testing::CompareClose;
using ::attnscore::testing::GoldenCase;

// The device under test (tests/testing/test_util.h).
at::Device TestDevice() { return at::Device(attnscore::testing::TestDevice()); }

std::vector<float> Floats(const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).cpu().contiguous();
  return std::vector<float>(c.data_ptr<float>(),
                            c.data_ptr<float>() + c.numel());
}

at::Tensor ToTensor(const std::vector<float>& values,
                    const std::vector<int64_t>& shape) {
  return at::tensor(values, at::kFloat).view(shape).to(TestDevice());
}

const std::vector<GoldenCase>& Cases() {
  return attnscore::testing::GoldenCases();
}

// One golden case's tensors and config (the relative model kept alive here).
struct GoldenInputs {
  at::Tensor q, k, v;
  std::shared_ptr<const AtenRelativeModel> model;
  AttentionConfig config;
};

GoldenInputs MakeGoldenInputs(const GoldenCase& c) {
  GoldenInputs in;
  in.q = ToTensor(c.Floats("q"), c.Shape("q"));
  in.k = ToTensor(c.Floats("k"), c.Shape("k"));
  if (c.has("v")) in.v = ToTensor(c.Floats("v"), c.Shape("v"));
  const int64_t heads = in.q.size(1);
  if (c.relative()) {
    in.model = *AtenRelativeModel::Create(
        c.name, c.name,
        ToTensor(c.Floats("key_pos_embeddings"), c.Shape("key_pos_embeddings")),
        ToTensor(c.Floats("key_pos_bias"), c.Shape("key_pos_bias")),
        ToTensor(c.Floats("query_pos_bias"), c.Shape("query_pos_bias")));
    in.config.bias = ResolvedRelative{in.model.get()};
  } else {
    in.config.bias = ResolvedAlibi{c.has("slopes") ? c.Floats("slopes")
                                                   : AlibiSlopes(heads)};
  }
  in.config.causal = c.causal();
  in.config.scale =
      c.scale().value_or(1.0 / std::sqrt(static_cast<double>(in.q.size(3))));
  in.config.want_logits = true;
  in.config.want_probs = true;
  in.config.want_context = c.has("v");
  return in;
}

// The per-block core (attention.h) on CPU copies of the inputs: the reference
// for whatever device the batched path runs on.
AttentionResult CoreOnCpu(const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v,
                          const std::vector<int32_t>& lengths,
                          AttentionConfig config) {
  std::shared_ptr<const AtenRelativeModel> cpu_model;
  if (const auto* relative = std::get_if<ResolvedRelative>(&config.bias)) {
    const AtenRelativeModel& m = *relative->model;
    cpu_model = *AtenRelativeModel::Create(
        "cpu", "test", m.key_pos_embeddings().cpu(), m.key_pos_bias().cpu(),
        m.query_pos_bias().cpu());
    config.bias = ResolvedRelative{cpu_model.get()};
  }
  return ComputeAttention(q.cpu(), k.cpu(), v.defined() ? v.cpu() : v, lengths,
                          config, nullptr);
}

TEST(BatchedAttentionGoldenTest, Float32MatchesEveryOutput) {
  ASSERT_EQ(Cases().size(), 18u) << attnscore::testing::GoldenDir();
  for (const GoldenCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const GoldenInputs in = MakeGoldenInputs(c);
    const std::vector<int32_t> lengths = c.key_lengths();
    // One tile, then one query row per tile.
    for (int64_t tile : {int64_t{0}, int64_t{1}}) {
      SCOPED_TRACE(tile);
      AttentionResult r =
          BatchedAttention(in.q, in.k, in.v, lengths, in.config, tile);
      EXPECT_EQ(r.logits.sizes().vec(), c.Shape("expected_logits"));
      EXPECT_EQ(CompareClose(Floats(r.logits), c.Floats("expected_logits"),
                             1e-4, 1e-4),
                "");
      EXPECT_EQ(
          CompareClose(Floats(r.probs), c.Floats("expected_probs"), 1e-4, 1e-4),
          "");
      if (c.has("expected_context")) {
        EXPECT_EQ(CompareClose(Floats(r.context), c.Floats("expected_context"),
                               1e-4, 1e-4),
                  "");
      }
    }
  }
}

// The context alone takes the fused attention (ALiBi, LibTorch >= 2.1) or
// query tiles, and must give the same numbers.
TEST(BatchedAttentionGoldenTest, ContextAloneMatches) {
  int checked = 0;
  for (const GoldenCase& c : Cases()) {
    if (!c.has("expected_context")) continue;
    SCOPED_TRACE(c.name);
    GoldenInputs in = MakeGoldenInputs(c);
    in.config.want_logits = false;
    in.config.want_probs = false;
    AttentionResult r =
        BatchedAttention(in.q, in.k, in.v, c.key_lengths(), in.config);
    EXPECT_FALSE(r.logits.defined());
    EXPECT_FALSE(r.probs.defined());
    EXPECT_EQ(r.context.sizes().vec(), c.Shape("expected_context"));
    EXPECT_EQ(CompareClose(Floats(r.context), c.Floats("expected_context"),
                           1e-4, 1e-4),
              "");
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

// 16-bit inputs reach the path as float32 values rounded to the 16-bit grid
// (the scorer decodes them): the batched path and the per-block core must
// agree on them to float32 accuracy.
TEST(BatchedAttentionGoldenTest, SixteenBitInputsMatchTheCore) {
  for (at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    for (const GoldenCase& c : Cases()) {
      SCOPED_TRACE(c.name + " " + std::string(c10::toString(dtype)));
      GoldenInputs in = MakeGoldenInputs(c);
      in.q = in.q.to(dtype).to(at::kFloat);
      in.k = in.k.to(dtype).to(at::kFloat);
      if (in.v.defined()) in.v = in.v.to(dtype).to(at::kFloat);
      const std::vector<int32_t> lengths = c.key_lengths();
      AttentionResult got =
          BatchedAttention(in.q, in.k, in.v, lengths, in.config);
      AttentionResult want = CoreOnCpu(in.q, in.k, in.v, lengths, in.config);
      EXPECT_EQ(
          CompareClose(Floats(got.logits), Floats(want.logits), 1e-4, 1e-4),
          "");
      EXPECT_EQ(CompareClose(Floats(got.probs), Floats(want.probs), 1e-4, 1e-4),
                "");
      if (in.v.defined()) {
        EXPECT_EQ(
            CompareClose(Floats(got.context), Floats(want.context), 1e-4, 1e-4),
            "");
      }
    }
  }
}

// A random problem in canonical BHSD.
struct Shape {
  int64_t batch, heads, query_len, key_len, head_dim, value_dim;
  bool relative, causal;
  std::vector<int32_t> key_lengths;
};

class BatchedVersusCoreTest : public ::testing::TestWithParam<Shape> {};

std::shared_ptr<const AtenRelativeModel> RandomModel(int64_t heads, int64_t dim,
                                                     int64_t positions) {
  const at::TensorOptions on = at::TensorOptions().device(TestDevice());
  return *AtenRelativeModel::Create(
      "random", "test", at::randn({2 * positions, heads, dim}, on),
      at::randn({2 * positions, heads}, on), at::randn({heads, dim}, on));
}

void ExpectSame(const AttentionResult& got, const AttentionResult& want,
                const AttentionConfig& config) {
  if (config.want_logits) {
    EXPECT_EQ(CompareClose(Floats(got.logits), Floats(want.logits), 1e-4, 1e-4),
              "");
  }
  if (config.want_probs) {
    EXPECT_EQ(CompareClose(Floats(got.probs), Floats(want.probs), 1e-4, 1e-4),
              "");
  }
  if (config.want_context) {
    EXPECT_EQ(
        CompareClose(Floats(got.context), Floats(want.context), 1e-4, 1e-4),
        "");
  }
}

TEST_P(BatchedVersusCoreTest, MatchesComputeAttention) {
  const Shape& s = GetParam();
  at::manual_seed(7);
  const at::TensorOptions on = at::TensorOptions().device(TestDevice());
  const at::Tensor q =
      at::randn({s.batch, s.heads, s.query_len, s.head_dim}, on);
  const at::Tensor k = at::randn({s.batch, s.heads, s.key_len, s.head_dim}, on);
  const at::Tensor v =
      at::randn({s.batch, s.heads, s.key_len, s.value_dim}, on);
  std::shared_ptr<const AtenRelativeModel> model;
  AttentionConfig config;
  if (s.relative) {
    model = RandomModel(s.heads, s.head_dim, s.key_len + 3);
    config.bias = ResolvedRelative{model.get()};
  } else {
    config.bias = ResolvedAlibi{AlibiSlopes(s.heads)};
  }
  config.causal = s.causal;
  config.scale = 0.3;
  config.want_probs = true;
  config.want_context = true;
  const AttentionResult want = CoreOnCpu(q, k, v, s.key_lengths, config);
  for (int64_t tile : {int64_t{0}, int64_t{1}, int64_t{3}}) {
    SCOPED_TRACE(tile);
    ExpectSame(BatchedAttention(q, k, v, s.key_lengths, config, tile), want,
               config);
  }
  // Each output alone, and the context alone (the fused or the tiled path).
  for (int which = 0; which < 3; ++which) {
    SCOPED_TRACE(which);
    AttentionConfig one = config;
    one.want_logits = which == 0;
    one.want_probs = which == 1;
    one.want_context = which == 2;
    const AttentionResult got =
        BatchedAttention(q, k, one.want_context ? v : at::Tensor(),
                         s.key_lengths, one, which == 2 ? 2 : 0);
    EXPECT_EQ(got.logits.defined(), one.want_logits);
    EXPECT_EQ(got.probs.defined(), one.want_probs);
    EXPECT_EQ(got.context.defined(), one.want_context);
    ExpectSame(got, want, one);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, BatchedVersusCoreTest,
    ::testing::Values(
        Shape{2, 4, 9, 9, 8, 8, false, true, {}},
        Shape{3, 2, 5, 12, 4, 6, false, true, {12, 0, 7}},
        Shape{2, 3, 1, 17, 8, 8, false, true, {17, 3}},  // decode step
        Shape{2, 2, 6, 4, 8, 5, false, false, {4, 0}},   // Lq > Lk
        Shape{1, 5, 7, 7, 16, 16, false, false, {}},
        Shape{2, 4, 9, 9, 8, 8, true, true, {}},
        Shape{3, 2, 5, 12, 4, 6, true, true, {12, 0, 7}},
        Shape{2, 3, 1, 17, 8, 8, true, true, {17, 3}},
        Shape{2, 2, 6, 4, 8, 5, true, false, {4, 0}},
        Shape{4, 1, 3, 8, 4, 4, true, false, {8, 8, 1, 0}}));

// A zero ALiBi slope (a head without a distance penalty) must still hide
// causal keys with -inf: the bias is -m * d plus a -inf term, never -m * inf
// (NaN for m = 0). Every output, one tile and several, and the context alone.
TEST(BatchedAttentionTest, ZeroSlopeKeepsTheCausalMask) {
  at::manual_seed(11);
  const at::TensorOptions on = at::TensorOptions().device(TestDevice());
  const at::Tensor q = at::randn({2, 3, 5, 8}, on);
  const at::Tensor k = at::randn({2, 3, 7, 8}, on);
  const at::Tensor v = at::randn({2, 3, 7, 4}, on);
  AttentionConfig config;
  config.bias = ResolvedAlibi{{0.0F, 0.5F, 0.0F}};
  config.causal = true;
  config.scale = 0.4;
  config.want_probs = true;
  config.want_context = true;
  const AttentionResult want = CoreOnCpu(q, k, v, {}, config);
  ASSERT_EQ(at::isnan(want.logits).sum().item<int64_t>(), 0);
  for (int64_t tile : {int64_t{0}, int64_t{2}}) {
    SCOPED_TRACE(tile);
    ExpectSame(BatchedAttention(q, k, v, {}, config, tile), want, config);
    AttentionConfig context_only = config;
    context_only.want_logits = false;
    context_only.want_probs = false;
    ExpectSame(BatchedAttention(q, k, v, {}, context_only, tile), want,
               context_only);
  }
}

TEST(BatchedEstimateTest, CoversOutputsAndBoundsTheTile) {
  ScoreSpec spec;
  spec.want_logits = true;
  spec.want_probs = true;
  spec.want_context = true;
  const ProblemSize size{8, 8, 512, 512, 64, 64};
  const ResourceEstimate estimate = EstimateBatchedResources(spec, size, {});
  const int64_t scores = int64_t{8} * 8 * 512 * 512;
  EXPECT_GE(estimate.peak_bytes, 2 * scores * 4 + 2 * scores * 4);
  EXPECT_NE(estimate.breakdown.find("batched path"), std::string::npos);
  // A long key axis takes several tiles, each within the tile budget.
  const ProblemSize big{8, 32, 4096, 4096, 128, 128};
  const int64_t tile = BatchedQueryTile(big, false);
  EXPECT_LT(tile, big.query_len);
  EXPECT_LE(tile * 8 * 32 * 4096 * 4, kBatchedTileBytes);
  EXPECT_GT(BatchedQueryTile(big, true), tile);
  // 16-bit inputs are converted where they compute: the largest one's 16-bit
  // copy (here the keys, B*H*Lk*D) lives beside the float32 inputs meanwhile.
  ProblemSize half_keys{8, 8, 1, 2048, 64, 0};
  half_keys.convert_cols = 64;
  ProblemSize float_keys = half_keys;
  float_keys.convert_cols = 0;
  EXPECT_EQ(EstimateBatchedResources(spec, half_keys, {}).peak_bytes -
                EstimateBatchedResources(spec, float_keys, {}).peak_bytes,
            int64_t{8} * 8 * 2048 * 64 * 2);
  // Saturates instead of overflowing.
  const ProblemSize huge{1 << 20, 1 << 10, 1 << 20, 1 << 20, 1 << 10, 1 << 10};
  EXPECT_EQ(EstimateBatchedResources(spec, huge, {true, true}).peak_bytes,
            std::numeric_limits<int64_t>::max());
  // The fused path applies to the context alone, with ALiBi.
  ScoreSpec context_only;
  context_only.want_logits = false;
  context_only.want_context = true;
  EXPECT_TRUE(UsesFusedAttention(context_only, true));
  EXPECT_FALSE(UsesFusedAttention(context_only, false));
  EXPECT_FALSE(UsesFusedAttention(spec, true));
}

// Where the ALiBi kernel computes the logits (a CUDA device), a tile it takes
// needs none of the library's bias scratch: [T, Lk] positions (2 x 13 bytes
// a cell) and the [H, T, Lk] bias (2 x 4 bytes a head and cell); only the
// [B, 1, 1, Lk] key masks and the lengths remain (B x (Lk + 9) bytes). A last
// tile too short for the kernel keeps the library's scratch for its rows;
// relative bias, decode steps and the fused attention are as without it.
TEST(BatchedEstimateTest, KernelTilesTakeNoBiasScratch) {
  const BatchedKernels library{false, false};
  const BatchedKernels kernel{false, true};
  const auto saved = [](const ScoreSpec& spec, const ProblemSize& size) {
    return EstimateBatchedResources(spec, size, {false, false}).peak_bytes -
           EstimateBatchedResources(spec, size, {false, true}).peak_bytes;
  };
  const auto bias = [](int64_t rows, int64_t heads, int64_t keys) {
    return rows * keys * (26 + 8 * heads);
  };
  ScoreSpec spec;
  spec.causal = true;
  // One tile of 512 rows.
  const ProblemSize prefill{8, 8, 512, 512, 64, 64};
  EXPECT_EQ(saved(spec, prefill), bias(512, 8, 512) - 8 * (512 + 9));
  EXPECT_NE(EstimateBatchedResources(spec, prefill, kernel)
                .breakdown.find("ALiBi logits kernel"),
            std::string::npos);
  EXPECT_EQ(EstimateBatchedResources(spec, prefill, library)
                .breakdown.find("ALiBi logits kernel"),
            std::string::npos);
  // Tiles of 256 rows (1 MiB of logits a row): the last one of 32 rows is
  // the kernel's too, one of 8 rows the library's.
  const ProblemSize long_keys{8, 8, 544, 4096, 64, 64};
  ASSERT_EQ(BatchedQueryTile(long_keys, false), 256);
  EXPECT_EQ(saved(spec, long_keys), bias(256, 8, 4096) - 8 * (4096 + 9));
  const ProblemSize short_last{8, 8, 520, 4096, 64, 64};
  EXPECT_EQ(saved(spec, short_last),
            bias(256, 8, 4096) - 8 * (4096 + 9) - bias(8, 8, 4096));
  // Probabilities and the context (tiles) take the kernel's logits too.
  spec.want_probs = true;
  spec.want_context = true;
  EXPECT_EQ(saved(spec, prefill), bias(512, 8, 512) - 8 * (512 + 9));
  // No saving: a decode step, the fused attention, relative bias.
  EXPECT_EQ(saved(spec, ProblemSize{32, 8, 1, 2048, 64, 64}), 0);
  ScoreSpec context_only = spec;
  context_only.want_logits = false;
  context_only.want_probs = false;
  EXPECT_EQ(
      EstimateBatchedResources(context_only, prefill, {true, false}).peak_bytes,
      EstimateBatchedResources(context_only, prefill, {true, true}).peak_bytes);
  spec.bias = RelativeBias{};
  EXPECT_EQ(saved(spec, prefill), 0);
}

// One request's peak on the batched path, measured in a child process on the
// test device (resident memory on the CPU; on a GPU the allocator's bytes,
// with the ALiBi kernel's tiles), never exceeds its estimate: ALiBi and
// relative, causal and not, every output, 16-bit inputs, decode steps, the
// context alone, and several query tiles with a last one too short for the
// kernel.
TEST(BatchedMemoryTest, EstimateBoundsMeasuredPeak) {
  constexpr double kMiB = 1 << 20;
  for (const char* args : {
           "alibi causal 2 4 1024 1024 32 32 l float32",
           "alibi full 2 4 1024 1024 32 32 lp float32",
           "alibi causal 2 4 1024 1024 32 32 lpc float16",
           "alibi causal 2 4 1024 1024 32 32 c float32",
           "relative causal 2 4 1024 1024 32 32 lp float32",
           "relative full 2 4 1024 1024 32 32 c float16",
           "alibi causal 16 4 1 4096 32 32 lp float16",
           "relative causal 16 4 1 4096 32 32 lp float32",
           "alibi causal 2 4 1040 8192 32 32 l float32",
       }) {
    const ProbedMemory probed = ProbeMemory(
        absl::StrCat(args, " batched ", attnscore::testing::TestDevice()));
    ASSERT_GE(probed.growth, 0) << args;
    std::printf("%s: growth %.1f MiB, estimate %.1f MiB\n", args,
                static_cast<double>(probed.growth) / kMiB,
                static_cast<double>(probed.estimate) / kMiB);
    EXPECT_LE(probed.growth, probed.estimate) << args;
  }
}

TEST(FusedAttentionTest, DescribesItself) {
  const std::string description = FusedAttentionDescription();
  EXPECT_NE(description.find(FusedAttentionAvailable() ? "scaled_dot_product"
                                                       : "not available"),
            std::string::npos)
      << description;
}

// Staging (staging.h): items of 1, 2 and 3 batch rows, in both layouts and
// every input dtype, from pageable memory and (on a GPU) page-locked memory,
// whose batches go to the device by one copy per item.
struct StagedItems {
  std::vector<at::Tensor> owners;  // the items' bytes, [B_i,H,S,D] or BSHD
  std::vector<ScoreItem> items;
  at::Tensor expected;  // the items stacked on the batch axis, on the CPU
};

StagedItems MakeStagedItems(Layout layout, DType dtype, bool page_locked) {
  at::manual_seed(5);
  StagedItems out;
  std::vector<at::Tensor> parts;
  for (int64_t b : {1, 2, 3}) {
    const std::vector<int64_t> shape = layout == Layout::kBHSD
                                           ? std::vector<int64_t>{b, 2, 5, 4}
                                           : std::vector<int64_t>{b, 5, 2, 4};
    at::Tensor t = at::randn(shape).to(ToScalarType(dtype));
    if (page_locked) t = t.pin_memory();
    parts.push_back(t);
    ScoreItem item;
    item.query = TensorRef{dtype, shape, t.data_ptr(), t.nbytes()};
    out.items.push_back(item);
    out.owners.push_back(t);
  }
  out.expected = at::cat(parts, 0);
  return out;
}

const TensorRef& PickQueryOf(const ScoreItem& item) { return item.query; }

TEST(StagingTest, StackOnDeviceAndStackOnHostStackTheSameBytes) {
  const at::Device device = TestDevice();
  for (Layout layout : {Layout::kBHSD, Layout::kBSHD}) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      for (bool as_sent : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << LayoutName(layout) << " " << DTypeName(dtype)
                     << (as_sent ? " as sent" : " as float32"));
        const StagedItems staged = MakeStagedItems(layout, dtype, false);
        const at::ScalarType type = as_sent ? ToScalarType(dtype) : at::kFloat;
        const at::Tensor want = staged.expected.to(type);
        const at::Tensor direct =
            StackOnDevice(staged.items, PickQueryOf, layout, device, type);
        const at::Tensor host =
            StackOnHost(staged.items, PickQueryOf, layout, device, type);
        EXPECT_EQ(direct.device(), device);
        EXPECT_TRUE(host.is_cpu());
        EXPECT_EQ(direct.scalar_type(), type);
        EXPECT_EQ(host.scalar_type(), type);
        EXPECT_TRUE(at::equal(direct.cpu(), want));
        EXPECT_TRUE(at::equal(host, want));
      }
    }
  }
}

// What the batched path's Gather gives, wherever the bytes lie: the items
// stacked as float32 on the device, exactly (16-bit inputs widened there).
TEST(StagingTest, GatherGivesTheStackedFloat32ValuesOnTheDevice) {
  const at::Device device = TestDevice();
  const bool gpu = !device.is_cpu();
  for (bool page_locked : {false, true}) {
    if (page_locked && !gpu) continue;  // pinned memory needs a GPU
    for (Layout layout : {Layout::kBHSD, Layout::kBSHD}) {
      for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        SCOPED_TRACE(::testing::Message()
                     << LayoutName(layout) << " " << DTypeName(dtype)
                     << (page_locked ? " page-locked" : " pageable"));
        const StagedItems staged = MakeStagedItems(layout, dtype, page_locked);
        const at::Tensor want = staged.expected.to(at::kFloat);
        for (size_t n : {size_t{1}, size_t{3}}) {
          const absl::Span<const ScoreItem> items(staged.items.data(), n);
          const at::Tensor got = Gather(items, PickQueryOf, layout, device);
          EXPECT_EQ(got.device(), device);
          EXPECT_EQ(got.scalar_type(), at::kFloat);
          EXPECT_TRUE(at::equal(got.cpu(), want.narrow(0, 0, n == 1 ? 1 : 6)));
        }
      }
    }
  }
}

// The CPU's blocked path reads a lone aligned item where it lies (float32
// always, 16-bit keys and values as they are); queries in 16-bit, stacked
// items and bytes off their alignment are staged as float32.
TEST(StagingTest, GatherReadsALoneCpuItemInPlace) {
  const at::Device cpu(at::kCPU);
  const StagedItems f32 =
      MakeStagedItems(Layout::kBHSD, DType::kFloat32, false);
  const StagedItems f16 =
      MakeStagedItems(Layout::kBHSD, DType::kFloat16, false);
  const absl::Span<const ScoreItem> lone32(f32.items.data(), 1);
  const absl::Span<const ScoreItem> lone16(f16.items.data(), 1);
  for (bool in_place_16 : {false, true}) {
    EXPECT_EQ(
        Gather(lone32, PickQueryOf, Layout::kBHSD, cpu, in_place_16).data_ptr(),
        f32.items[0].query.data);
  }
  const at::Tensor in_place =
      Gather(lone16, PickQueryOf, Layout::kBHSD, cpu, /*in_place_16=*/true);
  EXPECT_EQ(in_place.data_ptr(), f16.items[0].query.data);
  EXPECT_EQ(in_place.scalar_type(), at::kHalf);
  {
    const at::Tensor widened = Gather(lone16, PickQueryOf, Layout::kBHSD, cpu);
    EXPECT_NE(widened.data_ptr(), f16.items[0].query.data);
    EXPECT_EQ(widened.scalar_type(), at::kFloat);
    EXPECT_TRUE(
        at::equal(widened, f16.expected.narrow(0, 0, 1).to(at::kFloat)));
  }
  // One byte off: staged, even for keys and values.
  std::vector<unsigned char> odd(f16.items[0].query.size_bytes + 1);
  std::memcpy(odd.data() + 1, f16.items[0].query.data,
              f16.items[0].query.size_bytes);
  ScoreItem shifted = f16.items[0];
  shifted.query.data = odd.data() + 1;
  const at::Tensor staged = Gather({&shifted, 1}, PickQueryOf, Layout::kBHSD,
                                   cpu, /*in_place_16=*/true);
  EXPECT_EQ(staged.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(staged, f16.expected.narrow(0, 0, 1).to(at::kFloat)));
}

}  // namespace
}  // namespace attnscore::scoring
