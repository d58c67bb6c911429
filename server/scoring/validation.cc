#include "server/scoring/validation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "common/layout.h"
#include "common/overloaded.h"
#include "server/scoring/target_clones.h"

namespace attnscore::scoring {
namespace {

// More elements than any request could carry: refused before the byte count
// is multiplied out.
constexpr uint64_t kMaxElements = uint64_t{1} << 40;

// Rank 4, positive dims, and exactly as many bytes as shape and dtype say.
absl::Status CheckTensor(const char* field, const TensorRef& t, Layout layout) {
  if (t.shape.size() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".shape: expected 4 dims ", LayoutAxes(layout), " for layout ",
        LayoutName(layout), ", got ", ShapeString(t.shape)));
  }
  uint64_t count = 1;
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (t.shape[i] <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape[", i, "]: expected > 0, got ", t.shape[i]));
    }
    count *= static_cast<uint64_t>(t.shape[i]);
    if (count > kMaxElements) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape: ", ShapeString(t.shape), " is implausibly large"));
    }
  }
  const uint64_t expected = count * ElementSize(t.dtype);
  if (t.size_bytes != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".", t.bytes_field, ": expected ", expected, " bytes for ",
        DTypeName(t.dtype), " ", ShapeString(t.shape), ", got ", t.size_bytes));
  }
  return absl::OkStatus();
}

// What ScanWords finds in `count` words: the index of the first whose
// exponent bits are all ones (NaN or Inf), or `count`, and the largest
// sign-cleared bit pattern before it (which orders like the magnitudes).
struct WordScan {
  size_t first_non_finite = 0;
  uint32_t max_bits = 0;
};

// Scans blocks without an early exit so the compiler vectorises the common
// all-finite case; only a block that has a NaN or Inf is searched
// element-wise. Loads go through memcpy: request bytes need not be aligned.
template <typename Word>
inline __attribute__((always_inline)) WordScan ScanWords(const void* data,
                                                         size_t count,
                                                         Word exponent_mask,
                                                         Word abs_mask) {
  constexpr size_t kBlock = 2048;
  const auto* bytes = static_cast<const unsigned char*>(data);
  auto load = [bytes](size_t i) {
    Word w;
    std::memcpy(&w, bytes + i * sizeof(Word), sizeof(Word));
    return w;
  };
  Word max_bits = 0;
  for (size_t begin = 0; begin < count; begin += kBlock) {
    const size_t end = std::min(count, begin + kBlock);
    // Locals of the word type (no bool, no address taken) vectorise.
    Word block_max = 0;
    Word non_finite = 0;
    for (size_t i = begin; i < end; ++i) {
      const Word w = load(i);
      non_finite |= static_cast<Word>((w & exponent_mask) == exponent_mask);
      block_max = std::max<Word>(block_max, w & abs_mask);
    }
    if (non_finite == 0) {
      max_bits = std::max(max_bits, block_max);
      continue;
    }
    for (size_t i = begin; i < end; ++i) {
      if ((load(i) & exponent_mask) == exponent_mask) return {i, max_bits};
    }
  }
  return {count, max_bits};
}

// The scans at the CPU's vector width (target_clones.h): the baseline's SSE2
// has no unsigned 32-bit max, so its copy runs element by element. Every
// request's inputs pass through here on a gRPC thread.
ATTNSCORE_TARGET_CLONES WordScan ScanWords32(const void* data, size_t count,
                                             uint32_t exponent_mask,
                                             uint32_t abs_mask) {
  return ScanWords<uint32_t>(data, count, exponent_mask, abs_mask);
}
ATTNSCORE_TARGET_CLONES WordScan ScanWords16(const void* data, size_t count,
                                             uint16_t exponent_mask,
                                             uint16_t abs_mask) {
  return ScanWords<uint16_t>(data, count, exponent_mask, abs_mask);
}

// Finds the first NaN or Inf by its exponent bits, without converting, and
// the largest magnitude in the same pass; or takes the parser's `known` scan
// of these bytes.
absl::Status CheckFinite(const char* field, const TensorRef& t,
                         const std::optional<FiniteScan>& known,
                         float* max_abs) {
  FiniteScan scan;
  if (known.has_value()) {
    scan = *known;
  } else {
    FiniteScanner scanner(t.dtype);
    scanner.Consume(t.data, t.size_bytes);
    scan = scanner.Finish();
  }
  if (max_abs != nullptr) *max_abs = scan.max_abs;
  if (scan.first_non_finite == FiniteScan::kAllFinite) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, ".data: expected finite values, got ",
                   "NaN or Inf at flat index ", scan.first_non_finite));
}

// The largest finite value of the logits' dtype: the output's when logits are
// returned, else float32 (the compute dtype: an infinite intermediate logit
// would turn the softmax into NaN).
double LogitLimit(const ScoreSpec& spec) {
  if (!spec.want_logits) return std::numeric_limits<float>::max();
  switch (spec.output_dtype) {
    case DType::kFloat16:
      return 65504.0;
    case DType::kBFloat16:
      return 3.3895313892515355e38;
    case DType::kFloat32:
      break;
  }
  return std::numeric_limits<float>::max();
}

// |logit| <= scale * D * max|q| * max|k| + max|slope| * (Lq + Lk) (ALiBi); a
// finite scale or slope that lets the bound pass the logits' dtype would give
// Inf or NaN outputs, so it is refused naming the field. The relative model's
// own terms are not bounded here (its parameters are checked when loaded).
absl::Status CheckOverflow(const ScoreSpec& spec, const Dims& q, const Dims& k,
                           float max_q, float max_k) {
  const double limit = LogitLimit(spec);
  const char* dtype_name = "float32";
  if (spec.want_logits && spec.output_dtype == DType::kFloat16) {
    dtype_name = "float16";
  } else if (spec.want_logits && spec.output_dtype == DType::kBFloat16) {
    dtype_name = "bfloat16";
  }
  const double scale = spec.scale.has_value()
                           ? *spec.scale
                           : 1.0 / std::sqrt(static_cast<double>(q.dim));
  const double content = scale * static_cast<double>(q.dim) * max_q * max_k;
  if (content > limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        spec.scale.has_value() ? "scale" : "query.data",
        ": logits could reach scale * D * max|q| * max|k| = ", scale, " * ",
        q.dim, " * ", max_q, " * ", max_k, " = ", content, ", over the ",
        dtype_name, " bound ", limit));
  }
  const auto* alibi = std::get_if<AlibiBias>(&spec.bias);
  if (alibi == nullptr || alibi->slopes.empty()) return absl::OkStatus();
  size_t worst = 0;
  for (size_t h = 1; h < alibi->slopes.size(); ++h) {
    if (std::fabs(alibi->slopes[h]) > std::fabs(alibi->slopes[worst])) {
      worst = h;
    }
  }
  const double slope = std::fabs(alibi->slopes[worst]);
  const double bias = slope * static_cast<double>(q.seq + k.seq);
  if (content + bias > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("alibi.slopes[", worst, "]: logits could reach ", content,
                     " + |slope| * (Lq + Lk) = ", content, " + ", slope, " * ",
                     q.seq + k.seq, " = ", content + bias, ", over the ",
                     dtype_name, " bound ", limit));
  }
  return absl::OkStatus();
}

absl::Status Mismatch(const char* what, int64_t expected, int64_t actual) {
  return absl::InvalidArgumentError(absl::StrCat(
      what, ": expected ", expected, " (from query), got ", actual));
}

absl::Status CheckSameDType(const char* field, DType expected, DType actual) {
  if (actual == expected) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ".dtype: expected ", DTypeName(expected),
                   " (the query's), got ", DTypeName(actual)));
}

// Query and key: well-formed, same dtype, same B, H and D.
absl::Status CheckQueryAndKey(const ScoreSpec& spec, const ScoreItem& item) {
  if (absl::Status s = CheckTensor("query", item.query, spec.layout); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckTensor("key", item.key, spec.layout); !s.ok()) {
    return s;
  }
  const Dims q = DimsOf(item.query.shape, spec.layout);
  const Dims k = DimsOf(item.key.shape, spec.layout);
  if (absl::Status s = CheckSameDType("key", item.query.dtype, item.key.dtype);
      !s.ok()) {
    return s;
  }
  if (k.batch != q.batch) return Mismatch("key batch size", q.batch, k.batch);
  if (k.heads != q.heads) return Mismatch("key heads", q.heads, k.heads);
  if (k.dim != q.dim) return Mismatch("key head_dim", q.dim, k.dim);
  return absl::OkStatus();
}

// The value, when present: well-formed, the query's dtype, B and H, the key's
// length. Required for the context output.
absl::Status CheckValue(const ScoreSpec& spec, const ScoreItem& item) {
  if (!item.value.has_value()) {
    if (!spec.want_context) return absl::OkStatus();
    return absl::InvalidArgumentError(
        "value: required for the CONTEXT output, got none");
  }
  if (absl::Status s = CheckTensor("value", *item.value, spec.layout);
      !s.ok()) {
    return s;
  }
  const Dims q = DimsOf(item.query.shape, spec.layout);
  const Dims k = DimsOf(item.key.shape, spec.layout);
  const Dims v = DimsOf(item.value->shape, spec.layout);
  if (absl::Status s =
          CheckSameDType("value", item.query.dtype, item.value->dtype);
      !s.ok()) {
    return s;
  }
  if (v.batch != q.batch) return Mismatch("value batch size", q.batch, v.batch);
  if (v.heads != q.heads) return Mismatch("value heads", q.heads, v.heads);
  if (v.seq != k.seq) {
    return absl::InvalidArgumentError(
        absl::StrCat("value sequence length: expected ", k.seq,
                     " (the key's), got ", v.seq));
  }
  return absl::OkStatus();
}

// key_lengths: none, or one per batch item within [0, Lk].
absl::Status CheckKeyLengths(const ScoreItem& item, const Dims& q,
                             const Dims& k) {
  if (item.key_lengths.empty()) return absl::OkStatus();
  if (static_cast<int64_t>(item.key_lengths.size()) != q.batch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key_lengths: expected ", q.batch, " values (one per batch item), got ",
        item.key_lengths.size()));
  }
  for (size_t b = 0; b < item.key_lengths.size(); ++b) {
    const int32_t len = item.key_lengths[b];
    if (len < 0 || len > k.seq) {
      return absl::InvalidArgumentError(
          absl::StrCat("key_lengths[", b, "]: expected 0..", k.seq,
                       " (the key length), got ", len));
    }
  }
  return absl::OkStatus();
}

// Causal needs Lq <= Lk; an explicit scale must be finite and positive.
absl::Status CheckCausalAndScale(const ScoreSpec& spec, const Dims& q,
                                 const Dims& k) {
  if (spec.causal && q.seq > k.seq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "causal: query length ", q.seq, " exceeds key length ", k.seq,
        "; causal attention needs query_len <= key_len (queries are the last "
        "positions)"));
  }
  if (spec.scale.has_value() &&
      !(std::isfinite(*spec.scale) && *spec.scale > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale: expected a finite value > 0, got ", *spec.scale));
  }
  return absl::OkStatus();
}

// ALiBi: no slopes (the paper's), or one finite slope per head.
absl::Status CheckAlibi(const AlibiBias& alibi, const Dims& q) {
  if (alibi.slopes.empty()) return absl::OkStatus();
  if (static_cast<int64_t>(alibi.slopes.size()) != q.heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "alibi.slopes: expected ", q.heads,
        " values (one per head) or none, got ", alibi.slopes.size()));
  }
  for (size_t h = 0; h < alibi.slopes.size(); ++h) {
    if (!std::isfinite(alibi.slopes[h])) {
      return absl::InvalidArgumentError(
          absl::StrCat("alibi.slopes[", h, "]: expected a finite value, got ",
                       alibi.slopes[h]));
    }
  }
  return absl::OkStatus();
}

// Relative: a loaded model whose H and D are the query's and whose P covers
// both lengths.
absl::Status CheckRelative(const RelativeBias& relative, const Dims& q,
                           const Dims& k) {
  if (relative.model == nullptr) {
    return absl::InvalidArgumentError(
        "relative.model: expected a loaded parameter set, got none");
  }
  const RelativeModelInfo& info = relative.model->info();
  if (info.heads != q.heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("query heads: model '", info.name, "' expects ",
                     info.heads, ", got ", q.heads));
  }
  if (info.head_dim != q.dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("query head_dim: model '", info.name, "' expects ",
                     info.head_dim, ", got ", q.dim));
  }
  const int64_t longest = std::max(q.seq, k.seq);
  if (longest > info.max_relative_positions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence length: model '", info.name,
        "' has P = ", info.max_relative_positions,
        " relative positions, expected query and key lengths <= P, got ",
        longest));
  }
  return absl::OkStatus();
}

absl::Status CheckBias(const Bias& bias, const Dims& q, const Dims& k) {
  return std::visit(
      Overloaded{
          [&](const AlibiBias& alibi) { return CheckAlibi(alibi, q); },
          [&](const RelativeBias& relative) {
            return CheckRelative(relative, q, k);
          },
      },
      bias);
}

// Last, because it reads every byte (unless the parser did): the inputs the
// computation will use hold no NaN or Inf, and their magnitudes cannot
// overflow the logits.
absl::Status CheckInputsFinite(const ScoreSpec& spec, const ScoreItem& item,
                               const InputScans& scans) {
  float max_q = 0, max_k = 0;
  if (absl::Status s = CheckFinite("query", item.query, scans.query, &max_q);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckFinite("key", item.key, scans.key, &max_k);
      !s.ok()) {
    return s;
  }
  if (item.value.has_value() && spec.want_context) {
    if (absl::Status s =
            CheckFinite("value", *item.value, scans.value, nullptr);
        !s.ok()) {
      return s;
    }
  }
  return CheckOverflow(spec, DimsOf(item.query.shape, spec.layout),
                       DimsOf(item.key.shape, spec.layout), max_q, max_k);
}

// Appends the raw bytes of trivially copyable values: equal keys mean
// bit-identical parameters.
template <typename T>
void AppendBytes(std::string* key, const T* data, size_t count) {
  key->append(reinterpret_cast<const char*>(data), count * sizeof(T));
}

// What distinguishes one bias from another in a batch key.
struct BiasIdentity {
  const char* tag;
  uint64_t model_id;               // relative: the model's id (0: none)
  absl::Span<const float> slopes;  // ALiBi: as given (empty: the paper's)
};

BiasIdentity IdentityOf(const Bias& bias) {
  return std::visit(Overloaded{
                        [](const AlibiBias& alibi) {
                          return BiasIdentity{"alibi", 0, alibi.slopes};
                        },
                        [](const RelativeBias& relative) {
                          return BiasIdentity{"rel",
                                              relative.model != nullptr
                                                  ? relative.model->id()
                                                  : 0,
                                              {}};
                        },
                    },
                    bias);
}

}  // namespace

void FiniteScanner::Consume(const void* data, size_t bytes) {
  if (first_non_finite_ != FiniteScan::kAllFinite) return;
  const size_t count = bytes / ElementSize(dtype_);
  WordScan scan;
  switch (dtype_) {
    case DType::kFloat32:
      scan = ScanWords32(data, count, 0x7f800000u, 0x7fffffffu);
      break;
    case DType::kFloat16:
      scan = ScanWords16(data, count, 0x7c00u, 0x7fffu);
      break;
    case DType::kBFloat16:
      scan = ScanWords16(data, count, 0x7f80u, 0x7fffu);
      break;
  }
  if (scan.first_non_finite < count) {
    first_non_finite_ = elements_ + scan.first_non_finite;
  }
  max_bits_ = std::max(max_bits_, scan.max_bits);
  elements_ += count;
}

FiniteScan FiniteScanner::Finish() const {
  FiniteScan scan;
  scan.first_non_finite = first_non_finite_;
  scan.dtype = dtype_;
  if (dtype_ == DType::kFloat32) {
    DecodeFloats(&max_bits_, 1, dtype_, &scan.max_abs);
  } else {
    const auto largest = static_cast<uint16_t>(max_bits_);
    DecodeFloats(&largest, 1, dtype_, &scan.max_abs);
  }
  return scan;
}

absl::Status ValidateItem(const ScoreSpec& spec, const ScoreItem& item,
                          const InputScans& scans) {
  if (absl::Status s = CheckQueryAndKey(spec, item); !s.ok()) return s;
  if (absl::Status s = CheckValue(spec, item); !s.ok()) return s;
  const Dims q = DimsOf(item.query.shape, spec.layout);
  const Dims k = DimsOf(item.key.shape, spec.layout);
  if (absl::Status s = CheckKeyLengths(item, q, k); !s.ok()) return s;
  if (absl::Status s = CheckCausalAndScale(spec, q, k); !s.ok()) return s;
  if (absl::Status s = CheckBias(spec.bias, q, k); !s.ok()) return s;
  return CheckInputsFinite(spec, item, scans);
}

std::string BatchKey(const ScoreSpec& spec, const ScoreItem& item) {
  const Dims q = DimsOf(item.query.shape, spec.layout);
  const Dims k = DimsOf(item.key.shape, spec.layout);
  const int64_t dv =
      item.value.has_value() ? DimsOf(item.value->shape, spec.layout).dim : 0;
  const BiasIdentity bias = IdentityOf(spec.bias);
  std::string key =
      absl::StrCat(bias.tag, "|", bias.model_id, "|", q.heads, "|", q.dim, "|",
                   dv, "|", q.seq, "|", k.seq, "|", DTypeName(item.query.dtype),
                   "|", LayoutName(spec.layout), "|", spec.causal, "|",
                   spec.want_logits, spec.want_probs, spec.want_context, "|",
                   DTypeName(spec.output_dtype), "|");
  if (spec.scale.has_value()) {
    const float scale = *spec.scale;
    AppendBytes(&key, &scale, 1);
  }
  key += "|";
  AppendBytes(&key, bias.slopes.data(), bias.slopes.size());
  return key;
}

}  // namespace attnscore::scoring
