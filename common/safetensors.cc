#include "common/safetensors.h"

#include <cstddef>
#include <cstring>
#include <fstream>
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
  if (header_len > kMaxHeaderBytes || header_len > data.size() - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": header length ", header_len,
                     " exceeds file size ", data.size()));
  }
  // header_len <= kMaxHeaderBytes (checked above): the offset fits.
  const auto header_end =
      data.begin() + 8 + static_cast<std::ptrdiff_t>(header_len);
  nlohmann::json header = nlohmann::json::parse(
      data.begin() + 8, header_end, nullptr, /*allow_exceptions=*/false);
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": header is not a JSON object"));
  }
  const size_t payload_begin = 8 + header_len;
  const size_t payload_size = data.size() - payload_begin;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ": __metadata__ is not an object"));
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        file.metadata_[m.key()] =
            m->is_string() ? m->get<std::string>() : m->dump();
      }
      continue;
    }
    const nlohmann::json& entry = *it;
    const std::string where = absl::StrCat(name, ": tensor '", it.key(), "'");
    if (!entry.is_object() || !entry.contains("dtype") ||
        !entry.contains("shape") || !entry.contains("data_offsets") ||
        !entry["dtype"].is_string() || !entry["shape"].is_array() ||
        !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected {dtype, shape, data_offsets[2]}"));
    }
    Tensor tensor;
    tensor.dtype = entry["dtype"].get<std::string>();
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": bad shape ", entry["shape"].dump()));
      }
      tensor.shape.push_back(d.get<int64_t>());
    }
    const size_t element_size = SafetensorsElementSize(tensor.dtype);
    if (element_size == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown dtype ", tensor.dtype));
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": bad data_offsets"));
    }
    const uint64_t begin = offsets[0].get<uint64_t>();
    const uint64_t end = offsets[1].get<uint64_t>();
    const uint64_t expected =
        static_cast<uint64_t>(tensor.NumElements()) * element_size;
    if (begin > end || end > payload_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets [", begin, ",", end,
                       "] outside payload of ", payload_size, " bytes"));
    }
    if (end - begin != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", end - begin, " bytes, expected ", expected,
                       " for ", tensor.dtype, " ", ShapeString(tensor.shape)));
    }
    tensor.bytes =
        std::string_view(data.data() + payload_begin + begin, end - begin);
    file.tensors_.emplace(it.key(), std::move(tensor));
  }
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
  uint64_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "': bad shape"));
    }
    count *= static_cast<uint64_t>(d);
  }
  if (count * element_size != bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': ", bytes.size(), " bytes, expected ",
        count * element_size, " for ", dtype, " ", ShapeString(shape)));
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
