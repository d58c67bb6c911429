// The fused ALiBi logits kernel's steps (alibi_logits_tile.h) run on the CPU
// as the CUDA kernel runs them (alibi_logits_cuda.cu): every block's threads
// stage a chunk, then (the barrier) multiply it, then write their values;
// against the core (ComputeAttention) for ALiBi causal and bidirectional,
// key lengths including 0, query row tiles (a first position other than Lk -
// Lq, strided outputs), strided inputs, head dimensions and key lengths that
// do and do not allow quad loads and stores, and shapes off the 64 grid. A
// hidden tile's accumulators are NaN here: the kernel must not read them.
// On a CUDA device (ATTNSCORE_TEST_DEVICE=cuda, the device check) the kernel
// itself is compared with the library's products.
#include "server/scoring/alibi_logits_tile.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "server/scoring/alibi.h"
#include "server/scoring/alibi_logits.h"
#include "server/scoring/attention.h"
#include "server/scoring/batched_attention.h"
#include "tests/testing/golden.h"
#include "tests/testing/test_util.h"

namespace attnscore::scoring {
namespace {

using alibi_tile::AlibiLogitsArgs;
using alibi_tile::kChunk;
using alibi_tile::kPerThread;
using alibi_tile::kStride;
using alibi_tile::kThreads;
using ::attnscore::testing::CompareClose;

struct GridCounts {
  int64_t computed = 0;
  int64_t hidden = 0;
};

// The kernel's grid on the CPU: block by block, each phase for all 64 threads
// before the next, as the kernel's barriers order them.
GridCounts RunGridOnHost(const AlibiLogitsArgs& args) {
  GridCounts counts;
  alignas(16) float qs[kChunk][kStride];
  alignas(16) float ks[kChunk][kStride];
  static float acc[kThreads][kPerThread][kPerThread];
  const int64_t tiles = alibi_tile::TileCount(args);
  for (int64_t index = 0; index < tiles; ++index) {
    const alibi_tile::TileCoord tile = alibi_tile::TileOf(args, index);
    const bool hidden = alibi_tile::TileHidden(args, tile);
    const float fill = hidden ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
    for (auto& thread : acc) {
      for (auto& row : thread) {
        for (float& v : row) v = fill;
      }
    }
    if (hidden) {
      ++counts.hidden;
    } else {
      ++counts.computed;
      for (int64_t d0 = 0; d0 < args.head_dim; d0 += kChunk) {
        // Garbage between chunks: a value staged by no thread shows.
        for (auto& row : qs) {
          for (float& v : row) v = std::numeric_limits<float>::quiet_NaN();
        }
        for (auto& row : ks) {
          for (float& v : row) v = std::numeric_limits<float>::quiet_NaN();
        }
        for (int t = 0; t < kThreads; ++t) {
          alibi_tile::LoadChunk(args, tile, t, d0, qs, ks);
        }
        for (int t = 0; t < kThreads; ++t) {
          alibi_tile::MultiplyChunk(t, qs, ks, acc[t]);
        }
      }
    }
    for (int t = 0; t < kThreads; ++t) {
      alibi_tile::WriteTile(args, tile, t, acc[t]);
    }
  }
  return counts;
}

std::vector<float> Floats(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).cpu().contiguous();
  return std::vector<float>(c.data_ptr<float>(),
                            c.data_ptr<float>() + c.numel());
}

struct Problem {
  int64_t batch, heads, query_len, key_len, head_dim;
  bool causal;
  std::vector<int32_t> key_lengths;  // empty: all Lk
  int64_t row_tile;                  // query rows per launch (0: all)
  bool strided_inputs;               // q and k from a [B, S, H, D] layout
};

std::string Name(const Problem& p) {
  std::string name =
      "B" + std::to_string(p.batch) + "_H" + std::to_string(p.heads) + "_Lq" +
      std::to_string(p.query_len) + "_Lk" + std::to_string(p.key_len) + "_D" +
      std::to_string(p.head_dim) + (p.causal ? "_causal" : "_bidirectional");
  if (!p.key_lengths.empty()) name += "_lengths";
  if (p.row_tile > 0) name += "_rows" + std::to_string(p.row_tile);
  if (p.strided_inputs) name += "_strided";
  return name;
}

// For gtest's and ctest's test names (not a byte dump).
void PrintTo(const Problem& p, std::ostream* os) { *os << Name(p); }

// [B, H, S, D] random values, contiguous or a view of a [B, S, H, D] tensor.
at::Tensor Operand(const Problem& p, int64_t len) {
  if (p.strided_inputs) {
    return at::randn({p.batch, len, p.heads, p.head_dim}).transpose(1, 2);
  }
  return at::randn({p.batch, p.heads, len, p.head_dim});
}

AttentionConfig ConfigOf(const Problem& p) {
  AttentionConfig config;
  std::vector<float> slopes = AlibiSlopes(p.heads);
  slopes.back() = 0.0f;  // a zero slope: -inf must stay -inf, never NaN
  config.bias = ResolvedAlibi{slopes};
  config.causal = p.causal;
  config.scale = 0.37;
  return config;
}

// The launches of `p` on the CPU into `out`, one per row tile; also checks
// which quad paths the arguments chose.
GridCounts RunProblem(const Problem& p, const at::Tensor& q,
                      const at::Tensor& k, const AttentionConfig& config,
                      at::Tensor& out, bool* quad_loads, bool* quad_stores) {
  const std::vector<float>& slopes =
      std::get<ResolvedAlibi>(config.bias).slopes;
  AlibiLogitsOperands ops;
  ops.key = k;
  ops.neg_slopes = at::tensor(slopes, at::kFloat).neg();
  if (!p.key_lengths.empty()) {
    ops.key_lengths = at::tensor(
        std::vector<int64_t>(p.key_lengths.begin(), p.key_lengths.end()),
        at::kLong);
  }
  ops.scale = config.scale;
  ops.causal = config.causal;
  GridCounts total;
  const int64_t step = p.row_tile > 0 ? p.row_tile : p.query_len;
  for (int64_t row0 = 0; row0 < p.query_len; row0 += step) {
    const int64_t rows = std::min(step, p.query_len - row0);
    ops.query = q.narrow(2, row0, rows);
    ops.out = out.narrow(2, row0, rows);
    ops.first_position = p.key_len - p.query_len + row0;
    const AlibiLogitsArgs args = MakeAlibiLogitsArgs(ops);
    *quad_loads = args.quad_loads;
    *quad_stores = args.quad_stores;
    const GridCounts counts = RunGridOnHost(args);
    total.computed += counts.computed;
    total.hidden += counts.hidden;
  }
  return total;
}

class AlibiLogitsTileTest : public ::testing::TestWithParam<Problem> {};

// Runs `p` on the CPU grid from random inputs (seed `seed`) and compares
// every logit with the core's; returns the quad flags of the last launch.
std::pair<bool, bool> ExpectMatchesTheCore(const Problem& p, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor q = Operand(p, p.query_len);
  const at::Tensor k = Operand(p, p.key_len);
  const AttentionConfig config = ConfigOf(p);
  const at::Tensor want =
      ComputeAttention(q, k, at::Tensor(), p.key_lengths, config, nullptr)
          .logits;
  // NaN where nothing was written.
  at::Tensor got =
      at::full({p.batch, p.heads, p.query_len, p.key_len},
               std::numeric_limits<float>::quiet_NaN(), at::kFloat);
  bool quad_loads = false;
  bool quad_stores = false;
  RunProblem(p, q, k, config, got, &quad_loads, &quad_stores);
  EXPECT_EQ(CompareClose(Floats(got), Floats(want), 1e-5, 1e-5), "");
  return {quad_loads, quad_stores};
}

TEST_P(AlibiLogitsTileTest, MatchesTheCore) {
  const Problem& p = GetParam();
  const auto [quad_loads, quad_stores] = ExpectMatchesTheCore(p, 11);
  // Every stride and row offset is a multiple of D (inputs) or Lk (out).
  EXPECT_EQ(quad_loads, p.head_dim % 4 == 0);
  EXPECT_EQ(quad_stores, p.key_len % 4 == 0);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AlibiLogitsTileTest,
    ::testing::Values(
        // One element; off-grid everything; scalar loads and stores.
        Problem{1, 1, 1, 1, 1, true, {}, 0, false},
        Problem{2, 3, 5, 7, 3, false, {}, 0, false},
        Problem{2, 3, 5, 7, 3, true, {7, 2}, 0, false},
        // Exactly one tile, quads both ways, several chunks.
        Problem{2, 2, 64, 64, 64, true, {}, 0, false},
        Problem{2, 2, 64, 64, 64, false, {}, 0, false},
        // Tiles off the grid on both axes, Lq < Lk (decode-like offsets),
        // a head dimension that is not a multiple of the chunk.
        Problem{2, 2, 65, 130, 20, true, {}, 0, false},
        Problem{3, 2, 100, 200, 24, true, {200, 0, 57}, 0, false},
        Problem{3, 2, 100, 200, 24, false, {200, 0, 57}, 0, false},
        // Decode steps: one query row against many keys.
        Problem{4, 3, 1, 300, 64, true, {300, 1, 0, 129}, 0, false},
        // Lq > Lk: early rows see no key when causal.
        Problem{1, 2, 90, 40, 8, true, {}, 0, false},
        // Query row tiles (first position moves, out rows strided) and
        // strided inputs.
        Problem{2, 3, 150, 150, 32, true, {150, 77}, 48, false},
        Problem{2, 3, 150, 152, 32, false, {}, 70, true},
        Problem{2, 3, 128, 128, 6, true, {}, 64, true}),
    [](const ::testing::TestParamInfo<Problem>& info) {
      return Name(info.param);
    });

// Random shapes besides the chosen ones: every size from 1 up across tile and
// chunk edges, key lengths from 0 to Lk, row tiles of any height.
TEST(AlibiLogitsTileRandomTest, MatchesTheCoreOnRandomShapes) {
  std::mt19937 rng(20261204);
  const auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  for (int trial = 0; trial < 40; ++trial) {
    Problem p{uniform(1, 3),
              uniform(1, 4),
              uniform(1, 140),
              uniform(1, 140),
              uniform(1, 70),
              uniform(0, 1) == 1,
              {},
              0,
              uniform(0, 1) == 1};
    if (uniform(0, 1) == 1) {
      for (int64_t b = 0; b < p.batch; ++b) {
        p.key_lengths.push_back(static_cast<int32_t>(uniform(0, p.key_len)));
      }
    }
    if (uniform(0, 1) == 1) p.row_tile = uniform(1, p.query_len);
    SCOPED_TRACE(Name(p));
    ExpectMatchesTheCore(p, static_cast<uint64_t>(trial));
  }
}

// Causal tiles wholly above the diagonal are not computed: for L = 512 in
// tiles of 64, 28 of the 64 tiles of each (b, h).
TEST(AlibiLogitsTileGridTest, SkipsTheTilesCausalHides) {
  const Problem p{1, 2, 512, 512, 4, true, {}, 0, false};
  at::manual_seed(3);
  const at::Tensor q = Operand(p, p.query_len);
  const at::Tensor k = Operand(p, p.key_len);
  const AttentionConfig config = ConfigOf(p);
  at::Tensor got = at::empty({1, 2, 512, 512}, at::kFloat);
  bool quad_loads = false;
  bool quad_stores = false;
  const GridCounts counts =
      RunProblem(p, q, k, config, got, &quad_loads, &quad_stores);
  EXPECT_EQ(counts.hidden, 2 * 28);
  EXPECT_EQ(counts.computed, 2 * 36);
  // And a key length of 100 hides every tile from key 128 on as well.
  Problem short_keys = p;
  short_keys.key_lengths = {100};
  short_keys.heads = 1;
  const at::Tensor q1 = Operand(short_keys, 512);
  const at::Tensor k1 = Operand(short_keys, 512);
  at::Tensor got1 = at::empty({1, 1, 512, 512}, at::kFloat);
  const GridCounts short_counts =
      RunProblem(short_keys, q1, k1, ConfigOf(short_keys), got1, &quad_loads,
                 &quad_stores);
  // Key tiles 0 and 1 hold keys below 100: row tile 0 computes key tile 0
  // (causal hides 1), row tiles 1..7 compute both.
  EXPECT_EQ(short_counts.computed, 1 + 7 * 2);
  EXPECT_EQ(short_counts.hidden, 64 - 15);
}

TEST(AlibiLogitsArgsTest, RefusesMismatchedOperands) {
  AlibiLogitsOperands ops;
  ops.query = at::randn({1, 2, 3, 4});
  ops.key = at::randn({1, 2, 5, 4});
  ops.neg_slopes = at::randn({2});
  ops.out = at::empty({1, 2, 3, 5});
  EXPECT_NO_THROW(MakeAlibiLogitsArgs(ops));
  AlibiLogitsOperands wrong_out = ops;
  wrong_out.out = at::empty({1, 2, 3, 4});
  EXPECT_THROW(MakeAlibiLogitsArgs(wrong_out), c10::Error);
  AlibiLogitsOperands wrong_key = ops;
  wrong_key.key = at::randn({1, 2, 5, 3});
  EXPECT_THROW(MakeAlibiLogitsArgs(wrong_key), c10::Error);
  AlibiLogitsOperands wrong_dtype = ops;
  wrong_dtype.query = ops.query.to(at::kDouble);
  EXPECT_THROW(MakeAlibiLogitsArgs(wrong_dtype), c10::Error);
  AlibiLogitsOperands strided_last = ops;
  strided_last.query = at::randn({1, 2, 4, 3}).transpose(2, 3);
  EXPECT_THROW(MakeAlibiLogitsArgs(strided_last), c10::Error);
  AlibiLogitsOperands wrong_lengths = ops;
  wrong_lengths.key_lengths = at::tensor(std::vector<int32_t>{5}, at::kInt);
  EXPECT_THROW(MakeAlibiLogitsArgs(wrong_lengths), c10::Error);
}

// The kernel itself where it runs (a CUDA device under the device check);
// on the CPU it does not exist, and running it says so.
TEST(AlibiLogitsKernelTest, MatchesTheLibraryProductsOnTheDevice) {
  const at::Device device(attnscore::testing::TestDevice());
  if (!AlibiLogitsKernelAvailable(device)) {
    AlibiLogitsOperands ops;
    ops.query = at::randn({1, 1, 1, 4});
    EXPECT_THROW(RunAlibiLogitsKernel(ops), c10::Error);
    GTEST_SKIP() << "no kernel for " << device
                 << ": its steps are checked on the CPU above";
  }
  at::manual_seed(5);
  const at::TensorOptions on = at::TensorOptions().device(device);
  const at::Tensor q = at::randn({3, 8, 512, 64}, on);
  const at::Tensor k = at::randn({3, 8, 512, 64}, on);
  for (const bool causal : {true, false}) {
    SCOPED_TRACE(causal);
    AttentionConfig config;
    config.bias = ResolvedAlibi{AlibiSlopes(8)};
    config.causal = causal;
    config.scale = 0.125;
    const std::vector<int32_t> lengths = {512, 300, 0};
    const at::Tensor kernel =
        BatchedAttention(q, k, at::Tensor(), lengths, config, 0, true).logits;
    const at::Tensor library =
        BatchedAttention(q, k, at::Tensor(), lengths, config, 0, false).logits;
    EXPECT_EQ(CompareClose(Floats(kernel), Floats(library), 1e-5, 1e-5), "");
  }
}

}  // namespace
}  // namespace attnscore::scoring
