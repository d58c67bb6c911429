// What one scoring request will cost before anything is allocated for it: its
// peak working memory (inputs staged for compute, outputs, every intermediate,
// the bias) and its compute work (arithmetic plus a per-item overhead), so the
// service can refuse it with the numbers instead of discovering the cost by
// running out of memory or time. Part of attnscore_scoring_api: no LibTorch.
//
// The figures are those of the ATen scorer's CPU `blocked` path (per (batch
// item, head), tiles of query rows) and must stay an upper bound of what that
// path allocates: scoring tests compare them with measured allocations.
//
// Thread safety: pure functions. Errors: none; sizes are those of a validated
// item (ValidateItem), and every product saturates at INT64_MAX instead of
// overflowing.
#ifndef ATTNSCORE_SERVER_SCORING_RESOURCE_ESTIMATE_H_
#define ATTNSCORE_SERVER_SCORING_RESOURCE_ESTIMATE_H_

#include <cstdint>
#include <string>

#include "server/scoring/score_spec.h"

namespace attnscore::scoring {

// The sizes of one request (or one batch: B summed).
struct ProblemSize {
  int64_t batch = 0;      // B
  int64_t heads = 0;      // H
  int64_t query_len = 0;  // Lq
  int64_t key_len = 0;    // Lk
  int64_t head_dim = 0;   // D
  int64_t value_dim = 0;  // Dv; 0 unless context is wanted
  // max(D, Dv) of the keys and values that are 16-bit (the blocked path
  // converts their rows per tile, BlockedScratchOf's convert_cols); 0 when
  // they are float32.
  int64_t convert_cols = 0;
};

// REQUIRES: ValidateItem(spec, item) is OK.
ProblemSize ProblemSizeOf(const ScoreSpec& spec, const ScoreItem& item);

struct ResourceEstimate {
  // Bytes held at the peak of the computation, beyond the request's own wire
  // bytes: staged inputs, outputs (compute and wire dtype), scratch, bias.
  int64_t peak_bytes = 0;
  // Of peak_bytes, what only a process's first computations take (LibTorch's
  // lazy state, the allocator's arenas: measured up to 1.8 MiB for the first
  // request of a fresh process). --max-request-memory counts it, since it must
  // hold for a request alone in a fresh process; the in-flight budget, which
  // charges each admitted request, does not: the server's warm-up computes on
  // every batch worker before it serves, and a request after that leaves only
  // its buffers and their page rounding behind (in_flight_bytes).
  int64_t first_compute_bytes = 0;
  // Work units: floating-point operations (2 B H Lq Lk (D + Dv), and
  // 2 B H Lq Lk D more for the relative position term) plus a fixed charge
  // per (batch item, head) block and per batch row, measured on the blocked
  // path and expressed in the operations that take as long, so that many
  // tiny items cost what they take.
  int64_t work = 0;
  // What one admitted request holds in a warmed-up server at its peak:
  // peak_bytes less first_compute_bytes.
  int64_t in_flight_bytes() const { return peak_bytes - first_compute_bytes; }
  // "outputs 64.0 MiB + scratch 1.0 MiB + ...": for error messages.
  std::string breakdown;
};

ResourceEstimate EstimateResources(const ScoreSpec& spec,
                                   const ProblemSize& size);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_RESOURCE_ESTIMATE_H_
