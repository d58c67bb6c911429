// Optional LibTorch adapter for the attnscore client: at::Tensor <-> client
// tensors, for callers that already have LibTorch. Header-only, so the client
// library itself never links LibTorch; include it only where ATen is on the
// include path (it includes <ATen/core/Tensor.h> and <ATen/ops/from_blob.h>).
//
// Ownership: ViewOf borrows the at::Tensor's memory (keep the tensor alive for
// the call, see client.h); ToAtTensor takes a result Tensor's bytes over
// without copying.
// Thread safety: pure functions.
// Errors: INVALID_ARGUMENT for tensors the wire cannot carry as they are (not
// on the CPU, not contiguous, or not float32/float16/bfloat16), naming what was
// found.
#ifndef ATTNSCORE_CLIENT_TORCH_ADAPTER_H_
#define ATTNSCORE_CLIENT_TORCH_ADAPTER_H_

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/tensor.h"
#include "common/aten_dtype.h"

namespace attnscore::client {

inline absl::StatusOr<DType> DTypeOf(at::ScalarType type) {
  std::optional<DType> dtype = FromScalarType(type);
  if (!dtype.has_value()) {
    return absl::InvalidArgumentError(
        std::string("unsupported dtype ") + at::toString(type) +
        ": expected float32, float16 or bfloat16");
  }
  return *dtype;
}

// A view of `tensor`'s memory. REQUIRES: `tensor` outlives every use of the
// view. Callers with a GPU or strided tensor pass
// `tensor.to(at::kCPU).contiguous()` and keep that alive instead.
inline absl::StatusOr<TensorView> ViewOf(const at::Tensor& tensor) {
  if (!tensor.defined()) {
    return absl::InvalidArgumentError("undefined at::Tensor");
  }
  if (!tensor.device().is_cpu()) {
    return absl::InvalidArgumentError("at::Tensor on " + tensor.device().str() +
                                      ": move it to the CPU first");
  }
  if (!tensor.is_contiguous()) {
    return absl::InvalidArgumentError(
        "at::Tensor is not contiguous: call .contiguous() first");
  }
  absl::StatusOr<DType> dtype = DTypeOf(tensor.scalar_type());
  if (!dtype.ok()) return dtype.status();
  TensorView view;
  view.dtype = *dtype;
  view.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
  view.data = tensor.data_ptr();
  view.size_bytes = static_cast<size_t>(tensor.numel()) * tensor.element_size();
  return view;
}

// The result tensor as an at::Tensor that owns its bytes (no copy); undefined
// for a default-constructed Tensor.
inline at::Tensor ToAtTensor(Tensor tensor) {
  const std::vector<int64_t> shape = tensor.shape();
  const at::ScalarType type = ToScalarType(tensor.dtype());
  TensorBytes bytes = std::move(tensor).ReleaseData();
  if (bytes == nullptr) {
    return at::Tensor();  // a default-constructed Tensor holds nothing
  }
  // The at::Tensor frees them as the Tensor would have (back to the Client's
  // pool, or delete[]).
  const TensorBytesDeleter free_bytes = bytes.get_deleter();
  return at::from_blob(
      bytes.release(), shape,
      [free_bytes](void* p) { free_bytes(static_cast<uint8_t*>(p)); },
      at::TensorOptions().dtype(type));
}

}  // namespace attnscore::client

#endif  // ATTNSCORE_CLIENT_TORCH_ADAPTER_H_
