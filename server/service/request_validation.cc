#include "server/service/request_validation.h"

#include <algorithm>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/attnscore/v1/proto_dtype.h"
#include "server/service/model_registry.h"

namespace attnscore::service {
namespace {

using scoring::Dims;
using scoring::DimsOf;

// absl::StrCat does not take uint128.
std::string Str(absl::uint128 value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

std::string DTypeValueName(int value) {
  return v1::DType_IsValid(value)
             ? v1::DType_Name(static_cast<v1::DType>(value))
             : absl::StrCat(value);
}

absl::StatusOr<DType> ParseDTypeField(absl::string_view field, int value) {
  if (std::optional<DType> dtype = v1::FromProtoDType(value)) return *dtype;
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": expected FLOAT32, FLOAT16 or BFLOAT16, got ",
                   DTypeValueName(value)));
}

// A view of a proto Tensor for the scorer; the shape and byte length are
// checked later by scoring::ValidateItem, only the dtype enum here.
absl::StatusOr<scoring::TensorRef> ToTensorRef(absl::string_view field,
                                               const v1::Tensor& tensor) {
  scoring::TensorRef ref;
  absl::StatusOr<DType> dtype =
      ParseDTypeField(absl::StrCat(field, ".dtype"), tensor.dtype());
  if (!dtype.ok()) return dtype.status();
  ref.dtype = *dtype;
  ref.shape.assign(tensor.shape().begin(), tensor.shape().end());
  ref.data = tensor.data().data();
  ref.size_bytes = tensor.data().size();
  return ref;
}

// The server's per-request caps on one (already validated) input's dims.
absl::Status CheckCaps(absl::string_view field, const Dims& dims,
                       absl::string_view seq_name, absl::string_view dim_name,
                       const RequestLimits& limits) {
  struct Cap {
    absl::string_view name;
    int64_t value;
    int64_t limit;
    absl::string_view flag;
  };
  for (const Cap& cap :
       {Cap{"H", dims.heads, limits.max_heads, "--max-heads"},
        Cap{dim_name, dims.dim, limits.max_head_dim, "--max-head-dim"},
        Cap{seq_name, dims.seq, limits.max_seq_len, "--max-seq-len"}}) {
    if (cap.value > cap.limit) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape: expected ", cap.name, " <= ", cap.limit,
          " (the server's ", cap.flag, "), got ", cap.name, "=", cap.value));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ValidatedRequest> ValidateRequest(
    const v1::ScoreRequest& request, const RequestLimits& limits,
    const scoring::ModelSet& models) {
  ValidatedRequest out;
  scoring::ScoreSpec& spec = out.spec;
  scoring::ScoreItem& item = out.item;

  // What only the wire format can get wrong: enum values, missing messages,
  // model names. The scoring core's ValidateItem checks the rest of the
  // semantics below.
  switch (request.layout()) {
    case v1::LAYOUT_UNSPECIFIED:
    case v1::BHSD:
      spec.layout = scoring::Layout::kBHSD;
      break;
    case v1::BSHD:
      spec.layout = scoring::Layout::kBSHD;
      break;
    case v1::SBHD:
      spec.layout = scoring::Layout::kSBHD;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "layout: expected BHSD, BSHD, SBHD or LAYOUT_UNSPECIFIED, got ",
          request.layout()));
  }

  spec.want_logits = request.outputs_size() == 0;
  for (int i = 0; i < request.outputs_size(); ++i) {
    switch (request.outputs(i)) {
      case v1::LOGITS:
        spec.want_logits = true;
        break;
      case v1::PROBS:
        spec.want_probs = true;
        break;
      case v1::CONTEXT:
        spec.want_context = true;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "outputs[", i, "]: expected LOGITS, PROBS or CONTEXT, got ",
            v1::Output_IsValid(request.outputs(i))
                ? v1::Output_Name(static_cast<v1::Output>(request.outputs(i)))
                : absl::StrCat(request.outputs(i))));
    }
  }

  if (!request.has_query())
    return absl::InvalidArgumentError("query: required, got none");
  if (!request.has_key())
    return absl::InvalidArgumentError("key: required, got none");
  absl::StatusOr<scoring::TensorRef> query =
      ToTensorRef("query", request.query());
  if (!query.ok()) return query.status();
  item.query = *std::move(query);
  absl::StatusOr<scoring::TensorRef> key = ToTensorRef("key", request.key());
  if (!key.ok()) return key.status();
  item.key = *std::move(key);
  if (request.has_value()) {
    absl::StatusOr<scoring::TensorRef> value =
        ToTensorRef("value", request.value());
    if (!value.ok()) return value.status();
    item.value = *std::move(value);
  }

  if (request.output_dtype() == v1::DTYPE_UNSPECIFIED) {
    spec.output_dtype = item.query.dtype;
  } else {
    absl::StatusOr<DType> output_dtype =
        ParseDTypeField("output_dtype", request.output_dtype());
    if (!output_dtype.ok()) return output_dtype.status();
    spec.output_dtype = *output_dtype;
  }

  spec.causal = request.causal();
  if (request.has_scale()) spec.scale = request.scale();
  item.key_lengths.assign(request.key_lengths().begin(),
                          request.key_lengths().end());

  switch (request.bias_case()) {
    case v1::ScoreRequest::BIAS_NOT_SET:
      spec.bias = scoring::BiasKind::kAlibi;
      break;
    case v1::ScoreRequest::kAlibi:
      spec.bias = scoring::BiasKind::kAlibi;
      spec.alibi_slopes.assign(request.alibi().slopes().begin(),
                               request.alibi().slopes().end());
      break;
    case v1::ScoreRequest::kRelative: {
      spec.bias = scoring::BiasKind::kRelative;
      const std::string& name = request.relative().model();
      spec.model = models.Find(name);
      if (spec.model == nullptr) {
        return absl::NotFoundError(
            absl::StrCat("relative.model: expected a loaded model (loaded: ",
                         ModelNames(models), "), got \"", name, "\""));
      }
      break;
    }
  }

  // Shapes against byte lengths, dims > 0, q/k/v agreement, key_lengths, causal
  // Lq <= Lk, scale, slopes, the model's H/D/P, finite values: the scoring
  // core's own checks.
  if (absl::Status s = scoring::ValidateItem(spec, item); !s.ok()) return s;
  // An unused value is validated (a malformed request is an error) but not
  // passed on: it would only split batches by Dv.
  if (!spec.want_context) item.value.reset();

  const Dims q = DimsOf(item.query.shape, spec.layout);
  const Dims k = DimsOf(item.key.shape, spec.layout);
  if (absl::Status s = CheckCaps("query", q, "Lq", "D", limits); !s.ok())
    return s;
  if (absl::Status s = CheckCaps("key", k, "Lk", "D", limits); !s.ok())
    return s;
  int64_t value_dim = 0;
  if (item.value.has_value()) {
    const Dims v = DimsOf(item.value->shape, spec.layout);
    if (absl::Status s = CheckCaps("value", v, "Lk", "Dv", limits); !s.ok())
      return s;
    value_dim = v.dim;
  }

  // The response size, before anything is allocated for it. 128 bits: B is not
  // capped.
  const size_t out_element = ElementSize(spec.output_dtype);
  const absl::uint128 scores_bytes =
      absl::uint128(q.batch) * q.heads * q.seq * k.seq * out_element;
  const absl::uint128 context_bytes =
      absl::uint128(q.batch) * q.heads * q.seq * value_dim * out_element;
  const absl::uint128 total =
      scores_bytes * (int{spec.want_logits} + int{spec.want_probs}) +
      (spec.want_context ? context_bytes : absl::uint128(0));
  if (total > static_cast<uint64_t>(limits.max_output_bytes)) {
    const std::string scores_shape =
        absl::StrCat("[", q.batch, ",", q.heads, ",", q.seq, ",", k.seq, "]");
    std::vector<std::string> parts;
    if (spec.want_logits)
      parts.push_back(
          absl::StrCat("logits ", scores_shape, " ", Str(scores_bytes)));
    if (spec.want_probs)
      parts.push_back(
          absl::StrCat("probs ", scores_shape, " ", Str(scores_bytes)));
    if (spec.want_context) {
      parts.push_back(absl::StrCat("context of ", q.batch, "*", q.heads, "*",
                                   q.seq, "*", value_dim, " elements ",
                                   Str(context_bytes)));
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        "outputs: expected a response of at most ", limits.max_output_bytes,
        " bytes (the server's --max-output-bytes), got ", Str(total),
        " bytes of ", v1::DType_Name(v1::ToProtoDType(spec.output_dtype)), " (",
        absl::StrJoin(parts, " + "),
        "); ask for fewer outputs, a 16-bit output_dtype, or split the batch"));
  }
  out.batch = q.batch;
  out.output_bytes = static_cast<int64_t>(total);
  return out;
}

}  // namespace attnscore::service
