#include "client/load/workload.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace attnscore::client::load {
namespace {

// Large enough for any sensible request, small enough that a typo cannot ask
// for terabytes.
constexpr int64_t kMaxDim = 1 << 20;
constexpr int64_t kMaxInputBytes = int64_t{1} << 31;

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

struct Preset {
  const char* name;
  RequestShape shape;
};
constexpr Preset kPresets[] = {
    {"decode", {1, 8, 1, 2048, 64}},
    {"prefill512", {1, 8, 512, 512, 64}},
    {"prefill2048", {1, 8, 2048, 2048, 64}},
};

absl::StatusOr<RequestShape> PresetShape(absl::string_view name) {
  for (const Preset& p : kPresets) {
    if (name == p.name) return p.shape;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown preset '", name,
                   "': expected decode, prefill512, prefill2048 or mixed"));
}

// Fills `count` values of `dtype` in [-1, 1) from `state`.
void FillRandom(uint8_t* out, int64_t count, DType dtype, uint64_t& state) {
  std::vector<float> values(static_cast<size_t>(count));
  for (float& v : values) {
    state = SplitMix64(state);
    v = static_cast<float>(static_cast<double>(state >> 11) * 0x1.0p-53 * 2.0 -
                           1.0);
  }
  EncodeFloats(values.data(), values.size(), dtype, out);
}

absl::StatusOr<Workload::Kind> MakeKind(std::string name, const RequestShape& s,
                                        double weight,
                                        const WorkloadOptions& options,
                                        uint64_t seed) {
  for (int64_t dim : {s.batch, s.heads, s.query_len, s.key_len, s.head_dim}) {
    if (dim < 1 || dim > kMaxDim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shape ", name, ": every dim must be in [1, ", kMaxDim, "]"));
    }
  }
  if (!(weight > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", name, ": weight must be > 0"));
  }
  Workload::Kind kind;
  kind.name = std::move(name);
  kind.shape = s;
  kind.weight = weight;
  const size_t esize = ElementSize(options.dtype);
  // In double first: five dims of up to 2^20 overflow int64.
  const double approx_bytes =
      static_cast<double>(s.batch) * static_cast<double>(s.heads) *
      static_cast<double>(s.query_len + 2 * s.key_len) *
      static_cast<double>(s.head_dim) * static_cast<double>(esize);
  if (approx_bytes > static_cast<double>(kMaxInputBytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape ", kind.name, ": inputs over ", kMaxInputBytes, " bytes"));
  }
  const int64_t q_count = s.batch * s.heads * s.query_len * s.head_dim;
  const int64_t kv_count = s.batch * s.heads * s.key_len * s.head_dim;
  const bool with_value = options.outputs.context;
  const int64_t total = q_count + kv_count * (with_value ? 2 : 1);
  if (total * static_cast<int64_t>(esize) > kMaxInputBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape ", kind.name, ": inputs over ", kMaxInputBytes, " bytes"));
  }
  kind.data = std::make_shared<std::vector<uint8_t>>(
      static_cast<size_t>(total) * esize);
  uint8_t* base = kind.data->data();
  uint64_t state = seed;
  FillRandom(base, total, options.dtype, state);

  ScoreRequest& r = kind.request;
  if (options.mode == "relative") {
    r.bias = Relative{options.model};
  } else {
    r.bias = Alibi{};
  }
  r.query = TensorView{options.dtype,
                       {s.batch, s.heads, s.query_len, s.head_dim},
                       base,
                       static_cast<size_t>(q_count) * esize};
  r.key = TensorView{options.dtype,
                     {s.batch, s.heads, s.key_len, s.head_dim},
                     base + q_count * esize,
                     static_cast<size_t>(kv_count) * esize};
  if (with_value) {
    r.value = TensorView{options.dtype,
                         {s.batch, s.heads, s.key_len, s.head_dim},
                         base + (q_count + kv_count) * esize,
                         static_cast<size_t>(kv_count) * esize};
  }
  r.causal = options.causal;
  r.outputs = options.outputs;
  r.output_dtype = options.output_dtype;
  kind.request_bytes = total * static_cast<int64_t>(esize);
  const int64_t out_esize = static_cast<int64_t>(
      ElementSize(options.output_dtype.value_or(options.dtype)));
  const int64_t scores = s.batch * s.heads * s.query_len * s.key_len;
  const bool logits =
      options.outputs.logits ||
      (!options.outputs.probs && !options.outputs.context);  // server default
  for (const auto& [output, count] :
       {std::pair{Output::kLogits, logits ? scores : 0},
        std::pair{Output::kProbs, options.outputs.probs ? scores : 0},
        std::pair{Output::kContext, options.outputs.context ? q_count : 0}}) {
    if (count == 0) continue;
    kind.output_bytes.emplace_back(output,
                                   static_cast<size_t>(count * out_esize));
    kind.response_bytes += count * out_esize;
  }
  return kind;
}

constexpr size_t kKindAlignment = 4096;
constexpr size_t kInputAlignment = 64;

size_t AlignUp(size_t bytes, size_t alignment) {
  return (bytes + alignment - 1) / alignment * alignment;
}

// The inputs of `request` that exist: query, key and value if given.
std::vector<const TensorView*> Inputs(const ScoreRequest& request) {
  std::vector<const TensorView*> inputs = {&request.query, &request.key};
  if (request.value.has_value()) inputs.push_back(&*request.value);
  return inputs;
}

}  // namespace

absl::StatusOr<std::pair<RequestShape, double>> ParseShape(
    absl::string_view text) {
  absl::string_view dims_text = text;
  double weight = 1;
  if (const size_t colon = text.find(':'); colon != absl::string_view::npos) {
    dims_text = text.substr(0, colon);
    if (!absl::SimpleAtod(text.substr(colon + 1), &weight) || !(weight > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shape '", text, "': the weight after ':' must be a number > 0"));
    }
  }
  std::vector<absl::string_view> parts = absl::StrSplit(dims_text, ',');
  if (parts.size() != 5) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape '", text, "': expected B,H,Lq,Lk,D (five integers)"));
  }
  int64_t dims[5];
  for (int i = 0; i < 5; ++i) {
    // Accept "B2" / "Lq16" as well as "2": strip a leading label.
    absl::string_view p = absl::StripAsciiWhitespace(parts[i]);
    while (!p.empty() && !absl::ascii_isdigit(p.front()) && p.front() != '-') {
      p.remove_prefix(1);
    }
    if (!absl::SimpleAtoi(p, &dims[i]) || dims[i] < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shape '", text, "': '", parts[i], "' is not a positive integer"));
    }
  }
  return std::make_pair(
      RequestShape{dims[0], dims[1], dims[2], dims[3], dims[4]}, weight);
}

absl::StatusOr<Workload> Workload::Create(const WorkloadOptions& options) {
  if (options.mode != "alibi" && options.mode != "relative") {
    return absl::InvalidArgumentError(
        absl::StrCat("mode '", options.mode, "': expected alibi or relative"));
  }
  if (options.mode == "relative" && options.model.empty()) {
    return absl::InvalidArgumentError(
        "relative mode needs a model (see `attnscore models`)");
  }
  std::vector<std::tuple<std::string, RequestShape, double>> specs;
  if (options.preset == "mixed") {
    specs.emplace_back("decode", *PresetShape("decode"), 0.90);
    specs.emplace_back("prefill512", *PresetShape("prefill512"), 0.09);
    specs.emplace_back("prefill2048", *PresetShape("prefill2048"), 0.01);
  } else if (!options.preset.empty()) {
    absl::StatusOr<RequestShape> shape = PresetShape(options.preset);
    if (!shape.ok()) return shape.status();
    specs.emplace_back(options.preset, *shape, 1.0);
  }
  for (const std::string& text : options.shapes) {
    absl::StatusOr<std::pair<RequestShape, double>> parsed = ParseShape(text);
    if (!parsed.ok()) return parsed.status();
    const RequestShape& s = parsed->first;
    specs.emplace_back(
        absl::StrCat("B", s.batch, ",H", s.heads, ",Lq", s.query_len, ",Lk",
                     s.key_len, ",D", s.head_dim),
        s, parsed->second);
  }
  if (specs.empty()) specs.emplace_back("decode", *PresetShape("decode"), 1.0);

  Workload workload;
  workload.options_ = options;
  double total_weight = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto& [name, shape, weight] = specs[i];
    absl::StatusOr<Kind> kind = MakeKind(
        name, shape, weight, options, SplitMix64(options.seed * 1000003 + i));
    if (!kind.ok()) return kind.status();
    total_weight += kind->weight;
    workload.kinds_.push_back(*std::move(kind));
  }
  double running = 0;
  for (const Kind& kind : workload.kinds_) {
    running += kind.weight / total_weight;
    workload.cumulative_.push_back(running);
  }
  workload.cumulative_.back() = 1.0;
  return workload;
}

size_t Workload::SharedInputBytes() const {
  size_t bytes = 0;
  for (const Kind& kind : kinds_) {
    bytes = AlignUp(bytes, kKindAlignment);
    for (const TensorView* input : Inputs(kind.request)) {
      bytes = AlignUp(bytes, kInputAlignment) + input->size_bytes;
    }
  }
  return bytes;
}

void Workload::UseSharedInputs(const std::string& region, uint8_t* base) {
  size_t offset = 0;
  for (Kind& kind : kinds_) {
    offset = AlignUp(offset, kKindAlignment);
    std::optional<SharedMemoryRange>* ranges[] = {
        &kind.request.shared_inputs.query, &kind.request.shared_inputs.key,
        &kind.request.shared_inputs.value};
    const std::vector<const TensorView*> inputs = Inputs(kind.request);
    for (size_t i = 0; i < inputs.size(); ++i) {
      offset = AlignUp(offset, kInputAlignment);
      std::memcpy(base + offset, inputs[i]->data, inputs[i]->size_bytes);
      *ranges[i] = SharedMemoryRange{region, offset, inputs[i]->size_bytes};
      offset += inputs[i]->size_bytes;
    }
  }
}

size_t Workload::SharedOutputSlotBytes() const {
  size_t slot = 0;
  for (const Kind& kind : kinds_) {
    size_t bytes = 0;
    for (const auto& [output, size] : kind.output_bytes) {
      bytes = AlignUp(bytes, kInputAlignment) + size;
    }
    slot = std::max(slot, bytes);
  }
  return AlignUp(slot, kKindAlignment);
}

size_t Workload::SharedBytes(int output_slots) const {
  return AlignUp(SharedInputBytes(), kKindAlignment) +
         static_cast<size_t>(output_slots) * SharedOutputSlotBytes();
}

void Workload::UseSharedOutputs(const std::string& region, int slots) {
  output_region_ = region;
  output_offset_ = SharedBytes(0);
  output_slot_bytes_ = SharedOutputSlotBytes();
  output_slots_ = slots;
  for (Kind& kind : kinds_) {
    // Placements name their outputs: the server's default one too.
    Outputs& asked = kind.request.outputs;
    if (!asked.logits && !asked.probs && !asked.context) asked.logits = true;
  }
}

std::vector<OutputPlacement> Workload::PlacementsFor(size_t kind,
                                                     int slot) const {
  std::vector<OutputPlacement> placements;
  size_t offset =
      output_offset_ + static_cast<size_t>(slot) * output_slot_bytes_;
  for (const auto& [output, bytes] : kinds_[kind].output_bytes) {
    offset = AlignUp(offset, kInputAlignment);
    placements.push_back(OutputPlacement{
        output, SharedMemoryRange{output_region_, offset, bytes}});
    offset += bytes;
  }
  return placements;
}

size_t Workload::Pick(uint64_t index) const {
  if (kinds_.size() == 1) return 0;
  const double u =
      static_cast<double>(SplitMix64(options_.seed ^ SplitMix64(index)) >> 11) *
      0x1.0p-53;
  const auto it = std::upper_bound(cumulative_.begin(), cumulative_.end(), u);
  return std::min(static_cast<size_t>(it - cumulative_.begin()),
                  kinds_.size() - 1);
}

}  // namespace attnscore::client::load
