// The blocked CPU path (blocked_attention.h) against the materialised path
// (ComputeAttention) and the literal port, at tile edges, with every
// combination of outputs; cancellation; the overflow checks of validation;
// and peak memory, measured in a child process, against the estimate.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/literal_port.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/scoring/alibi.h"
#include "server/scoring/aten_scorer.h"
#include "server/scoring/blocked_attention.h"
#include "server/scoring/blocked_tiling.h"
#include "server/scoring/relative_model.h"
#include "server/scoring/resource_estimate.h"
#include "server/scoring/row_loops.h"
#include "server/scoring/validation.h"
#include "tests/scoring/memory_probe.h"

namespace attnscore::scoring {
namespace {

using ::testing::HasSubstr;

struct Case {
  at::Tensor q, k, v;
  std::shared_ptr<const AtenRelativeModel> model;
  std::vector<int32_t> lengths;
};

Case RandomCase(int64_t b, int64_t h, int64_t lq, int64_t lk, int64_t d,
                int64_t dv, bool relative, bool lengths) {
  Case c;
  c.q = at::randn({b, h, lq, d});
  c.k = at::randn({b, h, lk, d});
  c.v = at::randn({b, h, lk, dv});
  if (relative) {
    const int64_t p = std::max(lq, lk) + 3;
    c.model =
        *AtenRelativeModel::Create("m", "test", at::randn({2 * p, h, d}),
                                   at::randn({2 * p, h}), at::randn({h, d}));
  }
  if (lengths) {
    for (int64_t i = 0; i < b; ++i) {
      // 0 (no visible key), a partial length and the full length in turn.
      const int64_t kind = i % 3;
      c.lengths.push_back(
          static_cast<int32_t>(kind == 0   ? 0
                               : kind == 1 ? std::max<int64_t>(1, lk / 3)
                                           : lk));
    }
  }
  return c;
}

AttentionConfig Config(const Case& c, bool causal) {
  AttentionConfig config;
  config.causal = causal;
  config.scale = 1.0 / std::sqrt(static_cast<double>(c.q.size(3)));
  if (c.model) {
    config.bias = ResolvedRelative{c.model.get()};
  } else {
    config.bias = ResolvedAlibi{AlibiSlopes(c.q.size(1))};
  }
  return config;
}

// Equal within tol, with identical -inf positions (bit-exact).
void ExpectSame(const at::Tensor& got, const at::Tensor& want, double tol,
                const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(at::equal(at::isinf(got), at::isinf(want))) << what;
  at::Tensor finite = at::isfinite(want);
  EXPECT_TRUE(at::allclose(got.masked_select(finite),
                           want.masked_select(finite), tol, tol))
      << what << " max diff "
      << (got.masked_select(finite) - want.masked_select(finite))
             .abs()
             .max()
             .item<float>();
}

// Every output combination of the blocked path equals the materialised one.
void CheckAllOutputs(const Case& c, bool causal, const std::string& name) {
  AttentionConfig full = Config(c, causal);
  full.want_probs = true;
  full.want_context = true;
  const AttentionResult want =
      ComputeAttention(c.q, c.k, c.v, c.lengths, full, nullptr);
  struct Outputs {
    bool logits, probs, context;
  };
  for (const Outputs& o : {Outputs{true, false, false},
                           {false, true, false},
                           {false, false, true},
                           {true, false, true},
                           {false, true, true},
                           {true, true, true}}) {
    AttentionConfig config = full;
    config.want_logits = o.logits;
    config.want_probs = o.probs;
    config.want_context = o.context;
    AttentionResult got;
    ASSERT_TRUE(
        ComputeAttentionBlocked(c.q, c.k, c.v, c.lengths, config, {}, &got));
    const std::string what =
        absl::StrCat(name, " outputs ", o.logits, o.probs, o.context);
    EXPECT_EQ(got.logits.defined(), o.logits) << what;
    EXPECT_EQ(got.probs.defined(), o.probs) << what;
    if (o.logits) ExpectSame(got.logits, want.logits, 1e-5, what + " logits");
    if (o.probs) ExpectSame(got.probs, want.probs, 1e-5, what + " probs");
    if (o.context) {
      ExpectSame(got.context, want.context, 1e-5, what + " context");
    }
  }
}

TEST(BlockedAttentionTest, MatchesMaterialisedPathAtTileEdges) {
  at::manual_seed(7);
  // Lk = 300: not a multiple of the key tile (256); Tq = 128 here, so Lq
  // covers 1 (decode), Tq - 1, Tq + 1. D = 16 runs the ATen GEMMs, D = 1 the
  // plain loops.
  const int64_t tq = BlockedQueryTile(129, 300);
  ASSERT_EQ(tq, 128);
  for (bool relative : {false, true}) {
    for (bool causal : {false, true}) {
      for (bool lengths : {false, true}) {
        for (int64_t lq : {int64_t{1}, tq - 1, tq + 1}) {
          for (int64_t d : {1, 16}) {
            Case c = RandomCase(3, 2, lq, 300, d, d + 1, relative, lengths);
            CheckAllOutputs(
                c, causal,
                absl::StrCat("rel ", relative, " causal ", causal, " lengths ",
                             lengths, " Lq ", lq, " D ", d));
          }
        }
      }
    }
  }
}

// 16-bit logits and probabilities are converted per tile, in cache: the same
// bits as computing float32 and converting the whole output afterwards
// (at::Tensor::to rounds to nearest even too), for every output combination,
// at tile edges, with -inf where masked; the context stays float32.
TEST(BlockedAttentionTest, SixteenBitOutputsEqualConvertedFloat32) {
  at::manual_seed(13);
  const int64_t tq = BlockedQueryTile(129, 300);
  struct Outputs {
    bool logits, probs, context;
  };
  for (at::ScalarType type : {at::kHalf, at::kBFloat16}) {
    for (bool relative : {false, true}) {
      for (int64_t lq : {int64_t{1}, tq + 1}) {
        for (int64_t d : {1, 16}) {
          // Small values keep float16 logits finite.
          Case c = RandomCase(3, 2, lq, 300, d, 3, relative, true);
          for (bool causal : {false, true}) {
            for (const Outputs& o : {Outputs{true, false, false},
                                     {false, true, false},
                                     {true, false, true},
                                     {false, true, true},
                                     {true, true, true}}) {
              AttentionConfig config = Config(c, causal);
              config.want_logits = o.logits;
              config.want_probs = o.probs;
              config.want_context = o.context;
              AttentionResult want, got;
              ASSERT_TRUE(ComputeAttentionBlocked(c.q, c.k, c.v, c.lengths,
                                                  config, {}, &want));
              config.matrix_type = type;
              ASSERT_TRUE(ComputeAttentionBlocked(c.q, c.k, c.v, c.lengths,
                                                  config, {}, &got));
              const std::string what =
                  absl::StrCat(c10::toString(type), " rel ", relative,
                               " causal ", causal, " Lq ", lq, " D ", d,
                               " outputs ", o.logits, o.probs, o.context);
              for (auto [g, w] : {std::pair{&got.logits, &want.logits},
                                  std::pair{&got.probs, &want.probs}}) {
                ASSERT_EQ(g->defined(), w->defined()) << what;
                if (!g->defined()) continue;
                EXPECT_EQ(g->scalar_type(), type) << what;
                EXPECT_TRUE(g->is_contiguous()) << what;
                EXPECT_TRUE(at::equal(*g, w->to(type))) << what;
              }
              if (o.context) {
                EXPECT_EQ(got.context.scalar_type(), at::kFloat) << what;
                EXPECT_TRUE(at::equal(got.context, want.context)) << what;
              }
            }
          }
        }
      }
    }
  }
}

// 16-bit keys and values are read in place and converted a block of rows at
// a time (exactly): the same bits as converting them to float32 first, for
// every output combination, where a tile's keys fit one conversion block or a
// tile has one query row (per-row dot products); where several blocks make one
// tile's products (long keys), the same within float32 rounding. Also with
// keys and values that are not row-contiguous (a [B, L, H, D] layout's view).
TEST(BlockedAttentionTest, SixteenBitKeysAndValuesEqualConvertedFloat32) {
  at::manual_seed(17);
  struct Shape {
    int64_t lq, lk, d;
    bool blocks;  // a tile's keys span several conversion blocks
  };
  const int64_t rows_per_block = BlockedConvertRows(64);
  ASSERT_EQ(rows_per_block, 1024);
  struct Outputs {
    bool logits, probs, context;
  };
  for (const Shape& shape :
       {Shape{1, 300, 16, false}, Shape{129, 300, 16, false},
        Shape{1, 2 * rows_per_block + 52, 64, false},
        Shape{40, 2 * rows_per_block + 52, 64, true}}) {
    for (at::ScalarType type : {at::kHalf, at::kBFloat16}) {
      for (bool relative : {false, true}) {
        for (bool rowwise : {true, false}) {
          Case c = RandomCase(2, 2, shape.lq, shape.lk, shape.d, shape.d + 3,
                              relative, true);
          at::Tensor k16 = c.k.to(type), v16 = c.v.to(type);
          if (!rowwise) {  // [B, L, H, D] in memory
            k16 = k16.transpose(1, 2).contiguous().transpose(1, 2);
            v16 = v16.transpose(1, 2).contiguous().transpose(1, 2);
          }
          const at::Tensor k32 = k16.to(at::kFloat), v32 = v16.to(at::kFloat);
          for (bool causal : {false, true}) {
            for (const Outputs& o : {Outputs{true, true, true},
                                     {true, false, false},
                                     {false, false, true}}) {
              AttentionConfig config = Config(c, causal);
              config.want_logits = o.logits;
              config.want_probs = o.probs;
              config.want_context = o.context;
              AttentionResult want, got;
              ASSERT_TRUE(ComputeAttentionBlocked(c.q, k32, v32, c.lengths,
                                                  config, {}, &want));
              ASSERT_TRUE(ComputeAttentionBlocked(c.q, k16, v16, c.lengths,
                                                  config, {}, &got));
              const std::string what = absl::StrCat(
                  c10::toString(type), " Lq ", shape.lq, " Lk ", shape.lk,
                  " rel ", relative, " rowwise ", rowwise, " causal ", causal,
                  " outputs ", o.logits, o.probs, o.context);
              for (auto [g, w] : {std::pair{&got.logits, &want.logits},
                                  std::pair{&got.probs, &want.probs},
                                  std::pair{&got.context, &want.context}}) {
                ASSERT_EQ(g->defined(), w->defined()) << what;
                if (!g->defined()) continue;
                if (shape.blocks) {
                  ExpectSame(*g, *w, 1e-5, what);
                } else {
                  EXPECT_TRUE(at::equal(*g, *w)) << what;
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(BlockedAttentionTest, RejectsSixteenBitQueries) {
  Case c = RandomCase(1, 1, 2, 2, 2, 2, false, false);
  AttentionResult got;
  EXPECT_THROW(ComputeAttentionBlocked(c.q.to(at::kHalf), c.k, c.v, {},
                                       Config(c, false), {}, &got),
               c10::Error);
}

TEST(BlockedAttentionTest, RejectsAnUnsupportedMatrixType) {
  Case c = RandomCase(1, 1, 2, 2, 2, 2, false, false);
  AttentionConfig config = Config(c, false);
  config.matrix_type = at::kDouble;
  AttentionResult got;
  EXPECT_THROW(ComputeAttentionBlocked(c.q, c.k, c.v, {}, config, {}, &got),
               c10::Error);
}

TEST(BlockedAttentionTest, OnlineSoftmaxMatchesMaterialisedOnRandomShapes) {
  at::manual_seed(11);
  for (int trial = 0; trial < 24; ++trial) {
    const int64_t lk = 1 + at::randint(700, {1}).item<int64_t>();
    const int64_t lq = 1 + at::randint(lk, {1}).item<int64_t>();
    const int64_t d = 1 + at::randint(40, {1}).item<int64_t>();
    const bool relative = trial % 2 == 1, causal = trial % 3 != 0;
    Case c =
        RandomCase(2, 3, lq, lk, d, 1 + trial % 5, relative, trial % 4 < 2);
    AttentionConfig config = Config(c, causal);
    config.want_context = true;
    const AttentionResult want =
        ComputeAttention(c.q, c.k, c.v, c.lengths, config, nullptr);
    config.want_logits = false;
    AttentionResult got;
    ASSERT_TRUE(
        ComputeAttentionBlocked(c.q, c.k, c.v, c.lengths, config, {}, &got));
    EXPECT_FALSE(got.logits.defined());
    ExpectSame(got.context, want.context, 1e-5,
               absl::StrCat("trial ", trial, " Lq ", lq, " Lk ", lk, " D ", d));
  }
}

TEST(BlockedAttentionTest, MatchesLiteralPortOnRandomShapes) {
  at::manual_seed(5);
  for (int trial = 0; trial < 12; ++trial) {
    const int64_t lk = 1 + at::randint(400, {1}).item<int64_t>();
    const int64_t lq = 1 + at::randint(lk, {1}).item<int64_t>();
    const int64_t d = 1 + at::randint(32, {1}).item<int64_t>();
    const bool relative = trial % 2 == 1, causal = trial % 3 != 0;
    Case c = RandomCase(2, 4, lq, lk, d, d, relative, false);
    AttentionConfig config = Config(c, causal);
    config.want_probs = true;
    AttentionResult got;
    ASSERT_TRUE(ComputeAttentionBlocked(c.q, c.k, c.v, {}, config, {}, &got));
    bench::LiteralResult want =
        relative ? bench::LiteralRelative(
                       c.q, c.k, c.model->key_pos_embeddings(),
                       c.model->key_pos_bias(), c.model->query_pos_bias(),
                       causal, config.scale, true)
                 : bench::LiteralAlibi(c.q, c.k, AlibiSlopes(4), causal,
                                       config.scale, true);
    const std::string what = absl::StrCat("trial ", trial);
    ExpectSame(got.logits, want.logits.contiguous(), 1e-4, what + " logits");
    ExpectSame(got.probs, want.probs.contiguous(), 1e-4, what + " probs");
  }
}

// The model's copy of the embeddings for the decode kernel: by head,
// transposed, in panels of kPanelCols columns with zeros past 2P.
TEST(BlockedAttentionTest, ModelPanelsHoldTheEmbeddingsByHead) {
  const int64_t two_p = 42, h = 3, d = 5;  // 2P: one panel and part of one
  const at::Tensor e = at::randn({two_p, h, d});
  const auto model = *AtenRelativeModel::Create(
      "m", "test", e, at::randn({two_p, h}), at::randn({h, d}));
  const int64_t panels = (two_p + kPanelCols - 1) / kPanelCols;
  const at::Tensor& got = model->key_pos_embeddings_panels();
  ASSERT_EQ(got.sizes(), (std::vector<int64_t>{h, panels, d, kPanelCols}));
  ASSERT_TRUE(got.is_contiguous());
  for (int64_t head = 0; head < h; ++head) {
    for (int64_t t = 0; t < panels * kPanelCols; ++t) {
      for (int64_t c = 0; c < d; ++c) {
        const float want = t < two_p ? e[t][head][c].item<float>() : 0.0f;
        ASSERT_EQ(got[head][t / kPanelCols][c][t % kPanelCols].item<float>(),
                  want)
            << head << " " << t << " " << c;
      }
    }
  }
  EXPECT_TRUE(
      at::equal(model->key_pos_bias_by_head(), model->key_pos_bias().t()));
}

// Decode steps with the relative bias take the grouped path (a group of
// steps' distances computed together, PanelDots): against the materialised
// path, and bit for bit against each step scored alone, across group sizes
// (BlockedRelativeGroup: 16, 13, 1), groups cut by the batch's end, key
// lengths (0, partial, full), and distances that do not start on a panel.
TEST(BlockedAttentionTest, RelativeDecodeStepsMatchAndDoNotDependOnTheBatch) {
  at::manual_seed(17);
  struct Shape {
    int64_t b, lk, d, extra_p;
  };
  for (const Shape& s :
       {Shape{1, 1, 1, 0}, Shape{5, 33, 5, 7}, Shape{20, 100, 16, 40},
        Shape{37, 300, 64, 1}, Shape{20, 5000, 8, 3}, Shape{3, 70000, 2, 0}}) {
    const int64_t h = 3, p = s.lk + s.extra_p;
    ASSERT_GT(BlockedRelativeGroup(1, s.lk), 0);
    Case c;
    c.q = at::randn({s.b, h, 1, s.d});
    c.k = at::randn({s.b, h, s.lk, s.d});
    c.v = at::randn({s.b, h, s.lk, s.d});
    c.model =
        *AtenRelativeModel::Create("m", "test", at::randn({2 * p, h, s.d}),
                                   at::randn({2 * p, h}), at::randn({h, s.d}));
    for (int64_t i = 0; i < s.b; ++i) {
      const int64_t kind = i % 4;
      c.lengths.push_back(static_cast<int32_t>(kind == 0 ? s.lk
                                               : kind == 1
                                                   ? 0
                                                   : 1 + (i * 7) % s.lk));
    }
    for (bool causal : {true, false}) {
      AttentionConfig full = Config(c, causal);
      full.want_probs = true;
      full.want_context = true;
      const AttentionResult want =
          ComputeAttention(c.q, c.k, c.v, c.lengths, full, nullptr);
      for (bool materialise : {true, false}) {
        AttentionConfig config = full;
        config.want_logits = config.want_probs = materialise;
        AttentionResult got;
        ASSERT_TRUE(ComputeAttentionBlocked(c.q, c.k, c.v, c.lengths, config,
                                            {}, &got));
        const std::string what =
            absl::StrCat("B", s.b, " Lk ", s.lk, " D ", s.d, " causal ", causal,
                         " materialise ", materialise);
        if (materialise) {
          ExpectSame(got.logits, want.logits, 1e-4, what + " logits");
          ExpectSame(got.probs, want.probs, 1e-4, what + " probs");
        }
        ExpectSame(got.context, want.context, 1e-4, what + " context");
        for (int64_t i = 0; i < s.b; ++i) {
          const std::vector<int32_t> length = {c.lengths[i]};
          AttentionResult alone;
          ASSERT_TRUE(ComputeAttentionBlocked(
              c.q.narrow(0, i, 1), c.k.narrow(0, i, 1), c.v.narrow(0, i, 1),
              length, config, {}, &alone));
          const std::string item = absl::StrCat(what, " item ", i);
          if (materialise) {
            EXPECT_TRUE(at::equal(got.logits.narrow(0, i, 1), alone.logits))
                << item;
            EXPECT_TRUE(at::equal(got.probs.narrow(0, i, 1), alone.probs))
                << item;
          }
          EXPECT_TRUE(at::equal(got.context.narrow(0, i, 1), alone.context))
              << item;
        }
      }
    }
  }
}

TEST(BlockedAttentionTest, StopBetweenTiles) {
  at::manual_seed(3);
  Case c = RandomCase(1, 2, 1024, 1024, 64, 64, false, false);
  AttentionConfig config = Config(c, true);
  config.want_context = true;
  config.want_logits = false;
  std::atomic<int> calls{0};
  AttentionResult result;
  EXPECT_FALSE(ComputeAttentionBlocked(
      c.q, c.k, c.v, {}, config, [&] { return ++calls > 1; }, &result));
  EXPECT_GE(calls.load(), 2);
  int never = 0;
  EXPECT_TRUE(ComputeAttentionBlocked(
      c.q, c.k, c.v, {}, config,
      [&] {
        ++never;
        return false;
      },
      &result));
  EXPECT_GT(never, 1);  // asked between tiles, not once
}

// The tiles of one call spread over ATen's intra-op threads. at::parallel_for
// is inline and runs in parallel only where it is compiled with OpenMP
// (ATTNSCORE_PARALLEL_TILES): before that was so, every tile ran on the
// caller's thread and only the BLAS inside a tile used the second core.
TEST(BlockedAttentionTest, TilesRunOnTheIntraOpThreads) {
  const int threads_before = at::get_num_threads();
  at::set_num_threads(2);
  at::manual_seed(5);
  const Case c = RandomCase(2, 4, 256, 256, 32, 32, false, false);
  std::mutex mu;
  std::condition_variable arrived;
  std::set<std::thread::id> seen;
  AttentionResult result;
  // `stop` is asked on each thread before its first tile. The threads take
  // their tiles from a shared counter, so a thread that started first could
  // take them all: each waits (up to 10 s) for a second one to arrive.
  const bool finished = ComputeAttentionBlocked(
      c.q, c.k, c.v, {}, Config(c, true),
      [&] {
        std::unique_lock<std::mutex> lock(mu);
        seen.insert(std::this_thread::get_id());
        arrived.notify_all();
#ifdef ATTNSCORE_PARALLEL_TILES
        arrived.wait_for(lock, std::chrono::seconds(10),
                         [&seen] { return seen.size() >= 2; });
#endif
        return false;
      },
      &result);
  at::set_num_threads(threads_before);
  ASSERT_TRUE(finished);
#ifdef ATTNSCORE_PARALLEL_TILES
  EXPECT_EQ(seen.size(), 2u) << "the tiles ran on one thread";
#else
  // Builds without OpenMP (clang, ThreadSanitizer, a LibTorch with a renamed
  // libgomp) run the tiles inline; this documents that fallback.
  EXPECT_EQ(seen.size(), 1u);
#endif
}

// A thread that starts late (its core busy elsewhere) leaves its share of the
// tiles to the others instead of holding them until it runs: here the second
// thread stalls for a second at its first tile, and the caller's thread
// computes the rest meanwhile. (Split evenly up front, each did half.)
TEST(BlockedAttentionTest, AStalledThreadLeavesItsShareToTheOthers) {
#ifndef ATTNSCORE_PARALLEL_TILES
  GTEST_SKIP() << "built without OpenMP: the tiles run on the caller's thread";
#else
  const int threads_before = at::get_num_threads();
  at::set_num_threads(2);
  at::manual_seed(7);
  const Case c = RandomCase(2, 4, 256, 256, 32, 32, false, false);
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<int> caller_checks{0}, other_checks{0};
  AttentionResult result;
  // `stop` is asked once per 4M multiply-adds of a thread's tiles (1M each
  // here): its calls count each thread's tiles.
  const bool finished = ComputeAttentionBlocked(
      c.q, c.k, c.v, {}, Config(c, true),
      [&] {
        if (std::this_thread::get_id() == caller) {
          ++caller_checks;
        } else if (other_checks++ == 0) {
          std::this_thread::sleep_for(std::chrono::seconds(1));
        }
        return false;
      },
      &result);
  at::set_num_threads(threads_before);
  ASSERT_TRUE(finished);
  EXPECT_GE(caller_checks.load(), 3 * (caller_checks + other_checks) / 4)
      << "caller " << caller_checks << ", other " << other_checks;
  // The results are those of one thread alone.
  AttentionResult alone;
  ASSERT_TRUE(ComputeAttentionBlocked(c.q, c.k, c.v, {}, Config(c, true),
                                      nullptr, &alone));
  EXPECT_TRUE(at::equal(result.logits, alone.logits));
#endif
}

// How the tile loop deals out its units (blocked_tiling.h).
TEST(UnitChunksTest, ThreadsAndChunkSizes) {
  // Enough units for every thread: about four chunks per thread.
  const UnitChunks wide(256, 8, 2);
  EXPECT_EQ(wide.threads, 2);
  EXPECT_EQ(wide.size, 32);
  // At most one thread per `grain` units; one: the caller alone.
  const UnitChunks small(8, 8, 2);
  EXPECT_EQ(small.threads, 1);
  EXPECT_EQ(small.size, 8);
  const UnitChunks nine(9, 8, 4);
  EXPECT_EQ(nine.threads, 2);
  EXPECT_EQ(nine.size, 8);  // never under the grain
  // The relative decode group's alignment.
  const UnitChunks aligned(100, 1, 2, 16);
  EXPECT_EQ(aligned.size % 16, 0);
  EXPECT_EQ(aligned.size, 16);
  // No units: no thread; one thread asked for (or none): one.
  EXPECT_EQ(UnitChunks(0, 1, 2).threads, 0);
  EXPECT_EQ(UnitChunks(5, 1, 0).threads, 1);
  EXPECT_EQ(UnitChunks(5, 0, 1).size, 2);
}

TensorRef Ref(const at::Tensor& t) {
  return TensorRef{DType::kFloat32, t.sizes().vec(), t.data_ptr(), t.nbytes()};
}

TEST(BlockedAttentionTest, ScorerReturnsCancelledWhenStopFires) {
  auto scorer = CreateAtenScorer({}).value();
  at::manual_seed(4);
  at::Tensor q = at::randn({1, 2, 1024, 64}), k = at::randn({1, 2, 1024, 64});
  ScoreItem item;
  item.query = Ref(q);
  item.key = Ref(k);
  ScoreSpec spec;
  spec.causal = true;
  std::atomic<int> calls{0};
  // The scorer asks once before staging the inputs, then between tiles.
  auto stopped = scorer->ScoreBatch(spec, absl::MakeConstSpan(&item, 1),
                                    [&] { return ++calls > 2; });
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled)
      << stopped.status();
  auto done = scorer->ScoreBatch(spec, absl::MakeConstSpan(&item, 1),
                                 [] { return false; });
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_TRUE((*done)[0].logits.has_value());
}

// rows_done tells rows only once they are final: each told prefix, copied
// at the moment it is told, equals the end result (the outputs start as NaN,
// so a row told early shows). Leading rows are told before the last tile ends,
// in a growing sequence, ending with all of them, in the buffers allocated up
// front.
TEST(BlockedAttentionTest, RowsDoneTellsOnlyFinalRows) {
  const int threads_before = at::get_num_threads();
  at::set_num_threads(2);
  at::manual_seed(8);
  // Lq 300: a partial last tile per (b, h).
  const Case c = RandomCase(2, 3, 300, 200, 16, 16, false, true);
  AttentionConfig config = Config(c, true);
  config.want_probs = true;
  AttentionResult result;
  AllocateBlockedOutputs(c.q, c.k, c.v, config, &result);
  result.logits.fill_(std::nanf(""));
  result.probs.fill_(std::nanf(""));
  const void* logits_buffer = result.logits.data_ptr();
  const int64_t total = 2 * 3 * 300;
  std::mutex mu;
  std::vector<std::pair<int64_t, at::Tensor>> told;  // rows, their logits
  std::vector<at::Tensor> told_probs;
  const bool finished = ComputeAttentionBlocked(
      c.q, c.k, c.v, c.lengths, config, {},
      [&](int64_t rows) {
        const at::Tensor logits =
            result.logits.view({total, 200}).narrow(0, 0, rows).clone();
        const at::Tensor probs =
            result.probs.view({total, 200}).narrow(0, 0, rows).clone();
        std::lock_guard<std::mutex> lock(mu);
        told.emplace_back(rows, logits);
        told_probs.push_back(probs);
      },
      &result);
  at::set_num_threads(threads_before);
  ASSERT_TRUE(finished);
  EXPECT_EQ(result.logits.data_ptr(), logits_buffer);
  ASSERT_GE(told.size(), 2u) << "only the end was told";
  EXPECT_LT(told.front().first, total);
  int64_t most = 0;
  for (size_t i = 0; i < told.size(); ++i) {
    const int64_t rows = told[i].first;
    most = std::max(most, rows);
    SCOPED_TRACE(absl::StrCat("told ", rows, " rows"));
    EXPECT_TRUE(at::equal(told[i].second,
                          result.logits.view({total, 200}).narrow(0, 0, rows)));
    EXPECT_TRUE(at::equal(told_probs[i],
                          result.probs.view({total, 200}).narrow(0, 0, rows)));
  }
  EXPECT_EQ(most, total);
  EXPECT_EQ(told.back().first, total);
  // The same values as a call that tells nothing.
  AttentionResult plain;
  ASSERT_TRUE(
      ComputeAttentionBlocked(c.q, c.k, c.v, c.lengths, config, {}, &plain));
  EXPECT_TRUE(at::equal(plain.logits, result.logits));
  EXPECT_TRUE(at::equal(plain.probs, result.probs));
}

// Head-major units (relative decode steps) are not in row order: all rows
// are told at the end, once they all are final.
TEST(BlockedAttentionTest, RowsDoneTellsHeadMajorRowsAtTheEnd) {
  at::manual_seed(9);
  const Case c = RandomCase(6, 2, 1, 40, 8, 8, true, false);
  const AttentionConfig config = Config(c, false);
  std::vector<int64_t> told;
  AttentionResult result;
  ASSERT_TRUE(ComputeAttentionBlocked(
      c.q, c.k, c.v, {}, config, {},
      [&](int64_t rows) { told.push_back(rows); }, &result));
  EXPECT_THAT(told, ::testing::ElementsAre(12));
}

// Records what a RowObserver is told.
class RecordingObserver final : public RowObserver {
 public:
  void OnOutputs(const ScoreResult& result) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++outputs_calls_;
    logits_data_ = result.logits ? result.logits->data : nullptr;
    probs_data_ = result.probs ? result.probs->data : nullptr;
  }
  void OnRows(int64_t rows) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_EQ(outputs_calls_, 1) << "rows told before the outputs";
    most_rows_ = std::max(most_rows_, rows);
    ++rows_calls_;
  }
  int outputs_calls_ = 0;
  int rows_calls_ = 0;
  int64_t most_rows_ = 0;
  const void* logits_data_ = nullptr;
  const void* probs_data_ = nullptr;

 private:
  std::mutex mu_;
};

// ScoreObserved hands the observer the buffers it returns, then their rows;
// the results are ScoreBatch's, bit for bit. Context (converted after the
// pass) and outputs with a destination are not observed, only computed.
TEST(BlockedAttentionTest, ScoreObservedTellsTheOutputsThenTheirRows) {
  auto scorer = CreateAtenScorer({}).value();
  at::manual_seed(10);
  at::Tensor q = at::randn({2, 4, 130, 32}), k = at::randn({2, 4, 150, 32});
  at::Tensor v = at::randn({2, 4, 150, 32});
  ScoreItem item;
  item.query = Ref(q);
  item.key = Ref(k);
  item.value = Ref(v);
  ScoreSpec spec;
  spec.causal = true;
  spec.want_probs = true;
  for (const DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    spec.output_dtype = dtype;
    SCOPED_TRACE(static_cast<int>(dtype));
    RecordingObserver observer;
    auto observed = scorer->ScoreObserved(spec, item, {}, observer);
    ASSERT_TRUE(observed.ok()) << observed.status();
    auto plain = scorer->ScoreBatch(spec, absl::MakeConstSpan(&item, 1));
    ASSERT_TRUE(plain.ok()) << plain.status();
    const ScoreResult& got = observed->front();
    const ScoreResult& want = plain->front();
    EXPECT_EQ(observer.outputs_calls_, 1);
    EXPECT_GE(observer.rows_calls_, 1);
    EXPECT_EQ(observer.most_rows_, 2 * 4 * 130);
    EXPECT_EQ(got.logits->data, observer.logits_data_);
    EXPECT_EQ(got.probs->data, observer.probs_data_);
    ASSERT_EQ(got.logits->size_bytes, want.logits->size_bytes);
    EXPECT_EQ(std::memcmp(got.logits->data, want.logits->data,
                          want.logits->size_bytes),
              0);
    EXPECT_EQ(
        std::memcmp(got.probs->data, want.probs->data, want.probs->size_bytes),
        0);
  }
  spec.output_dtype = DType::kFloat32;
  spec.want_context = true;
  RecordingObserver with_context;
  auto computed = scorer->ScoreObserved(spec, item, {}, with_context);
  ASSERT_TRUE(computed.ok()) << computed.status();
  EXPECT_TRUE(computed->front().context.has_value());
  EXPECT_EQ(with_context.outputs_calls_, 0);
  EXPECT_EQ(with_context.rows_calls_, 0);
  spec.want_context = false;
  std::vector<float> offered(2 * 4 * 130 * 150 + 16);
  item.logits_destination.data = offered.data();
  item.logits_destination.capacity = offered.size() * sizeof(float);
  RecordingObserver placed;
  ASSERT_TRUE(scorer->ScoreObserved(spec, item, {}, placed).ok());
  EXPECT_EQ(placed.outputs_calls_, 0);
  EXPECT_EQ(placed.rows_calls_, 0);
}

TEST(BlockedValidationTest, OverflowingScaleOrSlopesNameTheField) {
  at::Tensor q = at::full({1, 2, 4, 8}, 100.0f),
             k = at::full({1, 2, 4, 8}, 100.0f);
  ScoreItem item;
  item.query = Ref(q);
  item.key = Ref(k);
  ScoreSpec spec;
  spec.scale = 1e33f;  // 1e33 * 8 * 1e4 = 8e37: fits float32
  EXPECT_TRUE(ValidateItem(spec, item).ok()) << ValidateItem(spec, item);
  spec.scale = 1e35f;  // 8e39 > float32 max
  absl::Status s = ValidateItem(spec, item);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("scale: logits could reach"));
  EXPECT_THAT(s.message(), HasSubstr("float32 bound"));
  // Float16 logits: 1 * 8 * 1e4 = 80000 > 65504.
  spec.scale = 1.0f;
  spec.output_dtype = DType::kFloat16;
  s = ValidateItem(spec, item);
  EXPECT_THAT(s.message(), HasSubstr("scale:"));
  EXPECT_THAT(s.message(), HasSubstr("float16 bound 65504"));
  // The same without logits: only the float32 compute bound applies.
  spec.want_logits = false;
  spec.want_probs = true;
  EXPECT_TRUE(ValidateItem(spec, item).ok()) << ValidateItem(spec, item);
  // A slope that pushes the bound over: named by index.
  spec.want_logits = true;
  spec.scale = 0.5f;                       // content 40000
  spec.bias = AlibiBias{{0.5f, 4000.0f}};  // 4000 * 8 = 32000 more
  s = ValidateItem(spec, item);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("alibi.slopes[1]: logits could reach"));
  spec.bias = AlibiBias{{0.5f, -1.0f}};
  EXPECT_TRUE(ValidateItem(spec, item).ok()) << ValidateItem(spec, item);
  // bfloat16 has float32's range.
  spec.output_dtype = DType::kBFloat16;
  spec.scale = 1e35f;
  EXPECT_THAT(ValidateItem(spec, item).message(), HasSubstr("bfloat16 bound"));
}

// {growth, estimate} in bytes, of the blocked path on the CPU (`held`:
// memory_probe.h).
std::pair<int64_t, int64_t> Probe(const std::string& args, int held = 1) {
  const ProbedMemory probed =
      ProbeMemory(absl::StrCat(args, " blocked cpu"), held);
  return {probed.growth, probed.estimate};
}

constexpr int64_t kMiB = int64_t{1} << 20;
// The estimate includes allocator rounding and bookkeeping: no allowance.
constexpr int64_t kAllowance = 0;

TEST(BlockedMemoryTest, QueryOfDeathStaysSmallAndUnderTheEstimate) {
  // Issue 9: ALiBi causal, B1 H2 Lq=Lk=8192 D=Dv=1, float32, context only
  // (1.75 GB peak on the materialising path).
  auto [growth, estimate] = Probe("alibi causal 1 2 8192 8192 1 1 c float32");
  ASSERT_GE(growth, 0);
  std::printf("query of death: growth %.1f MiB, estimate %.1f MiB\n",
              static_cast<double>(growth) / kMiB,
              static_cast<double>(estimate) / kMiB);
  EXPECT_LT(growth, 64 * kMiB);
  EXPECT_LE(growth, estimate + kAllowance);
  EXPECT_LT(estimate, 64 * kMiB);
}

TEST(BlockedMemoryTest, EstimateBoundsMeasuredGrowth) {
  for (const char* args : {
           "alibi causal 2 4 1024 1024 32 32 l float32",
           "alibi full 2 4 1024 1024 32 32 p float32",
           "alibi causal 2 4 1024 1024 32 32 lpc float32",
           "alibi causal 2 4 1024 1024 32 32 lc float16",
           "alibi full 2 4 1024 1024 32 32 lp float16",
           "relative causal 2 4 1024 1024 32 32 p float16",
           "alibi full 1 4 2048 2048 64 64 c float32",
           "relative causal 2 4 1024 1024 32 32 lp float32",
           "relative causal 1 4 2048 2048 32 32 c float32",
           "relative causal 16 4 1 4096 32 32 lp float32",
           "relative causal 16 4 1 4096 32 32 c float32",
       }) {
    auto [growth, estimate] = Probe(args);
    ASSERT_GE(growth, 0) << args;
    std::printf("%s: growth %.1f MiB, estimate %.1f MiB\n", args,
                static_cast<double>(growth) / kMiB,
                static_cast<double>(estimate) / kMiB);
    EXPECT_LE(growth, estimate + kAllowance) << args;
  }
}

// The in-flight budget charges an admitted request its in_flight_bytes(), not
// its first-computation peak: results held together, as a server holds the
// replies it has not sent, grow memory by no more than that per request
// beyond the first. Small requests are where the difference counts (a 4 MiB
// charge per B1 H8 L128 request refused a sixth of them under a 512 MiB
// budget at 200 in flight).
TEST(BlockedMemoryTest, HeldResultsStayUnderTheInFlightCharge) {
  for (const auto& [args, held] : std::vector<std::pair<const char*, int>>{
           {"alibi causal 1 8 128 128 64 64 l float32", 32},
           {"alibi causal 1 8 1 2048 64 64 lp float32", 32},
           {"relative full 1 8 64 64 64 64 lpc float16", 32},
           {"alibi causal 1 8 512 512 64 64 lp float32", 8},
           {"relative causal 2 4 1024 1024 32 32 lpc float32", 4},
       }) {
    auto [growth, charge] = Probe(args, held);
    ASSERT_GE(growth, 0) << args;
    std::printf("%s, %d held: growth %.1f MiB, charge %.1f MiB\n", args, held,
                static_cast<double>(growth) / kMiB,
                static_cast<double>(charge) / kMiB);
    EXPECT_LE(growth, charge + kAllowance) << args << ", " << held << " held";
    // And the charge is below what the first request's peak would make it.
    auto [one_growth, peak] = Probe(args);
    ASSERT_GE(one_growth, 0) << args;
    EXPECT_LT(charge, peak * held) << args;
  }
}

}  // namespace
}  // namespace attnscore::scoring
