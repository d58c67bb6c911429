// The element loops of the blocked path's tiles (blocked_attention.h), built
// for three instruction sets and chosen at load time by the CPU
// (target_clones.h: AVX-512, AVX2, or the x86-64 baseline's SSE2). The build
// targets the baseline so that one binary runs everywhere; without this these
// loops, which do the bias, the softmax's passes and the row reductions, run
// four lanes wide on any CPU.
//
// Every function gives the same bits on every instruction set: no fused
// multiply-add (the file is compiled with -ffp-contract=off), and the
// reductions add in a fixed order of kRowLanes lanes.
//
// Thread safety: pure functions on the caller's memory. Errors: none;
// REQUIRES as stated per function.
#ifndef ATTNSCORE_SERVER_SCORING_ROW_LOOPS_H_
#define ATTNSCORE_SERVER_SCORING_ROW_LOOPS_H_

#include <cstdint>

namespace attnscore::scoring {

// The lanes of RowMax and RowSum: the order of a row's additions, so that its
// sum depends on the row alone, never on the batch around it or the CPU.
inline constexpr int64_t kRowLanes = 16;

// How far ahead a stream read once (a decode step's keys) asks for its cache
// lines. The hardware's prefetchers stop at each 4 KiB page; asking 8 KiB
// ahead raised a 2-thread read of 128 MiB from 53-56 to 61-64 GB/s (AMD EPYC
// family 26; 4 and 16 KiB measured alike, 512 bytes about half the gain).
inline constexpr uintptr_t kStreamPrefetchBytes = 8192;

// Asks for the cache lines of the `bytes` (> 0) bytes at `offset` from
// `start` to be loaded. They may lie past the caller's array (the next rows of
// a stream, or none): a prefetch never faults.
[[gnu::always_inline]] inline void PrefetchLines(const void* start,
                                                 uintptr_t offset,
                                                 uintptr_t bytes) {
  constexpr uintptr_t kLineBytes = 64;
  const char* first = static_cast<const char*>(start) + offset;
  for (uintptr_t o = 0; o < bytes; o += kLineBytes) {
    __builtin_prefetch(first + o, 0, 3);
  }
  __builtin_prefetch(first + bytes - 1, 0, 3);  // the last line, if unaligned
}

// max(x[0, n)), -inf when n == 0.
float RowMax(const float* x, int64_t n);

// x[0] + ... + x[n - 1], in kRowLanes lanes.
float RowSum(const float* x, int64_t n);

// x[c] = exp(x[c]) for c in [0, n), within 2 ulp of the exact value (Cephes'
// range reduction and polynomial, in plain float32 arithmetic): x < -87 gives
// 0 exactly (exp(-inf) = 0; the exact values there are below 2^-125), x > 88
// gives exp(88), NaN stays NaN. The library's exp was Sleef with Debian's
// LibTorch and MKL with a PyTorch wheel's, whose slow path for underflowing
// inputs cost the softmax half its time; this one is the same everywhere.
void ExpRow(float* x, int64_t n);

// row[c] = slope * d (causal) or slope * |d|, d = base - c, for c in [0, n):
// the ALiBi bias of one query row, d its distance to key c.
void StoreAlibiRow(float* row, int64_t n, int64_t base, float slope,
                   bool causal);

// row[c] = scale * (shifted[c] + bias[c * bias_stride]), c in [0, n): the
// relative position term of one query row.
void StoreRelativeRow(float* row, int64_t n, const float* shifted,
                      const float* bias, int64_t bias_stride, float scale);

// out[c] = in[c] as bfloat16 bits, c in [0, n): rounded to nearest even, any
// NaN as 0x7FC0, exactly as c10::BFloat16(float) (at::Tensor::to) rounds.
void StoreBFloat16Row(const float* in, int64_t n, uint16_t* out);

// out[c] = in[c] as float16 bits, c in [0, n): rounded to nearest even, any
// NaN as 0x7E00 with its sign, exactly as c10::Half(float) (at::Tensor::to)
// rounds. F16C where the CPU has it (checked once), else common/dtype.h's
// FloatToHalf.
void StoreFloat16Row(const float* in, int64_t n, uint16_t* out);

// out[c] = in[c] (bfloat16 bits) as float32, c in [0, n): exact, the same
// bits as common/dtype.h's BFloat16ToFloat. `in` may be unaligned (both
// loads).
void LoadBFloat16Row(const uint16_t* in, int64_t n, float* out);

// out[c] = in[c] (float16 bits) as float32, c in [0, n): exact, the same bits
// as common/dtype.h's HalfToFloat (a NaN keeps its payload, unquieted). F16C
// where the CPU has it (checked once), else HalfToFloat.
void LoadFloat16Row(const uint16_t* in, int64_t n, float* out);

// Columns per panel of PanelDots' embeddings.
inline constexpr int64_t kPanelCols = 32;

// out[g * out_ld + j] = the sum over c in [0, d), added in order from zero,
// of q[g * q_stride + c] * E^T[c, a0 + j], for g in [0, count) and j in
// [0, n): the relative position term of `count` decode steps of one head.
// `panels` holds the head's E^T [d, A] in panels of kPanelCols columns, each
// [d, kPanelCols] contiguous (zero past A): t runs along the vectors, so no
// lanes are added together, each panel is read once for all the steps, and
// in one sequence. An element's bits depend on its own operands alone: an
// item gets the same whichever items share its call.
void PanelDots(const float* panels, int64_t a0, int64_t n, const float* q,
               int64_t q_stride, int64_t count, int64_t d, float* out,
               int64_t out_ld);

// out[j] = alpha * (rows[j * ld + t] . x[t], t in [0, d)) (+ out[j] when
// accumulating), j in [0, n): one query row against n key rows, a GEMV that
// streams the rows once in memory order. Each dot product adds its d terms in
// kRowLanes lanes, then the lanes pairwise (8, 4, 2, 1 apart), then the
// d % kRowLanes tail: the same bits for a row wherever it lies.
// REQUIRES: ld >= d.
void ScaledDotRows(const float* rows, int64_t ld, int64_t n, const float* x,
                   int64_t d, float alpha, bool accumulate, float* out);

// ScaledDotRows over 16-bit rows (bfloat16 or float16 bits), each element
// widened exactly as it is loaded: the same bits as ScaledDotRows over the
// rows converted to float32 first, reading half the bytes. (Float16: F16C
// where the CPU has it, with AVX2.) REQUIRES: ld >= d.
void ScaledDotRowsBFloat16(const uint16_t* rows, int64_t ld, int64_t n,
                           const float* x, int64_t d, float alpha,
                           bool accumulate, float* out);
void ScaledDotRowsFloat16(const uint16_t* rows, int64_t ld, int64_t n,
                          const float* x, int64_t d, float alpha,
                          bool accumulate, float* out);

// out[c] = in[c] - value, c in [0, n) (in == out allowed).
void SubtractRow(const float* in, float* out, int64_t n, float value);

// x[c] /= value, c in [0, n).
void DivideRow(float* x, int64_t n, float value);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_ROW_LOOPS_H_
