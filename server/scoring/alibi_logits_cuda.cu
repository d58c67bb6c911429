// The fused ALiBi logits kernel (alibi_logits_tile.h has its steps and
// layout), compiled by nvcc only when the LibTorch has CUDA
// (server/scoring/CMakeLists.txt). No ATen here: alibi_logits_cuda.cc checks
// the tensors and fills the arguments.
#include <cuda_runtime_api.h>

#include <climits>
#include <cstdint>

#include "server/scoring/alibi_logits_tile.h"

namespace attnscore::scoring {
namespace {

using alibi_tile::AlibiLogitsArgs;
using alibi_tile::kChunk;
using alibi_tile::kPerThread;
using alibi_tile::kStride;
using alibi_tile::kThreads;

// One tile per block and iteration; the grid strides over the tiles when
// there are more than a grid holds. The barriers order each chunk's staging
// before its products, and the products before the next staging; a hidden
// tile takes neither, for every thread of its block alike.
__global__ void __launch_bounds__(kThreads)
    AlibiLogitsKernel(const AlibiLogitsArgs args, const int64_t tiles) {
  __shared__ __align__(16) float qs[kChunk][kStride];
  __shared__ __align__(16) float ks[kChunk][kStride];
  const int thread = static_cast<int>(threadIdx.x);
  for (int64_t index = blockIdx.x; index < tiles; index += gridDim.x) {
    const alibi_tile::TileCoord tile = alibi_tile::TileOf(args, index);
    float acc[kPerThread][kPerThread] = {};
    if (!alibi_tile::TileHidden(args, tile)) {
      for (int64_t d0 = 0; d0 < args.head_dim; d0 += kChunk) {
        alibi_tile::LoadChunk(args, tile, thread, d0, qs, ks);
        __syncthreads();
        alibi_tile::MultiplyChunk(thread, qs, ks, acc);
        __syncthreads();
      }
    }
    alibi_tile::WriteTile(args, tile, thread, acc);
  }
}

}  // namespace

// Declared in alibi_logits.cc's CUDA half (alibi_logits_cuda.cc).
cudaError_t LaunchAlibiLogits(const AlibiLogitsArgs& args,
                              cudaStream_t stream) {
  const int64_t tiles = alibi_tile::TileCount(args);
  if (tiles == 0) return cudaSuccess;
  const auto blocks =
      static_cast<unsigned int>(tiles < INT_MAX ? tiles : INT_MAX);
  AlibiLogitsKernel<<<blocks, kThreads, 0, stream>>>(args, tiles);
  return cudaGetLastError();
}

}  // namespace attnscore::scoring
