// The scorer's host buffers: HostBufferPool(), the process's BufferPool
// (common/buffer_pool.h), for outputs, staged inputs and per-thread scratch,
// which go back to it when the reply's bytes are released.
//
// Ownership: HostBufferPool() is never destroyed (tensors may release into it
// during exit); a PooledBytes block belongs to its holder. Thread safety: any
// thread. Errors: AcquireBytes throws std::bad_alloc like operator new.
#ifndef ATTNSCORE_SERVER_SCORING_BUFFER_POOL_H_
#define ATTNSCORE_SERVER_SCORING_BUFFER_POOL_H_

#include <cstddef>
#include <memory>

#include "common/buffer_pool.h"

namespace attnscore::scoring {

using ::attnscore::BufferPool;

// The process's pool for the scorer's host buffers (1 GiB of idle blocks
// unless SetMaxCachedBytes says otherwise).
BufferPool& HostBufferPool();

// A block of HostBufferPool() that goes back to it on destruction (a
// request's input bytes, which the service parses straight into one).
struct PooledBytesDeleter {
  size_t capacity = 0;
  void operator()(unsigned char* block) const;
};
using PooledBytes = std::unique_ptr<unsigned char[], PooledBytesDeleter>;
// At least `bytes` (> 0) uninitialised bytes.
PooledBytes AcquireBytes(size_t bytes);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_BUFFER_POOL_H_
