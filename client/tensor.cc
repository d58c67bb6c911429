#include "client/tensor.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnscore::client {
namespace {

// Bytes for `shape` of `dtype`, or an error naming both.
absl::StatusOr<size_t> ByteSize(DType dtype, absl::Span<const int64_t> shape) {
  const int64_t n = NumElements(shape);
  if (n < 0 ||
      static_cast<uint64_t>(n) > std::numeric_limits<size_t>::max() / 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor shape ", ShapeString(shape), " is negative or too large"));
  }
  return static_cast<size_t>(n) * ElementSize(dtype);
}

}  // namespace

int64_t NumElements(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return -1;
    if (dim != 0 && n > std::numeric_limits<int64_t>::max() / dim) return -1;
    n *= dim;
  }
  return n;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status TensorView::Validate() const {
  absl::StatusOr<size_t> expected = ByteSize(dtype, shape);
  if (!expected.ok()) return expected.status();
  if (*expected != size_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", ShapeString(shape), " of ", DTypeName(dtype),
                     " needs ", *expected, " bytes, has ", size_bytes));
  }
  if (size_bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", ShapeString(shape), ": ", size_bytes, " bytes but no data"));
  }
  return absl::OkStatus();
}

std::vector<float> TensorView::ToFloats() const {
  const size_t count = size_bytes / ElementSize(dtype);
  std::vector<float> out(count);
  if (count > 0) DecodeFloats(data, count, dtype, out.data());
  return out;
}

absl::StatusOr<Tensor> Tensor::Allocate(DType dtype,
                                        std::vector<int64_t> shape) {
  absl::StatusOr<size_t> size = ByteSize(dtype, shape);
  if (!size.ok()) return size.status();
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.size_bytes_ = *size;
  // Default-initialised: the caller overwrites every byte, so zeroing would be
  // a wasted pass.
  t.data_.reset(new uint8_t[*size > 0 ? *size : 1]);
  return t;
}

absl::StatusOr<Tensor> Tensor::FromFloats(DType dtype,
                                          std::vector<int64_t> shape,
                                          absl::Span<const float> values) {
  absl::StatusOr<Tensor> t = Allocate(dtype, std::move(shape));
  if (!t.ok()) return t.status();
  if (static_cast<int64_t>(values.size()) != t->num_elements()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", ShapeString(t->shape()), " needs ",
                     t->num_elements(), " values, got ", values.size()));
  }
  if (!values.empty()) {
    EncodeFloats(values.data(), values.size(), dtype, t->mutable_data());
  }
  return t;
}

void TensorBytesDeleter::operator()(uint8_t* bytes) const {
  if (pool_ != nullptr) {
    pool_->Release(bytes, capacity_);
  } else {
    delete[] bytes;
  }
}

absl::StatusOr<Tensor> Tensor::Adopt(DType dtype, std::vector<int64_t> shape,
                                     std::unique_ptr<uint8_t[]> data,
                                     size_t size_bytes) {
  return Adopt(dtype, std::move(shape), TensorBytes(data.release()),
               size_bytes);
}

absl::StatusOr<Tensor> Tensor::Adopt(DType dtype, std::vector<int64_t> shape,
                                     TensorBytes data, size_t size_bytes) {
  TensorView view{dtype, shape, data.get(), size_bytes};
  if (absl::Status s = view.Validate(); !s.ok()) return s;
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.size_bytes_ = size_bytes;
  t.data_ = data != nullptr ? std::move(data) : TensorBytes(new uint8_t[1]);
  return t;
}

absl::StatusOr<Tensor> Tensor::FromBytes(DType dtype,
                                         std::vector<int64_t> shape,
                                         const void* bytes, size_t size_bytes) {
  TensorView view{dtype, shape, bytes, size_bytes};
  if (absl::Status s = view.Validate(); !s.ok()) return s;
  absl::StatusOr<Tensor> t = Allocate(dtype, std::move(shape));
  if (!t.ok()) return t.status();
  if (size_bytes > 0) std::memcpy(t->mutable_data(), bytes, size_bytes);
  return t;
}

Tensor::Tensor(const Tensor& other)
    : dtype_(other.dtype_),
      shape_(other.shape_),
      size_bytes_(other.size_bytes_) {
  if (other.data_ != nullptr) {
    data_.reset(new uint8_t[size_bytes_ > 0 ? size_bytes_ : 1]);
    if (size_bytes_ > 0) {
      std::memcpy(data_.get(), other.data_.get(), size_bytes_);
    }
  }
}

Tensor& Tensor::operator=(const Tensor& other) {
  if (this != &other) *this = Tensor(other);
  return *this;
}

Tensor Tensor::ConvertTo(DType dtype) const {
  if (dtype == dtype_) return *this;
  const std::vector<float> values = ToFloats();
  // Same shape, so neither Allocate nor the size check can fail.
  return *FromFloats(dtype, shape_, values);
}

TensorBytes Tensor::ReleaseData() && {
  shape_.clear();
  size_bytes_ = 0;
  return std::move(data_);
}

}  // namespace attnscore::client
