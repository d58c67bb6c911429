// The fused ALiBi logits kernel's steps, one 64 x 64 tile of logits per block
// of 64 threads: logits[b, h, i, j] = scale * q_i.k_j - m_h * d(i, j), -inf
// where causal or the key length hides key j (attention.h has the semantics;
// d = p_i - j, |p_i - j| bidirectional, p_i the row's absolute position).
// One pass writes every element of the output once; the library's path
// writes the bias, accumulates the product into it (reading it back) and masks
// (reading and writing again), and computes the tiles that causal hides.
//
// The steps are plain C++ that nvcc compiles for the device
// (alibi_logits_cuda.cu: the kernel is these steps between __syncthreads) and
// the host compiler for the tests (alibi_logits_tile_test.cc runs a grid on
// the CPU, phase by phase, as the barriers order it), so that the kernel's
// index arithmetic, masks and bounds are checked in every CI run, not only on
// a GPU. No CUDA or ATen dependence (std::fma on the host only).
//
// Layout of a block: thread t = 8 * ty + tx owns rows {4ty..4ty+3,
// 32+4ty..32+4ty+3} and keys {4tx..4tx+3, 32+4tx..32+4tx+3} of the tile (8 x
// 8 values): a warp (4 ty x 8 tx) reads 4 distinct query quads and 8 distinct
// key quads per step from shared memory, one wavefront each, for 64 fused
// multiply-adds per thread, and writes rows of 128 contiguous bytes.
//
// Thread safety: pure functions of their arguments. Errors: none; REQUIRES
// the sizes and strides the launcher checks (alibi_logits.h).
#ifndef ATTNSCORE_SERVER_SCORING_ALIBI_LOGITS_TILE_H_
#define ATTNSCORE_SERVER_SCORING_ALIBI_LOGITS_TILE_H_

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define ATTNSCORE_TILE_FN __host__ __device__ __forceinline__
#define ATTNSCORE_TILE_UNROLL _Pragma("unroll")
// Half the chunk's steps per iteration: fully unrolled, ptxas hoists every
// step's shared loads and needs 165 registers (6 blocks per SM); in halves
// 125 without spills (8 blocks).
#define ATTNSCORE_TILE_UNROLL_STEPS _Pragma("unroll 8")
#else
#define ATTNSCORE_TILE_FN inline
#define ATTNSCORE_TILE_UNROLL
#define ATTNSCORE_TILE_UNROLL_STEPS
#endif

namespace attnscore::scoring::alibi_tile {

constexpr int kTile = 64;     // query rows and keys of a block's tile
constexpr int kChunk = 16;    // head-dimension values staged per step
constexpr int kThreads = 64;  // per block: 8 x 8, each 8 x 8 values
constexpr int kPerThread = 8;
// Shared rows are padded by one quad: the transposing stores of LoadChunk
// conflict 2-way instead of 4-way, and every row stays 16-byte aligned for
// MultiplyChunk's quad loads.
constexpr int kStride = kTile + 4;

#ifdef __CUDACC__
using Quad = float4;
#else
struct alignas(16) Quad {
  float x, y, z, w;
};
#endif

// One launch: the logits of query rows [0, rows) of every (b, h), written
// into `out`. Strides are in elements; the last dimension of each tensor is
// contiguous.
struct AlibiLogitsArgs {
  const float* query = nullptr;  // [B, H, rows, D]
  int64_t query_strides[3] = {};
  const float* key = nullptr;  // [B, H, Lk, D]
  int64_t key_strides[3] = {};
  const float* neg_slopes = nullptr;     // [H]: -m_h
  const int64_t* key_lengths = nullptr;  // [B], or null: all Lk
  float* out = nullptr;                  // [B, H, rows, Lk]
  int64_t out_strides[3] = {};
  int64_t batch = 0;
  int64_t heads = 0;
  int64_t rows = 0;
  int64_t key_len = 0;
  int64_t head_dim = 0;
  // The absolute position of row 0 (Lk - Lq + the first row's index).
  int64_t first_position = 0;
  float scale = 1.0f;
  bool causal = false;
  // Quads may be loaded: D and the query and key strides are multiples of 4
  // and both pointers 16-byte aligned.
  bool quad_loads = false;
  // Quads may be stored: the out strides are multiples of 4 and out is
  // 16-byte aligned.
  bool quad_stores = false;
};

// Where a block's tile lies.
struct TileCoord {
  int64_t batch = 0;
  int64_t head = 0;
  int64_t row0 = 0;  // first row, in [0, rows)
  int64_t key0 = 0;  // first key, in [0, Lk)
};

ATTNSCORE_TILE_FN int64_t CeilDiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// The number of tiles (blocks) of a launch.
ATTNSCORE_TILE_FN int64_t TileCount(const AlibiLogitsArgs& a) {
  return a.batch * a.heads * CeilDiv(a.rows, kTile) * CeilDiv(a.key_len, kTile);
}

// Tile `index` in [0, TileCount): key tiles vary fastest, so that blocks
// running together share the query rows they read.
ATTNSCORE_TILE_FN TileCoord TileOf(const AlibiLogitsArgs& a, int64_t index) {
  const int64_t key_tiles = CeilDiv(a.key_len, kTile);
  const int64_t row_tiles = CeilDiv(a.rows, kTile);
  TileCoord t;
  t.key0 = index % key_tiles * kTile;
  index /= key_tiles;
  t.row0 = index % row_tiles * kTile;
  index /= row_tiles;
  t.head = index % a.heads;
  t.batch = index / a.heads;
  return t;
}

// Keys [0, limit) of `row` are visible: below the item's key length and, when
// causal, at or before the row's position. At most Lk; <= 0 hides all.
ATTNSCORE_TILE_FN int64_t VisibleLimit(const AlibiLogitsArgs& a, int64_t batch,
                                       int64_t row) {
  int64_t limit = a.key_lengths != nullptr ? a.key_lengths[batch] : a.key_len;
  if (a.causal) {
    const int64_t after_position = a.first_position + row + 1;
    if (after_position < limit) limit = after_position;
  }
  return limit;
}

// Whether every logit of the tile is -inf: no product needs computing. The
// limit grows with the row, so the tile's last row has the largest.
ATTNSCORE_TILE_FN bool TileHidden(const AlibiLogitsArgs& a,
                                  const TileCoord& t) {
  const int64_t last_row =
      (t.row0 + kTile < a.rows ? t.row0 + kTile : a.rows) - 1;
  return VisibleLimit(a, t.batch, last_row) <= t.key0;
}

// The tile-local index of value `i` in [0, 8) of a thread's quads along an
// axis, for the thread's coordinate `c` (ty for rows, tx for keys).
ATTNSCORE_TILE_FN int LocalIndex(int c, int i) {
  return (i < 4 ? 0 : 32) + 4 * c + (i & 3);
}

// Four consecutive values of `row` from `first` on (0 past the head
// dimension), into column `r` of the shared chunk rows c0..c0+3.
ATTNSCORE_TILE_FN void StageQuad(const float* row, int64_t first,
                                 int64_t head_dim, bool quad_loads,
                                 float (*chunk)[kStride], int c0, int r) {
  float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (row != nullptr) {
    if (quad_loads) {
      // head_dim % 4 == 0: the quad is all in or all out.
      if (first < head_dim) {
        const Quad q = *reinterpret_cast<const Quad*>(row + first);
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
      }
    } else {
      for (int m = 0; m < 4; ++m) {
        if (first + m < head_dim) v[m] = row[first + m];
      }
    }
  }
  for (int m = 0; m < 4; ++m) chunk[c0 + m][r] = v[m];
}

// Step 1 of a chunk (before a barrier): thread `thread` stages its share of
// the tile's query rows and keys, head-dimension values [d0, d0 + kChunk),
// transposed: qs[c][r] = q[row0 + r][d0 + c], ks[c][r] = k[key0 + r][d0 + c].
// Rows and keys past the ends stage zeros.
ATTNSCORE_TILE_FN void LoadChunk(const AlibiLogitsArgs& a, const TileCoord& t,
                                 int thread, int64_t d0, float (*qs)[kStride],
                                 float (*ks)[kStride]) {
  const float* q_base =
      a.query + t.batch * a.query_strides[0] + t.head * a.query_strides[1];
  const float* k_base =
      a.key + t.batch * a.key_strides[0] + t.head * a.key_strides[1];
  // 64 rows x 4 quads per operand: four per thread, consecutive threads
  // reading consecutive quads of a row.
  ATTNSCORE_TILE_UNROLL
  for (int e = 0; e < 4; ++e) {
    const int slot = thread + kThreads * e;
    const int r = slot / 4;
    const int c0 = (slot % 4) * 4;
    const int64_t row = t.row0 + r;
    const int64_t key = t.key0 + r;
    StageQuad(row < a.rows ? q_base + row * a.query_strides[2] : nullptr,
              d0 + c0, a.head_dim, a.quad_loads, qs, c0, r);
    StageQuad(key < a.key_len ? k_base + key * a.key_strides[2] : nullptr,
              d0 + c0, a.head_dim, a.quad_loads, ks, c0, r);
  }
}

ATTNSCORE_TILE_FN float FusedMultiplyAdd(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Step 2 of a chunk (after the barrier): the thread's 8 x 8 partial dot
// products over the chunk, accumulated into `acc` in the order of d, so a
// logit's rounding depends on nothing but its own row and key.
ATTNSCORE_TILE_FN void MultiplyChunk(int thread, const float (*qs)[kStride],
                                     const float (*ks)[kStride],
                                     float (&acc)[kPerThread][kPerThread]) {
  // The first row and key of each of the thread's quads (LocalIndex).
  const int64_t row_a = LocalIndex(thread / 8, 0);
  const int64_t row_b = LocalIndex(thread / 8, 4);
  const int64_t key_a = LocalIndex(thread % 8, 0);
  const int64_t key_b = LocalIndex(thread % 8, 4);
  ATTNSCORE_TILE_UNROLL_STEPS
  for (int c = 0; c < kChunk; ++c) {
    const Quad q0 = *reinterpret_cast<const Quad*>(&qs[c][row_a]);
    const Quad q1 = *reinterpret_cast<const Quad*>(&qs[c][row_b]);
    const Quad k0 = *reinterpret_cast<const Quad*>(&ks[c][key_a]);
    const Quad k1 = *reinterpret_cast<const Quad*>(&ks[c][key_b]);
    const float q[kPerThread] = {q0.x, q0.y, q0.z, q0.w,
                                 q1.x, q1.y, q1.z, q1.w};
    const float k[kPerThread] = {k0.x, k0.y, k0.z, k0.w,
                                 k1.x, k1.y, k1.z, k1.w};
    ATTNSCORE_TILE_UNROLL
    for (int i = 0; i < kPerThread; ++i) {
      ATTNSCORE_TILE_UNROLL
      for (int j = 0; j < kPerThread; ++j) {
        acc[i][j] = FusedMultiplyAdd(q[i], k[j], acc[i][j]);
      }
    }
  }
}

// Four values to 16-byte aligned `p`, as one store on the device (nvcc
// splits a plain float4 assignment here into four).
ATTNSCORE_TILE_FN void StoreQuad(float* p, const float (&v)[4]) {
#ifdef __CUDA_ARCH__
  __stwb(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
#else
  *reinterpret_cast<Quad*>(p) = Quad{v[0], v[1], v[2], v[3]};
#endif
}

// The logit of a visible key: scale * dot - m_h * d, d = p - key (|p - key|
// bidirectional), d exact in float32 below 2^24 as in the library path.
ATTNSCORE_TILE_FN float Logit(const AlibiLogitsArgs& a, float neg_slope,
                              int64_t position, int64_t key, float dot) {
  int64_t d = position - key;
  if (!a.causal && d < 0) d = -d;
  return FusedMultiplyAdd(a.scale, dot, neg_slope * static_cast<float>(d));
}

// The last step: the thread's values into `out`, -inf where hidden (all of a
// hidden tile, whose `acc` is never read), nothing past the ends.
ATTNSCORE_TILE_FN void WriteTile(const AlibiLogitsArgs& a, const TileCoord& t,
                                 int thread,
                                 const float (&acc)[kPerThread][kPerThread]) {
  const int tx = thread % 8;
  const int ty = thread / 8;
  const float neg_slope = a.neg_slopes[t.head];
  const float neg_inf = -INFINITY;
  float* out_base =
      a.out + t.batch * a.out_strides[0] + t.head * a.out_strides[1];
  ATTNSCORE_TILE_UNROLL
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t row = t.row0 + LocalIndex(ty, i);
    if (row >= a.rows) continue;
    const int64_t limit = VisibleLimit(a, t.batch, row);
    const int64_t position = a.first_position + row;
    float* out_row = out_base + row * a.out_strides[2];
    ATTNSCORE_TILE_UNROLL
    for (int half = 0; half < 2; ++half) {
      const int64_t key0 = t.key0 + LocalIndex(tx, 4 * half);
      float v[4];
      for (int m = 0; m < 4; ++m) {
        const int64_t key = key0 + m;
        v[m] = key < limit
                   ? Logit(a, neg_slope, position, key, acc[i][4 * half + m])
                   : neg_inf;
      }
      if (a.quad_stores && key0 + 3 < a.key_len) {
        StoreQuad(out_row + key0, v);
      } else {
        for (int m = 0; m < 4; ++m) {
          if (key0 + m < a.key_len) out_row[key0 + m] = v[m];
        }
      }
    }
  }
}

}  // namespace attnscore::scoring::alibi_tile

#undef ATTNSCORE_TILE_FN
#undef ATTNSCORE_TILE_UNROLL
#undef ATTNSCORE_TILE_UNROLL_STEPS

#endif  // ATTNSCORE_SERVER_SCORING_ALIBI_LOGITS_TILE_H_
