#include "server/scoring/staging.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "common/aten_dtype.h"
#include "common/dtype.h"
#include "server/scoring/accelerator.h"
#include "server/scoring/host_tensor.h"
#include "server/scoring/row_loops.h"

namespace attnscore::scoring {
namespace {

// The item's bytes as a CPU tensor, read in place (the request owns them).
at::Tensor Wrap(const TensorRef& t) {
  return at::from_blob(const_cast<void*>(t.data), t.shape,
                       at::TensorOptions().dtype(ToScalarType(t.dtype)));
}

// `count` elements of `dtype` bytes as float32 (exact): common/dtype.h's
// DecodeFloats at the CPU's vector width (row_loops.h's loads; common/ has no
// per-CPU code), for the batch worker's staging of every stacked input.
void DecodeElements(const void* in, size_t count, DType dtype, float* out) {
  const auto n = static_cast<int64_t>(count);
  switch (dtype) {
    case DType::kFloat16:
      LoadFloat16Row(static_cast<const uint16_t*>(in), n, out);
      return;
    case DType::kBFloat16:
      LoadBFloat16Row(static_cast<const uint16_t*>(in), n, out);
      return;
    case DType::kFloat32:
      std::memcpy(out, in, count * sizeof(float));
      return;
  }
}

// An uninitialised stack of the items' `pick` tensors along `axis`, in
// `staged`: in host memory when `on_host` (pinned off the CPU, so that the
// copy to the device runs asynchronously; LibTorch's caching host allocator
// pools it and keeps it until the copy is done), else on `device`; from the
// host pool on the CPU.
at::Tensor EmptyStack(absl::Span<const ScoreItem> items, TensorPick pick,
                      int64_t axis, const at::Device& device,
                      at::ScalarType staged, bool on_host) {
  std::vector<int64_t> shape = pick(items[0]).shape;
  int64_t total = 0;
  for (const ScoreItem& item : items) total += pick(item).shape[axis];
  shape[axis] = total;
  if (device.is_cpu()) return PooledEmpty(shape, staged);
  const at::TensorOptions options = at::TensorOptions().dtype(staged);
  return on_host ? at::empty(shape, options.pinned_memory(true))
                 : at::empty(shape, options.device(device));
}

bool AllPageLocked(absl::Span<const ScoreItem> items, TensorPick pick) {
  for (const ScoreItem& item : items) {
    const TensorRef& t = pick(item);
    if (!IsPinnedHostMemory(t.data, t.size_bytes)) return false;
  }
  return true;
}

}  // namespace

at::Tensor StackOnHost(absl::Span<const ScoreItem> items, TensorPick pick,
                       Layout layout, const at::Device& device,
                       at::ScalarType staged) {
  const int64_t axis = BatchAxis(layout);
  at::Tensor out = EmptyStack(items, pick, axis, device, staged, true);
  auto* rows = static_cast<char*>(out.data_ptr());
  int64_t offset = 0;
  for (const ScoreItem& item : items) {
    const TensorRef& t = pick(item);
    if (axis != 0) {
      out.narrow(axis, offset, t.shape[axis]).copy_(Wrap(t));
    } else if (staged != at::kFloat || t.dtype == DType::kFloat32) {
      std::memcpy(rows, t.data, t.size_bytes);  // as sent
      rows += t.size_bytes;
    } else {
      const size_t count = t.size_bytes / ElementSize(t.dtype);
      DecodeElements(t.data, count, t.dtype, reinterpret_cast<float*>(rows));
      rows += count * sizeof(float);
    }
    offset += t.shape[axis];
  }
  return out;
}

at::Tensor StackOnDevice(absl::Span<const ScoreItem> items, TensorPick pick,
                         Layout layout, const at::Device& device,
                         at::ScalarType staged) {
  const int64_t axis = BatchAxis(layout);
  at::Tensor out = EmptyStack(items, pick, axis, device, staged, false);
  int64_t offset = 0;
  for (const ScoreItem& item : items) {
    const TensorRef& t = pick(item);
    out.narrow(axis, offset, t.shape[axis])
        .copy_(Wrap(t), /*non_blocking=*/true);
    offset += t.shape[axis];
  }
  return out;
}

at::Tensor Gather(absl::Span<const ScoreItem> items, TensorPick pick,
                  Layout layout, const at::Device& device, bool in_place_16) {
  const TensorRef& first = pick(items[0]);
  if (device.is_cpu()) {
    // No bus to cross: 16-bit bytes are widened as they are stacked, one
    // pass (as sent, then widened, measured 1.7-2x slower for two items).
    const bool aligned =
        reinterpret_cast<uintptr_t>(first.data) % ElementSize(first.dtype) == 0;
    const bool in_place = first.dtype == DType::kFloat32 || in_place_16;
    if (items.size() == 1 && aligned && in_place) return Wrap(first);
    return StackOnHost(items, pick, layout, device, at::kFloat);
  }
  // Off the CPU the batch is staged in the items' own dtype, and 16-bit
  // inputs widened on the device.
  const at::ScalarType sent = ToScalarType(first.dtype);
  const at::Tensor on_device =
      AllPageLocked(items, pick)
          ? StackOnDevice(items, pick, layout, device, sent)
          : StackOnHost(items, pick, layout, device, sent)
                .to(device, /*non_blocking=*/true);
  return sent == at::kFloat ? on_device : on_device.to(at::kFloat);
}

}  // namespace attnscore::scoring
