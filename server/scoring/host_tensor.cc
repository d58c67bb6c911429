#include "server/scoring/host_tensor.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/accumulate.h>

#include "server/scoring/buffer_pool.h"

namespace attnscore::scoring {

at::Tensor PooledEmpty(at::IntArrayRef sizes, at::ScalarType dtype) {
  const auto options = at::TensorOptions().dtype(dtype);
  const auto bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                     at::elementSize(dtype);
  if (bytes == 0) return at::empty(sizes, options);
  size_t capacity = 0;
  void* block = HostBufferPool().Acquire(bytes, &capacity);
  return at::from_blob(
      block, sizes,
      [capacity](void* data) { HostBufferPool().Release(data, capacity); },
      options);
}

at::Tensor PooledContiguousAs(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype && t.is_contiguous()) return t;
  at::Tensor out = PooledEmpty(t.sizes(), dtype);
  out.copy_(t);
  return out;
}

void PooledFloatsDeleter::operator()(float* block) const {
  HostBufferPool().Release(block, capacity);
}

PooledFloats AcquireFloats(size_t count) {
  if (count == 0) return PooledFloats(nullptr, PooledFloatsDeleter{});
  size_t capacity = 0;
  void* block = HostBufferPool().Acquire(count * sizeof(float), &capacity);
  return PooledFloats(static_cast<float*>(block),
                      PooledFloatsDeleter{capacity});
}

}  // namespace attnscore::scoring
