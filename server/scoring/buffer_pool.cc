#include "server/scoring/buffer_pool.h"

#include <pthread.h>

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

IdleBlockReleaser::IdleBlockReleaser(std::chrono::milliseconds period)
    : thread_([this, period] { Loop(period); }) {}

IdleBlockReleaser::~IdleBlockReleaser() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void IdleBlockReleaser::Loop(std::chrono::milliseconds period) {
  pthread_setname_np(pthread_self(), "attnscore-pool");
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period, [this] { return stop_; })) {
    HostBufferPool().ReleaseIdle();
  }
}

}  // namespace attnscore::scoring
