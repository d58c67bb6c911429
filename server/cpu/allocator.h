// KeepFreedMemory: make glibc's malloc keep the memory a request frees for the
// next request, instead of handing it back to the kernel and taking fresh,
// zeroed pages again (one page fault per 4 KiB).
//
// Why: gRPC reads each request's bytes into slices it mallocs per read and
// frees once the request is parsed. With glibc's defaults the freed top of a
// heap goes back to the kernel past 128 KiB (a threshold glibc raises only as
// mmapped blocks are freed), so the next request's reads fault their pages in
// again, inside recvmsg: measured on 2 cores, 330-410 faults and 1.55-1.69 ms
// of server CPU per decode request (4 MiB of keys) at concurrency 1, about
// 2,100 faults per B8 H8 L512 request. With freed memory kept (trim threshold
// 16 MiB, blocks under 32 MiB from the heap): 0-2 faults and 0.83-1.05 ms.
// Each heap (arena) keeps its own free top, so the heaps are as many as the
// cores rather than glibc's 8 per core: with 64 MiB kept and glibc's count,
// the RSS under the prefill preset rose 451 -> 546 MiB over 10 rounds; with
// these settings, over 12 rounds, 323 -> 360-399 MiB, against 303-324 ->
// 345-353 MiB with glibc's defaults.
//
// An operator's own glibc.malloc tunables (GLIBC_TUNABLES) always win:
// nothing is changed then. Sanitizers serve malloc from their own allocators:
// ASan refuses mallopt (the setting then says so); TSan accepts and ignores it.
//
// Thread safety: KeepFreedMemory() from main() before any thread starts
// (mallopt settings are process-wide); the rest from any thread.
#ifndef ATTNSCORE_SERVER_CPU_ALLOCATOR_H_
#define ATTNSCORE_SERVER_CPU_ALLOCATOR_H_

#include <cstddef>
#include <optional>
#include <string>

namespace attnscore::cpu {

// Freed memory at the top of a heap that is kept rather than trimmed.
inline constexpr size_t kKeptFreeBytes = size_t{16} << 20;
// Blocks below this come from the heap, so their memory is kept when freed;
// glibc's largest mmap threshold on 64-bit.
inline constexpr size_t kHeapBlockBytes = size_t{32} << 20;

struct AllocatorChoice {
  bool apply = false;  // call mallopt with the thresholds above
  std::string reason;  // for the start-up log
};

// From GLIBC_TUNABLES (nullopt: unset).
AllocatorChoice ChooseAllocator(const std::optional<std::string>& tunables);

// Applies ChooseAllocator(getenv("GLIBC_TUNABLES")), with one heap per
// online core (at least 2).
void KeepFreedMemory();

// One line for the log: what KeepFreedMemory set, or why it set nothing.
std::string AllocatorSetting();

}  // namespace attnscore::cpu

#endif  // ATTNSCORE_SERVER_CPU_ALLOCATOR_H_
