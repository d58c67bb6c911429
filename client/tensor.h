// Tensors as the attnscore client sees them: a dtype, a row-major shape and
// little-endian bytes. No LibTorch (see torch_adapter.h for at::Tensor), no
// gRPC.
//
// Ownership: TensorView borrows memory it does not own; whoever builds a
// request from views keeps that memory alive for as long as the call's contract
// says (client.h). Tensor owns its bytes (uninitialised on allocation, so that
// a 64 MiB response is written once, not zeroed first); copying a Tensor copies
// them, moving does not. A response's bytes may come from the Client's pool
// (ClientOptions::keep_response_bytes): they go back to it when the Tensor, or
// whatever took them with ReleaseData, lets go, even after the Client is gone.
// Thread safety: const methods may be called concurrently; nothing else is
// synchronised.
// Errors: factories return absl::Status (INVALID_ARGUMENT naming the shape and
// byte counts).
#ifndef ATTNSCORE_CLIENT_TENSOR_H_
#define ATTNSCORE_CLIENT_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/buffer_pool.h"
#include "common/dtype.h"

namespace attnscore::client {

using ::attnscore::DType;

// Product of the dims; -1 if any dim is negative or the product overflows
// int64.
int64_t NumElements(absl::Span<const int64_t> shape);
// "[2, 8, 16, 64]".
std::string ShapeString(absl::Span<const int64_t> shape);

// A non-owning view: `data` must hold NumElements(shape) * ElementSize(dtype)
// bytes.
struct TensorView {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t size_bytes = 0;

  // Shape vs. byte count, non-negative dims, data present when size_bytes > 0.
  absl::Status Validate() const;
  int64_t num_elements() const { return NumElements(shape); }
  // Decoded to float32 (exact for every dtype).
  std::vector<float> ToFloats() const;
};

// Frees a Tensor's bytes: delete[] (the default), or back to the BufferPool
// they came from, which it keeps alive.
class TensorBytesDeleter {
 public:
  TensorBytesDeleter() = default;
  TensorBytesDeleter(std::shared_ptr<BufferPool> pool, size_t capacity)
      : pool_(std::move(pool)), capacity_(capacity) {}
  void operator()(uint8_t* bytes) const;

 private:
  std::shared_ptr<BufferPool> pool_;  // null: new[]'d bytes
  size_t capacity_ = 0;               // the pool's capacity for the block
};
using TensorBytes = std::unique_ptr<uint8_t[], TensorBytesDeleter>;

class Tensor {
 public:
  Tensor() = default;
  // `size_bytes` uninitialised bytes for `shape` of `dtype`. INVALID_ARGUMENT
  // if they disagree.
  static absl::StatusOr<Tensor> Allocate(DType dtype,
                                         std::vector<int64_t> shape);
  // Encodes float32 values into `dtype` (round to nearest even for
  // float16/bfloat16).
  static absl::StatusOr<Tensor> FromFloats(DType dtype,
                                           std::vector<int64_t> shape,
                                           absl::Span<const float> values);
  // Takes ownership of `data`, which holds `size_bytes` bytes for `shape` of
  // `dtype`.
  static absl::StatusOr<Tensor> Adopt(DType dtype, std::vector<int64_t> shape,
                                      std::unique_ptr<uint8_t[]> data,
                                      size_t size_bytes);
  static absl::StatusOr<Tensor> Adopt(DType dtype, std::vector<int64_t> shape,
                                      TensorBytes data, size_t size_bytes);
  // Copies `bytes` (already in `dtype`, little-endian).
  static absl::StatusOr<Tensor> FromBytes(DType dtype,
                                          std::vector<int64_t> shape,
                                          const void* bytes, size_t size_bytes);

  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t num_elements() const { return NumElements(shape_); }
  size_t size_bytes() const { return size_bytes_; }
  const void* data() const { return data_.get(); }
  void* mutable_data() { return data_.get(); }

  TensorView view() const {
    return TensorView{dtype_, shape_, data_.get(), size_bytes_};
  }
  std::vector<float> ToFloats() const { return view().ToFloats(); }
  // The same values in another dtype.
  Tensor ConvertTo(DType dtype) const;

  // Hands the bytes over, with how to free them (torch_adapter.h wraps them
  // in an at::Tensor without a copy).
  TensorBytes ReleaseData() &&;

 private:
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_;
  TensorBytes data_;
  size_t size_bytes_ = 0;
};

}  // namespace attnscore::client

#endif  // ATTNSCORE_CLIENT_TENSOR_H_
