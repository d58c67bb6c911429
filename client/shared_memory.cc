#include "client/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnscore::client {
namespace {

// NAME_MAX: the object is the file /dev/shm/<key>.
constexpr size_t kMaxKeyBytes = 255;

absl::Status CheckKey(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared memory key '", key, "': expected 1-", kMaxKeyBytes,
                     " bytes, got ", key.size()));
  }
  if (key.find_first_of(std::string("/\0", 2)) != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared memory key '", key,
        "': no '/' or NUL (it is the object's name without the leading '/')"));
  }
  return absl::OkStatus();
}

// `what` failed with `error` (an errno value), for the object `key`.
absl::Status SystemError(int error, const char* what, const std::string& key) {
  return absl::ErrnoToStatus(
      error, absl::StrCat(what, " of shared memory object '/", key, "'"));
}

// Sizes the open object `fd` to `size` bytes and reserves its pages: tmpfs
// otherwise allocates a page on first touch and a full /dev/shm becomes a
// SIGBUS in whichever process touches it first.
absl::Status SizeObject(int fd, size_t size, const std::string& key) {
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    return SystemError(errno, "ftruncate", key);
  }
  // posix_fallocate returns the error instead of setting errno.
  if (const int error = posix_fallocate(fd, 0, static_cast<off_t>(size));
      error != 0) {
    return SystemError(error, "posix_fallocate", key);
  }
  return absl::OkStatus();
}

// Maps all `size` bytes of `fd` read-write and shared.
absl::StatusOr<uint8_t*> MapObject(int fd, size_t size,
                                   const std::string& key) {
  void* data =
      mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, /*offset=*/0);
  if (data == MAP_FAILED) return SystemError(errno, "mmap", key);
  return static_cast<uint8_t*>(data);
}

}  // namespace

absl::StatusOr<SharedMemoryRegion> SharedMemoryRegion::Create(
    std::string key, size_t byte_size) {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  if (byte_size == 0 ||
      byte_size > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared memory object '/", key,
        "': byte_size must be > 0 and fit off_t, got ", byte_size));
  }
  const std::string name = absl::StrCat("/", key);
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) return SystemError(errno, "shm_open", key);
  absl::Status sized = SizeObject(fd, byte_size, key);
  absl::StatusOr<uint8_t*> data =
      sized.ok() ? MapObject(fd, byte_size, key) : sized;
  // The mapping keeps the object open.
  close(fd);
  if (!data.ok()) {
    shm_unlink(name.c_str());
    return data.status();
  }
  return SharedMemoryRegion(std::move(key), *data, byte_size);
}

SharedMemoryRegion::SharedMemoryRegion(std::string key, uint8_t* data,
                                       size_t size)
    : key_(std::move(key)), data_(data), size_(size) {}

SharedMemoryRegion::~SharedMemoryRegion() { Release(); }

SharedMemoryRegion::SharedMemoryRegion(SharedMemoryRegion&& other) noexcept
    : key_(std::move(other.key_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

SharedMemoryRegion& SharedMemoryRegion::operator=(
    SharedMemoryRegion&& other) noexcept {
  if (this != &other) {
    Release();
    key_ = std::move(other.key_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void SharedMemoryRegion::Release() {
  if (data_ == nullptr) return;
  munmap(data_, size_);
  shm_unlink(absl::StrCat("/", key_).c_str());
  data_ = nullptr;
  size_ = 0;
}

SharedMemoryRegistration SharedMemoryRegion::Registration(
    std::string name) const {
  return SharedMemoryRegistration{std::move(name), key_, 0, size_};
}

absl::StatusOr<TensorView> SharedMemoryRegion::View(
    const PlacedOutput& placed, uint64_t registered_offset) const {
  const SharedMemoryRange& range = placed.range;
  const std::string what =
      absl::StrCat(OutputName(placed.output), " in region '", range.region,
                   "' (object '/", key_, "', ", size_, " bytes)");
  // Each step subtracts from what is left, so no sum can overflow.
  if (registered_offset > size_ || range.offset > size_ - registered_offset ||
      range.byte_size > size_ - registered_offset - range.offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": range [", range.offset, ", +", range.byte_size,
        ") from registered offset ", registered_offset, " is outside it"));
  }
  const int64_t elements = NumElements(placed.shape);
  const size_t element_size = ElementSize(placed.dtype);
  if (elements < 0 ||
      static_cast<uint64_t>(elements) > range.byte_size / element_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shape ", ShapeString(placed.shape), " of ",
                     DTypeName(placed.dtype), " needs more than the range's ",
                     range.byte_size, " bytes"));
  }
  return TensorView{placed.dtype, placed.shape,
                    data_ + registered_offset + range.offset,
                    static_cast<size_t>(elements) * element_size};
}

}  // namespace attnscore::client
