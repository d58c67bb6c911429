// The scorer's host buffers: HostBufferPool(), the process's BufferPool
// (common/buffer_pool.h), for outputs, staged inputs and per-thread scratch,
// which go back to it when the reply's bytes are released; and
// IdleBlockReleaser, which lets the pool's unused blocks go while no request
// comes to do it.
//
// Ownership: HostBufferPool() is never destroyed (tensors may release into it
// during exit); a PooledBytes block belongs to its holder. Thread safety: any
// thread; an IdleBlockReleaser is created and destroyed on one thread.
// Errors: AcquireBytes throws std::bad_alloc like operator new.
#ifndef ATTNSCORE_SERVER_SCORING_BUFFER_POOL_H_
#define ATTNSCORE_SERVER_SCORING_BUFFER_POOL_H_

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <thread>

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

// Calls HostBufferPool().ReleaseIdle() every `period` on a thread of its own
// until destroyed: the pool decays its blocks on Acquire and Release, so
// without this a server that falls idle after a burst would keep them.
class IdleBlockReleaser {
 public:
  explicit IdleBlockReleaser(std::chrono::milliseconds period);
  ~IdleBlockReleaser();
  IdleBlockReleaser(const IdleBlockReleaser&) = delete;
  IdleBlockReleaser& operator=(const IdleBlockReleaser&) = delete;

 private:
  void Loop(std::chrono::milliseconds period);

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_BUFFER_POOL_H_
