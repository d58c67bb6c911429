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

#include "server/scoring/resource_estimate.h"
#include "server/scoring/score_spec.h"

namespace attnscore::scoring {

// The scratch one query tile may take: a float32 [B*H, T, Lk] stack of
// logits or probabilities (tiled path), or a [H, T, Lk] bias (fused path).
inline constexpr int64_t kBatchedTileBytes = int64_t{256} << 20;

// Whether the batched path runs the fused attention (fused_attention.h) for
// this request: the context alone, ALiBi bias, and a LibTorch that has it.
bool UsesFusedAttention(const ScoreSpec& spec, bool fused_available);

// T, the query rows per tile: as many as keep the tile's scratch within
// kBatchedTileBytes, at least 1, at most Lq. `fused`: UsesFusedAttention.
int64_t BatchedQueryTile(const ProblemSize& size, bool fused);

// Peak device bytes (inputs as float32, and one 16-bit input as sent while it
// converts; outputs, one tile's scratch, the relative position term) and
// work, as EstimateResources reports them.
ResourceEstimate EstimateBatchedResources(const ScoreSpec& spec,
                                          const ProblemSize& size,
                                          bool fused_available);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_BATCHED_ESTIMATE_H_
