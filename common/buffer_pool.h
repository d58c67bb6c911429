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
// the kernel. Blocks under kMinPooledBytes are not kept (the allocator's own
// bins serve them without faults).
//
// Idle blocks decay: one left unused for the decay period (kDefaultDecay
// unless set) is unmapped, so memory taken for a burst goes back to the
// kernel once the burst is over, while a steady load, which reuses its most
// recent blocks, keeps what it uses. The pool checks for decayed blocks on
// Acquire and Release (at most every decay / 4); ReleaseIdle() checks now,
// for an owner that wants memory back while no call comes.
//
// Pooled blocks are mapped from the kernel (mmap), not from malloc's heaps: a
// block the pool lets go then leaves the process at once instead of lying in a
// heap that malloc keeps (and fragments). They get no transparent huge pages:
// on a VM that reports free memory to its host (a Firecracker guest here), a
// fresh 64 MiB MADV_HUGEPAGE mapping faulted in 10 ms right after another was
// unmapped but 140-176 ms once the freed huge pages had gone back to the host
// (5 s later), against 27-31 ms with small pages either way. Under
// AddressSanitizer blocks come from aligned_alloc, which it checks.
//
// Block hooks (SetBlockHooks) see each block the pool maps and each it is
// about to unmap: a CUDA server page-locks its blocks there, so that requests
// parsed into them copy to the device by DMA with no staging copy
// (server/scoring/buffer_pool.h).
//
// Ownership: the pool owns idle blocks; an acquired block belongs to the
// caller until Release. Thread safety: every method may be called from any
// thread. Errors: Acquire throws std::bad_alloc when memory cannot be had,
// like operator new.
#ifndef ATTNSCORE_COMMON_BUFFER_POOL_H_
#define ATTNSCORE_COMMON_BUFFER_POOL_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

namespace attnscore {

// Whether pooled blocks are mapped from the kernel (not under AddressSanitizer,
// which checks heap blocks only).
#if defined(__SANITIZE_ADDRESS__)
#define ATTNSCORE_BUFFER_POOL_MAPS_BLOCKS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ATTNSCORE_BUFFER_POOL_MAPS_BLOCKS 0
#endif
#endif
#ifndef ATTNSCORE_BUFFER_POOL_MAPS_BLOCKS
#define ATTNSCORE_BUFFER_POOL_MAPS_BLOCKS 1
#endif

class BufferPool {
 public:
  static constexpr size_t kAlignment = 64;  // a cache line; AVX-512 loads
  static constexpr size_t kMinPooledBytes = size_t{256} << 10;
  static constexpr std::chrono::milliseconds kDefaultDecay{10'000};
  static constexpr bool kMapsBlocks = ATTNSCORE_BUFFER_POOL_MAPS_BLOCKS != 0;

  using TimePoint = std::chrono::steady_clock::time_point;
  using Clock = std::function<TimePoint()>;

  // Called for mapped blocks only (kMapsBlocks, kMinPooledBytes and more):
  // `mapped` after a block is mapped and before Acquire hands it out,
  // `unmapping` before it goes back to the kernel; each with the block and
  // its capacity. Either may be empty. They run on the caller's thread,
  // `unmapping` at times under the pool's lock: neither may call the pool,
  // nor throw.
  struct BlockHooks {
    std::function<void(void*, size_t)> mapped;
    std::function<void(void*, size_t)> unmapping;
  };

  struct Stats {
    size_t cached_bytes = 0;  // idle, kept for reuse
    size_t cached_blocks = 0;
    uint64_t hits = 0;           // acquisitions served from the pool
    uint64_t misses = 0;         // pooled-size acquisitions that allocated
    uint64_t decayed_bytes = 0;  // idle bytes let go for want of use
  };

  // `clock` (tests inject one) defaults to std::chrono::steady_clock.
  explicit BufferPool(size_t max_cached_bytes,
                      std::chrono::milliseconds decay = kDefaultDecay,
                      Clock clock = nullptr);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A kAlignment-aligned block of at least `bytes` (> 0) bytes; `*capacity`
  // receives its size, which Release needs.
  void* Acquire(size_t bytes, size_t* capacity);
  // Returns a block from Acquire, with the capacity Acquire gave.
  void Release(void* block, size_t capacity);

  // Sets the hooks for blocks mapped from now on; blocks mapped before are
  // unmapped with them too (an `unmapping` hook must accept a block its
  // `mapped` never saw).
  void SetBlockHooks(BlockHooks hooks);

  // Sets the most idle bytes kept, freeing idle blocks beyond it now.
  void SetMaxCachedBytes(size_t bytes);
  // Sets how long an idle block is kept unused (zero: until the cap needs
  // its room), and applies it now.
  void SetDecay(std::chrono::milliseconds decay);
  // Lets go of the idle blocks unused for the decay period; returns their
  // bytes.
  size_t ReleaseIdle();
  Stats stats() const;

  // The capacity Acquire gives for `bytes`.
  static size_t CapacityFor(size_t bytes);

 private:
  struct IdleBlock {
    void* block;
    TimePoint since;  // released at
  };

  void* AllocateBlock(size_t capacity);
  void FreeBlockLocked(void* block, size_t capacity);
  void TrimLocked(size_t limit);
  size_t DecayLocked(TimePoint now);
  // DecayLocked when the next check is due.
  void MaybeDecayLocked(TimePoint now);

  const Clock clock_;
  mutable std::mutex mu_;
  // capacity -> idle blocks, oldest first (reused from the back)
  std::map<size_t, std::vector<IdleBlock>> idle_;
  size_t max_cached_bytes_;
  std::chrono::milliseconds decay_;
  TimePoint next_decay_check_;
  Stats stats_;
  BlockHooks hooks_;
};

}  // namespace attnscore

#endif  // ATTNSCORE_COMMON_BUFFER_POOL_H_
