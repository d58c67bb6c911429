// BufferPool: size-classed, reusable host memory for the scoring path's large
// buffers (outputs, staged inputs, per-thread scratch). A fresh buffer of tens
// of megabytes costs a page fault per 4 KiB page on first touch, as much as
// the arithmetic that fills it (a 64 MiB output: about 16k faults); a buffer
// returned to the pool when the reply's bytes are released is reused without
// any, so steady-state serving takes no page faults for them.
//
// Blocks come in size classes (eight per power of two from kMinPooledBytes, at
// most 12.5% over the request) and are kept per class, most recent first, up
// to max_cached_bytes of idle blocks; past that a released block goes back to
// the allocator. Blocks under kMinPooledBytes are not kept (the allocator's
// own bins serve them without faults).
//
// Ownership: the pool owns idle blocks; an acquired block belongs to the
// caller until Release. HostBufferPool() is the process's pool, never
// destroyed (tensors may release into it during exit). Thread safety: every
// method may be called from any thread. Errors: Acquire throws std::bad_alloc
// when the allocator fails, like operator new.
#ifndef ATTNSCORE_SERVER_SCORING_BUFFER_POOL_H_
#define ATTNSCORE_SERVER_SCORING_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace attnscore::scoring {

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
