// LibTorch >= 2.1: scaled_dot_product_attention with an explicit scale.
// cmake/AttnscoreTorch.cmake compiles this file instead of
// fused_attention_none.cc when the LibTorch has it.
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/scaled_dot_product_attention.h>

#include "server/scoring/fused_attention.h"

namespace attnscore::scoring {

bool FusedAttentionAvailable() { return true; }

const char* FusedAttentionDescription() {
  return "scaled_dot_product_attention (LibTorch " ATTNSCORE_TORCH_VERSION ")";
}

at::Tensor FusedAttention(const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& mask,
                          double scale) {
  // A float mask selects the kernels that take an additive bias (memory
  // efficient attention on CUDA, the fused CPU kernel or the math fallback).
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0,
                                          /*is_causal=*/false, scale);
}

}  // namespace attnscore::scoring
