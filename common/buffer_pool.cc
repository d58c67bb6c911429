#include "common/buffer_pool.h"

#include <cstdlib>
#include <new>

namespace attnscore {
namespace {

void* AllocateAligned(size_t capacity) {
  void* block = std::aligned_alloc(BufferPool::kAlignment, capacity);
  if (block == nullptr) throw std::bad_alloc();
  return block;
}

}  // namespace

BufferPool::BufferPool(size_t max_cached_bytes)
    : max_cached_bytes_(max_cached_bytes) {}

BufferPool::~BufferPool() { TrimLocked(0); }

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
    std::lock_guard<std::mutex> lock(mu_);
    auto it = idle_.find(*capacity);
    if (it != idle_.end() && !it->second.empty()) {
      void* block = it->second.back();
      it->second.pop_back();
      stats_.cached_bytes -= *capacity;
      --stats_.cached_blocks;
      ++stats_.hits;
      return block;
    }
    ++stats_.misses;
  }
  return AllocateAligned(*capacity);
}

void BufferPool::Release(void* block, size_t capacity) {
  if (block == nullptr) return;
  if (capacity >= kMinPooledBytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stats_.cached_bytes + capacity <= max_cached_bytes_) {
      idle_[capacity].push_back(block);
      stats_.cached_bytes += capacity;
      ++stats_.cached_blocks;
      return;
    }
  }
  std::free(block);
}

void BufferPool::SetMaxCachedBytes(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  max_cached_bytes_ = bytes;
  TrimLocked(bytes);
}

BufferPool::Stats BufferPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// Frees idle blocks, largest classes first, until at most `limit` bytes idle.
void BufferPool::TrimLocked(size_t limit) {
  for (auto it = idle_.rbegin();
       it != idle_.rend() && stats_.cached_bytes > limit; ++it) {
    std::vector<void*>& blocks = it->second;
    while (!blocks.empty() && stats_.cached_bytes > limit) {
      std::free(blocks.back());
      blocks.pop_back();
      stats_.cached_bytes -= it->first;
      --stats_.cached_blocks;
    }
  }
}

}  // namespace attnscore
