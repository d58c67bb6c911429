#include "common/safetensors.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/layout.h"
#include "nlohmann/json.hpp"

namespace attnscore {
namespace {

// A header larger than this is not a real safetensors file (the format's own
// limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;
// A safetensors header nests three deep ({name: {shape: [...]}}); nlohmann's
// parser and dump() recurse once per level, so untrusted nesting is refused
// before either runs.
constexpr int kMaxHeaderDepth = 8;
// Untrusted JSON quoted in an error message is cut to this many bytes.
constexpr size_t kMaxQuotedJson = 120;

// The deepest [ / { nesting of `json`, counted outside strings, stopping as
// soon as it passes `limit` (the text may be 100 MB of brackets).
int JsonNestingDepth(std::string_view json, int limit) {
  int depth = 0;
  int deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < json.size() && deepest <= limit; ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

// `value` as JSON for an error message, at most kMaxQuotedJson bytes. Only
// called on a header whose depth was bounded, so dump() cannot recurse deeply.
std::string QuoteJson(const nlohmann::json& value) {
  std::string text = value.dump();
  if (text.size() > kMaxQuotedJson) {
    text.resize(kMaxQuotedJson);
    text += "...";
  }
  return text;
}

// The element count and byte size of `shape`, or an error naming the
// dimension at which either passes int64 (a 40-byte header could otherwise
// claim 2^64 elements and wrap around to a small, matching byte count).
absl::Status CheckedShapeSize(const std::vector<int64_t>& shape,
                              size_t element_size, const std::string& where,
                              int64_t* elements, int64_t* bytes) {
  int64_t count = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (__builtin_mul_overflow(count, shape[d], &count)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": shape ", ShapeString(shape), " overflows int64 at dim ", d,
          " (size ", shape[d], ")"));
    }
  }
  int64_t size = 0;
  if (__builtin_mul_overflow(count, static_cast<int64_t>(element_size),
                             &size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": shape ", ShapeString(shape), " has ", count, " elements of ",
        element_size, " bytes: the byte size overflows int64"));
  }
  *elements = count;
  *bytes = size;
  return absl::OkStatus();
}

// A tensor's byte range in the payload, for the layout check.
struct Extent {
  uint64_t begin;
  uint64_t end;
  const std::string* name;
};

// As the reference implementation requires: the tensors tile the payload
// exactly, in offset order, with no overlap, gap or trailing bytes. Overlap
// would let two tensors alias (and a tiny file claim gigabytes of tensors).
absl::Status CheckLayout(std::vector<Extent> extents, uint64_t payload_size,
                         const std::string& origin) {
  std::sort(extents.begin(), extents.end(),
            [](const Extent& a, const Extent& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t expected_begin = 0;
  const std::string* previous = nullptr;
  for (const Extent& e : extents) {
    if (e.begin != expected_begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          origin, ": tensor '", *e.name, "' data_offsets [", e.begin, ",",
          e.end, "] ",
          e.begin < expected_begin ? "overlap" : "leave a gap after",
          previous == nullptr ? std::string(" the payload start")
                              : absl::StrCat(" tensor '", *previous, "'"),
          " (expected begin ", expected_begin, ")"));
    }
    expected_begin = e.end;
    previous = e.name;
  }
  if (expected_begin != payload_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": tensors cover ", expected_begin, " bytes of a ",
                     payload_size, "-byte payload"));
  }
  return absl::OkStatus();
}

absl::Status ParseMetadata(const nlohmann::json& metadata,
                           const std::string& origin,
                           std::map<std::string, std::string>* out) {
  if (!metadata.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": __metadata__ is not an object"));
  }
  for (auto m = metadata.begin(); m != metadata.end(); ++m) {
    if (!m->is_string()) {
      // The format says string -> string; a value of another type is kept as
      // its JSON text (the header's depth is bounded, so dump() is safe).
      (*out)[m.key()] = m->dump();
    } else {
      (*out)[m.key()] = m->get<std::string>();
    }
  }
  return absl::OkStatus();
}

// One header entry; `payload` is the bytes after the header, which the
// tensor's bytes view.
absl::StatusOr<SafetensorsFile::Tensor> ParseEntry(const std::string& origin,
                                                   const std::string& key,
                                                   const nlohmann::json& entry,
                                                   std::string_view payload) {
  using Tensor = SafetensorsFile::Tensor;
  const std::string where = absl::StrCat(origin, ": tensor '", key, "'");
  if (!entry.is_object() || !entry.contains("dtype") ||
      !entry.contains("shape") || !entry.contains("data_offsets") ||
      !entry["dtype"].is_string() || !entry["shape"].is_array() ||
      !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected {dtype, shape, data_offsets[2]}, got ",
                     QuoteJson(entry)));
  }
  Tensor tensor;
  tensor.dtype = entry["dtype"].get<std::string>();
  for (const auto& d : entry["shape"]) {
    // is_number_unsigned: a non-negative integer; a value past int64 is
    // refused rather than wrapped negative.
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": bad shape ", QuoteJson(entry["shape"]),
                       ": dims must be integers in [0, 2^63)"));
    }
    tensor.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }
  const size_t element_size = SafetensorsElementSize(tensor.dtype);
  if (element_size == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": unknown dtype ", tensor.dtype.substr(0, kMaxQuotedJson),
        tensor.dtype.size() > kMaxQuotedJson ? "..." : ""));
  }
  int64_t elements = 0;
  int64_t expected = 0;
  absl::Status size_status =
      CheckedShapeSize(tensor.shape, element_size, where, &elements, &expected);
  if (!size_status.ok()) return size_status;
  const auto& offsets = entry["data_offsets"];
  if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": bad data_offsets ", QuoteJson(offsets),
                     ", expected two non-negative integers"));
  }
  const uint64_t begin = offsets[0].get<uint64_t>();
  const uint64_t end = offsets[1].get<uint64_t>();
  if (begin > end) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": data_offsets [", begin, ",", end, "] end before they begin"));
  }
  if (end > payload.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data_offsets [", begin, ",", end,
                     "] outside payload of ", payload.size(), " bytes"));
  }
  if (end - begin != static_cast<uint64_t>(expected)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", end - begin, " bytes, expected ", expected,
                     " for ", tensor.dtype, " ", ShapeString(tensor.shape)));
  }
  tensor.bytes = payload.substr(begin, end - begin);
  return tensor;
}

}  // namespace

size_t SafetensorsElementSize(std::string_view dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") {
    return 2;
  }
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

int64_t SafetensorsFile::Tensor::NumElements() const {
  // Parse checked that the product fits in int64.
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return Parse(std::move(buffer).str(), path);
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::string contents,
                                                       std::string origin) {
  SafetensorsFile file;
  file.origin_ = std::move(origin);
  file.contents_ = std::make_unique<const std::string>(std::move(contents));
  const std::string& data = *file.contents_;
  const std::string& name = file.origin_;
  if (data.size() < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": not a safetensors file: ", data.size(),
                     " bytes, expected >= 8"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, data.data(), 8);
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": header length ", header_len, " exceeds the ",
                     kMaxHeaderBytes, "-byte limit of the format"));
  }
  if (header_len > data.size() - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": header length ", header_len, " exceeds the ",
                     data.size() - 8, " bytes after the length field"));
  }
  const std::string_view header_text(data.data() + 8, header_len);
  const int depth = JsonNestingDepth(header_text, kMaxHeaderDepth);
  if (depth > kMaxHeaderDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": header nests JSON deeper than ", kMaxHeaderDepth,
                     " levels (a safetensors header needs 3)"));
  }
  nlohmann::json header =
      nlohmann::json::parse(header_text.begin(), header_text.end(), nullptr,
                            /*allow_exceptions=*/false);
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": header is not a JSON object"));
  }
  const size_t payload_begin = 8 + header_len;
  const uint64_t payload_size = data.size() - payload_begin;
  std::vector<Extent> extents;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      absl::Status status = ParseMetadata(*it, name, &file.metadata_);
      if (!status.ok()) return status;
      continue;
    }
    absl::StatusOr<Tensor> tensor = ParseEntry(
        name, it.key(), *it, std::string_view{data}.substr(payload_begin));
    if (!tensor.ok()) return tensor.status();
    const auto offset = static_cast<uint64_t>(tensor->bytes.data() -
                                              (data.data() + payload_begin));
    auto [entry, inserted] =
        file.tensors_.emplace(it.key(), *std::move(tensor));
    extents.push_back(
        Extent{offset, offset + entry->second.bytes.size(), &entry->first});
  }
  absl::Status layout = CheckLayout(std::move(extents), payload_size, name);
  if (!layout.ok()) return layout;
  return file;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, tensor] : tensors_) names.push_back(name);
  return names;
}

const SafetensorsFile::Tensor* SafetensorsFile::Find(
    std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<const SafetensorsFile::Tensor*> SafetensorsFile::Get(
    std::string_view name) const {
  const Tensor* tensor = Find(name);
  if (tensor == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(origin_, ": no tensor named '", std::string(name), "'"));
  }
  return tensor;
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadFloats(
    std::string_view name) const {
  absl::StatusOr<const Tensor*> tensor = Get(name);
  if (!tensor.ok()) return tensor.status();
  const Tensor& t = **tensor;
  std::vector<float> out(static_cast<size_t>(t.NumElements()));
  if (std::optional<DType> dtype = ParseDType(t.dtype)) {
    DecodeFloats(t.bytes.data(), out.size(), *dtype, out.data());
  } else if (t.dtype == "I32") {
    for (size_t i = 0; i < out.size(); ++i) {
      int32_t v;
      std::memcpy(&v, t.bytes.data() + 4 * i, 4);
      out[i] = static_cast<float>(v);
    }
  } else if (t.dtype == "I64") {
    for (size_t i = 0; i < out.size(); ++i) {
      int64_t v;
      std::memcpy(&v, t.bytes.data() + 8 * i, 8);
      out[i] = static_cast<float>(v);
    }
  } else if (t.dtype == "F64") {
    for (size_t i = 0; i < out.size(); ++i) {
      double v;
      std::memcpy(&v, t.bytes.data() + 8 * i, 8);
      out[i] = static_cast<float>(v);
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(origin_, ": tensor '", std::string(name), "' has dtype ",
                     t.dtype, ", expected a float or integer type"));
  }
  return out;
}

absl::Status SafetensorsWriter::Add(std::string name, std::string dtype,
                                    std::vector<int64_t> shape,
                                    std::string_view bytes) {
  const size_t element_size = SafetensorsElementSize(dtype);
  if (element_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': unknown dtype ", dtype));
  }
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "': bad shape ", ShapeString(shape)));
    }
  }
  int64_t count = 0;
  int64_t size = 0;
  absl::Status status = CheckedShapeSize(
      shape, element_size, absl::StrCat("tensor '", name, "'"), &count, &size);
  if (!status.ok()) return status;
  if (static_cast<uint64_t>(size) != bytes.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': ", bytes.size(), " bytes, expected ",
                     size, " for ", dtype, " ", ShapeString(shape)));
  }
  entries_[std::move(name)] =
      Entry{std::move(dtype), std::move(shape), std::string(bytes)};
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddFloats(std::string name,
                                          std::vector<int64_t> shape,
                                          const std::vector<float>& values) {
  return Add(std::move(name), "F32", std::move(shape),
             std::string_view(reinterpret_cast<const char*>(values.data()),
                              values.size() * sizeof(float)));
}

std::string SafetensorsWriter::Serialize() const {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const auto& [name, entry] : entries_) {
    header[name] = {{"dtype", entry.dtype},
                    {"shape", entry.shape},
                    {"data_offsets", {offset, offset + entry.bytes.size()}}};
    offset += entry.bytes.size();
  }
  std::string json = header.dump();
  // Pad the header with spaces so the payload starts 8-byte aligned, as the
  // reference writer does.
  while ((json.size() + 8) % 8 != 0) json.push_back(' ');
  const uint64_t header_len = json.size();
  std::string out;
  out.reserve(8 + json.size() + offset);
  out.append(reinterpret_cast<const char*>(&header_len), 8);
  out += json;
  for (const auto& [name, entry] : entries_) out += entry.bytes;
  return out;
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::PermissionDeniedError(
        absl::StrCat(path, ": cannot open for writing"));
  }
  const std::string bytes = Serialize();
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace attnscore
