// ATTNSCORE_TARGET_CLONES: compiles a hot loop for AVX-512, AVX2 and the
// x86-64 baseline, the copy chosen once at load time by the CPU (GCC's
// target_clones, glibc IFUNC). The build targets the baseline so that
// one binary runs everywhere; loops that must run at the CPU's width (the
// blocked path's element loops, the input scans) carry this. A function with
// floating-point arithmetic that must give the same bits on every copy is
// compiled with -ffp-contract=off (no fused multiply-add). Off x86-64, under
// ThreadSanitizer and with Clang, it is empty.
//
// Thread safety, errors: none (a macro).
#ifndef ATTNSCORE_SERVER_SCORING_TARGET_CLONES_H_
#define ATTNSCORE_SERVER_SCORING_TARGET_CLONES_H_

// ThreadSanitizer (GCC's; Clang's is covered below) runs IFUNC resolvers
// before its runtime is initialised and crashes at load; sanitizer builds check correctness, not speed, so they
// take the baseline copy alone.
#if defined(__SANITIZE_THREAD__)
#define ATTNSCORE_NO_TARGET_CLONES 1
// Clang: callers in other translation units reach the clones only through a
// ".ifunc" symbol that their declaration must name too, and Clang 14 compiled
// row_loops.cc's functions as the AVX-512 clone alone under the plain name
// (SIGILL on an AVX2 CPU). Clang builds (ASan, fuzzing, a user's own) take the
// baseline copy: the same source, so the same accesses for the sanitizers.
#elif defined(__clang__)
#define ATTNSCORE_NO_TARGET_CLONES 1
#endif

#if defined(__x86_64__) && defined(__ELF__) && \
    !defined(ATTNSCORE_NO_TARGET_CLONES)
#define ATTNSCORE_TARGET_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ATTNSCORE_TARGET_CLONES
#endif

#endif  // ATTNSCORE_SERVER_SCORING_TARGET_CLONES_H_
