// Test support for the service tests: ScoreRequest builders and ScoreResponse
// readers for float32 BHSD tensors, and the parser's result as a message. No
// LibTorch.
#ifndef ATTNSCORE_TESTS_SERVICE_TEST_REQUESTS_H_
#define ATTNSCORE_TESTS_SERVICE_TEST_REQUESTS_H_

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/message_lite.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attnscore/v1/attnscore.pb.h"
#include "server/service/score_request_parser.h"

namespace attnscore::service::testing {

inline int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// A FLOAT32 tensor whose element i is `first + i * step`.
inline v1::Tensor Float32Tensor(const std::vector<int64_t>& shape,
                                float first = 0, float step = 0.01f) {
  v1::Tensor tensor;
  tensor.set_dtype(v1::FLOAT32);
  tensor.mutable_shape()->Add(shape.begin(), shape.end());
  std::vector<float> values(static_cast<size_t>(NumElements(shape)));
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = first + static_cast<float>(i) * step;
  }
  tensor.set_data(values.data(), values.size() * sizeof(float));
  return tensor;
}

inline std::vector<float> Floats(const v1::Tensor& tensor) {
  std::vector<float> out(tensor.data().size() / sizeof(float));
  std::memcpy(out.data(), tensor.data().data(), out.size() * sizeof(float));
  return out;
}

inline void SetFloat(v1::Tensor& tensor, size_t index, float value) {
  std::memcpy(tensor.mutable_data()->data() + index * sizeof(float), &value,
              sizeof(float));
}

// ALiBi, BHSD, float32: q [B,H,Lq,D], k and v [B,H,Lk,D]; q's first element is
// `tag`, so fake scorers and tests can tell requests apart.
inline v1::ScoreRequest AlibiRequest(int64_t batch = 1, int64_t heads = 2,
                                     int64_t lq = 3, int64_t lk = 4,
                                     int64_t dim = 8, float tag = 0) {
  v1::ScoreRequest request;
  request.mutable_alibi();
  *request.mutable_query() = Float32Tensor({batch, heads, lq, dim}, tag);
  *request.mutable_key() = Float32Tensor({batch, heads, lk, dim}, 0.5f);
  *request.mutable_value() = Float32Tensor({batch, heads, lk, dim}, -0.5f);
  return request;
}

// `bytes` as gRPC could hand it over: cut at `cuts` (ascending offsets).
inline grpc::ByteBuffer Sliced(const std::string& bytes,
                               const std::vector<size_t>& cuts) {
  std::vector<grpc::Slice> slices;
  size_t begin = 0;
  for (size_t cut : cuts) {
    slices.emplace_back(bytes.data() + begin, cut - begin);
    begin = cut;
  }
  slices.emplace_back(bytes.data() + begin, bytes.size() - begin);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// `pieces` slices at random offsets (some mid-element).
inline grpc::ByteBuffer RandomlySliced(const std::string& bytes, int pieces,
                                       std::mt19937& rng) {
  std::vector<size_t> cuts;
  std::uniform_int_distribution<size_t> at(0, bytes.size());
  for (int i = 1; i < pieces; ++i) cuts.push_back(at(rng));
  std::sort(cuts.begin(), cuts.end());
  return Sliced(bytes, cuts);
}

// The message's bytes with map entries in key order: two equal messages give
// the same bytes (a map's iteration order differs between instances).
inline std::string CanonicalBytes(
    const google::protobuf::MessageLite& message) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&coded);
  coded.Trim();
  return out;
}

// A parsed request (score_request_parser.h) with each tensor's bytes put back
// into its `data`: what protobuf's own parse makes of the same bytes.
inline v1::ScoreRequest Reassembled(const ParsedScoreRequest& parsed) {
  v1::ScoreRequest message = parsed.message;
  const auto put = [](const ParsedTensorBytes& bytes, v1::Tensor* tensor) {
    if (bytes.block != nullptr) tensor->set_data(bytes.block.get(), bytes.size);
  };
  if (message.has_query()) put(parsed.query, message.mutable_query());
  if (message.has_key()) put(parsed.key, message.mutable_key());
  if (message.has_value()) put(parsed.value, message.mutable_value());
  return message;
}

}  // namespace attnscore::service::testing

#endif  // ATTNSCORE_TESTS_SERVICE_TEST_REQUESTS_H_
