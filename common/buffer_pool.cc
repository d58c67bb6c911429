#include "common/buffer_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <utility>

namespace attnscore {
namespace {

bool IsMapped(size_t capacity) {
  return BufferPool::kMapsBlocks && capacity >= BufferPool::kMinPooledBytes;
}

// Pooled sizes are whole pages (CapacityFor rounds them to 32 KiB and more),
// so a mapping is exactly the block.
void* MapOrAllocate(size_t capacity) {
  if (!IsMapped(capacity)) {
    void* block = std::aligned_alloc(BufferPool::kAlignment, capacity);
    if (block == nullptr) throw std::bad_alloc();
    return block;
  }
  void* block = mmap(nullptr, capacity, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (block == MAP_FAILED) throw std::bad_alloc();
  return block;
}

void UnmapOrFree(void* block, size_t capacity) {
  if (IsMapped(capacity)) {
    munmap(block, capacity);
  } else {
    std::free(block);
  }
}

BufferPool::TimePoint SteadyNow() { return std::chrono::steady_clock::now(); }

}  // namespace

BufferPool::BufferPool(size_t max_cached_bytes, std::chrono::milliseconds decay,
                       Clock clock)
    : clock_(clock ? std::move(clock) : Clock(SteadyNow)),
      max_cached_bytes_(max_cached_bytes),
      decay_(decay),
      next_decay_check_(clock_() + decay / 4) {}

BufferPool::~BufferPool() {
  std::lock_guard<std::mutex> lock(mu_);
  TrimLocked(0);
}

size_t BufferPool::CapacityFor(size_t bytes) {
  const auto round_up = [](size_t n, size_t step) {
    return (n + step - 1) / step * step;
  };
  if (bytes < kMinPooledBytes) {
    return round_up(bytes == 0 ? 1 : bytes, kAlignment);
  }
  // Eight classes per power of two: step = 1/8 of the largest power of two
  // not above `bytes`.
  size_t power = kMinPooledBytes;
  while (power <= bytes / 2) power *= 2;
  return round_up(bytes, power / 8);
}

void* BufferPool::Acquire(size_t bytes, size_t* capacity) {
  *capacity = CapacityFor(bytes);
  if (*capacity >= kMinPooledBytes) {
    const TimePoint now = clock_();
    std::lock_guard<std::mutex> lock(mu_);
    MaybeDecayLocked(now);
    auto it = idle_.find(*capacity);
    if (it != idle_.end() && !it->second.empty()) {
      void* block = it->second.back().block;
      it->second.pop_back();
      stats_.cached_bytes -= *capacity;
      --stats_.cached_blocks;
      ++stats_.hits;
      return block;
    }
    ++stats_.misses;
  }
  return AllocateBlock(*capacity);
}

// A fresh block, shown to the `mapped` hook when mapped. The hook is copied
// under the lock and run outside it (mapping is the slow path anyway).
void* BufferPool::AllocateBlock(size_t capacity) {
  void* block = MapOrAllocate(capacity);
  if (IsMapped(capacity)) {
    std::function<void(void*, size_t)> mapped;
    {
      std::lock_guard<std::mutex> lock(mu_);
      mapped = hooks_.mapped;
    }
    if (mapped) mapped(block, capacity);
  }
  return block;
}

void BufferPool::FreeBlockLocked(void* block, size_t capacity) {
  if (IsMapped(capacity) && hooks_.unmapping) {
    hooks_.unmapping(block, capacity);
  }
  UnmapOrFree(block, capacity);
}

void BufferPool::Release(void* block, size_t capacity) {
  if (block == nullptr) return;
  if (capacity < kMinPooledBytes) {
    UnmapOrFree(block, capacity);
    return;
  }
  const TimePoint now = clock_();
  std::function<void(void*, size_t)> unmapping;
  {
    std::lock_guard<std::mutex> lock(mu_);
    MaybeDecayLocked(now);
    if (stats_.cached_bytes + capacity <= max_cached_bytes_) {
      idle_[capacity].push_back({block, now});
      stats_.cached_bytes += capacity;
      ++stats_.cached_blocks;
      return;
    }
    unmapping = hooks_.unmapping;
  }
  // Over the cap: unmapped outside the lock, as a block the pool never had.
  if (IsMapped(capacity) && unmapping) unmapping(block, capacity);
  UnmapOrFree(block, capacity);
}

void BufferPool::SetBlockHooks(BlockHooks hooks) {
  std::lock_guard<std::mutex> lock(mu_);
  hooks_ = std::move(hooks);
}

void BufferPool::SetMaxCachedBytes(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  max_cached_bytes_ = bytes;
  TrimLocked(bytes);
}

void BufferPool::SetDecay(std::chrono::milliseconds decay) {
  const TimePoint now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  decay_ = decay;
  DecayLocked(now);
}

size_t BufferPool::ReleaseIdle() {
  const TimePoint now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  return DecayLocked(now);
}

BufferPool::Stats BufferPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// Frees idle blocks, largest classes first, until at most `limit` bytes idle.
void BufferPool::TrimLocked(size_t limit) {
  for (auto it = idle_.rbegin();
       it != idle_.rend() && stats_.cached_bytes > limit; ++it) {
    std::vector<IdleBlock>& blocks = it->second;
    while (!blocks.empty() && stats_.cached_bytes > limit) {
      FreeBlockLocked(blocks.back().block, it->first);
      blocks.pop_back();
      stats_.cached_bytes -= it->first;
      --stats_.cached_blocks;
    }
  }
}

// Each class's oldest blocks are at its front: frees those idle for the decay
// period or longer.
size_t BufferPool::DecayLocked(TimePoint now) {
  next_decay_check_ = now + decay_ / 4;
  if (decay_.count() <= 0) return 0;
  size_t freed = 0;
  for (auto& [capacity, blocks] : idle_) {
    const auto young = std::find_if(
        blocks.begin(), blocks.end(),
        [&](const IdleBlock& idle) { return now - idle.since < decay_; });
    for (auto it = blocks.begin(); it != young; ++it) {
      FreeBlockLocked(it->block, capacity);
      freed += capacity;
      --stats_.cached_blocks;
    }
    blocks.erase(blocks.begin(), young);
  }
  stats_.cached_bytes -= freed;
  stats_.decayed_bytes += freed;
  return freed;
}

void BufferPool::MaybeDecayLocked(TimePoint now) {
  if (decay_.count() > 0 && now >= next_decay_check_) DecayLocked(now);
}

}  // namespace attnscore
