#include "server/service/request_validation.h"

#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/layout.h"
#include "proto/attnscore/v1/proto_dtype.h"
#include "proto/attnscore/v1/proto_layout.h"
#include "server/scoring/resource_estimate.h"
#include "server/scoring/validation.h"
#include "server/service/model_registry.h"

namespace attnscore::service {
namespace {

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

std::string OutputValueName(int value) {
  return v1::Output_IsValid(value)
             ? v1::Output_Name(static_cast<v1::Output>(value))
             : absl::StrCat(value);
}

absl::StatusOr<DType> ParseDTypeField(absl::string_view field, int value) {
  if (std::optional<DType> dtype = v1::FromProtoDType(value)) return *dtype;
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": expected FLOAT32, FLOAT16 or BFLOAT16, got ",
                   DTypeValueName(value)));
}

// Step 1: the layout enum; LAYOUT_UNSPECIFIED is BHSD.
absl::StatusOr<Layout> ParseLayoutField(const v1::ScoreRequest& request) {
  if (std::optional<Layout> layout = v1::FromProtoLayout(request.layout())) {
    return *layout;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "layout: expected BHSD, BSHD, SBHD or LAYOUT_UNSPECIFIED, got ",
      request.layout()));
}

// Step 2: which outputs to compute; none listed means logits only.
absl::Status ParseOutputs(const v1::ScoreRequest& request,
                          scoring::ScoreSpec& spec) {
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
            "outputs[", i, "]: expected LOGITS, PROBS or CONTEXT, ", "got ",
            OutputValueName(request.outputs(i))));
    }
  }
  return absl::OkStatus();
}

// A view of a proto Tensor for the scorer; the shape and byte length are
// checked later by scoring::ValidateItem, only the dtype enum here.
absl::StatusOr<scoring::TensorRef> ToTensorRef(
    absl::string_view field, const v1::Tensor& tensor,
    const std::optional<TensorBytesView>& bytes,
    std::optional<scoring::FiniteScan>* scan) {
  scoring::TensorRef ref;
  absl::StatusOr<DType> dtype =
      ParseDTypeField(absl::StrCat(field, ".dtype"), tensor.dtype());
  if (!dtype.ok()) return dtype.status();
  ref.dtype = *dtype;
  ref.shape.assign(tensor.shape().begin(), tensor.shape().end());
  if (!bytes.has_value()) {
    ref.data = tensor.data().data();
    ref.size_bytes = tensor.data().size();
    return ref;
  }
  ref.data = bytes->data;
  ref.size_bytes = bytes->size;
  ref.bytes_field = bytes->bytes_field;
  *scan = scoring::ScanAs(bytes->scan, ref.dtype);
  return ref;
}

// Step 3: query and key (required), value (optional) and key_lengths, read in
// place from the request or from where `bytes` says the parser put them.
absl::Status ParseTensors(const v1::ScoreRequest& request,
                          const RequestTensorBytes& bytes,
                          scoring::ScoreItem& item,
                          scoring::InputScans& scans) {
  if (!request.has_query()) {
    return absl::InvalidArgumentError("query: required, got none");
  }
  if (!request.has_key()) {
    return absl::InvalidArgumentError("key: required, got none");
  }
  absl::StatusOr<scoring::TensorRef> query =
      ToTensorRef("query", request.query(), bytes.query, &scans.query);
  if (!query.ok()) return query.status();
  item.query = *std::move(query);
  absl::StatusOr<scoring::TensorRef> key =
      ToTensorRef("key", request.key(), bytes.key, &scans.key);
  if (!key.ok()) return key.status();
  item.key = *std::move(key);
  if (request.has_value()) {
    absl::StatusOr<scoring::TensorRef> value =
        ToTensorRef("value", request.value(), bytes.value, &scans.value);
    if (!value.ok()) return value.status();
    item.value = *std::move(value);
  }
  item.key_lengths.assign(request.key_lengths().begin(),
                          request.key_lengths().end());
  return absl::OkStatus();
}

// Step 4: the output dtype; unspecified means the query's.
absl::StatusOr<DType> ParseOutputDType(const v1::ScoreRequest& request,
                                       DType query_dtype) {
  if (request.output_dtype() == v1::DTYPE_UNSPECIFIED) return query_dtype;
  return ParseDTypeField("output_dtype", request.output_dtype());
}

// Step 5: the bias kind and its parameters; a relative bias resolves its model
// by name in `models` (NOT_FOUND listing the loaded ones).
absl::StatusOr<scoring::Bias> ParseBias(const v1::ScoreRequest& request,
                                        const scoring::ModelSet& models) {
  switch (request.bias_case()) {
    case v1::ScoreRequest::BIAS_NOT_SET:
      return scoring::AlibiBias{};
    case v1::ScoreRequest::kAlibi:
      return scoring::AlibiBias{
          {request.alibi().slopes().begin(), request.alibi().slopes().end()}};
    case v1::ScoreRequest::kRelative: {
      const std::string& name = request.relative().model();
      if (absl::Status s = CheckClientString("relative.model", name); !s.ok()) {
        return s;
      }
      std::shared_ptr<const scoring::RelativeModel> model = models.Find(name);
      if (model == nullptr) {
        return absl::NotFoundError(absl::StrCat(
            "relative.model: expected a loaded model (loaded: ",
            ModelNames(models), "), got \"", ClientStringForLog(name), "\""));
      }
      return scoring::RelativeBias{std::move(model)};
    }
  }
  // Only a corrupt oneof case gets here: every case above returns.
  return absl::InvalidArgumentError(
      absl::StrCat("bias: expected alibi or relative, got case ",
                   static_cast<int>(request.bias_case())));
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

// The dims that size the response: q [B,H,Lq,D], k [..,Lk,..], Dv (0 without
// a value).
struct ResponseDims {
  Dims q;
  Dims k;
  int64_t value_dim = 0;
};

// Step 7: every input against the server's caps.
absl::StatusOr<ResponseDims> CheckAllCaps(const scoring::ScoreSpec& spec,
                                          const scoring::ScoreItem& item,
                                          const RequestLimits& limits) {
  ResponseDims dims;
  dims.q = DimsOf(item.query.shape, spec.layout);
  dims.k = DimsOf(item.key.shape, spec.layout);
  if (absl::Status s = CheckCaps("query", dims.q, "Lq", "D", limits); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckCaps("key", dims.k, "Lk", "D", limits); !s.ok()) {
    return s;
  }
  if (item.value.has_value()) {
    const Dims v = DimsOf(item.value->shape, spec.layout);
    if (absl::Status s = CheckCaps("value", v, "Lk", "Dv", limits); !s.ok()) {
      return s;
    }
    dims.value_dim = v.dim;
  }
  return dims;
}

// The RESOURCE_EXHAUSTED error for a response over --max-output-bytes, listing
// every requested output with its shape and bytes.
absl::Status OutputTooLarge(const scoring::ScoreSpec& spec,
                            const ResponseDims& dims,
                            absl::uint128 scores_bytes,
                            absl::uint128 context_bytes, absl::uint128 total,
                            const RequestLimits& limits) {
  const Dims& q = dims.q;
  const std::string scores_shape = absl::StrCat("[", q.batch, ",", q.heads, ",",
                                                q.seq, ",", dims.k.seq, "]");
  std::vector<std::string> parts;
  if (spec.want_logits) {
    parts.push_back(
        absl::StrCat("logits ", scores_shape, " ", Str(scores_bytes)));
  }
  if (spec.want_probs) {
    parts.push_back(
        absl::StrCat("probs ", scores_shape, " ", Str(scores_bytes)));
  }
  if (spec.want_context) {
    parts.push_back(absl::StrCat("context of ", q.batch, "*", q.heads, "*",
                                 q.seq, "*", dims.value_dim, " elements ",
                                 Str(context_bytes)));
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "outputs: expected a response of at most ", limits.max_output_bytes,
      " bytes (the server's --max-output-bytes), got ", Str(total),
      " bytes of ", v1::DType_Name(v1::ToProtoDType(spec.output_dtype)), " (",
      absl::StrJoin(parts, " + "),
      "); ask for fewer outputs, a 16-bit output_dtype, or split the batch"));
}

// Step 8: the response size, before anything is allocated for it. 128 bits: B
// is not capped.
absl::StatusOr<int64_t> CheckOutputSize(const scoring::ScoreSpec& spec,
                                        const ResponseDims& dims,
                                        const RequestLimits& limits) {
  const Dims& q = dims.q;
  const size_t out_element = ElementSize(spec.output_dtype);
  // logits, probs: [B, H, Lq, Lk]
  const absl::uint128 scores_bytes =
      absl::uint128(q.batch) * q.heads * q.seq * dims.k.seq * out_element;
  // context: [B, H, Lq, Dv]
  const absl::uint128 context_bytes =
      absl::uint128(q.batch) * q.heads * q.seq * dims.value_dim * out_element;
  const absl::uint128 total =
      scores_bytes * (int{spec.want_logits} + int{spec.want_probs}) +
      (spec.want_context ? context_bytes : absl::uint128(0));
  if (total > static_cast<uint64_t>(limits.max_output_bytes)) {
    return OutputTooLarge(spec, dims, scores_bytes, context_bytes, total,
                          limits);
  }
  return static_cast<int64_t>(total);
}

// Step 9: the predicted peak memory and work, before anything is allocated.
absl::Status CheckResources(const scoring::ResourceEstimate& estimate,
                            const scoring::ProblemSize& size,
                            const RequestLimits& limits) {
  const std::string problem = absl::StrCat(
      "B=", size.batch, " H=", size.heads, " Lq=", size.query_len,
      " Lk=", size.key_len, " D=", size.head_dim, " Dv=", size.value_dim);
  if (estimate.peak_bytes > limits.max_request_memory) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request: expected a peak working memory of at most ",
        limits.max_request_memory,
        " bytes (the server's --max-request-memory), got ", estimate.peak_bytes,
        " bytes for ", problem, " (", estimate.breakdown,
        "); ask for fewer outputs or split the request"));
  }
  if (estimate.work > limits.max_request_work) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request: expected a compute work of at most ", limits.max_request_work,
        " units (the server's --max-request-work), got ", estimate.work,
        " units for ", problem, "; split the request"));
  }
  return absl::OkStatus();
}

// Steps 1 to 5: what only the wire format can get wrong (enum values, missing
// messages, model names), mapped onto the spec and item.
absl::Status ParseWireFields(const v1::ScoreRequest& request,
                             const RequestTensorBytes& bytes,
                             const scoring::ModelSet& models,
                             ValidatedRequest& out) {
  scoring::ScoreSpec& spec = out.spec;
  absl::StatusOr<Layout> layout = ParseLayoutField(request);
  if (!layout.ok()) return layout.status();
  spec.layout = *layout;
  if (absl::Status s = ParseOutputs(request, spec); !s.ok()) return s;
  if (absl::Status s = ParseTensors(request, bytes, out.item, out.scans);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<DType> output_dtype =
      ParseOutputDType(request, out.item.query.dtype);
  if (!output_dtype.ok()) return output_dtype.status();
  spec.output_dtype = *output_dtype;
  spec.causal = request.causal();
  if (request.has_scale()) spec.scale = request.scale();
  absl::StatusOr<scoring::Bias> bias = ParseBias(request, models);
  if (!bias.ok()) return bias.status();
  spec.bias = *std::move(bias);
  return absl::OkStatus();
}

}  // namespace

std::string ClientStringForLog(absl::string_view text) {
  if (text.size() <= kClientStringLogPrefix) return absl::CHexEscape(text);
  return absl::StrCat(absl::CHexEscape(text.substr(0, kClientStringLogPrefix)),
                      "...(", text.size(), " bytes)");
}

absl::Status CheckClientString(absl::string_view field,
                               absl::string_view value) {
  if (value.size() <= kMaxClientStringBytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": expected at most ", kMaxClientStringBytes, " bytes, got ",
      value.size(), " bytes (\"", ClientStringForLog(value), "\")"));
}

absl::StatusOr<ValidatedRequest> ValidateRequest(
    const v1::ScoreRequest& request, const RequestLimits& limits,
    const scoring::ModelSet& models, const RequestTensorBytes& bytes) {
  if (absl::Status s = CheckClientString("request_id", request.request_id());
      !s.ok()) {
    return s;
  }
  ValidatedRequest out;
  if (absl::Status s = ParseWireFields(request, bytes, models, out); !s.ok()) {
    return s;
  }
  return ValidateMapped(std::move(out), limits);
}

absl::StatusOr<ValidatedRequest> ValidateMapped(ValidatedRequest out,
                                                const RequestLimits& limits) {
  // Step 6: shapes against byte lengths, dims > 0, q/k/v agreement,
  // key_lengths, causal Lq <= Lk, scale, slopes, the model's H/D/P, finite
  // values: the scoring API's own checks.
  if (absl::Status s = scoring::ValidateItem(out.spec, out.item, out.scans);
      !s.ok()) {
    return s;
  }
  // An unused value is validated (a malformed request is an error) but not
  // passed on: it would only split batches by Dv.
  if (!out.spec.want_context) out.item.value.reset();

  absl::StatusOr<ResponseDims> dims = CheckAllCaps(out.spec, out.item, limits);
  if (!dims.ok()) return dims.status();
  absl::StatusOr<int64_t> output_bytes =
      CheckOutputSize(out.spec, *dims, limits);
  if (!output_bytes.ok()) return output_bytes.status();
  const scoring::ProblemSize size = scoring::ProblemSizeOf(out.spec, out.item);
  const scoring::ResourceEstimate estimate =
      limits.estimate ? limits.estimate(out.spec, size)
                      : scoring::EstimateResources(out.spec, size);
  if (absl::Status s = CheckResources(estimate, size, limits); !s.ok()) {
    return s;
  }
  out.batch = dims->q.batch;
  out.output_bytes = *output_bytes;
  out.peak_bytes = estimate.peak_bytes;
  out.in_flight_bytes = estimate.in_flight_bytes();
  out.work = estimate.work;
  return out;
}

}  // namespace attnscore::service
