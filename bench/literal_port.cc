#include "bench/literal_port.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <limits>

namespace attnscore::bench {
namespace {

// Query i sits at Lk - Lq + i; key j is visible iff j <= Lk - Lq + i.
at::Tensor CausalMask(int64_t lq, int64_t lk) {
  return at::ones({lq, lk}, at::kBool).tril(lk - lq);
}

// labml_nn.transformers.xl.relative_mha.shift_right, line by line.
at::Tensor ShiftRight(const at::Tensor& x) {
  std::vector<int64_t> pad_shape = x.sizes().vec();
  pad_shape[1] = 1;
  at::Tensor zero_pad = at::zeros(pad_shape, x.options());
  at::Tensor x_padded = at::cat({x, zero_pad}, 1);
  std::vector<int64_t> view_shape = x.sizes().vec();
  view_shape[0] = x.size(1) + 1;
  view_shape[1] = x.size(0);
  x_padded = x_padded.view(view_shape);
  return x_padded.slice(0, 0, -1).view_as(x);
}

LiteralResult Finish(at::Tensor scores, bool causal, bool want_probs) {
  if (causal) {
    at::Tensor mask = CausalMask(scores.size(2), scores.size(3));
    scores = scores.masked_fill(mask.logical_not(),
                                -std::numeric_limits<float>::infinity());
  }
  LiteralResult r;
  if (want_probs) r.probs = at::softmax(scores, -1);
  r.logits = scores;
  return r;
}

}  // namespace

LiteralResult LiteralAlibi(const at::Tensor& q, const at::Tensor& k,
                           const std::vector<float>& slopes, bool causal,
                           double scale, bool want_probs) {
  const int64_t lq = q.size(2), lk = k.size(2);
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * scale;
  at::Tensor query_pos = at::arange(lk - lq, lk, at::kFloat).view({lq, 1});
  at::Tensor key_pos = at::arange(0, lk, at::kFloat).view({1, lk});
  at::Tensor distance = query_pos - key_pos;
  if (!causal) distance = distance.abs();
  at::Tensor m = at::tensor(slopes, at::kFloat).view({-1, 1, 1});
  at::Tensor bias = -m * distance;  // materialised [H,Lq,Lk]
  return Finish(scores + bias, causal, want_probs);
}

LiteralResult LiteralRelative(const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& e, const at::Tensor& s,
                              const at::Tensor& u, bool causal, double scale,
                              bool want_probs) {
  // labml works in [seq, batch, heads, d].
  at::Tensor query = q.permute({2, 0, 1, 3});
  at::Tensor key = k.permute({2, 0, 1, 3});
  const int64_t p = e.size(0) / 2;
  const int64_t lq = query.size(0), lk = key.size(0);
  at::Tensor key_pos_emb = e.slice(0, p - lk, p + lq);
  at::Tensor key_pos_bias = s.slice(0, p - lk, p + lq);
  at::Tensor query_pos_bias = u.unsqueeze(0).unsqueeze(0);
  at::Tensor ac = at::einsum("ibhd,jbhd->ijbh", {query + query_pos_bias, key});
  at::Tensor b = at::einsum("ibhd,jhd->ijbh", {query, key_pos_emb});
  at::Tensor d = key_pos_bias.unsqueeze(0).unsqueeze(2);
  at::Tensor bd = ShiftRight(b + d);
  bd = bd.slice(1, bd.size(1) - lk);
  at::Tensor scores = (ac + bd) * scale;  // [Lq,Lk,B,H]
  return Finish(scores.permute({2, 3, 0, 1}), causal, want_probs);
}

}  // namespace attnscore::bench
