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

// How Gather stages 16-bit inputs (float32 inputs are staged as they are).
enum class Staging {
  // Decoded to float32 on the host while stacked: the blocked path's queries.
  kFloat32,
  // A lone CPU item's bytes read in place, else decoded to float32: the
  // blocked path's keys and values, converted per tile.
  kInPlace16,
  // Off the CPU, stacked as sent and widened to float32 on the device: the
  // batched path, whose 16-bit inputs then cross a GPU's bus, and are staged
  // in pinned memory, at half the bytes. On the CPU as kFloat32.
  kAsSent,
};

// The items' `pick` tensors stacked along the batch axis on `device`, as
// float32 (or a lone item's 16-bit bytes as they are: Staging::kInPlace16).
// Every item has the same dtype (it is part of the batch key). A lone CPU
// item is used in place when it is float32, or 16-bit and kInPlace16, and its
// bytes are aligned to its elements (a shared-memory range may lie at any
// offset). Off the CPU, items whose bytes are all page-locked (the request
// blocks of a CUDA server, buffer_pool.h) are copied to the device directly
// (StackOnDevice), others through pinned staging (StackOnHost).
at::Tensor Gather(absl::Span<const ScoreItem> items, TensorPick pick,
                  Layout layout, const at::Device& device, Staging staging);

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
