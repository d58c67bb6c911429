#include "server/scoring/alibi_logits.h"

#include <c10/util/Exception.h>

#include <cstdint>

namespace attnscore::scoring {
namespace {

void CheckFloat(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.defined() && t.scalar_type() == at::kFloat && t.dim() == dims &&
                  (t.numel() == 0 || t.stride(-1) == 1),
              "alibi logits kernel: ", name, ": expected float32 with ", dims,
              " dimensions and a contiguous last one, got ",
              t.defined() ? t.toString() : "undefined", " ", t.sizes(),
              " strides ", t.defined() ? t.strides() : at::IntArrayRef());
}

bool QuadAligned(const at::Tensor& t, int dims) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int d = 0; d < dims; ++d) {
    if (t.stride(d) % 4 != 0) return false;
  }
  return true;
}

void CopyStrides(const at::Tensor& t, int64_t (&strides)[3]) {
  for (int d = 0; d < 3; ++d) strides[d] = t.stride(d);
}

}  // namespace

alibi_tile::AlibiLogitsArgs MakeAlibiLogitsArgs(
    const AlibiLogitsOperands& ops) {
  CheckFloat(ops.query, "query", 4);
  CheckFloat(ops.key, "key", 4);
  CheckFloat(ops.out, "out", 4);
  CheckFloat(ops.neg_slopes, "neg_slopes", 1);
  const int64_t batch = ops.query.size(0);
  const int64_t heads = ops.query.size(1);
  const int64_t rows = ops.query.size(2);
  const int64_t key_len = ops.key.size(2);
  const int64_t head_dim = ops.query.size(3);
  TORCH_CHECK(ops.key.size(0) == batch && ops.key.size(1) == heads &&
                  ops.key.size(3) == head_dim,
              "alibi logits kernel: key ", ops.key.sizes(),
              " does not match query ", ops.query.sizes());
  TORCH_CHECK(ops.out.sizes() == at::IntArrayRef({batch, heads, rows, key_len}),
              "alibi logits kernel: out ", ops.out.sizes(), ", expected [",
              batch, ", ", heads, ", ", rows, ", ", key_len, "]");
  TORCH_CHECK(ops.neg_slopes.size(0) == heads && ops.neg_slopes.is_contiguous(),
              "alibi logits kernel: neg_slopes ", ops.neg_slopes.sizes(),
              ", expected [", heads, "] contiguous");
  if (ops.key_lengths.defined()) {
    TORCH_CHECK(ops.key_lengths.scalar_type() == at::kLong &&
                    ops.key_lengths.dim() == 1 &&
                    ops.key_lengths.size(0) == batch &&
                    ops.key_lengths.is_contiguous(),
                "alibi logits kernel: key_lengths ", ops.key_lengths.sizes(),
                ", expected [", batch, "] int64 contiguous");
  }
  for (const at::Tensor* t :
       {&ops.key, &ops.out, &ops.neg_slopes, &ops.key_lengths}) {
    if (!t->defined()) continue;
    TORCH_CHECK(t->device() == ops.query.device(),
                "alibi logits kernel: operands on ", t->device(), " and ",
                ops.query.device());
  }
  alibi_tile::AlibiLogitsArgs a;
  a.query = ops.query.data_ptr<float>();
  CopyStrides(ops.query, a.query_strides);
  a.key = ops.key.data_ptr<float>();
  CopyStrides(ops.key, a.key_strides);
  a.neg_slopes = ops.neg_slopes.data_ptr<float>();
  a.key_lengths =
      ops.key_lengths.defined() ? ops.key_lengths.data_ptr<int64_t>() : nullptr;
  a.out = ops.out.data_ptr<float>();
  CopyStrides(ops.out, a.out_strides);
  a.batch = batch;
  a.heads = heads;
  a.rows = rows;
  a.key_len = key_len;
  a.head_dim = head_dim;
  a.first_position = ops.first_position;
  a.scale = static_cast<float>(ops.scale);
  a.causal = ops.causal;
  a.quad_loads =
      head_dim % 4 == 0 && QuadAligned(ops.query, 3) && QuadAligned(ops.key, 3);
  a.quad_stores = QuadAligned(ops.out, 3);
  return a;
}

}  // namespace attnscore::scoring
