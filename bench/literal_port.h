// A literal LibTorch port of the seed's eager algorithms, the baseline the
// scoring core is measured (and cross-checked) against: ALiBi with a
// materialised [H,Lq,Lk] bias, and labml's Transformer-XL get_scores (einsum +
// shift_right) in its own [seq, batch, heads, d] layout. Not used by the
// server.
//
// Thread safety: pure functions. Errors: LibTorch exceptions propagate
// (benchmark/test code).
#ifndef ATTNSCORE_BENCH_LITERAL_PORT_H_
#define ATTNSCORE_BENCH_LITERAL_PORT_H_

#include <ATen/core/Tensor.h>

#include <vector>

namespace attnscore::bench {

struct LiteralResult {
  at::Tensor logits;  // [B,H,Lq,Lk]
  at::Tensor probs;   // [B,H,Lq,Lk], undefined unless asked for
};

// q [B,H,Lq,D], k [B,H,Lk,D]; slopes [H].
LiteralResult LiteralAlibi(const at::Tensor& q, const at::Tensor& k,
                           const std::vector<float>& slopes, bool causal,
                           double scale, bool want_probs);

// q [B,H,Lq,D], k [B,H,Lk,D]; E [2P,H,D], S [2P,H], u [H,D]. Converts to
// labml's layout first.
LiteralResult LiteralRelative(const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& e, const at::Tensor& s,
                              const at::Tensor& u, bool causal, double scale,
                              bool want_probs);

}  // namespace attnscore::bench

#endif  // ATTNSCORE_BENCH_LITERAL_PORT_H_
