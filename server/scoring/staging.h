// How a batch's inputs reach the compute device: each input's tensors of all
// the batch's items stacked along the batch axis (Gather), read from wherever
// the items' bytes lie (a request's pooled block, a client's shared memory).
// Internal to attnscore_scoring (LibTorch).
//
// Ownership: a returned tensor may view an item's bytes (a lone CPU item read
// in place), and on a GPU copies from the items' page-locked bytes may still
// be in flight when Gather returns: the items must outlive the batch's use of
// the tensors, and a batch that ends early must drain its stream before its
// items go (aten_scorer.cc). Thread safety: reentrant. Errors: c10::Error and
// std::bad_alloc, which the scorer catches at its compute boundary.
#ifndef ATTNSCORE_SERVER_SCORING_STAGING_H_
#define ATTNSCORE_SERVER_SCORING_STAGING_H_

#include <ATen/core/Tensor.h>

#include "absl/types/span.h"
#include "common/layout.h"
#include "server/scoring/score_spec.h"

namespace attnscore::scoring {

// One input of an item: its query, key or value.
using TensorPick = const TensorRef& (*)(const ScoreItem&);

// The items' `pick` tensors stacked along the batch axis on `device`, as
// float32. Every item has the same dtype (it is part of the batch key).
// On the CPU, 16-bit bytes are widened as they are stacked (one pass), and a
// lone item is used in place when its bytes are aligned to its elements (a
// shared-memory range may lie at any offset) and it is float32, or 16-bit and
// `in_place_16` (the blocked path's keys and values, converted per tile: the
// tensor is then 16-bit). Off the CPU the batch is staged as sent (16-bit
// inputs cross the bus at half the bytes) and widened on the device: items
// whose bytes are all page-locked (a CUDA server's request blocks,
// buffer_pool.h) are copied there directly (StackOnDevice), others through
// pinned staging (StackOnHost).
at::Tensor Gather(absl::Span<const ScoreItem> items, TensorPick pick,
                  Layout layout, const at::Device& device,
                  bool in_place_16 = false);

// Gather's two ways of stacking several items, exposed for their tests. Both
// give the items' tensors stacked in the dtype `staged`, which is float32 or
// the items' own.
//
// Through host memory: pinned for an asynchronous copy to `device` off the
// CPU, from the host pool on the CPU (and then the result itself). Each
// batch-major item is decoded or copied straight into its rows, which costs
// no tensor per item and keeps many tiny items cheap.
at::Tensor StackOnHost(absl::Span<const ScoreItem> items, TensorPick pick,
                       Layout layout, const at::Device& device,
                       at::ScalarType staged);
// Straight into a tensor on `device`: one copy per item, asynchronous on the
// current stream off the CPU (DMA when the bytes are page-locked).
at::Tensor StackOnDevice(absl::Span<const ScoreItem> items, TensorPick pick,
                         Layout layout, const at::Device& device,
                         at::ScalarType staged);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_STAGING_H_
