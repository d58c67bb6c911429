// client/torch_adapter.h: at::Tensor <-> client tensors, including a round trip
// through a real server (the adapter is header-only; only this test links
// LibTorch).
#include "client/torch_adapter.h"

#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>

#include <algorithm>
#include <memory>

#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/testing/server_handle.h"

namespace attnscore::client {
namespace {

TEST(TorchAdapterTest, ViewsAndAdoptsWithoutCopies) {
  at::Tensor t = at::arange(24, at::kFloat).reshape({2, 3, 4});
  absl::StatusOr<TensorView> view = ViewOf(t);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->data, t.data_ptr());
  EXPECT_EQ(view->shape, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_TRUE(view->Validate().ok());

  EXPECT_FALSE(ViewOf(t.transpose(0, 1)).ok());  // not contiguous
  EXPECT_FALSE(ViewOf(t.to(at::kDouble)).ok());  // no float64 on the wire
  EXPECT_TRUE(ViewOf(t.to(at::kBFloat16)).ok());

  Tensor owned = *Tensor::FromFloats(DType::kFloat16, {2, 2},
                                     std::vector<float>{1, 2, 3, 4});
  const void* bytes = owned.data();
  at::Tensor adopted = ToAtTensor(std::move(owned));
  EXPECT_EQ(adopted.data_ptr(), bytes);
  EXPECT_EQ(adopted.scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(adopted.to(at::kFloat),
                        at::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2})));
}

TEST(TorchAdapterTest, PooledBytesGoBackToTheirPoolWithTheAtTensor) {
  auto pool = std::make_shared<BufferPool>(size_t{4} << 20);
  const size_t size = size_t{1} << 20;
  size_t capacity = 0;
  auto* block = static_cast<uint8_t*>(pool->Acquire(size, &capacity));
  std::fill(block, block + size, uint8_t{0});
  Tensor owned = *Tensor::Adopt(DType::kFloat32, {256, 1024},
                                TensorBytes(block, {pool, capacity}), size);
  {
    const at::Tensor adopted = ToAtTensor(std::move(owned));
    EXPECT_EQ(adopted.data_ptr(), block);
    EXPECT_EQ(adopted.sum().item<float>(), 0.0f);
    EXPECT_EQ(pool->stats().cached_blocks, 0u);
  }
  EXPECT_EQ(pool->stats().cached_blocks, 1u);
  EXPECT_EQ(pool->stats().cached_bytes, capacity);
}

TEST(TorchAdapterTest, ScoresAtTensorsOnAServer) {
  absl::StatusOr<std::unique_ptr<testing::ServerHandle>> server =
      testing::ServerHandle::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.target = (*server)->target();
  std::unique_ptr<Client> client = *Client::Create(options);
  at::Tensor q = at::randn({1, 2, 5, 8});
  at::Tensor k = at::randn({1, 2, 5, 8});
  ScoreRequest request;
  request.query = *ViewOf(q);
  request.key = *ViewOf(k);
  request.outputs = Outputs{false, true, false};
  absl::StatusOr<ScoreResult> result = client->Score(request);
  ASSERT_TRUE(result.ok()) << result.status();
  at::Tensor probs = ToAtTensor(*std::move(result->probs));
  EXPECT_EQ(probs.sizes(), (std::vector<int64_t>{1, 2, 5, 5}));
  EXPECT_TRUE(at::allclose(probs.sum(-1), at::ones({1, 2, 5}), 1e-5, 1e-5));
}

}  // namespace
}  // namespace attnscore::client
