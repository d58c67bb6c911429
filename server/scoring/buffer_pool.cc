#include "server/scoring/buffer_pool.h"

namespace attnscore::scoring {

BufferPool& HostBufferPool() {
  static auto* pool = new BufferPool(size_t{1} << 30);  // never destroyed
  return *pool;
}

void PooledBytesDeleter::operator()(unsigned char* block) const {
  HostBufferPool().Release(block, capacity);
}

PooledBytes AcquireBytes(size_t bytes) {
  size_t capacity = 0;
  void* block = HostBufferPool().Acquire(bytes, &capacity);
  return PooledBytes(static_cast<unsigned char*>(block),
                     PooledBytesDeleter{capacity});
}

}  // namespace attnscore::scoring
