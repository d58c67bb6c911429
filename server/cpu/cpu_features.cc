#include "server/cpu/cpu_features.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace attnscore::cpu {
namespace {

#if defined(__x86_64__)
struct Registers {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

// cpuid leaf/subleaf; all zero when the leaf is beyond the CPU's maximum.
Registers CpuId(unsigned leaf, unsigned subleaf = 0) {
  Registers r;
  const unsigned max_leaf = __get_cpuid_max(leaf & 0x80000000U, nullptr);
  if (max_leaf < leaf) return r;
  __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
  return r;
}

bool Bit(unsigned value, int bit) { return ((value >> bit) & 1U) != 0; }

// XCR0: which register states the OS saves on a context switch. Without them
// the instructions fault (or the OS hides them), whatever cpuid says.
uint64_t ReadXcr0() {
  uint32_t eax = 0;
  uint32_t edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

std::string BrandString() {
  if (CpuId(0x80000000U).eax < 0x80000004U) return "";
  char brand[49] = {};
  for (unsigned i = 0; i < 3; ++i) {
    const Registers r = CpuId(0x80000002U + i);
    const unsigned words[4] = {r.eax, r.ebx, r.ecx, r.edx};
    std::memcpy(brand + size_t{16} * i, words, sizeof(words));
  }
  std::string name(brand);
  // Some CPUs pad the brand with spaces on either side.
  const size_t first = name.find_first_not_of(' ');
  const size_t last = name.find_last_not_of(' ');
  return first == std::string::npos ? "" : name.substr(first, last - first + 1);
}
#endif  // __x86_64__

}  // namespace

CpuFeatures DetectCpuFeatures() {
  CpuFeatures f;
#if defined(__x86_64__)
  f.x86_64 = true;
  f.model_name = BrandString();
  const Registers leaf1 = CpuId(1);
  const bool osxsave = Bit(leaf1.ecx, 27);
  const uint64_t xcr0 = osxsave ? ReadXcr0() : 0;
  // Bits 1-2: XMM and YMM state; 5-7: opmask and ZMM state.
  const bool os_ymm = (xcr0 & 0x6U) == 0x6U;
  const bool os_zmm = os_ymm && (xcr0 & 0xE0U) == 0xE0U;
  f.avx = os_ymm && Bit(leaf1.ecx, 28);
  f.fma = f.avx && Bit(leaf1.ecx, 12);
  f.f16c = f.avx && Bit(leaf1.ecx, 29);
  const Registers leaf7 = CpuId(7, 0);
  f.avx2 = f.avx && Bit(leaf7.ebx, 5);
  f.avx512f = os_zmm && Bit(leaf7.ebx, 16);
  f.avx512dq = f.avx512f && Bit(leaf7.ebx, 17);
  f.avx512bw = f.avx512f && Bit(leaf7.ebx, 30);
  f.avx512vl = f.avx512f && Bit(leaf7.ebx, 31);
  const Registers leaf7_1 = CpuId(7, 1);
  f.avx512_bf16 = f.avx512f && Bit(leaf7_1.eax, 5);
#endif
  return f;
}

bool HasAvx512Core(const CpuFeatures& f) {
  return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
}

bool HasAvx2Fma(const CpuFeatures& f) { return f.avx2 && f.fma; }

std::string IsaName(const CpuFeatures& f) {
  if (!f.x86_64) return "none";
  if (HasAvx512Core(f)) return f.avx512_bf16 ? "avx512_bf16" : "avx512";
  if (HasAvx2Fma(f)) return "avx2";
  if (f.avx) return "avx";
  return "sse";
}

}  // namespace attnscore::cpu
