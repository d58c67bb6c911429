// Shared-memory output regions (attnscore.v1 RegisterSharedMemory, Triton's
// "system shared memory"): a client on the server's host creates a POSIX
// shared-memory object, registers a range of it under a name, and places
// outputs there instead of receiving their bytes in the reply. For a 16 MiB
// reply this replaces the loopback socket's copies and gRPC's framing with the
// server's writes into the mapping: the CPU scorer writes logits and
// probabilities there tile by tile (ScoreItem's destinations), other outputs
// take one memcpy.
//
// Safety:
//   - Off unless the operator sets a name prefix (--shm-prefix): only objects
//     whose name starts with it can be registered, so a client cannot make the
//     server write into another application's shared memory.
//   - A region belongs to the identity that registered it; other identities
//     get NOT_FOUND for it, as if it did not exist.
//   - A client that shrinks the object (ftruncate) while the server writes
//     would make the write fault with SIGBUS, on whichever thread writes (the
//     scorer's included). The process's SIGBUS handler, installed with the
//     first mapping, replaces a faulting region's pages with private zero
//     pages and marks the region broken (libwayland's remedy for a client
//     that truncates its wl_shm pool): the write resumes there, the request
//     fails with ABORTED, and so does every later write to that region until
//     the client registers it again. A SIGBUS anywhere else keeps its previous
//     handling.
//
// Ownership: the registry owns the mappings through shared_ptr; a request that
// resolved a region holds it, so Unregister never unmaps memory that an
// accepted request is about to write (it is unmapped when the last holder
// drops it). Thread safety: all methods may be called concurrently.
// Errors: absl::Status naming the field and the expected vs actual value.
#ifndef ATTNSCORE_SERVER_SERVICE_SHARED_MEMORY_H_
#define ATTNSCORE_SERVER_SERVICE_SHARED_MEMORY_H_

#include <sys/types.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace attnscore::service {

// Page-locks a mapped region for a GPU's DMA, and undoes it before the region
// is unmapped: a CUDA server sets both (main.cc, scoring/accelerator.h), so
// that batches read inputs placed in shared memory straight from it. `lock`
// answers false when it cannot (the region then stays pageable); neither may
// throw. Empty: regions stay pageable.
struct PageLock {
  std::function<bool(void*, size_t)> lock;
  std::function<void(void*)> unlock;
};

struct SharedMemoryOptions {
  // Object-name prefix that may be registered; empty: shared memory is off
  // (every method answers FAILED_PRECONDITION).
  std::string prefix;
  // Most regions registered at once, all identities together.
  int max_regions = 64;
  // Most of them one identity may hold (--max-shm-regions-per-client), so
  // that no caller can take every slot; kHalfOfRegions: half of max_regions
  // (at least 1), or no cap where the service does not tell callers apart
  // (attention_scorer_service.h ServiceOptions::authenticate); 0: no
  // per-identity cap.
  static constexpr int kHalfOfRegions = -1;
  int max_regions_per_client = kHalfOfRegions;
  // Applied to every region as it is mapped (a GPU server's). Locking a
  // region makes its pages resident for as long as it stays registered.
  PageLock page_lock;
  // max_regions_per_client with kHalfOfRegions resolved.
  int PerClientCap() const {
    return max_regions_per_client == kHalfOfRegions
               ? std::max(1, max_regions / 2)
               : max_regions_per_client;
  }
};

// What a client registers: its name for the region, the object's name
// (without the leading '/'), and the range of the object.
struct SharedMemorySpec {
  std::string name;
  std::string key;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};

// Longest region name and object name accepted.
inline constexpr size_t kMaxRegionNameBytes = 64;
inline constexpr size_t kMaxObjectNameBytes = 255;
// Most mappings alive at once in the process (the SIGBUS handler's fixed
// table): the ceiling of --max-shm-regions.
inline constexpr int kMaxMappedRegions = 4096;

// One mapped range of a shared-memory object. Immutable, except that a fault
// marks it broken; the mapping lives as long as the object.
class MappedRegion {
 public:
  // Maps [spec.offset, spec.offset + spec.byte_size) of the object read-write.
  // NOT_FOUND when there is no such object, PERMISSION_DENIED when it may not
  // be opened read-write, INVALID_ARGUMENT when the range is not within it,
  // RESOURCE_EXHAUSTED when kMaxMappedRegions mappings are alive. Page-locked
  // with `page_lock` when it has a `lock` (unlocked before it is unmapped).
  static absl::StatusOr<std::shared_ptr<const MappedRegion>> Map(
      SharedMemorySpec spec, const PageLock& page_lock = {});

  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;
  ~MappedRegion();

  const SharedMemorySpec& spec() const { return spec_; }
  // Whether the range is page-locked (PageLock).
  bool page_locked() const { return static_cast<bool>(unlock_); }

  // Whether `other` maps the same object (another registration of it, or this
  // one): its device and inode, whatever the names.
  bool SameObject(const MappedRegion& other) const {
    return device_ == other.device_ && inode_ == other.inode_;
  }

  // Where byte `offset` of the range is mapped (REQUIRES: offset <=
  // byte_size). Whoever writes there checks CheckIntact() afterwards.
  char* At(uint64_t offset) const { return static_cast<char*>(base_) + offset; }

  // Copies `size` bytes from `src` to `offset` of the region (REQUIRES: within
  // it), then CheckIntact().
  absl::Status Write(uint64_t offset, const void* src, size_t size) const;

  // ABORTED once a write faulted because the object shrank below the range:
  // the mapping then holds private pages instead of the object's, so what was
  // written, then and since, never reaches the client. OK before that.
  absl::Status CheckIntact() const;

 private:
  MappedRegion(SharedMemorySpec spec, void* base, int slot, dev_t device,
               ino_t inode, std::function<void(void*)> unlock);

  const SharedMemorySpec spec_;
  void* const base_;
  const int slot_;  // in the SIGBUS handler's table
  const dev_t device_;
  const ino_t inode_;
  const std::function<void(void*)> unlock_;  // set when page-locked
};

class SharedMemoryRegistry {
 public:
  explicit SharedMemoryRegistry(SharedMemoryOptions options);

  bool enabled() const { return !options_.prefix.empty(); }
  const SharedMemoryOptions& options() const { return options_; }

  // Checks `spec` (name, key, page-aligned offset, size), maps it, records
  // it for `owner` and logs it. ALREADY_EXISTS when `owner` has a region of
  // that name, RESOURCE_EXHAUSTED at max_regions or at `owner`'s share of
  // them, else as MappedRegion::Map.
  absl::Status Register(absl::string_view owner, SharedMemorySpec spec);
  // NOT_FOUND when `owner` has no region `name`.
  absl::Status Unregister(absl::string_view owner, absl::string_view name);
  // Every region of `owner` (none is not an error).
  absl::Status UnregisterAll(absl::string_view owner);
  // `owner`'s regions, by name.
  std::vector<SharedMemorySpec> List(absl::string_view owner) const;
  // `owner`'s region `name`, or NOT_FOUND (also for another owner's region).
  absl::StatusOr<std::shared_ptr<const MappedRegion>> Find(
      absl::string_view owner, absl::string_view name) const;

  // FAILED_PRECONDITION when shared memory is off.
  absl::Status CheckEnabled() const;
  // That FAILED_PRECONDITION (also for a caller without a registry).
  static absl::Status Off();

 private:
  using Key = std::pair<std::string, std::string>;  // owner, name
  static Key KeyOf(absl::string_view owner, absl::string_view name);
  // RESOURCE_EXHAUSTED when one more region would pass a cap.
  absl::Status CheckRoomFor(absl::string_view owner) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SharedMemoryOptions options_;
  mutable absl::Mutex mu_;
  std::map<Key, std::shared_ptr<const MappedRegion>, std::less<>> regions_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_SHARED_MEMORY_H_
