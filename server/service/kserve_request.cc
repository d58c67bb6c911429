#include "server/service/kserve_request.h"

#include <array>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/layout.h"
#include "server/service/model_registry.h"

namespace attnscore::service::kserve {
namespace {

using inference::InferParameter;
using inference::ModelInferRequest;

enum class Input { kQuery, kKey, kValue, kKeyLengths, kSlopes };
constexpr std::array<absl::string_view, 5> kInputNames = {
    "query", "key", "value", "key_lengths", "slopes"};

std::optional<Input> ParseInputName(absl::string_view name) {
  for (size_t i = 0; i < kInputNames.size(); ++i) {
    if (name == kInputNames[i]) return static_cast<Input>(i);
  }
  return std::nullopt;
}

// An input's bytes, wherever the request carries them.
struct InputBytes {
  const void* data = nullptr;
  size_t size = 0;
  std::string where;  // for messages: "raw_input_contents[1]", ...
  std::optional<scoring::FiniteScan> scan;  // the parser's, of raw bytes
};

// Where the inputs' bytes are besides the message's own fields.
struct Sources {
  RawContents raw;
  SharedInputs shared;

  bool Shared(int i) const {
    return static_cast<size_t>(i) < shared.size() &&
           shared[static_cast<size_t>(i)].has_value();
  }
  // The raw_input_contents entry of input `i`: inputs in shared memory have
  // none (Triton's rule), so it is `i` less those before it.
  int RawIndex(int i) const {
    int index = i;
    for (int j = 0; j < i; ++j) index -= Shared(j) ? 1 : 0;
    return index;
  }
};

// The bytes of input `i` of datatype `dtype` ("INT32" for key_lengths): in
// shared memory when its parameters put it there; else its
// raw_input_contents entry when the request uses raw contents (in `raw` when
// the parser kept them outside the message), else the typed field for the
// datatype (fp32_contents, int_contents).
absl::StatusOr<InputBytes> FindBytes(const ModelInferRequest& request,
                                     const Sources& sources, int i,
                                     absl::string_view datatype) {
  const ModelInferRequest::InferInputTensor& input = request.inputs(i);
  if (sources.Shared(i)) {
    const TensorBytesView& bytes = *sources.shared[static_cast<size_t>(i)];
    return InputBytes{bytes.data,
                      bytes.size,
                      absl::StrCat("inputs[", i, "]'s shared-memory range"),
                      {}};
  }
  if (request.raw_input_contents_size() > 0) {
    const int r = sources.RawIndex(i);
    if (input.has_contents()) {
      return absl::InvalidArgumentError(absl::StrCat(
          input.name(), ": expected its data in raw_input_contents[", r,
          "] only (the request uses raw contents), got typed contents too"));
    }
    std::string where = absl::StrCat("raw_input_contents[", r, "]");
    if (!sources.raw.empty()) {
      const TensorBytesView& bytes = sources.raw[static_cast<size_t>(r)];
      return InputBytes{bytes.data, bytes.size, std::move(where), bytes.scan};
    }
    const std::string& contents = request.raw_input_contents(r);
    return InputBytes{contents.data(), contents.size(), std::move(where), {}};
  }
  if (datatype == "FP32") {
    const auto& values = input.contents().fp32_contents();
    return InputBytes{values.data(),
                      values.size() * sizeof(float),
                      "contents.fp32_contents",
                      {}};
  }
  if (datatype == "INT32") {
    const auto& values = input.contents().int_contents();
    return InputBytes{values.data(),
                      values.size() * sizeof(int32_t),
                      "contents.int_contents",
                      {}};
  }
  return absl::InvalidArgumentError(absl::StrCat(
      input.name(), ": ", datatype,
      " data must be sent in raw_input_contents (the protocol has no typed "
      "contents field for it), got typed contents"));
}

// `bytes` holds exactly the elements of `shape` (dims >= 0) of `element_size`.
absl::Status CheckByteCount(const ModelInferRequest::InferInputTensor& input,
                            size_t element_size, const InputBytes& bytes) {
  uint64_t elements = 1;
  for (int64_t dim : input.shape()) {
    // 2^40 elements is far beyond gRPC's 2 GiB message cap: no overflow.
    if (dim < 0 || (dim > 0 && elements > (uint64_t{1} << 40) /
                                              static_cast<uint64_t>(dim))) {
      return absl::InvalidArgumentError(
          absl::StrCat(input.name(),
                       ": expected a shape of dims >= 0 that "
                       "fits in a message, got ",
                       ShapeString(input.shape())));
    }
    elements *= static_cast<uint64_t>(dim);
  }
  if (elements * element_size != bytes.size) {
    return absl::InvalidArgumentError(absl::StrCat(
        input.name(), ": shape ", ShapeString(input.shape()), " of ",
        input.datatype(), " needs ", elements * element_size, " bytes, got ",
        bytes.size, " in ", bytes.where));
  }
  return absl::OkStatus();
}

absl::Status ExpectRank(const ModelInferRequest::InferInputTensor& input,
                        int rank, absl::string_view axes) {
  if (input.shape_size() == rank) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(input.name(), ": expected a shape of rank ", rank, " ", axes,
                   ", got ", ShapeString(input.shape())));
}

// query, key or value: FP32/FP16/BF16, rank 4 in `layout`; `*scan` the
// parser's scan of its bytes, when it made one as this dtype.
absl::StatusOr<scoring::TensorRef> MapTensor(
    const ModelInferRequest& request, const Sources& sources, int i,
    Layout layout, std::optional<scoring::FiniteScan>* scan) {
  const ModelInferRequest::InferInputTensor& input = request.inputs(i);
  const std::optional<DType> dtype = ParseDatatype(input.datatype());
  if (!dtype.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(input.name(),
                     ": expected datatype FP32, FP16 or BF16, "
                     "got \"",
                     ClientStringForLog(input.datatype()), "\""));
  }
  if (absl::Status s = ExpectRank(input, 4, LayoutAxes(layout)); !s.ok()) {
    return s;
  }
  absl::StatusOr<InputBytes> bytes =
      FindBytes(request, sources, i, input.datatype());
  if (!bytes.ok()) return bytes.status();
  if (absl::Status s = CheckByteCount(input, ElementSize(*dtype), *bytes);
      !s.ok()) {
    return s;
  }
  scoring::TensorRef ref;
  ref.dtype = *dtype;
  ref.shape.assign(input.shape().begin(), input.shape().end());
  ref.data = bytes->data;
  ref.size_bytes = bytes->size;
  *scan = scoring::ScanAs(bytes->scan, *dtype);
  return ref;
}

// key_lengths (INT32 [B]) or slopes (FP32 [H]), copied out (raw bytes may be
// unaligned).
template <typename T>
absl::StatusOr<std::vector<T>> MapVector(const ModelInferRequest& request,
                                         const Sources& sources, int i,
                                         absl::string_view datatype,
                                         absl::string_view axes) {
  const ModelInferRequest::InferInputTensor& input = request.inputs(i);
  if (input.datatype() != datatype) {
    return absl::InvalidArgumentError(
        absl::StrCat(input.name(), ": expected datatype ", datatype, ", got \"",
                     ClientStringForLog(input.datatype()), "\""));
  }
  if (absl::Status s = ExpectRank(input, 1, axes); !s.ok()) return s;
  absl::StatusOr<InputBytes> bytes = FindBytes(request, sources, i, datatype);
  if (!bytes.ok()) return bytes.status();
  if (absl::Status s = CheckByteCount(input, sizeof(T), *bytes); !s.ok()) {
    return s;
  }
  std::vector<T> values(bytes->size / sizeof(T));
  if (!values.empty()) std::memcpy(values.data(), bytes->data, bytes->size);
  return values;
}

// Which input each index holds; INVALID_ARGUMENT for an unknown or repeated
// name, per-input parameters, or a raw_input_contents count that does not
// match.
absl::StatusOr<std::array<int, 5>> IndexInputs(const ModelInferRequest& request,
                                               const Sources& sources) {
  std::array<int, 5> index;
  index.fill(-1);
  for (int i = 0; i < request.inputs_size(); ++i) {
    const ModelInferRequest::InferInputTensor& input = request.inputs(i);
    const std::optional<Input> kind = ParseInputName(input.name());
    if (!kind.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("inputs[", i,
                       "].name: expected query, key, value, key_lengths or "
                       "slopes, got \"",
                       ClientStringForLog(input.name()), "\""));
    }
    int& slot = index[static_cast<size_t>(*kind)];
    if (slot >= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inputs[", i, "].name: \"", ClientStringForLog(input.name()),
          "\" is already inputs[", slot, "]"));
    }
    if (!input.parameters().empty() && !sources.Shared(i)) {
      return absl::InvalidArgumentError(absl::StrCat(
          input.name(),
          ": expected no input parameters but the shared-memory ones "
          "(shared_memory_region, _byte_size, _offset), got \"",
          ClientStringForLog(input.parameters().begin()->first), "\""));
    }
    slot = i;
  }
  const int in_message = sources.RawIndex(request.inputs_size());
  if (request.raw_input_contents_size() > 0 &&
      request.raw_input_contents_size() != in_message) {
    return absl::InvalidArgumentError(absl::StrCat(
        "raw_input_contents: expected one entry per input not in shared "
        "memory (",
        in_message, "), got ", request.raw_input_contents_size()));
  }
  return index;
}

// Inputs onto the item (and slopes onto the ALiBi bias).
absl::Status MapInputs(const ModelInferRequest& request, const Sources& sources,
                       const std::array<int, 5>& index, ValidatedRequest& out) {
  for (Input required : {Input::kQuery, Input::kKey}) {
    if (index[static_cast<size_t>(required)] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inputs: expected an input named \"",
          kInputNames[static_cast<size_t>(required)], "\", got none"));
    }
  }
  const Layout layout = out.spec.layout;
  scoring::ScoreItem& item = out.item;
  for (Input kind : {Input::kQuery, Input::kKey, Input::kValue}) {
    const int i = index[static_cast<size_t>(kind)];
    if (i < 0) continue;
    std::optional<scoring::FiniteScan>& scan =
        kind == Input::kQuery ? out.scans.query
        : kind == Input::kKey ? out.scans.key
                              : out.scans.value;
    absl::StatusOr<scoring::TensorRef> ref =
        MapTensor(request, sources, i, layout, &scan);
    if (!ref.ok()) return ref.status();
    if (kind == Input::kValue) {
      item.value = *std::move(ref);
    } else {
      (kind == Input::kQuery ? item.query : item.key) = *std::move(ref);
    }
  }
  if (const int i = index[static_cast<size_t>(Input::kKeyLengths)]; i >= 0) {
    absl::StatusOr<std::vector<int32_t>> lengths =
        MapVector<int32_t>(request, sources, i, "INT32", "[B]");
    if (!lengths.ok()) return lengths.status();
    item.key_lengths = *std::move(lengths);
  }
  if (const int i = index[static_cast<size_t>(Input::kSlopes)]; i >= 0) {
    auto* alibi = std::get_if<scoring::AlibiBias>(&out.spec.bias);
    if (alibi == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("slopes: only model \"", kAlibiModel,
                       "\" takes slopes, got them for "
                       "relative-position model \"",
                       ClientStringForLog(request.model_name()), "\""));
    }
    absl::StatusOr<std::vector<float>> slopes =
        MapVector<float>(request, sources, i, "FP32", "[H]");
    if (!slopes.ok()) return slopes.status();
    alibi->slopes = *std::move(slopes);
  }
  return absl::OkStatus();
}

const char* ParameterKind(const InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case InferParameter::kBoolParam:
      return "a bool";
    case InferParameter::kInt64Param:
      return "an int64";
    case InferParameter::kStringParam:
      return "a string";
    case InferParameter::kDoubleParam:
      return "a double";
    case InferParameter::kUint64Param:
      return "a uint64";
    case InferParameter::PARAMETER_CHOICE_NOT_SET:
      break;
  }
  return "no value";
}

absl::Status WrongParameter(absl::string_view name, absl::string_view expected,
                            const InferParameter& value) {
  return absl::InvalidArgumentError(
      absl::StrCat("parameters.", name, ": expected ", expected, ", got ",
                   ParameterKind(value)));
}

// Sets spec.scale from a double or int64 parameter.
absl::Status MapScale(const InferParameter& value, scoring::ScoreSpec& spec) {
  if (value.parameter_choice_case() == InferParameter::kDoubleParam) {
    spec.scale = static_cast<float>(value.double_param());
  } else if (value.parameter_choice_case() == InferParameter::kInt64Param) {
    spec.scale = static_cast<float>(value.int64_param());
  } else {
    return WrongParameter("scale", "a double", value);
  }
  return absl::OkStatus();
}

absl::Status MapStringParameter(absl::string_view name,
                                const InferParameter& value,
                                scoring::ScoreSpec& spec,
                                std::optional<DType>& output_dtype) {
  if (value.parameter_choice_case() != InferParameter::kStringParam) {
    return WrongParameter(name, "a string", value);
  }
  const std::string& text = value.string_param();
  if (name == "layout") {
    const std::optional<Layout> layout = ParseLayout(text);
    if (!layout.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameters.layout: expected BHSD, BSHD or SBHD, got \"",
                       ClientStringForLog(text), "\""));
    }
    spec.layout = *layout;
    return absl::OkStatus();
  }
  output_dtype = ParseDatatype(text);
  if (!output_dtype.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameters.output_dtype: expected FP32, FP16 or BF16, got \"",
        ClientStringForLog(text), "\""));
  }
  return absl::OkStatus();
}

// The request parameters onto the spec; `output_dtype` stays empty unless
// given.
absl::Status MapParameters(const ModelInferRequest& request,
                           scoring::ScoreSpec& spec,
                           std::optional<DType>& output_dtype) {
  for (const auto& [name, value] : request.parameters()) {
    absl::Status status;
    if (name == "causal") {
      if (value.parameter_choice_case() != InferParameter::kBoolParam) {
        return WrongParameter(name, "a bool", value);
      }
      spec.causal = value.bool_param();
    } else if (name == "scale") {
      status = MapScale(value, spec);
    } else if (name == "layout" || name == "output_dtype") {
      status = MapStringParameter(name, value, spec, output_dtype);
    } else if (name != "priority" && name != "timeout") {
      // Triton's clients send `priority` and `timeout` when asked to: both are
      // accepted and ignored (the gRPC deadline bounds a request).
      return absl::InvalidArgumentError(absl::StrCat(
          "parameters: expected causal, scale, layout or output_dtype, got \"",
          ClientStringForLog(name), "\""));
    }
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

// A shared-memory parameter's int64 value (>= 0).
absl::StatusOr<uint64_t> ByteCount(const std::string& field,
                                   const InferParameter& value) {
  if (value.parameter_choice_case() != InferParameter::kInt64Param ||
      value.int64_param() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": expected an int64 >= 0, got ",
        value.parameter_choice_case() == InferParameter::kInt64Param
            ? std::to_string(value.int64_param())
            : ParameterKind(value)));
  }
  return static_cast<uint64_t>(value.int64_param());
}

// Triton's shared-memory parameters (the prefix `field` names them: e.g.
// "outputs[1].parameters."): the range, or nullopt when there are none.
template <typename ParameterMap>
absl::StatusOr<std::optional<v1::SharedMemoryRange>> SharedMemoryParameters(
    const std::string& field, const ParameterMap& parameters) {
  if (parameters.empty()) return std::optional<v1::SharedMemoryRange>();
  v1::SharedMemoryRange range;
  bool has_region = false, has_size = false;
  for (const auto& [name, value] : parameters) {
    if (name == "shared_memory_region" &&
        value.parameter_choice_case() == InferParameter::kStringParam) {
      range.set_region(value.string_param());
      has_region = true;
      continue;
    }
    absl::StatusOr<uint64_t> bytes = uint64_t{0};
    if (name == "shared_memory_region") {
      bytes = absl::InvalidArgumentError(
          absl::StrCat(field, "shared_memory_region: expected a string, got ",
                       ParameterKind(value)));
    } else if (name == "shared_memory_byte_size") {
      bytes = ByteCount(field + "shared_memory_byte_size", value);
      if (bytes.ok()) range.set_byte_size(*bytes);
      has_size = true;
    } else if (name == "shared_memory_offset") {
      bytes = ByteCount(field + "shared_memory_offset", value);
      if (bytes.ok()) range.set_offset(*bytes);
    } else {
      bytes = absl::InvalidArgumentError(absl::StrCat(
          field, ClientStringForLog(name),
          ": expected shared_memory_region, shared_memory_byte_size or "
          "shared_memory_offset"));
    }
    if (!bytes.ok()) return bytes.status();
  }
  if (!has_region) {
    return absl::InvalidArgumentError(absl::StrCat(
        field,
        "shared_memory_region: expected the region's name (a string), got "
        "none"));
  }
  if (!has_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(field,
                     "shared_memory_byte_size: expected the range's bytes (an "
                     "int64) with shared_memory_region, got none"));
  }
  return std::optional<v1::SharedMemoryRange>(std::move(range));
}

// `wanted`'s parameters (outputs[i]): none, or Triton's shared-memory
// placement, appended to `placements`.
absl::Status MapOutputParameters(
    int i, const ModelInferRequest::InferRequestedOutputTensor& wanted,
    Output output, std::vector<PlacementRequest>& placements) {
  const std::string field = absl::StrCat("outputs[", i, "].parameters.");
  absl::StatusOr<std::optional<v1::SharedMemoryRange>> range =
      SharedMemoryParameters(field, wanted.parameters());
  if (!range.ok()) return range.status();
  if (!range->has_value()) return absl::OkStatus();
  PlacementRequest placement;
  placement.output = V1Output(output);
  placement.range = **std::move(range);
  placement.output_field = absl::StrCat("outputs[", i, "].name");
  placement.region_field = field + "shared_memory_region";
  placement.range_field = field + "shared_memory_offset";
  placement.size_field = field + "shared_memory_byte_size";
  placements.push_back(std::move(placement));
  return absl::OkStatus();
}

// The requested outputs, in order; none means logits.
absl::StatusOr<std::vector<Output>> MapOutputs(
    const ModelInferRequest& request, scoring::ScoreSpec& spec,
    std::vector<PlacementRequest>& placements) {
  std::vector<Output> outputs;
  for (int i = 0; i < request.outputs_size(); ++i) {
    const ModelInferRequest::InferRequestedOutputTensor& wanted =
        request.outputs(i);
    std::optional<Output> output;
    for (Output o : {Output::kLogits, Output::kProbs, Output::kContext}) {
      if (wanted.name() == OutputName(o)) output = o;
    }
    if (!output.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("outputs[", i,
                       "].name: expected logits, probs or "
                       "context, got \"",
                       ClientStringForLog(wanted.name()), "\""));
    }
    if (absl::Status s = MapOutputParameters(i, wanted, *output, placements);
        !s.ok()) {
      return s;
    }
    for (Output seen : outputs) {
      if (seen == *output) {
        return absl::InvalidArgumentError(absl::StrCat(
            "outputs[", i, "].name: \"", ClientStringForLog(wanted.name()),
            "\" asked for twice"));
      }
    }
    outputs.push_back(*output);
  }
  if (outputs.empty()) outputs.push_back(Output::kLogits);
  spec.want_logits = spec.want_probs = spec.want_context = false;
  for (Output o : outputs) {
    (o == Output::kLogits  ? spec.want_logits
     : o == Output::kProbs ? spec.want_probs
                           : spec.want_context) = true;
  }
  return outputs;
}

}  // namespace

const char* DatatypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "FP32";
    case DType::kFloat16:
      return "FP16";
    case DType::kBFloat16:
      return "BF16";
  }
  return "FP32";
}

std::optional<DType> ParseDatatype(absl::string_view name) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    if (name == DatatypeName(dtype)) return dtype;
  }
  return std::nullopt;
}

v1::Output V1Output(Output output) {
  switch (output) {
    case Output::kProbs:
      return v1::PROBS;
    case Output::kContext:
      return v1::CONTEXT;
    case Output::kLogits:
      break;
  }
  return v1::LOGITS;
}

const char* OutputName(Output output) {
  switch (output) {
    case Output::kLogits:
      return "logits";
    case Output::kProbs:
      return "probs";
    case Output::kContext:
      return "context";
  }
  return "logits";
}

absl::StatusOr<scoring::Bias> FindModel(absl::string_view field,
                                        absl::string_view name,
                                        absl::string_view version,
                                        const scoring::ModelSet& models) {
  std::optional<scoring::Bias> bias;
  if (name == kAlibiModel) {
    bias = scoring::AlibiBias{};
  } else if (auto model = models.Find({name.data(), name.size()});
             model != nullptr) {
    bias = scoring::RelativeBias{std::move(model)};
  } else {
    return absl::NotFoundError(absl::StrCat(
        field, ": expected \"", kAlibiModel,
        "\" or a loaded relative-position model (loaded: ", ModelNames(models),
        "), got \"", ClientStringForLog(name), "\""));
  }
  if (!version.empty() && version != kModelVersion) {
    return absl::NotFoundError(
        absl::StrCat("model \"", ClientStringForLog(name),
                     "\" version: ", "expected \"", kModelVersion,
                     "\" or none, got \"", ClientStringForLog(version), "\""));
  }
  return *std::move(bias);
}

absl::StatusOr<std::vector<SharedInputRequest>> SharedInputRequests(
    const inference::ModelInferRequest& request) {
  std::vector<SharedInputRequest> shared;
  for (int i = 0; i < request.inputs_size(); ++i) {
    const std::string field = absl::StrCat("inputs[", i, "].parameters.");
    absl::StatusOr<std::optional<v1::SharedMemoryRange>> range =
        SharedMemoryParameters(field, request.inputs(i).parameters());
    if (!range.ok()) return range.status();
    if (!range->has_value()) continue;
    SharedInputRequest input;
    input.input = i;
    input.range = **std::move(range);
    input.region_field = field + "shared_memory_region";
    input.range_field = field + "shared_memory_offset";
    shared.push_back(std::move(input));
  }
  return shared;
}

absl::StatusOr<MappedInfer> MapInferRequest(
    const inference::ModelInferRequest& request, const RequestLimits& limits,
    const scoring::ModelSet& models, RawContents raw, SharedInputs shared) {
  const Sources sources{raw, shared};
  for (const auto& [field, value] :
       {std::pair<const char*, const std::string&>{"id", request.id()},
        {"model_name", request.model_name()},
        {"model_version", request.model_version()}}) {
    if (absl::Status s = CheckClientString(field, value); !s.ok()) return s;
  }
  MappedInfer out;
  scoring::ScoreSpec& spec = out.validated.spec;
  absl::StatusOr<scoring::Bias> bias = FindModel(
      "model_name", request.model_name(), request.model_version(), models);
  if (!bias.ok()) return bias.status();
  spec.bias = *std::move(bias);
  std::optional<DType> output_dtype;
  if (absl::Status s = MapParameters(request, spec, output_dtype); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::vector<Output>> outputs =
      MapOutputs(request, spec, out.placements);
  if (!outputs.ok()) return outputs.status();
  out.outputs = *std::move(outputs);
  absl::StatusOr<std::array<int, 5>> index = IndexInputs(request, sources);
  if (!index.ok()) return index.status();
  if (absl::Status s = MapInputs(request, sources, *index, out.validated);
      !s.ok()) {
    return s;
  }
  spec.output_dtype = output_dtype.value_or(out.validated.item.query.dtype);
  absl::StatusOr<ValidatedRequest> validated =
      ValidateMapped(std::move(out.validated), limits);
  if (!validated.ok()) return validated.status();
  out.validated = *std::move(validated);
  return out;
}

}  // namespace attnscore::service::kserve
