// The tile sizes and per-thread scratch of the CPU `blocked` attention path
// (blocked_attention.h), shared with the resource estimate
// (resource_estimate.h) so that the estimate counts exactly the scratch the
// path allocates. Header-only and LibTorch-free (part of the scoring API).
//
// Thread safety: pure functions, except the compute thread count, which
// CreateAtenScorer sets once at start-up (an atomic).
// Errors: none.
#ifndef ATTNSCORE_SERVER_SCORING_BLOCKED_TILING_H_
#define ATTNSCORE_SERVER_SCORING_BLOCKED_TILING_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

namespace attnscore::scoring {

// Query rows per tile. A [Tq, Lk] float32 tile (the materialising kernel's
// working set) stays near 256 KiB, within a core's L2, but never under 32
// rows (each tile pays a fixed dispatch cost) nor over 128.
inline int64_t BlockedQueryTile(int64_t query_len, int64_t key_len) {
  constexpr int64_t kTileFloats = int64_t{64} << 10;  // 256 KiB
  const int64_t rows =
      std::clamp<int64_t>(kTileFloats / std::max<int64_t>(key_len, 1), 32, 128);
  return std::min(rows, std::max<int64_t>(query_len, 1));
}

// Key columns per tile of the online-softmax (context-only) kernel.
constexpr int64_t kBlockedKeyTile = 256;

// Relative bias, decode steps (one query row): how many batch items of one
// head share a pass over the head's position embeddings, their q.E rows (Lk
// floats each) kept in scratch, at most 256 KiB. 0 when the query has more
// rows (each tile then computes the q.E of its own rows).
inline int64_t BlockedRelativeGroup(int64_t query_len, int64_t key_len) {
  constexpr int64_t kGroupFloats = int64_t{64} << 10;  // 256 KiB
  constexpr int64_t kMaxGroup = 16;
  if (query_len != 1) return 0;
  return std::clamp<int64_t>(kGroupFloats / std::max<int64_t>(key_len, 1), 1,
                             kMaxGroup);
}

// The relative term's scratch for tiles of `rows` query rows and `cols` keys:
// q + u for the content term, then q.E for the tile's rows + cols - 1
// distances or, for decode steps (group = BlockedRelativeGroup > 0), for all
// Lk distances of each step of a group. The kernel lays its scratch out by
// this, and BlockedScratchOf counts it.
inline int64_t BlockedRelativeFloats(int64_t rows, int64_t cols,
                                     int64_t head_dim, int64_t group,
                                     int64_t key_len) {
  return rows * head_dim +
         (group > 0 ? group * key_len : rows * (rows + cols - 1));
}

// Floats in a block of float16 or bfloat16 key or value rows that a thread
// converts at a time (256 KiB, an L2's worth) for a tile of several query
// rows: the tile converts them while they are in cache, so that no 16-bit
// input is staged whole as float32 (a one-row tile, a decode step, reads its
// keys as they are through row_loops.h's 16-bit dot products). A tile's rows
// up to this many floats convert in one block, so that its products are the
// same BLAS calls as for float32 inputs.
inline constexpr int64_t kBlockedConvertFloats = int64_t{64} << 10;

// Rows of `cols` floats per conversion block (at least one).
inline int64_t BlockedConvertRows(int64_t cols) {
  return std::max<int64_t>(1,
                           kBlockedConvertFloats / std::max<int64_t>(cols, 1));
}

// What the kernel needs besides its inputs and outputs.
struct BlockedScratch {
  bool online = false;  // context only: the online-softmax kernel
  int64_t floats = 0;   // per thread
  // Per thread, for 16-bit keys or values: one block of converted rows.
  int64_t convert_floats = 0;
};

// REQUIRES: sizes of a validated request. `want_*` as in AttentionConfig;
// `float32_matrices`: the logits and probabilities are float32 (computed in
// their outputs' rows), not 16-bit (computed in a float32 tile, then
// converted). `convert_cols`: the widest rows of the 16-bit keys and values
// read in place (max(D, Dv) of those), 0 when none is.
inline BlockedScratch BlockedScratchOf(int64_t query_len, int64_t key_len,
                                       int64_t head_dim, bool relative,
                                       bool want_logits, bool want_probs,
                                       bool want_context, bool float32_matrices,
                                       int64_t convert_cols = 0) {
  BlockedScratch scratch;
  if (convert_cols > 0) {
    scratch.convert_floats = BlockedConvertRows(convert_cols) * convert_cols;
  }
  scratch.online = want_context && !want_logits && !want_probs;
  const int64_t rows = BlockedQueryTile(query_len, key_len);
  const int64_t cols =
      scratch.online ? std::min(kBlockedKeyTile, key_len) : key_len;
  int64_t floats = 0;
  if (scratch.online) {
    floats += rows * cols + 2 * rows;  // scores tile, running max and sum
  } else if (((want_logits || want_probs) && !float32_matrices) ||
             (want_logits && !want_probs && want_context)) {
    // A float32 tile: the rows of 16-bit outputs, or the probabilities of
    // the context alone.
    floats += rows * cols;
  }
  if (relative) {
    floats += BlockedRelativeFloats(rows, cols, head_dim,
                                    BlockedRelativeGroup(query_len, key_len),
                                    key_len);
  }
  scratch.floats = floats;
  return scratch;
}

// How the tile loop hands `units` units of work to at most `max_threads`
// intra-op threads, which take chunks of `size` consecutive units from a
// shared counter until none are left: `threads` take part (1: the calling
// thread alone; 0 when there are no units), each with at least `grain` units
// (a parallel region's wake-up must pay for itself). About kChunksPerThread
// chunks per thread, so that a thread that starts late (its core busy with
// other work) leaves its share to the others, while the chunks stay long
// enough that consecutive units (one head's tiles, which share its key rows)
// mostly stay on one thread. `size` is a multiple of `align` (the relative
// bias's decode group, whose distances one thread computes for the group's
// items together).
struct UnitChunks {
  static constexpr int64_t kChunksPerThread = 4;

  UnitChunks(int64_t units, int64_t grain, int64_t max_threads,
             int64_t align = 1) {
    const int64_t least = std::max<int64_t>(grain, 1);
    const int64_t step = std::max<int64_t>(align, 1);
    if (units <= 0) {
      threads = 0;
      return;
    }
    threads = std::clamp<int64_t>((units + least - 1) / least, 1,
                                  std::max<int64_t>(max_threads, 1));
    const int64_t even =
        (units + threads * kChunksPerThread - 1) / (threads * kChunksPerThread);
    size = (std::max(least, even) + step - 1) / step * step;
  }

  int64_t threads = 1;
  int64_t size = 1;
};

// The compute threads of this process: at most this many scratch buffers are
// live at once. Set by CreateAtenScorer; until then, the core count.
inline std::atomic<int>& BlockedThreadsSlot() {
  static std::atomic<int> threads{
      static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))};
  return threads;
}
inline int BlockedThreads() { return BlockedThreadsSlot().load(); }
inline void SetBlockedThreads(int threads) {
  BlockedThreadsSlot().store(std::max(1, threads));
}

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_BLOCKED_TILING_H_
