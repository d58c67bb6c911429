// Scores one causal ALiBi request against an attnscore server and prints the
// probabilities of the last query: `score_example [host:port]`. Exit 0 on
// success, 1 on any error.
#include <attnscore/client/client.h>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  namespace ac = attnscore::client;
  ac::ClientOptions options;
  if (argc > 1) options.target = argv[1];
  absl::StatusOr<std::unique_ptr<ac::Client>> client =
      ac::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }

  // One batch item, two heads, four positions, head dim 8.
  const std::vector<int64_t> shape = {1, 2, 4, 8};
  std::vector<float> q(64), k(64);
  for (int i = 0; i < 64; ++i) {
    q[i] = 0.01f * static_cast<float>(i % 13);
    k[i] = 0.02f * static_cast<float>(i % 7);
  }
  absl::StatusOr<ac::Tensor> query =
      ac::Tensor::FromFloats(ac::DType::kFloat32, shape, q);
  absl::StatusOr<ac::Tensor> key =
      ac::Tensor::FromFloats(ac::DType::kFloat32, shape, k);
  if (!query.ok() || !key.ok()) return 1;

  ac::ScoreRequest request;
  request.query = query->view();
  request.key = key->view();
  request.causal = true;
  request.outputs = {/*logits=*/false, /*probs=*/true, /*context=*/false};
  absl::StatusOr<ac::ScoreResult> result = (*client)->Score(request);
  if (!result.ok()) {
    std::fprintf(stderr, "Score: %s\n", result.status().ToString().c_str());
    return 1;
  }
  const std::vector<float> probs = result->probs->ToFloats();
  // Head 0, last query row: four probabilities summing to 1.
  std::printf("probs[0, 0, 3, :] = %.4f %.4f %.4f %.4f\n", probs[12], probs[13],
              probs[14], probs[15]);
  return 0;
}
