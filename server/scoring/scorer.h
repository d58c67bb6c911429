// The scoring interface the service layer and the benchmarks call: it takes raw
// tensor bytes (as they arrive off the wire), scores a batch of requests that
// share one ScoreSpec in a single pass, and returns output buffers that the
// caller can hand to gRPC without copying. Part of attnscore_scoring_api: no
// LibTorch. The ATen implementation is created by aten_scorer.h.
//
// Semantics (positions, masks, ALiBi and Transformer-XL relative bias, scale,
// outputs) are those of attention.h; see there.
//
// Ownership: a Scorer is created once and shared. Thread safety: ScoreBatch may
// be called from many threads at once. Errors: absl::Status; INVALID_ARGUMENT
// names the field and the expected vs. actual value; INTERNAL wraps an
// unexpected failure of the implementation. No exception escapes.
#ifndef ATTNSCORE_SERVER_SCORING_SCORER_H_
#define ATTNSCORE_SERVER_SCORING_SCORER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/scoring/resource_estimate.h"
#include "server/scoring/score_spec.h"

namespace attnscore::scoring {

// Cooperative cancellation: the scorer asks it between tiles, from its compute
// threads (so it must be thread-safe and cheap); once it returns true the call
// stops early and returns CANCELLED. An empty StopFn never stops.
using StopFn = std::function<bool()>;

// Which rows of one item's outputs are final while it computes, for a caller
// that sends them while later rows compute (ScoreChunked). Rows are those of
// [B*H*Lq] (every dimension but the last) of logits and probs alike.
class RowObserver {
 public:
  virtual ~RowObserver() = default;
  // Once, from the calling thread, before any row is computed: the result the
  // call returns if it succeeds, its buffers allocated but not yet written.
  virtual void OnOutputs(const ScoreResult& result) = 0;
  // After OnOutputs, from the compute threads, possibly at once and out of
  // order: rows [0, rows) of every output are final. Must be cheap and must
  // not block.
  virtual void OnRows(int64_t rows) = 0;
};

class Scorer {
 public:
  virtual ~Scorer() = default;

  // Scores items that share `spec` (and BatchKey) in one pass, concatenated
  // along the batch axis. REQUIRES: every item passed ValidateItem(spec, item).
  // Returns one result per item, in order; each result's tensors view the
  // shared batch output where they are contiguous in it, so splitting costs no
  // copy. `stop` is checked between tiles (see StopFn).
  virtual absl::StatusOr<std::vector<ScoreResult>> ScoreBatch(
      const ScoreSpec& spec, absl::Span<const ScoreItem> items,
      const StopFn& stop) = 0;

  // The same, never stopped early.
  absl::StatusOr<std::vector<ScoreResult>> ScoreBatch(
      const ScoreSpec& spec, absl::Span<const ScoreItem> items) {
    return ScoreBatch(spec, items, StopFn());
  }

  // ScoreBatch of one item that tells `observer` which rows are final as they
  // are (see RowObserver), where the scorer can: the CPU blocked path, for
  // logits and probs in no caller's destination. Elsewhere, and by default,
  // ScoreBatch, the observer never called. Same results and errors as
  // ScoreBatch; on an error the observer's result is to be dropped.
  virtual absl::StatusOr<std::vector<ScoreResult>> ScoreObserved(
      const ScoreSpec& spec, const ScoreItem& item, const StopFn& stop,
      RowObserver& /*observer*/) {
    return ScoreBatch(spec, absl::MakeConstSpan(&item, 1), stop);
  }

  // How many of `items` (a prefix, at least one when `items` is not empty)
  // this scorer would compute together: a caller may score that prefix on its
  // own, answer it, and go on with the rest, with the same results. The CPU
  // blocked path computes large items one after another anyway, so their
  // replies need not wait for the rest of the batch. Default: all of them.
  virtual size_t ItemsPerPass(absl::Span<const ScoreItem> items) const {
    return items.size();
  }

  // "cpu", "cuda:0", ...
  virtual std::string device() const = 0;

  // What computes, for the start-up log: the device (a GPU's name and size),
  // the compute path and its kernels. Default: device().
  virtual std::string Describe() const { return device(); }

  // What scoring `size` with `spec` will cost on this scorer's path and device,
  // before anything is allocated (resource_estimate.h). The default is the CPU
  // `blocked` path's estimate.
  virtual ResourceEstimate Estimate(const ScoreSpec& spec,
                                    const ProblemSize& size) const {
    return EstimateResources(spec, size);
  }
};

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_SCORER_H_
