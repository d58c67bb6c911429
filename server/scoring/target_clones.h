// ATTNSCORE_TARGET_CLONES: compiles a hot loop for AVX-512, AVX2 and the
// x86-64 baseline, the copy chosen once at load time by the CPU (GCC and
// Clang target_clones, glibc IFUNC). The build targets the baseline so that
// one binary runs everywhere; loops that must run at the CPU's width (the
// blocked path's element loops, the input scans) carry this. A function with
// floating-point arithmetic that must give the same bits on every copy is
// compiled with -ffp-contract=off (no fused multiply-add). Off x86-64 it is
// empty.
//
// Thread safety, errors: none (a macro).
#ifndef ATTNSCORE_SERVER_SCORING_TARGET_CLONES_H_
#define ATTNSCORE_SERVER_SCORING_TARGET_CLONES_H_

#if defined(__x86_64__) && defined(__ELF__)
#define ATTNSCORE_TARGET_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ATTNSCORE_TARGET_CLONES
#endif

#endif  // ATTNSCORE_SERVER_SCORING_TARGET_CLONES_H_
