// `attnscore score`: one request from a safetensors file.
//
// Inputs: tensors q, k, optional v (F32, F16 or BF16, in `layout`), optional
// key_lengths [B] (any numeric dtype) and slopes [H]. Options come from flags,
// else from the file's __metadata__ with the keys of
// ../shared/golden/index.json (mode, causal, scale, layout, key_lengths) plus
// model, outputs and output_dtype, else the API defaults; so every golden case
// is a valid input as it is. Outputs are written as tensors
// logits/probs/context in the dtype the server returned, with the options used
// and the server's timing in __metadata__.
#include <array>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/cli/commands.h"
#include "client/client.h"
#include "common/layout.h"
#include "common/safetensors.h"

namespace attnscore::cli {
namespace {

using client::ScoreRequest;
using client::ScoreResult;

// A flag's value if given, else the file's metadata entry, else `fallback`.
std::string Option(const std::string& flag, const SafetensorsFile& file,
                   const std::string& key, const std::string& fallback = "") {
  if (!flag.empty()) return flag;
  auto it = file.metadata().find(key);
  return it != file.metadata().end() ? it->second : fallback;
}

absl::StatusOr<bool> ParseBool(const std::string& name,
                               const std::string& text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "true" || lower == "1" || lower == "yes") return true;
  if (lower == "false" || lower == "0" || lower == "no") return false;
  return absl::InvalidArgumentError(
      absl::StrCat(name, ": expected true or false, got '", text, "'"));
}

absl::StatusOr<DType> ParseDTypeFlag(const std::string& name,
                                     const std::string& text) {
  std::string upper = absl::AsciiStrToUpper(text);
  if (upper == "FLOAT32") upper = "F32";
  if (upper == "FLOAT16") upper = "F16";
  if (upper == "BFLOAT16") upper = "BF16";
  std::optional<DType> dtype = ParseDType(upper);
  if (!dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected F32, F16 or BF16, got '", text, "'"));
  }
  return *dtype;
}

template <typename T>
absl::StatusOr<std::vector<T>> ParseList(const std::string& name,
                                         const std::string& text) {
  std::vector<T> out;
  for (absl::string_view part :
       absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    T value;
    bool ok;
    if constexpr (std::is_same_v<T, float>) {
      ok = absl::SimpleAtof(part, &value);
    } else {
      ok = absl::SimpleAtoi(part, &value);
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": '", part, "' is not a number"));
    }
    out.push_back(value);
  }
  return out;
}

absl::StatusOr<client::Outputs> ParseOutputs(const std::string& text) {
  client::Outputs outputs{false, false, false};
  for (absl::string_view part :
       absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::string name =
        absl::AsciiStrToLower(absl::StripAsciiWhitespace(part));
    if (name == "logits") {
      outputs.logits = true;
    } else if (name == "probs") {
      outputs.probs = true;
    } else if (name == "context") {
      outputs.context = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "--outputs: '", name, "': expected logits, probs or context"));
    }
  }
  if (!outputs.logits && !outputs.probs && !outputs.context) {
    outputs.logits = true;
  }
  return outputs;
}

// A view of tensor `name` (or its long name) in `file`, converted to
// `convert_to` if given (the converted bytes are kept in `storage`).
absl::StatusOr<std::optional<client::TensorView>> InputTensor(
    const SafetensorsFile& file, std::initializer_list<const char*> names,
    std::optional<DType> convert_to, std::vector<client::Tensor>& storage) {
  const SafetensorsFile::Tensor* t = nullptr;
  for (const char* name : names) {
    if ((t = file.Find(name)) != nullptr) break;
  }
  if (t == nullptr) return std::optional<client::TensorView>();
  std::optional<DType> dtype = ParseDType(t->dtype);
  if (!dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.origin(), ": tensor ", *names.begin(), " is ",
                     t->dtype, ", expected F32, F16 or BF16"));
  }
  client::TensorView view{*dtype, t->shape, t->bytes.data(), t->bytes.size()};
  if (convert_to && *convert_to != *dtype) {
    storage.push_back(
        *client::Tensor::FromFloats(*convert_to, t->shape, view.ToFloats()));
    view = storage.back().view();
  }
  return std::optional<client::TensorView>(view);
}

// The options used, echoed into the output file's metadata.
using UsedOptions = std::map<std::string, std::string>;

// The bias: ALiBi (slopes from --slopes, else tensor slopes, else the
// server's) or relative (a model the server has loaded).
absl::Status SetBias(const ScoreFlags& flags, const SafetensorsFile& file,
                     ScoreRequest& request, UsedOptions& used) {
  const std::string mode = Option(flags.mode, file, "mode", "alibi");
  used["mode"] = mode;
  if (mode == "relative") {
    const std::string model = Option(flags.model, file, "model");
    if (model.empty()) {
      return absl::InvalidArgumentError(
          "relative mode needs --model NAME (a parameter set "
          "the server has loaded: see `attnscore models`)");
    }
    request.bias = client::Relative{model};
    used["model"] = model;
    return absl::OkStatus();
  }
  if (mode != "alibi") {
    return absl::InvalidArgumentError(
        absl::StrCat("mode '", mode, "': expected alibi or relative"));
  }
  client::Alibi alibi;
  if (!flags.slopes.empty()) {
    absl::StatusOr<std::vector<float>> slopes =
        ParseList<float>("--slopes", flags.slopes);
    if (!slopes.ok()) return slopes.status();
    alibi.slopes = *slopes;
  } else if (file.Find("slopes") != nullptr) {
    absl::StatusOr<std::vector<float>> slopes = file.ReadFloats("slopes");
    if (!slopes.ok()) return slopes.status();
    alibi.slopes = *slopes;
  }
  request.bias = std::move(alibi);
  return absl::OkStatus();
}

// Causal masking, the scale and the layout.
absl::Status SetMasking(const ScoreFlags& flags, const SafetensorsFile& file,
                        ScoreRequest& request, UsedOptions& used) {
  const std::string causal = Option(flags.causal, file, "causal", "false");
  absl::StatusOr<bool> causal_value = ParseBool("causal", causal);
  if (!causal_value.ok()) return causal_value.status();
  request.causal = *causal_value;
  used["causal"] = request.causal ? "true" : "false";

  const std::string scale = Option(flags.scale, file, "scale", "default");
  if (scale != "default") {
    float value;
    if (!absl::SimpleAtof(scale, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("scale: '", scale, "' is not a number"));
    }
    request.scale = value;
  }
  used["scale"] = scale;

  const std::string layout = Option(flags.layout, file, "layout", "BHSD");
  std::optional<Layout> layout_value = ParseLayout(layout);
  if (!layout_value) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout '", layout, "': expected BHSD, BSHD or SBHD"));
  }
  request.layout = *layout_value;
  used["layout"] = LayoutName(request.layout);
  return absl::OkStatus();
}

// Key lengths [B] from the flag or metadata (comma-separated), else tensor
// key_lengths.
absl::Status SetKeyLengths(const ScoreFlags& flags, const SafetensorsFile& file,
                           ScoreRequest& request, UsedOptions& used) {
  const std::string key_lengths =
      Option(flags.key_lengths, file, "key_lengths");
  if (!key_lengths.empty()) {
    absl::StatusOr<std::vector<int32_t>> lengths =
        ParseList<int32_t>("key_lengths", key_lengths);
    if (!lengths.ok()) return lengths.status();
    request.key_lengths = *lengths;
  } else if (file.Find("key_lengths") != nullptr) {
    // Stored as floats in the golden files; any numeric dtype works.
    absl::StatusOr<std::vector<float>> lengths = file.ReadFloats("key_lengths");
    if (!lengths.ok()) return lengths.status();
    for (float v : *lengths) {
      request.key_lengths.push_back(static_cast<int32_t>(v));
    }
  }
  if (!request.key_lengths.empty()) {
    used["key_lengths"] = absl::StrJoin(request.key_lengths, ",");
  }
  return absl::OkStatus();
}

// The outputs wanted (logits, probs, context).
absl::Status SetOutputs(const ScoreFlags& flags, const SafetensorsFile& file,
                        ScoreRequest& request) {
  absl::StatusOr<client::Outputs> outputs =
      ParseOutputs(Option(flags.outputs, file, "outputs", "logits"));
  if (!outputs.ok()) return outputs.status();
  request.outputs = *outputs;
  return absl::OkStatus();
}

absl::Status SetOutputDType(const ScoreFlags& flags,
                            const SafetensorsFile& file,
                            ScoreRequest& request) {
  const std::string output_dtype =
      Option(flags.output_dtype, file, "output_dtype");
  if (output_dtype.empty()) return absl::OkStatus();
  absl::StatusOr<DType> dtype = ParseDTypeFlag("output_dtype", output_dtype);
  if (!dtype.ok()) return dtype.status();
  request.output_dtype = *dtype;
  return absl::OkStatus();
}

// --input-dtype: q, k and v are converted to it before sending; unset: as
// stored.
absl::StatusOr<std::optional<DType>> InputDType(const ScoreFlags& flags) {
  if (flags.input_dtype.empty()) return std::optional<DType>();
  absl::StatusOr<DType> dtype =
      ParseDTypeFlag("--input-dtype", flags.input_dtype);
  if (!dtype.ok()) return dtype.status();
  return std::optional<DType>(*dtype);
}

// q, k and optional v as views into `file` (or into `storage` when converted
// to `input_dtype`). REQUIRES: `storage` has capacity for 3 tensors, so that
// views into it do not move.
absl::Status SetInputTensors(const ScoreFlags& flags,
                             const SafetensorsFile& file,
                             std::optional<DType> input_dtype,
                             std::vector<client::Tensor>& storage,
                             ScoreRequest& request) {
  absl::StatusOr<std::optional<client::TensorView>> q =
      InputTensor(file, {"q", "query"}, input_dtype, storage);
  absl::StatusOr<std::optional<client::TensorView>> k =
      InputTensor(file, {"k", "key"}, input_dtype, storage);
  absl::StatusOr<std::optional<client::TensorView>> v =
      InputTensor(file, {"v", "value"}, input_dtype, storage);
  for (const auto* t : {&q, &k, &v}) {
    if (!t->ok()) return t->status();
  }
  if (!q->has_value() || !k->has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        flags.input, ": needs tensors q and k (and v for context)"));
  }
  request.query = **q;
  request.key = **k;
  if (v->has_value()) request.value = **v;
  if (request.outputs.context && !request.value) {
    return absl::InvalidArgumentError(
        absl::StrCat(flags.input, ": context needs tensor v"));
  }
  return absl::OkStatus();
}

// The whole request from flags and `file`, checked in the order the options
// are documented; every error is a usage error. `storage` as for
// SetInputTensors.
absl::Status BuildRequest(const ScoreFlags& flags, const SafetensorsFile& file,
                          std::vector<client::Tensor>& storage,
                          ScoreRequest& request, UsedOptions& used) {
  request.request_id = flags.request_id;
  if (absl::Status s = SetBias(flags, file, request, used); !s.ok()) return s;
  if (absl::Status s = SetMasking(flags, file, request, used); !s.ok()) {
    return s;
  }
  if (absl::Status s = SetKeyLengths(flags, file, request, used); !s.ok()) {
    return s;
  }
  if (absl::Status s = SetOutputs(flags, file, request); !s.ok()) return s;
  absl::StatusOr<std::optional<DType>> input_dtype = InputDType(flags);
  if (!input_dtype.ok()) return input_dtype.status();
  if (absl::Status s = SetOutputDType(flags, file, request); !s.ok()) return s;
  return SetInputTensors(flags, file, *input_dtype, storage, request);
}

// One request over a ScoreStream: open, write, half-close, read the one
// response. Every error is the call's (exit 1).
absl::StatusOr<ScoreResult> ScoreOverStream(client::Client& client,
                                            const ScoreRequest& request,
                                            absl::Duration timeout) {
  client::CallOptions call;
  call.timeout = timeout;
  absl::StatusOr<std::unique_ptr<client::Stream>> stream =
      client.OpenStream({}, call);
  if (!stream.ok()) return stream.status();
  if (absl::Status s = (*stream)->Write(request, timeout); !s.ok()) return s;
  (*stream)->WritesDone();
  absl::StatusOr<client::StreamResponse> response = (*stream)->Read(timeout);
  if (!response.ok()) {
    absl::Status finished = (*stream)->Finish(absl::Seconds(1));
    return finished.ok() ? response.status() : finished;
  }
  (*stream)->Finish(timeout).IgnoreError();
  return std::move(response->result);
}

// The result's tensors by output name, in file order (unset ones included).
using NamedOutputs =
    std::array<std::pair<const char*, const std::optional<client::Tensor>*>, 3>;
NamedOutputs OutputsOf(const ScoreResult& result) {
  return {{{"logits", &result.logits},
           {"probs", &result.probs},
           {"context", &result.context}}};
}

// The outputs as a safetensors file, with the options used and the server's
// timing in __metadata__. Returns the exit code.
int WriteOutputs(const std::string& path, const ScoreResult& result,
                 const UsedOptions& used) {
  SafetensorsWriter writer;
  for (const auto& [name, tensor] : OutputsOf(result)) {
    if (!tensor->has_value()) continue;
    const client::Tensor& t = **tensor;
    absl::Status s = writer.Add(
        name, DTypeName(t.dtype()), t.shape(),
        std::string_view(static_cast<const char*>(t.data()), t.size_bytes()));
    if (!s.ok()) return Fail("score", s, kExitFailed);
  }
  for (const auto& [key, value] : used) writer.SetMetadata(key, value);
  writer.SetMetadata("request_id", result.request_id);
  writer.SetMetadata("queue_us", absl::StrCat(result.timing.queue_us));
  writer.SetMetadata("compute_us", absl::StrCat(result.timing.compute_us));
  writer.SetMetadata("batch_size", absl::StrCat(result.timing.batch_size));
  if (absl::Status s = writer.Write(path); !s.ok()) {
    return Fail("score", s, kExitUsage);
  }
  return kExitOk;
}

// One line: each output's shape and dtype, the server's timing and where the
// outputs went.
void PrintReport(const ScoreResult& result, const std::string& output) {
  std::vector<std::string> summary;
  for (const auto& [name, tensor] : OutputsOf(result)) {
    if (!tensor->has_value()) continue;
    summary.push_back(absl::StrCat(name, " ",
                                   client::ShapeString((*tensor)->shape()), " ",
                                   DTypeName((*tensor)->dtype())));
  }
  std::printf("%s; server queue %lld us, compute %lld us, batch %d%s%s\n",
              absl::StrJoin(summary, ", ").c_str(),
              static_cast<long long>(result.timing.queue_us),
              static_cast<long long>(result.timing.compute_us),
              result.timing.batch_size, output.empty() ? "" : " -> ",
              output.c_str());
}

}  // namespace

CLI::App* AddScoreCommand(CLI::App& app, ScoreFlags& flags) {
  CLI::App* cmd =
      app.add_subcommand("score",
                         "Score one request from a safetensors file (q, k, "
                         "optional v, key_lengths, slopes; "
                         "options from flags or the file's __metadata__) and "
                         "write the outputs as safetensors");
  cmd->add_option("input,-i,--input", flags.input, "Input safetensors file")
      ->required();
  cmd->add_option("-o,--output", flags.output,
                  "Output safetensors file (tensors logits, probs, context)");
  cmd->add_option("--outputs", flags.outputs,
                  "Comma-separated subset of logits,probs,context (metadata "
                  "'outputs'; default "
                  "logits)");
  cmd->add_option("--mode", flags.mode,
                  "alibi or relative (metadata 'mode'; default alibi)");
  cmd->add_option("--model", flags.model,
                  "Relative mode: the server's parameter set (metadata "
                  "'model'; see `models`)");
  cmd->add_option("--causal", flags.causal,
                  "true or false (metadata 'causal'; default false)");
  cmd->add_option("--scale", flags.scale,
                  "A number, or 'default' for 1/sqrt(D) (metadata 'scale')");
  cmd->add_option("--layout", flags.layout,
                  "BHSD, BSHD or SBHD (metadata 'layout'; default BHSD)");
  cmd->add_option("--key-lengths", flags.key_lengths,
                  "Comma-separated B lengths (metadata 'key_lengths', else "
                  "tensor key_lengths)");
  cmd->add_option(
      "--slopes", flags.slopes,
      "ALiBi: comma-separated H slopes (else tensor slopes, else the paper's)");
  cmd->add_option(
      "--input-dtype", flags.input_dtype,
      "Convert q/k/v to F32, F16 or BF16 before sending (default: as stored)");
  cmd->add_option(
      "--output-dtype", flags.output_dtype,
      "F32, F16 or BF16 (metadata 'output_dtype'; default: the input's)");
  cmd->add_option("--request-id", flags.request_id,
                  "Request id (appears in server logs)");
  cmd->add_flag("--stream", flags.stream,
                "Send over ScoreStream instead of unary Score");
  cmd->add_flag("-q,--quiet", flags.quiet, "Print nothing on success");
  return cmd;
}

int RunScore(const GlobalFlags& global, const ScoreFlags& flags) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Read(flags.input);
  if (!file.ok()) return Fail("score", file.status(), kExitUsage);

  ScoreRequest request;
  UsedOptions used;
  std::vector<client::Tensor> storage;
  storage.reserve(3);  // views into it must not move
  if (absl::Status s = BuildRequest(flags, *file, storage, request, used);
      !s.ok()) {
    return Fail("score", s, kExitUsage);
  }

  absl::StatusOr<std::unique_ptr<client::Client>> client = MakeClient(global);
  if (!client.ok()) return Fail("score", client.status(), kExitUsage);
  absl::StatusOr<ScoreResult> result;
  if (flags.stream) {
    absl::StatusOr<absl::Duration> timeout =
        ParseDurationFlag("--timeout", global.timeout);
    if (!timeout.ok()) return Fail("score", timeout.status(), kExitUsage);
    result = ScoreOverStream(**client, request, *timeout);
  } else {
    result = (*client)->Score(request);
  }
  if (!result.ok()) return Fail("score", result.status(), kExitFailed);

  if (!flags.output.empty()) {
    if (int code = WriteOutputs(flags.output, *result, used); code != kExitOk) {
      return code;
    }
  }
  if (!flags.quiet) PrintReport(*result, flags.output);
  return kExitOk;
}

}  // namespace attnscore::cli
