#include "tests/testing/score_requests.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace attnscore::testing {
namespace {

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// IEEE binary16 bits of a float that binary16 represents exactly (normal
// numbers and zero; what the tests use).
uint16_t ToHalfBits(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t sign = (bits >> 16) & 0x8000U;
  const int32_t exponent = static_cast<int32_t>((bits >> 23) & 0xffU) - 127;
  if (value == 0.0f) return static_cast<uint16_t>(sign);
  const uint32_t mantissa = (bits >> 13) & 0x3ffU;
  return static_cast<uint16_t>(
      sign | (static_cast<uint32_t>(exponent + 15) << 10) | mantissa);
}

float FloatAt(const v1::Tensor& t, int64_t index) {
  float value = 0;
  std::memcpy(&value, t.data().data() + index * 4, sizeof(value));
  return value;
}

v1::ScoreRequest AlibiRequest(const std::string& id,
                              const std::vector<int64_t>& q_shape,
                              const std::vector<int64_t>& k_shape) {
  v1::ScoreRequest request;
  request.set_request_id(id);
  request.mutable_alibi();
  *request.mutable_query() = RampTensor32(q_shape, 1);
  *request.mutable_key() = RampTensor32(k_shape, 2);
  return request;
}

}  // namespace

std::vector<float> RampValues(size_t n, float scale) {
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) {
    values[i] = scale * static_cast<float>((i * 7919) % 1000) / 1000;
  }
  return values;
}

v1::Tensor RampTensor32(const std::vector<int64_t>& shape, float scale) {
  const std::vector<float> values =
      RampValues(static_cast<size_t>(Product(shape)), scale);
  v1::Tensor tensor;
  tensor.set_dtype(v1::FLOAT32);
  tensor.mutable_shape()->Add(shape.begin(), shape.end());
  tensor.set_data(values.data(), values.size() * sizeof(float));
  return tensor;
}

v1::Tensor ConstantTensor16(const std::vector<int64_t>& shape, float value) {
  const uint16_t bits = ToHalfBits(value);
  std::string data(static_cast<size_t>(Product(shape)) * 2, '\0');
  for (size_t i = 0; i < data.size(); i += 2) {
    std::memcpy(data.data() + i, &bits, sizeof(bits));
  }
  v1::Tensor tensor;
  tensor.set_dtype(v1::FLOAT16);
  tensor.mutable_shape()->Add(shape.begin(), shape.end());
  tensor.set_data(std::move(data));
  return tensor;
}

v1::ScoreRequest SmallAlibiRequest(const std::string& id) {
  v1::ScoreRequest request = AlibiRequest(id, {1, 2, 3, 8}, {1, 2, 4, 8});
  *request.mutable_value() = RampTensor32({1, 2, 4, 8}, 3);
  return request;
}

v1::ScoreRequest SmallRelativeRequest(const std::string& id,
                                      const std::string& model) {
  v1::ScoreRequest request = AlibiRequest(id, {1, 2, 3, 8}, {1, 2, 4, 8});
  request.mutable_relative()->set_model(model);
  return request;
}

v1::ScoreRequest QueryOfDeathRequest(int64_t len) {
  const std::vector<int64_t> shape = {1, 2, len, 1};
  v1::ScoreRequest request;
  request.set_request_id("query-of-death");
  request.mutable_alibi()->add_slopes(kQodSlopes[0]);
  request.mutable_alibi()->add_slopes(kQodSlopes[1]);
  *request.mutable_query() = RampTensor32(shape, 1);
  *request.mutable_key() = RampTensor32(shape, 0.5f);
  *request.mutable_value() = RampTensor32(shape, 2);
  request.set_causal(true);
  request.add_outputs(v1::CONTEXT);
  return request;
}

double QueryOfDeathContext(const v1::ScoreRequest& request, int64_t head,
                           int64_t row) {
  const int64_t len = request.query().shape(2);
  const double slope = kQodSlopes[head];
  const double q = FloatAt(request.query(), head * len + row);
  double top = -std::numeric_limits<double>::infinity();
  std::vector<double> logits(static_cast<size_t>(row) + 1);
  for (int64_t j = 0; j <= row; ++j) {
    logits[j] = q * FloatAt(request.key(), head * len + j) -
                slope * static_cast<double>(row - j);
    top = std::max(top, logits[j]);
  }
  double sum = 0, weighted = 0;
  for (int64_t j = 0; j <= row; ++j) {
    const double p = std::exp(logits[j] - top);
    sum += p;
    weighted += p * FloatAt(request.value(), head * len + j);
  }
  return weighted / sum;
}

v1::ScoreRequest HugeBatchRequest(int64_t batch) {
  const std::vector<int64_t> shape = {batch, 1, 1, 1};
  v1::ScoreRequest request;
  request.set_request_id("huge-batch");
  request.mutable_alibi();
  *request.mutable_query() = ConstantTensor16(shape, 1.0f);
  *request.mutable_key() = ConstantTensor16(shape, 0.5f);
  return request;
}

v1::ScoreRequest ContextOnlyRequest(const std::string& id, int64_t heads,
                                    int64_t len, int64_t dim) {
  const std::vector<int64_t> shape = {1, heads, len, dim};
  v1::ScoreRequest request = AlibiRequest(id, shape, shape);
  *request.mutable_value() = RampTensor32(shape, 3);
  request.add_outputs(v1::CONTEXT);
  return request;
}

v1::ScoreRequest LargeReplyRequest(const std::string& id) {
  const std::vector<int64_t> shape = {1, 16, 512, 1};
  return AlibiRequest(id, shape, shape);
}

}  // namespace attnscore::testing
