// What a request costs on the `batched` path (batched_attention.h), before
// anything is allocated: the companion of EstimateResources
// (resource_estimate.h), which counts the CPU `blocked` path. The figures are
// bytes on the compute device (a GPU's memory on CUDA) and must stay an upper
// bound of what BatchedAttention allocates there: the scoring tests compare
// them with measured allocations. The query tile both use is defined here, so
// the computation and its estimate cannot drift apart. Part of
// attnscore_scoring_api: no LibTorch.
//
// Thread safety: pure functions. Errors: none; sizes are those of a validated
// item, and every product saturates at INT64_MAX.
#ifndef ATTNSCORE_SERVER_SCORING_BATCHED_ESTIMATE_H_
#define ATTNSCORE_SERVER_SCORING_BATCHED_ESTIMATE_H_

#include <cstdint>

#include "server/scoring/alibi_logits_tile.h"
#include "server/scoring/resource_estimate.h"
#include "server/scoring/score_spec.h"

namespace attnscore::scoring {

// The scratch one query tile may take: a float32 [B*H, T, Lk] stack of
// logits or probabilities (tiled path), or a [H, T, Lk] bias (fused path).
inline constexpr int64_t kBatchedTileBytes = int64_t{256} << 20;

// What the batched path can use on its device, as far as its memory goes.
struct BatchedKernels {
  // PyTorch's fused attention (fused_attention.h): the LibTorch has it.
  bool fused_attention = false;
  // The project's ALiBi logits kernel (alibi_logits.h): on a CUDA device of a
  // build that has it, and not turned off (--alibi-kernel).
  bool alibi_logits = false;
};

// Whether the batched path runs the fused attention (fused_attention.h) for
// this request: the context alone, ALiBi bias, and a LibTorch that has it.
bool UsesFusedAttention(const ScoreSpec& spec, bool fused_available);

// Whether the ALiBi logits kernel pays for a query tile of `rows` rows: a
// block computes 64 rows against 64 keys whatever the rows, so fewer than
// half a tile (a decode step's one row) would multiply mostly zeros, where
// the library's batched product reads each key once at memory speed.
inline bool AlibiLogitsKernelPays(int64_t rows) {
  return rows >= alibi_tile::kTile / 2;
}

// Whether the kernel pays for every tile of a query of `query_len` rows cut
// into tiles of `tile` rows: the full ones and the last (Lq mod T rows).
bool AlibiLogitsKernelPaysEveryTile(int64_t query_len, int64_t tile);

// T, the query rows per tile: as many as keep the tile's scratch within
// kBatchedTileBytes, at least 1, at most Lq. `fused`: UsesFusedAttention.
int64_t BatchedQueryTile(const ProblemSize& size, bool fused);

// Peak device bytes (inputs as float32, and one 16-bit input as sent while it
// converts; outputs, one tile's scratch, the relative position term) and
// work, as EstimateResources reports them. A tile whose ALiBi logits the
// kernel computes takes no bias or position scratch.
ResourceEstimate EstimateBatchedResources(const ScoreSpec& spec,
                                          const ProblemSize& size,
                                          const BatchedKernels& kernels);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_BATCHED_ESTIMATE_H_
