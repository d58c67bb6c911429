// BufferPool: size-classed, reusable host memory for large buffers. A fresh
// buffer of tens of megabytes costs a page fault per 4 KiB page on first touch
// (and the kernel zeroes every page), as much as the work that fills it (a
// 64 MiB buffer: about 16k faults); a block returned to the pool is reused
// without any, so a steady state takes no page faults for them. The server's
// scorer keeps its outputs, staged inputs and scratch here
// (server/scoring/buffer_pool.h); the client its responses' tensors.
//
// Blocks come in size classes (eight per power of two from kMinPooledBytes, at
// most 12.5% over the request) and are kept per class, most recent first, up
// to max_cached_bytes of idle blocks; past that a released block goes back to
// the allocator. Blocks under kMinPooledBytes are not kept (the allocator's
// own bins serve them without faults).
//
// Ownership: the pool owns idle blocks; an acquired block belongs to the
// caller until Release (or std::free, which is also allowed). Thread safety:
// every method may be called from any thread. Errors: Acquire throws
// std::bad_alloc when the allocator fails, like operator new.
#ifndef ATTNSCORE_COMMON_BUFFER_POOL_H_
#define ATTNSCORE_COMMON_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace attnscore {

class BufferPool {
 public:
  static constexpr size_t kAlignment = 64;  // a cache line; AVX-512 loads
  static constexpr size_t kMinPooledBytes = size_t{256} << 10;

  struct Stats {
    size_t cached_bytes = 0;  // idle, kept for reuse
    size_t cached_blocks = 0;
    uint64_t hits = 0;    // acquisitions served from the pool
    uint64_t misses = 0;  // pooled-size acquisitions that allocated
  };

  explicit BufferPool(size_t max_cached_bytes);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A kAlignment-aligned block of at least `bytes` (> 0) bytes; `*capacity`
  // receives its size, which Release needs.
  void* Acquire(size_t bytes, size_t* capacity);
  // Returns a block from Acquire, with the capacity Acquire gave.
  void Release(void* block, size_t capacity);

  // Sets the most idle bytes kept, freeing idle blocks beyond it now.
  void SetMaxCachedBytes(size_t bytes);
  Stats stats() const;

  // The capacity Acquire gives for `bytes`.
  static size_t CapacityFor(size_t bytes);

 private:
  void TrimLocked(size_t limit);

  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> idle_;  // capacity -> blocks (LIFO)
  size_t max_cached_bytes_;
  Stats stats_;
};

}  // namespace attnscore

#endif  // ATTNSCORE_COMMON_BUFFER_POOL_H_
