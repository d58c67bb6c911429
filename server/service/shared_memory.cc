#include "server/service/shared_memory.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/service/request_validation.h"

namespace attnscore::service {
namespace {

// The live mappings, for the SIGBUS handler, which may touch nothing but
// lock-free atomics. A slot is claimed, then `end` set, then `begin` (release):
// a non-null `begin` is a complete entry. A mapping is dropped only when no
// request holds it, so no write can fault on a slot being cleared.
struct FaultSlot {
  std::atomic<bool> claimed{false};
  std::atomic<char*> begin{nullptr};  // null: free
  std::atomic<char*> end{nullptr};
  std::atomic<bool> broken{false};
};
FaultSlot g_slots[kMaxMappedRegions];
// The SIGBUS disposition before ours, for faults that are not our regions'.
struct sigaction g_previous_bus_action;

void PassOnBusError(int signal, siginfo_t* info, void* context) {
  const struct sigaction& previous = g_previous_bus_action;
  if ((previous.sa_flags & SA_SIGINFO) != 0 && previous.sa_sigaction) {
    previous.sa_sigaction(signal, info, context);
    return;
  }
  if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN &&
      (previous.sa_flags & SA_SIGINFO) == 0) {
    previous.sa_handler(signal);
    return;
  }
  // Default (or an ignored fault, which would repeat forever): on return the
  // faulting instruction runs again and the default action ends the process.
  std::signal(SIGBUS, SIG_DFL);
}

// A fault within a region: its object shrank. Private zero pages replace the
// whole mapping, so that the faulting write (on any thread: a scorer thread
// writing a tile, or a memcpy) resumes and completes there, and the region is
// marked broken for the request to find. mmap is a plain system call here, as
// in libwayland's handler for the same case.
void OnBusError(int signal, siginfo_t* info, void* context) {
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  for (FaultSlot& slot : g_slots) {
    char* const begin = slot.begin.load(std::memory_order_acquire);
    char* const end = slot.end.load(std::memory_order_relaxed);
    if (begin == nullptr || address < reinterpret_cast<uintptr_t>(begin) ||
        address >= reinterpret_cast<uintptr_t>(end)) {
      continue;
    }
    void* replaced =
        mmap(begin, static_cast<size_t>(end - begin), PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (replaced == MAP_FAILED) break;
    slot.broken.store(true, std::memory_order_release);
    return;
  }
  PassOnBusError(signal, info, context);
}

bool InstallBusHandler() {
  struct sigaction action {};
  action.sa_sigaction = &OnBusError;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  return sigaction(SIGBUS, &action, &g_previous_bus_action) == 0;
}

// A free slot of the table, claimed; -1 when every one is taken.
int ClaimSlot() {
  for (int i = 0; i < kMaxMappedRegions; ++i) {
    if (!g_slots[i].claimed.exchange(true, std::memory_order_acq_rel)) return i;
  }
  return -1;
}

void PublishSlot(int slot, void* base, size_t bytes) {
  char* const begin = static_cast<char*>(base);
  const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  g_slots[slot].broken.store(false, std::memory_order_relaxed);
  g_slots[slot].end.store(begin + (bytes + page - 1) / page * page,
                          std::memory_order_relaxed);
  g_slots[slot].begin.store(begin, std::memory_order_release);
}

void ReleaseSlot(int slot) {
  g_slots[slot].begin.store(nullptr, std::memory_order_release);
  g_slots[slot].claimed.store(false, std::memory_order_release);
}

bool IsNameCharacter(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '_' || c == '-';
}

// INVALID_ARGUMENT unless `value` is 1..`max` bytes of [A-Za-z0-9._-].
absl::Status CheckName(absl::string_view field, absl::string_view value,
                       size_t max) {
  if (value.empty() || value.size() > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": expected 1 to ", max, " bytes, got ", value.size()));
  }
  for (const char c : value) {
    if (!IsNameCharacter(c)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": expected letters, digits, '.', '_' or '-', got \"",
          ClientStringForLog(value), "\""));
    }
  }
  if (value == "." || value == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": expected a name, got \"", value, "\""));
  }
  return absl::OkStatus();
}

absl::Status CheckSpec(const SharedMemorySpec& spec, absl::string_view prefix) {
  if (absl::Status s = CheckName("name", spec.name, kMaxRegionNameBytes);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckName("key", spec.key, kMaxObjectNameBytes);
      !s.ok()) {
    return s;
  }
  if (!absl::StartsWith(spec.key, prefix)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key: expected a shared-memory object name starting with \"", prefix,
        "\" (the server's --shm-prefix), got \"", ClientStringForLog(spec.key),
        "\""));
  }
  const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (spec.offset % page != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("offset: expected a multiple of the page size ", page,
                     ", got ", spec.offset));
  }
  if (spec.byte_size == 0) {
    return absl::InvalidArgumentError("byte_size: expected > 0, got 0");
  }
  return absl::OkStatus();
}

absl::Status OpenError(const std::string& key, int error) {
  const std::string what =
      absl::StrCat("key: shared-memory object \"/", ClientStringForLog(key),
                   "\": ", std::strerror(error));
  switch (error) {
    case ENOENT:
      return absl::NotFoundError(what);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(
          absl::StrCat(what, " (the server opens it read-write)"));
    default:
      return absl::InternalError(what);
  }
}

// INVALID_ARGUMENT unless [offset, offset + byte_size) lies within an object
// of `object_size` bytes.
absl::Status CheckRange(const SharedMemorySpec& spec, off_t object_size) {
  const auto size = static_cast<uint64_t>(object_size);
  if (spec.offset > size || spec.byte_size > size - spec.offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "byte_size: expected offset + byte_size within the object's ", size,
        " bytes, got ", spec.offset, " + ", spec.byte_size));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const MappedRegion>> MappedRegion::Map(
    SharedMemorySpec spec, const PageLock& page_lock) {
  static const bool installed = InstallBusHandler();
  if (!installed) {
    return absl::InternalError(
        "shared memory: installing the SIGBUS handler failed");
  }
  const std::string path = "/" + spec.key;
  const int fd = shm_open(path.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) return OpenError(spec.key, errno);
  struct stat info {};
  absl::Status status;
  if (fstat(fd, &info) != 0) {
    status = OpenError(spec.key, errno);
  } else if (!S_ISREG(info.st_mode)) {
    status = absl::InvalidArgumentError(
        absl::StrCat("key: \"/", ClientStringForLog(spec.key),
                     "\" is not a shared-memory object"));
  } else {
    status = CheckRange(spec, info.st_size);
  }
  const int slot = status.ok() ? ClaimSlot() : -1;
  if (status.ok() && slot < 0) {
    status = absl::ResourceExhaustedError(
        absl::StrCat("regions: the server maps at most ", kMaxMappedRegions,
                     " shared-memory regions at once (registered, or "
                     "unregistered but still in use); retry later"));
  }
  void* base = MAP_FAILED;
  if (status.ok()) {
    base = mmap(nullptr, spec.byte_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                static_cast<off_t>(spec.offset));
    if (base == MAP_FAILED) status = OpenError(spec.key, errno);
  }
  close(fd);  // the mapping keeps the object
  if (!status.ok()) {
    if (slot >= 0) ReleaseSlot(slot);
    return status;
  }
  PublishSlot(slot, base, spec.byte_size);
  // A range the driver refuses to lock stays pageable, and works as before.
  const bool locked = page_lock.lock && page_lock.unlock &&
                      page_lock.lock(base, spec.byte_size);
  return std::shared_ptr<const MappedRegion>(
      new MappedRegion(std::move(spec), base, slot, info.st_dev, info.st_ino,
                       locked ? page_lock.unlock : nullptr));
}

MappedRegion::MappedRegion(SharedMemorySpec spec, void* base, int slot,
                           dev_t device, ino_t inode,
                           std::function<void(void*)> unlock)
    : spec_(std::move(spec)),
      base_(base),
      slot_(slot),
      device_(device),
      inode_(inode),
      unlock_(std::move(unlock)) {}

MappedRegion::~MappedRegion() {
  // Out of the handler's table first: the range may be mapped again by
  // anyone once it is unmapped.
  g_slots[slot_].begin.store(nullptr, std::memory_order_release);
  // No copy reads it any more: a request that used it held it until its
  // batch was done (the scorer drains its stream before it returns).
  if (unlock_) unlock_(base_);
  munmap(base_, spec_.byte_size);
  ReleaseSlot(slot_);
}

absl::Status MappedRegion::Write(uint64_t offset, const void* src,
                                 size_t size) const {
  if (offset > spec_.byte_size || size > spec_.byte_size - offset) {
    return absl::InternalError(absl::StrCat(
        "shared-memory region \"", spec_.name, "\": write of ", size,
        " bytes at ", offset, " is outside its ", spec_.byte_size, " bytes"));
  }
  if (size != 0) std::memcpy(At(offset), src, size);
  return CheckIntact();
}

absl::Status MappedRegion::CheckIntact() const {
  if (!g_slots[slot_].broken.load(std::memory_order_acquire)) {
    return absl::OkStatus();
  }
  return absl::AbortedError(absl::StrCat(
      "shared-memory region \"", spec_.name, "\": its object \"/",
      ClientStringForLog(spec_.key),
      "\" shrank below the registered range while the server used it; "
      "the inputs it read there and the outputs it wrote there are "
      "incomplete, and the region stays unusable until it is unregistered "
      "and registered again"));
}

SharedMemoryRegistry::Key SharedMemoryRegistry::KeyOf(absl::string_view owner,
                                                      absl::string_view name) {
  return {std::string{owner}, std::string{name}};
}

SharedMemoryRegistry::SharedMemoryRegistry(SharedMemoryOptions options)
    : options_(std::move(options)) {}

absl::Status SharedMemoryRegistry::Off() {
  return absl::FailedPreconditionError(
      "shared memory is off: the server was started without --shm-prefix");
}

absl::Status SharedMemoryRegistry::CheckEnabled() const {
  return enabled() ? absl::OkStatus() : Off();
}

absl::Status SharedMemoryRegistry::Register(absl::string_view owner,
                                            SharedMemorySpec spec) {
  if (absl::Status s = CheckEnabled(); !s.ok()) return s;
  if (absl::Status s = CheckSpec(spec, options_.prefix); !s.ok()) return s;
  Key key = KeyOf(owner, spec.name);
  {
    // Checked before mapping, so that a refused call costs no syscalls; and
    // again after, since the lock is not held while mapping.
    absl::MutexLock lock(&mu_);
    if (regions_.count(key) != 0) {
      return absl::AlreadyExistsError(absl::StrCat(
          "name: a region \"", spec.name, "\" is registered already"));
    }
  }
  absl::StatusOr<std::shared_ptr<const MappedRegion>> region =
      MappedRegion::Map(std::move(spec), options_.page_lock);
  if (!region.ok()) return region.status();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckRoomFor(owner); !s.ok()) return s;
  const auto [it, added] = regions_.emplace(std::move(key), *std::move(region));
  if (!added) {
    return absl::AlreadyExistsError(
        "name: a region of that name was "
        "registered meanwhile");
  }
  const SharedMemorySpec& mapped = it->second->spec();
  spdlog::info("shared memory: {} registered region {} (/{}, {} bytes)",
               ClientStringForLog(owner), ClientStringForLog(mapped.name),
               ClientStringForLog(mapped.key), mapped.byte_size);
  return absl::OkStatus();
}

absl::Status SharedMemoryRegistry::CheckRoomFor(absl::string_view owner) const {
  if (static_cast<int64_t>(regions_.size()) >= options_.max_regions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "regions: expected at most ", options_.max_regions,
        " registered at once (the server's --max-shm-regions), got one more; "
        "unregister regions no longer used"));
  }
  const int cap = options_.PerClientCap();
  if (cap == 0) return absl::OkStatus();
  int held = 0;
  for (auto it = regions_.lower_bound(KeyOf(owner, ""));
       it != regions_.end() && it->first.first == owner; ++it) {
    ++held;
  }
  if (held >= cap) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "regions: expected at most ", cap,
        " registered by one identity (the server's "
        "--max-shm-regions-per-client), got one more; unregister regions no "
        "longer used"));
  }
  return absl::OkStatus();
}

absl::Status SharedMemoryRegistry::Unregister(absl::string_view owner,
                                              absl::string_view name) {
  if (absl::Status s = CheckEnabled(); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const auto it = regions_.find(KeyOf(owner, name));
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrCat("name: no shared-memory region \"",
                                            ClientStringForLog(name),
                                            "\" is registered"));
  }
  regions_.erase(it);
  return absl::OkStatus();
}

absl::Status SharedMemoryRegistry::UnregisterAll(absl::string_view owner) {
  if (absl::Status s = CheckEnabled(); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto it = regions_.lower_bound(KeyOf(owner, ""));
  while (it != regions_.end() && it->first.first == owner) {
    it = regions_.erase(it);
  }
  return absl::OkStatus();
}

std::vector<SharedMemorySpec> SharedMemoryRegistry::List(
    absl::string_view owner) const {
  std::vector<SharedMemorySpec> out;
  absl::MutexLock lock(&mu_);
  for (auto it = regions_.lower_bound(KeyOf(owner, ""));
       it != regions_.end() && it->first.first == owner; ++it) {
    out.push_back(it->second->spec());
  }
  return out;
}

absl::StatusOr<std::shared_ptr<const MappedRegion>> SharedMemoryRegistry::Find(
    absl::string_view owner, absl::string_view name) const {
  if (absl::Status s = CheckEnabled(); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const auto it = regions_.find(KeyOf(owner, name));
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "shared-memory region \"", ClientStringForLog(name),
        "\": none of that name is registered (RegisterSharedMemory)"));
  }
  return it->second;
}

}  // namespace attnscore::service
