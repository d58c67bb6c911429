#include "tests/client/golden_support.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"

namespace attnscore::testing {

// The golden tolerance of the foundation issue: float32 cases to 1e-4 absolute
// + 1e-4 relative.
constexpr double kAtol = 1e-4;
constexpr double kRtol = 1e-4;

std::string CaseStem(const GoldenCase& golden) {
  return std::string(absl::StripSuffix(golden.name, ".safetensors"));
}

client::TensorView GoldenView(const GoldenCase& golden,
                              const std::string& name) {
  const SafetensorsFile::Tensor* t = golden.file.Find(name);
  EXPECT_NE(t, nullptr) << golden.name << ": no tensor " << name;
  if (t == nullptr) return {};
  EXPECT_EQ(t->dtype, "F32") << golden.name << ": " << name;
  return client::TensorView{DType::kFloat32, t->shape, t->bytes.data(),
                            t->bytes.size()};
}

client::ScoreRequest GoldenRequest(const GoldenCase& golden) {
  client::ScoreRequest request;
  request.request_id = CaseStem(golden);
  if (golden.relative()) {
    request.bias = client::Relative{CaseStem(golden)};
  } else {
    client::Alibi alibi;
    if (golden.has("slopes")) alibi.slopes = golden.Floats("slopes");
    request.bias = alibi;
  }
  request.query = GoldenView(golden, "q");
  request.key = GoldenView(golden, "k");
  if (golden.has("v")) request.value = GoldenView(golden, "v");
  request.causal = golden.causal();
  request.scale = golden.scale();
  request.key_lengths = golden.key_lengths();
  request.outputs.logits = golden.has("expected_logits");
  request.outputs.probs = golden.has("expected_probs");
  request.outputs.context = golden.has("expected_context") && golden.has("v");
  return request;
}

absl::Status WriteGoldenModels(const std::vector<GoldenCase>& cases,
                               const std::string& dir) {
  for (const GoldenCase& golden : cases) {
    if (!golden.relative()) continue;
    SafetensorsWriter writer;
    for (const char* name :
         {"key_pos_embeddings", "key_pos_bias", "query_pos_bias"}) {
      absl::StatusOr<const SafetensorsFile::Tensor*> t = golden.file.Get(name);
      if (!t.ok()) return t.status();
      if (absl::Status s =
              writer.Add(name, (*t)->dtype, (*t)->shape, (*t)->bytes);
          !s.ok()) {
        return s;
      }
    }
    writer.SetMetadata("source", absl::StrCat("golden case ", golden.name));
    if (absl::Status s = writer.Write(
            absl::StrCat(dir, "/", CaseStem(golden), ".safetensors"));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

std::string CompareWithGolden(const GoldenCase& golden,
                              const client::ScoreResult& result) {
  std::string out;
  const std::pair<const char*, const std::optional<client::Tensor>*> outputs[] =
      {{"logits", &result.logits},
       {"probs", &result.probs},
       {"context", &result.context}};
  for (const auto& [name, tensor] : outputs) {
    const std::string expected_name = absl::StrCat("expected_", name);
    if (!golden.has(expected_name)) continue;
    if (std::string(name) == "context" && !golden.has("v")) continue;
    if (!tensor->has_value()) {
      absl::StrAppend(&out, golden.name, ": no ", name, " in the response; ");
      continue;
    }
    if ((*tensor)->shape() != golden.Shape(expected_name)) {
      absl::StrAppend(&out, golden.name, ": ", name, " shape ",
                      client::ShapeString((*tensor)->shape()), ", expected ",
                      client::ShapeString(golden.Shape(expected_name)), "; ");
      continue;
    }
    const std::string diff = CompareClose(
        (*tensor)->ToFloats(), golden.Floats(expected_name), kAtol, kRtol);
    if (!diff.empty()) {
      absl::StrAppend(&out, golden.name, ": ", name, ": ", diff, "; ");
    }
  }
  return out;
}

}  // namespace attnscore::testing
