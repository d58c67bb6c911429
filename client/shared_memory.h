// A POSIX shared-memory object that this process creates and maps, for
// shared-memory outputs and inputs (Linux only): register it with the server
// (Client::RegisterSharedMemory, Registration()), place outputs in it
// (ScoreRequest::placements), then read them with View(); or write inputs
// into data() and name their ranges in ScoreRequest::shared_inputs.
//
//   ac::SharedMemoryRegion region =
//       *ac::SharedMemoryRegion::Create("attnscore-myservice-1", 64 << 20);
//   client->RegisterSharedMemory(region.Registration("out"));
//   request.placements = {{ac::Output::kLogits, {"out", 0, region.size()}}};
//   absl::StatusOr<ac::ScoreResult> result = client->Score(request);
//   absl::StatusOr<ac::TensorView> logits = region.View(result->placed[0]);
//
// Two names: the key is the object's shm_open name without the leading '/'
// (it must start with the server's --shm-prefix, ServerInfo::shm_prefix); the
// region's name is what the client registers it under and what placements and
// results use. The server knows the object by key only at registration.
//
// Ownership: a SharedMemoryRegion owns the object it created and its mapping;
// the destructor unmaps it and unlinks the object (the server's mapping, if it
// still has one, stays valid until it unmaps). Unregister the region first so
// that the server lets go too. Move-only. Views borrow the mapping: they are
// valid while the region lives.
// Thread safety: const methods may be called concurrently; the bytes are
// plain shared memory: read a placed output only after the call that placed it
// has returned, and place no two requests' outputs in the same range at once.
// Errors: Create returns INVALID_ARGUMENT for a bad key or size,
// ALREADY_EXISTS when an object of that key exists, PERMISSION_DENIED, and
// RESOURCE_EXHAUSTED when /dev/shm or the process is out of room or
// descriptors, each naming the key and the system's reason; View returns
// INVALID_ARGUMENT for a range outside the region.
#ifndef ATTNSCORE_CLIENT_SHARED_MEMORY_H_
#define ATTNSCORE_CLIENT_SHARED_MEMORY_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "client/tensor.h"

namespace attnscore::client {

class SharedMemoryRegion {
 public:
  // Creates the object "/<key>" (it must not exist yet), read-write for this
  // user only, of `byte_size` bytes with its pages reserved (so that a full
  // /dev/shm fails here, not as SIGBUS on first touch), and maps it. `key`:
  // 1-255 bytes, no '/'.
  static absl::StatusOr<SharedMemoryRegion> Create(std::string key,
                                                   size_t byte_size);

  ~SharedMemoryRegion();
  SharedMemoryRegion(SharedMemoryRegion&& other) noexcept;
  SharedMemoryRegion& operator=(SharedMemoryRegion&& other) noexcept;
  SharedMemoryRegion(const SharedMemoryRegion&) = delete;
  SharedMemoryRegion& operator=(const SharedMemoryRegion&) = delete;

  // The shm_open name without the leading '/'.
  const std::string& key() const { return key_; }
  // The mapping's first byte (page-aligned); null once moved from.
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

  // The whole object registered as `name`: offset 0, byte_size size().
  SharedMemoryRegistration Registration(std::string name) const;

  // The bytes of `placed` in this region, as a view of its dtype and shape.
  // `registered_offset`: the SharedMemoryRegistration::offset this object was
  // registered with (range offsets count from there); 0 for Registration().
  // The caller matches placed.range.region to the name it registered this
  // object under. INVALID_ARGUMENT when the range does not lie within the
  // region or is too small for the shape.
  absl::StatusOr<TensorView> View(const PlacedOutput& placed,
                                  uint64_t registered_offset = 0) const;

 private:
  SharedMemoryRegion(std::string key, uint8_t* data, size_t size);
  void Release();

  std::string key_;
  uint8_t* data_ = nullptr;  // MAP_SHARED over the whole object
  size_t size_ = 0;
};

}  // namespace attnscore::client

#endif  // ATTNSCORE_CLIENT_SHARED_MEMORY_H_
