#include "tests/e2e/e2e_util.h"

#include <chrono>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"

namespace attnscore::e2e {
namespace {

constexpr auto kRpcTimeout = std::chrono::seconds(20);

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Rows `items` (in order) of a tensor whose first axis is the batch.
std::vector<float> SelectItems(const std::vector<float>& values,
                               const std::vector<int64_t>& shape,
                               const std::vector<int>& items) {
  const int64_t row = Product(shape) / shape[0];
  std::vector<float> out;
  out.reserve(static_cast<size_t>(row) * items.size());
  for (int b : items) {
    out.insert(out.end(), values.begin() + b * row,
               values.begin() + (b + 1) * row);
  }
  return out;
}

std::vector<int64_t> WithBatch(std::vector<int64_t> shape, size_t batch) {
  shape[0] = static_cast<int64_t>(batch);
  return shape;
}

std::string CompareOutput(const std::string& name, const v1::Tensor& actual,
                          const std::vector<float>& expected,
                          const std::vector<int64_t>& expected_shape) {
  if (actual.dtype() != v1::FLOAT32) {
    return absl::StrCat(name, ": dtype ", actual.dtype());
  }
  if (std::vector<int64_t>(actual.shape().begin(), actual.shape().end()) !=
      expected_shape) {
    return absl::StrCat(name, ": wrong shape");
  }
  const std::string diff =
      testing::CompareClose(ToFloats(actual), expected, kAtol, kRtol);
  return diff.empty() ? "" : absl::StrCat(name, ": ", diff);
}

}  // namespace

testing::ServerOptions E2eServerOptions(std::vector<std::string> args) {
  testing::ServerOptions options;
  options.metrics = true;
  options.wait_ready = false;
  options.threads = 2;
  options.log_level = "info";
  options.extra_args = std::move(args);
  // ServerProcess strips ATTNSCORE_* from the child's environment: the test
  // device (scripts/device-check.sh sets it to cuda) travels as a flag.
  const std::string device = testing::TestDevice();
  if (device != "cpu") options.extra_args.push_back("--device=" + device);
  return options;
}

v1::Tensor Float32Tensor(const std::vector<float>& values,
                         const std::vector<int64_t>& shape) {
  v1::Tensor tensor;
  tensor.set_dtype(v1::FLOAT32);
  tensor.mutable_shape()->Add(shape.begin(), shape.end());
  tensor.set_data(values.data(), values.size() * sizeof(float));
  return tensor;
}

std::vector<float> ToFloats(const v1::Tensor& tensor) {
  EXPECT_EQ(tensor.dtype(), v1::FLOAT32);
  std::vector<float> out(tensor.data().size() / sizeof(float));
  std::memcpy(out.data(), tensor.data().data(), out.size() * sizeof(float));
  return out;
}

std::string ModelName(const testing::GoldenCase& c) {
  return std::filesystem::path(c.name).stem().string();
}

absl::Status WriteRelativeModels(const std::vector<testing::GoldenCase>& cases,
                                 const std::string& dir) {
  for (const testing::GoldenCase& c : cases) {
    if (!c.relative()) continue;
    SafetensorsWriter writer;
    for (const char* name :
         {"key_pos_embeddings", "key_pos_bias", "query_pos_bias"}) {
      const SafetensorsFile::Tensor* t = c.file.Find(name);
      if (t == nullptr) {
        return absl::NotFoundError(absl::StrCat(c.name, ": no ", name));
      }
      if (absl::Status s = writer.Add(name, t->dtype, t->shape, t->bytes);
          !s.ok()) {
        return s;
      }
    }
    if (absl::Status s =
            writer.Write(absl::StrCat(dir, "/", ModelName(c), ".safetensors"));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

v1::ScoreRequest GoldenRequest(const testing::GoldenCase& c) {
  std::vector<int> all(static_cast<size_t>(c.Int("batch")));
  for (size_t b = 0; b < all.size(); ++b) all[b] = static_cast<int>(b);
  return GoldenRequestForItems(c, all);
}

v1::ScoreRequest GoldenRequestForItems(const testing::GoldenCase& c,
                                       const std::vector<int>& items) {
  v1::ScoreRequest request;
  request.set_request_id(c.name);
  auto input = [&](const char* name) {
    const std::vector<int64_t> shape = c.Shape(name);
    return Float32Tensor(SelectItems(c.Floats(name), shape, items),
                         WithBatch(shape, items.size()));
  };
  *request.mutable_query() = input("q");
  *request.mutable_key() = input("k");
  request.set_layout(v1::BHSD);
  request.set_causal(c.causal());
  if (c.scale().has_value()) request.set_scale(*c.scale());
  const std::vector<int32_t> lengths = c.key_lengths();
  for (int b : items) {
    if (!lengths.empty()) request.add_key_lengths(lengths[b]);
  }
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  if (c.has("v")) {
    *request.mutable_value() = input("v");
    request.add_outputs(v1::CONTEXT);
  }
  if (c.relative()) {
    request.mutable_relative()->set_model(ModelName(c));
  } else {
    v1::AlibiParams* alibi = request.mutable_alibi();
    if (c.has("slopes")) {
      for (float s : c.Floats("slopes")) alibi->add_slopes(s);
    }
  }
  return request;
}

std::string CompareGolden(const testing::GoldenCase& c,
                          const v1::ScoreResponse& response) {
  std::vector<int> all(static_cast<size_t>(c.Int("batch")));
  for (size_t b = 0; b < all.size(); ++b) all[b] = static_cast<int>(b);
  return CompareGoldenItems(c, all, response);
}

std::string CompareGoldenItems(const testing::GoldenCase& c,
                               const std::vector<int>& items,
                               const v1::ScoreResponse& response) {
  if (response.has_error()) {
    return absl::StrCat(c.name, ": error ", response.error().code(), " ",
                        response.error().message());
  }
  std::string out;
  auto check = [&](const char* name, const v1::Tensor& actual,
                   const char* expected_name) {
    const std::vector<int64_t> shape = c.Shape(expected_name);
    const std::string diff = CompareOutput(
        name, actual, SelectItems(c.Floats(expected_name), shape, items),
        WithBatch(shape, items.size()));
    if (!diff.empty()) absl::StrAppend(&out, c.name, " ", diff, "\n");
  };
  check("logits", response.logits(), "expected_logits");
  check("probs", response.probs(), "expected_probs");
  if (c.has("v")) check("context", response.context(), "expected_context");
  return out;
}

absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  auto stream = stub->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  if (!stream->Write(request)) {
    return absl::UnavailableError("reflection: write failed");
  }
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  std::vector<std::string> names;
  while (stream->Read(&response)) {
    for (const auto& service : response.list_services_response().service()) {
      names.push_back(service.name());
    }
  }
  grpc::Status status = stream->Finish();
  if (!status.ok()) return absl::UnavailableError(status.error_message());
  return names;
}

}  // namespace attnscore::e2e
