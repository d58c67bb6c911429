#include "server/scoring/blocked_attention.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <variant>
#include <vector>

#include "common/overloaded.h"
#include "server/scoring/blocked_tiling.h"
#include "server/scoring/host_tensor.h"
#include "server/scoring/row_loops.h"

// at::parallel_for (ATen/Parallel-inl.h) is inline: compiled without OpenMP it
// runs every tile on the calling thread, which would silently halve the tile
// loop's throughput on two cores (server/scoring/CMakeLists.txt).
#if defined(ATTNSCORE_PARALLEL_TILES) && !defined(_OPENMP)
#error \
    "ATTNSCORE_PARALLEL_TILES is set but this file is not compiled with OpenMP"
#endif

namespace attnscore::scoring {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Below this many multiply-adds a plain loop is cheaper than creating tensor
// views and dispatching an ATen op; tiny items (H = Lq = Lk = D = 1) then cost
// nanoseconds instead of microseconds.
constexpr int64_t kSmallMacs = 8192;
// `stop` is asked before the first tile of a thread and then once per this
// many multiply-adds: a few milliseconds at most between checks.
constexpr int64_t kStopCheckMacs = int64_t{1} << 22;
// Opening a parallel region wakes the other intra-op threads and joins them
// at its end: tens of microseconds on a VM (an idle vCPU is woken through the
// hypervisor), milliseconds when their cores are busy (gRPC's threads
// receiving requests). Each thread gets at least this many multiply-adds of
// tiles (about 0.1 ms): a decode step (H8 Lk2048 D64, 1M) computed in 0.105 ms
// on one thread and 0.150 ms on two at concurrency 1 on two AMD EPYC cores,
// and took 3x longer on two under load.
constexpr int64_t kParallelMacs = int64_t{1} << 20;

// A row-major matrix in someone else's memory: unit column stride, row stride
// `ld`.
template <typename T>
struct Mat {
  T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  T* row(int64_t i) const { return data + i * ld; }
};
using CMat = Mat<const float>;
using MMat = Mat<float>;

at::Tensor View(const float* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<float*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(at::kFloat));
}
template <typename T>
at::Tensor View(const Mat<T>& m) {
  return View(m.data, m.rows, m.cols, m.ld);
}

// c = alpha * a b^T (+ c when accumulating). a [m, k], b [n, k], c [m, n].
void MatMulNT(const CMat& a, const CMat& b, float alpha, bool accumulate,
              const MMat& c) {
  const int64_t m = a.rows, n = b.rows, k = a.cols;
  if (m == 0 || n == 0) return;
  if (m == 1) {
    // One query row (decode): streams b once, in its row-major order, at the
    // CPU's vector width (OpenBLAS's sgemv_t ran at half the memory rate).
    ScaledDotRows(b.data, b.ld, n, a.data, k, alpha, accumulate, c.data);
    return;
  }
  if (m * n * k <= kSmallMacs) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        float dot = 0;
        for (int64_t d = 0; d < k; ++d) dot += a.row(i)[d] * b.row(j)[d];
        c.row(i)[j] = accumulate ? c.row(i)[j] + alpha * dot : alpha * dot;
      }
    }
    return;
  }
  const int beta = accumulate ? 1 : 0;
  View(c).addmm_(View(a), View(b).t(), beta, alpha);
}

// c = a b (+ c when accumulating). a [m, k], b [k, n], c [m, n].
void MatMulNN(const CMat& a, const CMat& b, bool accumulate, const MMat& c) {
  const int64_t m = a.rows, k = a.cols, n = b.cols;
  if (m == 0 || n == 0) return;
  if (m * n * k <= kSmallMacs) {
    for (int64_t i = 0; i < m; ++i) {
      float* out = c.row(i);
      if (!accumulate) std::fill(out, out + n, 0.0f);
      for (int64_t t = 0; t < k; ++t) {
        const float weight = a.row(i)[t];
        const float* in = b.row(t);
        for (int64_t j = 0; j < n; ++j) out[j] += weight * in[j];
      }
    }
    return;
  }
  at::Tensor out = View(c);
  const int beta = accumulate ? 1 : 0;
  if (m == 1) {
    at::Tensor row = out.select(0, 0);
    row.addmv_(View(b).t(), View(a).select(0, 0), beta, 1);
  } else {
    out.addmm_(View(a), View(b), beta, 1);
  }
}

// x = exp(x) in place; exp(-inf) = 0 exactly (row_loops.h).
void ExpInPlace(const MMat& x) {
  for (int64_t i = 0; i < x.rows; ++i) ExpRow(x.row(i), x.cols);
}

// A [B, H, L, D] tensor's data with its strides in elements (unit last
// stride): float32, or (keys and values) float16 or bfloat16, whose rows the
// tiles convert a block at a time (RowsAsFloat).
struct Operand {
  const void* data = nullptr;
  at::ScalarType type = at::kFloat;
  int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
  int64_t cols = 0;

  bool is_float() const { return type == at::kFloat; }
  int64_t Offset(int64_t b, int64_t h, int64_t row) const {
    return b * batch_stride + h * head_stride + row * row_stride;
  }
  // REQUIRES: is_float().
  CMat Rows(int64_t b, int64_t h, int64_t begin, int64_t count) const {
    return CMat{static_cast<const float*>(data) + Offset(b, h, begin), count,
                cols, row_stride};
  }
  // The rows as float32: in place, or (16-bit) converted into `buffer`
  // ([count, cols], contiguous). Conversion is exact.
  CMat RowsAsFloat(int64_t b, int64_t h, int64_t begin, int64_t count,
                   float* buffer) const {
    if (is_float()) return Rows(b, h, begin, count);
    const auto* bits = static_cast<const uint16_t*>(data) + Offset(b, h, begin);
    const bool contiguous = row_stride == cols;
    const int64_t runs = contiguous ? 1 : count;
    const int64_t run = contiguous ? count * cols : cols;
    for (int64_t r = 0; r < runs; ++r) {
      if (type == at::kHalf) {
        LoadFloat16Row(bits + r * row_stride, run, buffer + r * cols);
      } else {
        LoadBFloat16Row(bits + r * row_stride, run, buffer + r * cols);
      }
    }
    return CMat{buffer, count, cols, cols};
  }
  // out[j] += alpha * (row j . x), j in [0, count), for 16-bit rows [begin,
  // begin + count): the same bits as MatMulNT's one-row products over the
  // rows converted. REQUIRES: !is_float().
  void ScaledDots(int64_t b, int64_t h, int64_t begin, int64_t count,
                  const float* x, float alpha, float* out) const {
    const auto* bits = static_cast<const uint16_t*>(data) + Offset(b, h, begin);
    if (type == at::kHalf) {
      ScaledDotRowsFloat16(bits, row_stride, count, x, cols, alpha,
                           /*accumulate=*/true, out);
    } else {
      ScaledDotRowsBFloat16(bits, row_stride, count, x, cols, alpha,
                            /*accumulate=*/true, out);
    }
  }
};

Operand OperandOf(const at::Tensor& t) {
  if (!t.defined()) return Operand{};
  return Operand{t.data_ptr(), t.scalar_type(), t.stride(0),
                 t.stride(1),  t.stride(2),     t.size(3)};
}

// Everything the tiles read and write.
struct Problem {
  int64_t heads = 0, query_len = 0, key_len = 0, head_dim = 0, value_dim = 0;
  Operand q, k, v;
  // [B,H,Lq,Lk] or null, in `matrix_type`: float32 rows are computed in
  // place, 16-bit ones in float32 scratch and converted per tile.
  void* logits = nullptr;
  void* probs = nullptr;
  at::ScalarType matrix_type = at::kFloat;
  float* context = nullptr;  // [B,H,Lq,Dv] or null
  absl::Span<const int32_t> key_lengths;
  bool causal = false;
  float scale = 1;
  const float* slopes = nullptr;  // ALiBi: [H]
  // Relative (contiguous): E [2P,H,D], S [2P,H], u [H,D]; r0 = P - Lk + 1.
  const float* pos_embeddings = nullptr;
  const float* pos_bias = nullptr;
  const float* query_bias = nullptr;
  // The same by head, for decode steps: E^T in panels (PanelDots), [H,
  // 2P/W, D, W], and S^T [H,2P].
  const float* pos_panels = nullptr;
  const float* pos_bias_t = nullptr;
  int64_t span = 0;  // 2P
  int64_t r0 = 0;
  // Relative decode steps: batch items per pass over a head's embeddings
  // (BlockedRelativeGroup); 0: each tile computes its own q.E.
  int64_t relative_group = 0;
  int64_t batch = 0;
  int64_t query_tile = 1;
  bool relative() const { return pos_embeddings != nullptr; }
};

// The tiles of one thread, with its scratch (sized by BlockedScratchOf).
class TileKernel {
 public:
  // `convert`: BlockedScratch::convert_floats floats, for 16-bit keys and
  // values (null when there are none).
  TileKernel(const Problem& p, float* scratch, float* convert)
      : p_(p), scratch_(scratch), convert_(convert) {}

  // Query rows [i0, i1) of block (b, h).
  void Run(int64_t b, int64_t h, int64_t i0, int64_t i1) {
    if (p_.logits == nullptr && p_.probs == nullptr) {
      Online(b, h, i0, i1);
    } else {
      Materialise(b, h, i0, i1);
    }
  }

 private:
  // One past the last key that query row i sees.
  int64_t VisibleEnd(int64_t b, int64_t i) const {
    const int64_t len = p_.key_lengths.empty() ? p_.key_len : p_.key_lengths[b];
    return p_.causal ? std::min(len, p_.key_len - p_.query_len + i + 1) : len;
  }
  int64_t VisibleIn(int64_t b, int64_t i, int64_t j0, int64_t n) const {
    return std::clamp<int64_t>(VisibleEnd(b, i) - j0, 0, n);
  }

  // dst [i1 - i0, j1 - j0] = the logits of rows [i0, i1) and keys [j0, j1):
  // scale * q.k plus bias where visible, -inf elsewhere (masked keys are
  // never computed).
  void Scores(int64_t b, int64_t h, int64_t i0, int64_t i1, int64_t j0,
              int64_t j1, const MMat& dst) {
    const int64_t m = i1 - i0, n = j1 - j0;
    // The last row sees the most keys (causal visibility grows with i).
    const int64_t width = VisibleIn(b, i1 - 1, j0, n);
    if (width > 0) {
      const MMat head = {dst.data, m, width, dst.ld};
      // The bias first, the content products added to it: the BLAS's C =
      // alpha AB + C pass replaces a pass that zeroes C and one that adds the
      // bias. (Its kernels fuse that add, rounding once: within the
      // tolerances against the literal port, and the same whatever the
      // batch.)
      if (p_.relative()) {
        StoreRelative(b, h, i0, j0, head);
      } else {
        StoreAlibi(h, i0, j0, head);
      }
      const CMat query = ContentQuery(b, h, i0, m);
      if (m == 1 && !p_.k.is_float()) {
        // One query row (decode): the dot products widen the 16-bit keys as
        // they load them, reading half float32's bytes.
        p_.k.ScaledDots(b, h, j0, width, query.data, p_.scale, head.data);
      } else {
        ForRowBlocks(p_.k, b, h, j0, width, [&](int64_t c0, const CMat& keys) {
          MatMulNT(query, keys, p_.scale, /*accumulate=*/true,
                   MMat{head.data + c0, m, keys.rows, head.ld});
        });
      }
    }
    FillMasked(b, i0, m, j0, n, dst);
  }

  // -inf in the columns of dst's rows that their query rows do not see.
  void FillMasked(int64_t b, int64_t i0, int64_t m, int64_t j0, int64_t n,
                  const MMat& dst) const {
    for (int64_t r = 0; r < m; ++r) {
      float* row = dst.row(r);
      std::fill(row + VisibleIn(b, i0 + r, j0, n), row + n, kNegInf);
    }
  }

  // use(first, rows) for rows [begin, begin + count) of x's (b, h) block, as
  // float32: in one call when x is float32 or the rows fit one conversion
  // block (the same products as for float32 inputs), else a block of
  // converted rows at a time, `first` counting from begin.
  template <typename Use>
  void ForRowBlocks(const Operand& x, int64_t b, int64_t h, int64_t begin,
                    int64_t count, Use use) {
    const int64_t step = x.is_float() ? count : BlockedConvertRows(x.cols);
    for (int64_t first = 0; first < count; first += step) {
      const int64_t rows = std::min(step, count - first);
      use(first, x.RowsAsFloat(b, h, begin + first, rows, convert_));
    }
  }

  // The query rows of the content term: q, or q + u_h for relative (in
  // scratch).
  CMat ContentQuery(int64_t b, int64_t h, int64_t i0, int64_t m) {
    const CMat q = p_.q.Rows(b, h, i0, m);
    if (!p_.relative()) return q;
    float* out = scratch_;
    const float* u = p_.query_bias + h * p_.head_dim;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t d = 0; d < p_.head_dim; ++d) {
        out[r * p_.head_dim + d] = q.row(r)[d] + u[d];
      }
    }
    return CMat{out, m, p_.head_dim, p_.head_dim};
  }

  // dst = -m_h * d (causal) or -m_h * |d|, d = (Lk - Lq + i) - j: every
  // column, so that no stale value reaches the products added to it (Scores
  // masks the keys a row does not see afterwards).
  void StoreAlibi(int64_t h, int64_t i0, int64_t j0, const MMat& dst) const {
    const float slope = -p_.slopes[h];
    for (int64_t r = 0; r < dst.rows; ++r) {
      const int64_t i = i0 + r;
      StoreAlibiRow(dst.row(r), dst.cols, p_.key_len - p_.query_len + i - j0,
                    slope, p_.causal);
    }
  }

  // dst = scale * (q_i.E[r0 + t, h] + S[r0 + t, h]), t = j - i + Lq - 1
  // (labml's shift), where visible, and 0 in the columns a row does not see
  // (Scores masks them afterwards): one GEMM against the Tq + width - 1
  // embeddings the tile touches.
  void StoreRelative(int64_t b, int64_t h, int64_t i0, int64_t j0,
                     const MMat& dst) {
    const int64_t m = dst.rows, width = dst.cols;
    if (p_.relative_group > 0) {  // a decode step: i = 0, t = j
      // One row, so the tile's width is what it sees: nothing to zero.
      StoreRelativeRow(dst.row(0), width, GroupDistances(b, h) + j0,
                       p_.pos_bias_t + h * p_.span + p_.r0 + j0, 1, p_.scale);
      return;
    }
    const int64_t t_lo = j0 - (i0 + m) + p_.query_len;
    const int64_t count = width + m - 1;
    const int64_t stride = p_.heads * p_.head_dim;
    const MMat bd = {scratch_ + m * p_.head_dim, m, count, count};
    const CMat embeddings = {
        p_.pos_embeddings + (p_.r0 + t_lo) * stride + h * p_.head_dim, count,
        p_.head_dim, stride};
    MatMulNT(p_.q.Rows(b, h, i0, m), embeddings, 1.0f, false, bd);
    const float* bias = p_.pos_bias + (p_.r0 + t_lo) * p_.heads + h;
    for (int64_t r = 0; r < m; ++r) {
      const int64_t visible = VisibleIn(b, i0 + r, j0, width);
      const float* shifted = bd.row(r) + (m - 1 - r);  // tt = c - r + m - 1
      StoreRelativeRow(dst.row(r), visible, shifted,
                       bias + (m - 1 - r) * p_.heads, p_.heads, p_.scale);
      std::fill(dst.row(r) + visible, dst.row(r) + width, 0.0f);
    }
  }

  // q_b.E[r0 + t, h] for t in [0, Lk) (a decode step's distances), from
  // scratch: computed for up to relative_group consecutive items of head h at
  // once (PanelDots), so that the head's embeddings are read from
  // memory once for all of them, not once per item (as many bytes as the
  // item's keys). An element's bits do not depend on the group.
  const float* GroupDistances(int64_t b, int64_t h) {
    float* distances = scratch_ + p_.head_dim;  // after q + u (one row)
    if (h != group_head_ || b < group_begin_ || b >= group_end_) {
      group_head_ = h;
      group_begin_ = b;
      group_end_ = std::min(b + p_.relative_group, p_.batch);
      // Keys past an item's visible end (its key length) are not needed.
      int64_t n = 0;
      for (int64_t g = group_begin_; g < group_end_; ++g) {
        n = std::max(n, VisibleEnd(g, 0));
      }
      const int64_t panels = (p_.span + kPanelCols - 1) / kPanelCols;
      PanelDots(p_.pos_panels + h * panels * p_.head_dim * kPanelCols, p_.r0, n,
                p_.q.Rows(group_begin_, h, 0, 1).data, p_.q.batch_stride,
                group_end_ - group_begin_, p_.head_dim, distances, p_.key_len);
    }
    return distances + (b - group_begin_) * p_.key_len;
  }

  // Row softmax of `scores` into `probs` (may alias): zero where masked, and
  // a zero row where no key is visible. Each row's exponentials stop at its
  // visible end (a causal row at the diagonal); the zeros past it are written.
  void Softmax(int64_t b, int64_t i0, const MMat& scores,
               const MMat& probs) const {
    for (int64_t r = 0; r < scores.rows; ++r) {
      const int64_t visible = VisibleIn(b, i0 + r, 0, scores.cols);
      const float* in = scores.row(r);
      float* out = probs.row(r);
      const float max = visible > 0 ? RowMax(in, visible) : 0.0f;
      SubtractRow(in, out, visible, max);
      ExpRow(out, visible);
      std::fill(out + visible, out + scores.cols, 0.0f);
      DivideRow(out, visible, RowSum(out, visible));
    }
  }

  // Logits and/or probabilities asked for: full [Tq, Lk] rows. Float32 ones
  // are computed in their outputs' rows; the tile scratch holds the rows that
  // have none there (16-bit outputs, the probabilities of the context alone).
  void Materialise(int64_t b, int64_t h, int64_t i0, int64_t i1) {
    const int64_t m = i1 - i0, lk = p_.key_len;
    const int64_t offset = ((b * p_.heads + h) * p_.query_len + i0) * lk;
    float* logits = InPlace(p_.logits, offset);
    float* probs = InPlace(p_.probs, offset);
    const MMat scores = {logits != nullptr  ? logits
                         : probs != nullptr ? probs
                                            : TileScratch(m),
                         m, lk, lk};
    Scores(b, h, i0, i1, 0, lk, scores);
    if (p_.logits != nullptr && logits == nullptr) {
      Store(scores, p_.logits, offset);  // 16-bit logits
    }
    const bool context = p_.context != nullptr;
    if (p_.probs == nullptr && !context) return;
    // Softmax in place unless the scores are the float32 logits' rows.
    const MMat p = {probs != nullptr    ? probs
                    : logits != nullptr ? TileScratch(m)
                                        : scores.data,
                    m, lk, lk};
    Softmax(b, i0, scores, p);
    if (p_.probs != nullptr && probs == nullptr) Store(p, p_.probs, offset);
    if (!context) return;
    const MMat out = {
        p_.context + ((b * p_.heads + h) * p_.query_len + i0) * p_.value_dim, m,
        p_.value_dim, p_.value_dim};
    const int64_t width = VisibleIn(b, i1 - 1, 0, lk);
    if (width == 0) {
      View(out).zero_();
      return;
    }
    ForRowBlocks(p_.v, b, h, 0, width, [&](int64_t t0, const CMat& values) {
      MatMulNN(CMat{p.data + t0, m, values.rows, lk}, values,
               /*accumulate=*/t0 > 0, out);
    });
  }

  // The float32 rows of `output` from element `offset`, or null when it is
  // absent or 16-bit.
  float* InPlace(void* output, int64_t offset) const {
    if (output == nullptr || p_.matrix_type != at::kFloat) return nullptr;
    return static_cast<float*>(output) + offset;
  }

  // Converts the tile `rows` (contiguous) into `output`'s 16-bit rows from
  // element `offset`, while they are in cache; rounding to nearest even, as
  // at::Tensor::to does.
  void Store(const MMat& rows, void* output, int64_t offset) const {
    const int64_t count = rows.rows * rows.cols;
    // c10::Half and c10::BFloat16 hold their bits in one uint16_t (`x`).
    static_assert(sizeof(c10::Half) == sizeof(uint16_t));
    static_assert(sizeof(c10::BFloat16) == sizeof(uint16_t));
    auto* bits = static_cast<uint16_t*>(output) + offset;
    if (p_.matrix_type == at::kHalf) {
      StoreFloat16Row(rows.data, count, bits);
    } else {
      StoreBFloat16Row(rows.data, count, bits);
    }
  }
  // After the relative term's scratch: a [Tq, Lk] float32 tile.
  float* TileScratch(int64_t m) const {
    return scratch_ + RelativeFloats(m, p_.key_len);
  }

  // The relative term's scratch for tiles of m rows and `cols` keys.
  int64_t RelativeFloats(int64_t m, int64_t cols) const {
    if (!p_.relative()) return 0;
    return BlockedRelativeFloats(m, cols, p_.head_dim, p_.relative_group,
                                 p_.key_len);
  }

  // Context alone: FlashAttention's recurrence over key tiles. Per row, the
  // running max M and sum l; for each tile, M' = max(M, tile max),
  // acc = acc * e^(M - M') + e^(s - M') v, l = l * e^(M - M') + sum e^(s - M').
  void Online(int64_t b, int64_t h, int64_t i0, int64_t i1) {
    const int64_t m = i1 - i0, tile = std::min(kBlockedKeyTile, p_.key_len);
    const MMat acc = {
        p_.context + ((b * p_.heads + h) * p_.query_len + i0) * p_.value_dim, m,
        p_.value_dim, p_.value_dim};
    View(acc).zero_();
    const int64_t end = VisibleIn(b, i1 - 1, 0, p_.key_len);
    if (end == 0) return;  // no visible key: zero context
    float* base = scratch_ + RelativeFloats(m, tile);
    float* running_max = base + m * tile;
    float* running_sum = running_max + m;
    std::fill(running_max, running_max + m, kNegInf);
    std::fill(running_sum, running_sum + m, 0.0f);
    for (int64_t j0 = 0; j0 < end; j0 += tile) {
      const int64_t n = std::min(tile, end - j0);
      const MMat s = {base, m, n, tile};
      Scores(b, h, i0, i1, j0, j0 + n, s);
      for (int64_t r = 0; r < m; ++r) {
        const int64_t visible = VisibleIn(b, i0 + r, j0, n);
        if (visible == 0) continue;  // all -inf: adds exp(-inf) = 0
        float* row = s.row(r);
        const float next = std::max(running_max[r], RowMax(row, visible));
        const float decay = std::exp(running_max[r] - next);
        running_max[r] = next;
        running_sum[r] *= decay;
        float* out = acc.row(r);
        for (int64_t d = 0; d < p_.value_dim; ++d) out[d] *= decay;
        SubtractRow(row, row, visible, next);
      }
      ExpInPlace(s);
      for (int64_t r = 0; r < m; ++r) {
        const int64_t visible = VisibleIn(b, i0 + r, j0, n);
        running_sum[r] += RowSum(s.row(r), visible);
      }
      ForRowBlocks(p_.v, b, h, j0, n, [&](int64_t t0, const CMat& values) {
        MatMulNN(CMat{s.data + t0, m, values.rows, tile}, values, true, acc);
      });
    }
    for (int64_t r = 0; r < m; ++r) {
      float* out = acc.row(r);
      const float sum = running_sum[r];
      for (int64_t d = 0; d < p_.value_dim; ++d) {
        out[d] = sum > 0 ? out[d] / sum : 0.0f;
      }
    }
  }

  const Problem& p_;
  float* const scratch_;
  float* const convert_;
  // The decode steps whose distances GroupDistances holds: head, items.
  int64_t group_head_ = -1;
  int64_t group_begin_ = 0;
  int64_t group_end_ = 0;
};

// `given` when the caller supplied it for this output (contiguous, of the
// output's shape and type), else a pooled buffer.
at::Tensor OutputOrGiven(const at::Tensor& given, at::IntArrayRef sizes,
                         at::ScalarType type) {
  if (given.defined() && given.is_contiguous() && given.sizes() == sizes &&
      given.scalar_type() == type) {
    return given;
  }
  return PooledEmpty(sizes, type);
}

// The outputs `config` asks for, allocated once, contiguous, from the host
// pool (host_tensor.h): the reply keeps them until sent, then they are reused
// without page faults. Logits and probs the caller placed in `result` are kept.
void AllocateOutputs(const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const AttentionConfig& config,
                     AttentionResult* result) {
  const std::vector<int64_t> scores = {q.size(0), q.size(1), q.size(2),
                                       k.size(2)};
  const at::ScalarType type = config.matrix_type;
  AttentionResult out;
  if (config.want_logits) {
    out.logits = OutputOrGiven(result->logits, scores, type);
  }
  if (config.want_probs) out.probs = OutputOrGiven(result->probs, scores, type);
  if (config.want_context) {
    out.context =
        PooledEmpty({q.size(0), q.size(1), q.size(2), v.size(3)}, at::kFloat);
  }
  *result = std::move(out);
}

// Unit last stride, as the tiles' row pointers need (a copy otherwise, which
// validated requests never need: they arrive contiguous in some layout).
at::Tensor Rowwise(const at::Tensor& t) {
  if (!t.defined() || t.stride(3) == 1) return t;
  return t.contiguous();
}

// Throws c10::Error unless the query is float32, the keys and values float32,
// float16 or bfloat16, and the matrices' type one of those.
void CheckTypes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const AttentionConfig& config) {
  const auto supported = [](at::ScalarType type) {
    return type == at::kFloat || type == at::kHalf || type == at::kBFloat16;
  };
  TORCH_CHECK(supported(config.matrix_type),
              "blocked attention: matrix_type must be float32, float16 or "
              "bfloat16, got ",
              config.matrix_type);
  TORCH_CHECK(q.scalar_type() == at::kFloat,
              "blocked attention: the query must be float32, got ",
              q.scalar_type());
  for (const at::Tensor* t : {&k, &v}) {
    TORCH_CHECK(!t->defined() || supported(t->scalar_type()),
                "blocked attention: keys and values must be float32, float16 "
                "or bfloat16, got ",
                t->scalar_type());
  }
}

// The widest rows of the 16-bit keys and values (BlockedScratchOf's
// convert_cols), 0 when both are float32.
int64_t ConvertCols(const Problem& p) {
  int64_t cols = 0;
  for (const Operand* x : {&p.k, &p.v}) {
    if (x->data != nullptr && !x->is_float()) cols = std::max(cols, x->cols);
  }
  return cols;
}

// The bias parameters, kept alive (contiguous) while the tiles read them.
struct BiasData {
  at::Tensor embeddings, bias, query_bias;
};

void SetBias(const AttentionConfig& config, Problem* p, BiasData* keep) {
  std::visit(
      Overloaded{
          [&](const ResolvedAlibi& alibi) { p->slopes = alibi.slopes.data(); },
          [&](const ResolvedRelative& relative) {
            const AtenRelativeModel& model = *relative.model;
            keep->embeddings = model.key_pos_embeddings().contiguous();
            keep->bias = model.key_pos_bias().contiguous();
            keep->query_bias = model.query_pos_bias().contiguous();
            p->pos_embeddings = keep->embeddings.data_ptr<float>();
            p->pos_bias = keep->bias.data_ptr<float>();
            p->query_bias = keep->query_bias.data_ptr<float>();
            p->pos_panels = model.key_pos_embeddings_panels().data_ptr<float>();
            p->pos_bias_t = model.key_pos_bias_by_head().data_ptr<float>();
            p->span = 2 * model.info().max_relative_positions;
            p->r0 = model.info().max_relative_positions - p->key_len + 1;
          },
      },
      config.bias);
}

// The problem the tiles compute: `q`, `k`, `v` row-wise, into `result`'s
// outputs; `keep` holds the bias data it points to.
Problem ProblemOf(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  absl::Span<const int32_t> key_lengths,
                  const AttentionConfig& config, const AttentionResult& result,
                  BiasData* keep) {
  Problem p;
  p.batch = q.size(0);
  p.heads = q.size(1);
  p.query_len = q.size(2);
  p.key_len = k.size(2);
  p.head_dim = q.size(3);
  p.value_dim = config.want_context ? v.size(3) : 0;
  p.q = OperandOf(q);
  p.k = OperandOf(k);
  p.v = OperandOf(v);
  const auto data = [](const at::Tensor& t) {
    return t.defined() ? t.data_ptr() : nullptr;
  };
  p.logits = data(result.logits);
  p.probs = data(result.probs);
  p.matrix_type = config.matrix_type;
  p.context = static_cast<float*>(data(result.context));
  p.key_lengths = key_lengths;
  p.causal = config.causal;
  p.scale = static_cast<float>(config.scale);
  SetBias(config, &p, keep);
  p.query_tile = BlockedQueryTile(p.query_len, p.key_len);
  if (p.relative()) {
    p.relative_group = BlockedRelativeGroup(p.query_len, p.key_len);
  }
  return p;
}

// Tells a RowsDoneFn the rows before the first unfinished chunk of units:
// chunks finish out of order (threads run at their own pace), and a row is
// final only once every unit before it is. Units run in row order (not
// head-major), `tiles` per (b, h) block of `query_len` rows.
class RowProgress {
 public:
  RowProgress(const RowsDoneFn& rows_done, int64_t units, int64_t chunk_size,
              int64_t tiles, int64_t query_tile, int64_t query_len)
      : rows_done_(rows_done),
        units_(units),
        chunk_size_(chunk_size),
        tiles_(tiles),
        query_tile_(query_tile),
        query_len_(query_len),
        finished_(static_cast<size_t>((units + chunk_size - 1) / chunk_size)) {}

  // The chunk of units starting at `begin` is done.
  void Finished(int64_t begin) {
    int64_t rows = -1;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_[static_cast<size_t>(begin / chunk_size_)] = true;
      const size_t before = first_open_;
      while (first_open_ < finished_.size() && finished_[first_open_]) {
        ++first_open_;
      }
      if (first_open_ != before) {
        rows = RowsBefore(std::min<int64_t>(
            static_cast<int64_t>(first_open_) * chunk_size_, units_));
      }
    }
    // Outside the lock: the observer may take its own.
    if (rows >= 0) rows_done_(rows);
  }

 private:
  int64_t RowsBefore(int64_t unit) const {
    return unit / tiles_ * query_len_ +
           std::min((unit % tiles_) * query_tile_, query_len_);
  }

  const RowsDoneFn& rows_done_;
  const int64_t units_, chunk_size_, tiles_, query_tile_, query_len_;
  std::mutex mutex_;
  std::vector<bool> finished_;  // per chunk
  size_t first_open_ = 0;       // the first chunk not finished
};

}  // namespace

void AllocateBlockedOutputs(const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const AttentionConfig& config,
                            AttentionResult* result) {
  AllocateOutputs(q, k, v, config, result);
}

bool ComputeAttentionBlocked(const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v,
                             absl::Span<const int32_t> key_lengths,
                             const AttentionConfig& config,
                             const std::function<bool()>& stop,
                             AttentionResult* result) {
  return ComputeAttentionBlocked(q, k, v, key_lengths, config, stop,
                                 RowsDoneFn(), result);
}

bool ComputeAttentionBlocked(const at::Tensor& q_in, const at::Tensor& k_in,
                             const at::Tensor& v_in,
                             absl::Span<const int32_t> key_lengths,
                             const AttentionConfig& config,
                             const std::function<bool()>& stop,
                             const RowsDoneFn& rows_done,
                             AttentionResult* result) {
  const at::Tensor q = Rowwise(q_in), k = Rowwise(k_in);
  const at::Tensor v = config.want_context ? Rowwise(v_in) : at::Tensor();
  CheckTypes(q, k, v, config);
  AllocateOutputs(q, k, v, config, result);
  BiasData keep;
  const Problem p = ProblemOf(q, k, v, key_lengths, config, *result, &keep);
  const BlockedScratch scratch = BlockedScratchOf(
      p.query_len, p.key_len, p.head_dim, p.relative(), config.want_logits,
      config.want_probs, config.want_context,
      /*float32_matrices=*/config.matrix_type == at::kFloat, ConvertCols(p));
  const int64_t tiles = (p.query_len + p.query_tile - 1) / p.query_tile;
  const int64_t units = q.size(0) * p.heads * tiles;
  const int64_t unit_macs =
      p.query_tile * p.key_len * (p.head_dim + p.value_dim);
  const int64_t grain =
      std::max<int64_t>(1, kParallelMacs / std::max<int64_t>(unit_macs, 1));
  // Relative bias with one unit per (b, h) (decode steps, short queries): one
  // head's batch items one after another, so that the head's position
  // embeddings stay in cache across them (and GroupDistances' groups are
  // consecutive units).
  const bool head_major = p.relative() && tiles == 1;
  // The units are handed out in chunks from a shared counter, not split
  // evenly up front: on a busy machine (gRPC's threads receiving on the same
  // cores) an intra-op thread the OS has not run yet would hold its share
  // while the others waited for it at the region's end; a late thread now
  // finds the units taken and leaves. Each unit's results depend on that unit
  // alone, so which thread computes it changes no bit.
  const UnitChunks chunks(units, grain, at::get_num_threads(),
                          head_major ? p.relative_group : 1);
  std::atomic<int64_t> next{0};
  std::atomic<bool> stopped{false};
  // Head-major units are not in row order: their rows are told at the end.
  std::optional<RowProgress> progress;
  if (rows_done && !head_major) {
    progress.emplace(rows_done, units, chunks.size, tiles, p.query_tile,
                     p.query_len);
  }
  at::parallel_for(0, chunks.threads, 1, [&](int64_t, int64_t) {
    // One scratch per thread: at most BlockedThreads() live at once.
    const PooledFloats buffer =
        AcquireFloats(static_cast<size_t>(scratch.floats));
    const PooledFloats convert =
        scratch.convert_floats > 0
            ? AcquireFloats(static_cast<size_t>(scratch.convert_floats))
            : PooledFloats();
    TileKernel kernel(p, buffer.get(), convert.get());
    int64_t since_check = kStopCheckMacs;
    for (int64_t begin = next.fetch_add(chunks.size); begin < units;
         begin = next.fetch_add(chunks.size)) {
      const int64_t end = std::min(begin + chunks.size, units);
      for (int64_t unit = begin; unit < end; ++unit) {
        if (stop && since_check >= kStopCheckMacs) {
          if (stopped.load(std::memory_order_relaxed) || stop()) {
            stopped.store(true, std::memory_order_relaxed);
            return;
          }
          since_check = 0;
        }
        since_check += unit_macs;
        const int64_t block = unit / tiles, i0 = (unit % tiles) * p.query_tile;
        const int64_t b = head_major ? block % p.batch : block / p.heads;
        const int64_t h = head_major ? block / p.batch : block % p.heads;
        kernel.Run(b, h, i0, std::min(i0 + p.query_tile, p.query_len));
      }
      if (progress.has_value()) progress->Finished(begin);
    }
  });
  if (stopped.load()) return false;
  // Once more for all of them: head-major units told nothing so far.
  if (rows_done) rows_done(p.batch * p.heads * p.query_len);
  return true;
}

}  // namespace attnscore::scoring
