// Host tensors whose memory comes from HostBufferPool() (buffer_pool.h) and
// goes back to it when the last reference drops: for the scoring path's
// outputs, staged inputs and conversions, which the reply keeps alive until
// gRPC has sent its bytes. Steady-state serving then takes no page faults
// for them.
//
// Thread safety: reentrant. Errors: std::bad_alloc (or c10::Error) like
// at::empty.
#ifndef ATTNSCORE_SERVER_SCORING_HOST_TENSOR_H_
#define ATTNSCORE_SERVER_SCORING_HOST_TENSOR_H_

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <memory>

namespace attnscore::scoring {

// An uninitialised contiguous CPU tensor of `sizes` and `dtype`.
at::Tensor PooledEmpty(at::IntArrayRef sizes, at::ScalarType dtype);

// `t` (on the CPU) in `dtype`, contiguous: `t` itself when it already is,
// else a pooled copy.
at::Tensor PooledContiguousAs(const at::Tensor& t, at::ScalarType dtype);

// A pooled block of `count` floats (scratch), released on destruction.
struct PooledFloatsDeleter {
  size_t capacity = 0;
  void operator()(float* block) const;
};
using PooledFloats = std::unique_ptr<float[], PooledFloatsDeleter>;
PooledFloats AcquireFloats(size_t count);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_HOST_TENSOR_H_
