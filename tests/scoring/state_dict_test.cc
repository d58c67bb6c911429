// LoadStateDict against files written by real torch.save (the project venv's
// Python makes them at test time), against hand-made archives that torch.save
// would never write, and against damaged files. Values are compared byte for
// byte with what Python wrote next to each .pt file.
#include "server/scoring/state_dict.h"

#include <ATen/core/Tensor.h>
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

#ifndef ATTNSCORE_VENV_PYTHON
#error "ATTNSCORE_VENV_PYTHON (the venv's python, a string literal) is required"
#endif
#ifndef ATTNSCORE_STATE_DICT_FIXTURE_SCRIPT
#error \
    "ATTNSCORE_STATE_DICT_FIXTURE_SCRIPT (make_state_dict_fixtures.py) is required"
#endif

namespace attnscore::scoring {
namespace {

using ::attnscore::testing::ReadFileOrEmpty;
using ::attnscore::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAreArray;

// Files are removed before being rewritten: ext4 flushes a file truncated and
// rewritten in place on close (auto_da_alloc), which made the loops below slow.
void RemoveFile(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
}

void WriteFile(const std::string& path, const std::string& contents) {
  RemoveFile(path);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  ASSERT_TRUE(out.good()) << path;
}

// Fixtures are generated once and shared by every test process (ctest runs each
// test alone): keyed by a hash of the script's contents, built in a private
// directory and renamed into place beside it, so parallel test processes never
// see a half-written set.
std::string FixtureDir(std::string* error) {
  namespace fs = std::filesystem;
  const std::string script = ATTNSCORE_STATE_DICT_FIXTURE_SCRIPT;
  const std::optional<std::string> contents =
      attnscore::testing::ReadFile(script);
  if (!contents.has_value()) {
    *error = "cannot read the fixture script " + script;
    return "";
  }
  // The scratch directory is removed on return unless it became `dir`.
  TempDir scratch("attnscore_state_dict_gen_");
  std::string dir = (fs::path(scratch.path()).parent_path() /
                     ("attnscore_state_dict_fixtures_" +
                      std::to_string(std::hash<std::string>()(*contents))))
                        .string();
  if (fs::exists(fs::path(dir) / "manifest.tsv")) return dir;
  const std::string log = scratch.File("python.log");
  const std::string command = std::string("'") + ATTNSCORE_VENV_PYTHON + "' '" +
                              script + "' '" + scratch.path() + "' > '" + log +
                              "' 2>&1";
  if (std::system(command.c_str()) != 0) {
    *error = "fixture script failed: " + command + "\n" + ReadFileOrEmpty(log);
    return "";
  }
  std::error_code ec;
  // On failure another process won the race: use its copy.
  fs::rename(scratch.path(), dir, ec);
  if (!fs::exists(fs::path(dir) / "manifest.tsv")) {
    *error = "fixtures missing from " + dir;
    return "";
  }
  return dir;
}

struct ExpectedTensor {
  std::string key;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

const std::map<std::string, c10::ScalarType>& DTypes() {
  static const auto* dtypes = new std::map<std::string, c10::ScalarType>{
      {"float32", c10::ScalarType::Float},
      {"float16", c10::ScalarType::Half},
      {"bfloat16", c10::ScalarType::BFloat16},
      {"float64", c10::ScalarType::Double},
      {"int64", c10::ScalarType::Long},
      {"int32", c10::ScalarType::Int},
      {"int16", c10::ScalarType::Short},
      {"int8", c10::ScalarType::Char},
      {"uint8", c10::ScalarType::Byte},
      {"bool", c10::ScalarType::Bool},
      {"complex64", c10::ScalarType::ComplexFloat},
  };
  return *dtypes;
}

std::vector<std::string> Split(const std::string& line, char sep) {
  std::vector<std::string> fields;
  std::string field;
  std::istringstream in(line);
  while (std::getline(in, field, sep)) fields.push_back(field);
  if (!line.empty() && line.back() == sep) fields.emplace_back();
  return fields;
}

std::string TensorBytes(const at::Tensor& t) {
  return std::string(static_cast<const char*>(t.data_ptr()), t.nbytes());
}

template <size_t N>
std::string Bytes(const char (&s)[N]) {
  return std::string(s, N - 1);
}

// A torch.save-shaped archive around an arbitrary pickle, written by LibTorch's
// own writer.
void WriteArchive(
    const std::string& path, const std::string& pickle,
    const std::vector<std::pair<std::string, std::string>>& records = {}) {
  RemoveFile(path);
  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [name, data] : records) {
    writer.writeRecord(name, data.data(), data.size());
  }
  writer.writeEndOfFile();
}

class StateDictTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fixture_error_ = new std::string;
    fixture_dir_ = new std::string(FixtureDir(fixture_error_));
  }
  static void TearDownTestSuite() {
    delete fixture_dir_;
    delete fixture_error_;
  }

  void SetUp() override {
    ASSERT_FALSE(fixture_dir_->empty()) << *fixture_error_;
  }

  static std::string Fixture(const std::string& name) {
    return *fixture_dir_ + "/" + name;
  }
  std::string Scratch(const std::string& name) const {
    return scratch_.File(name);
  }

  // What Python wrote for each .pt file, from manifest.tsv.
  static std::map<std::string, std::vector<ExpectedTensor>> Manifest() {
    std::map<std::string, std::vector<ExpectedTensor>> files;
    std::istringstream lines(ReadFileOrEmpty(Fixture("manifest.tsv")));
    std::string line;
    while (std::getline(lines, line)) {
      if (line.empty()) continue;
      const std::vector<std::string> fields = Split(line, '\t');
      EXPECT_EQ(fields.size(), 5u) << line;
      if (fields.size() != 5) continue;
      ExpectedTensor expected{
          fields[1], fields[2], {}, ReadFileOrEmpty(Fixture(fields[4]))};
      if (!fields[3].empty()) {
        for (const std::string& dim : Split(fields[3], ',')) {
          expected.shape.push_back(std::stoll(dim));
        }
      }
      files[fields[0]].push_back(std::move(expected));
    }
    return files;
  }

  static std::map<std::string, at::Tensor> LoadOk(const std::string& path) {
    absl::StatusOr<std::map<std::string, at::Tensor>> loaded =
        LoadStateDict(path);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? *std::move(loaded)
                       : std::map<std::string, at::Tensor>{};
  }

  static void ExpectError(const std::string& path, absl::StatusCode code,
                          const std::vector<std::string>& substrings) {
    absl::StatusOr<std::map<std::string, at::Tensor>> loaded =
        LoadStateDict(path);
    ASSERT_FALSE(loaded.ok())
        << path << " loaded " << loaded->size() << " tensors";
    EXPECT_EQ(loaded.status().code(), code) << loaded.status();
    const std::string message(loaded.status().message());
    EXPECT_THAT(message, HasSubstr(path));
    for (const std::string& s : substrings) EXPECT_THAT(message, HasSubstr(s));
  }

  static std::string* fixture_dir_;
  static std::string* fixture_error_;
  TempDir scratch_{"attnscore_state_dict_test_"};
};

std::string* StateDictTest::fixture_dir_ = nullptr;
std::string* StateDictTest::fixture_error_ = nullptr;

TEST_F(StateDictTest, EveryTensorMatchesWhatPythonWrote) {
  const auto manifest = Manifest();
  for (const char* file :
       {"dtypes.pt", "views.pt", "module.pt", "module_p4.pt", "module_vars.pt",
        "tied.pt", "crafted_ok.pt", "meta_empty.pt"}) {
    SCOPED_TRACE(file);
    ASSERT_EQ(manifest.count(file), 1u);
    const std::map<std::string, at::Tensor> loaded = LoadOk(Fixture(file));
    std::vector<std::string> expected_keys;
    for (const ExpectedTensor& e : manifest.at(file)) {
      expected_keys.push_back(e.key);
    }
    std::vector<std::string> loaded_keys;
    loaded_keys.reserve(loaded.size());
    for (const auto& entry : loaded) loaded_keys.push_back(entry.first);
    EXPECT_THAT(loaded_keys, UnorderedElementsAreArray(expected_keys));
    for (const ExpectedTensor& e : manifest.at(file)) {
      SCOPED_TRACE(e.key);
      auto it = loaded.find(e.key);
      if (it == loaded.end()) continue;
      const at::Tensor& t = it->second;
      ASSERT_TRUE(t.defined());
      EXPECT_EQ(t.scalar_type(), DTypes().at(e.dtype));
      EXPECT_EQ(t.sizes().vec(), e.shape);
      EXPECT_TRUE(t.is_contiguous());
      EXPECT_TRUE(t.device().is_cpu());
      EXPECT_EQ(TensorBytes(t), e.bytes);  // exact, NaN and -0.0 included
    }
  }
}

TEST_F(StateDictTest, RelativeAttentionModuleLayout) {
  const std::map<std::string, at::Tensor> loaded = LoadOk(Fixture("module.pt"));
  std::vector<std::string> keys;
  keys.reserve(loaded.size());
  for (const auto& entry : loaded) keys.push_back(entry.first);
  EXPECT_THAT(
      keys, UnorderedElementsAreArray(std::vector<std::string>{
                "query.linear.weight", "query.linear.bias", "key.linear.weight",
                "value.linear.weight", "value.linear.bias", "output.weight",
                "output.bias", "key_pos_embeddings", "key_pos_bias",
                "query_pos_bias"}));
  ASSERT_EQ(loaded.count("key_pos_embeddings"), 1u);
  const at::Tensor& embeddings = loaded.at("key_pos_embeddings");
  EXPECT_EQ(embeddings.sizes().vec(),
            (std::vector<int64_t>{6, 2, 4}));  // [2P, H, D]
  ASSERT_EQ(embeddings.scalar_type(), c10::ScalarType::Float);
  for (int64_t i = 0; i < 48; ++i) {
    EXPECT_EQ(embeddings.data_ptr<float>()[i], static_cast<float>(i) / 8) << i;
  }
  const at::Tensor& bias = loaded.at("key_pos_bias");
  EXPECT_EQ(bias.sizes().vec(), (std::vector<int64_t>{6, 2}));  // [2P, H]
  for (int64_t i = 0; i < 12; ++i) {
    EXPECT_EQ(bias.data_ptr<float>()[i], i - 5.0f) << i;
  }
  EXPECT_EQ(loaded.at("query_pos_bias").sizes().vec(),
            (std::vector<int64_t>{2, 4}));  // [H, D]
  EXPECT_EQ(loaded.at("query.linear.weight").sizes().vec(),
            (std::vector<int64_t>{8, 8}));
}

TEST_F(StateDictTest, ViewsAreCopiedOutOfTheirSharedStorage) {
  const std::map<std::string, at::Tensor> loaded = LoadOk(Fixture("views.pt"));
  ASSERT_EQ(loaded.count("slice"), 1u);
  const at::Tensor& slice =
      loaded.at("slice");  // big[1:, ::2], big = arange(60).reshape(5, 12)
  ASSERT_EQ(slice.sizes().vec(), (std::vector<int64_t>{4, 6}));
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t j = 0; j < 6; ++j) {
      EXPECT_EQ(slice.data_ptr<float>()[i * 6 + j],
                static_cast<float>(12 * (i + 1) + 2 * j));
    }
  }
  const at::Tensor& expand =
      loaded.at("expand");  // arange(3).expand(4, 3): stride 0
  for (int64_t i = 0; i < 12; ++i) {
    EXPECT_EQ(expand.data_ptr<float>()[i], i % 3) << i;
  }
  // Each tensor owns exactly its own elements, not the whole 60-float storage
  // it was saved with.
  std::set<const void*> pointers;
  for (const auto& [key, t] : loaded) {
    EXPECT_EQ(t.storage().nbytes(), t.nbytes()) << key;
    EXPECT_EQ(t.storage_offset(), 0) << key;
    pointers.insert(t.data_ptr());
  }
  EXPECT_EQ(pointers.size(), loaded.size());
  // Writing one does not show through another.
  loaded.at("whole").data_ptr<float>()[ptrdiff_t{2} * 12] = -1;
  EXPECT_EQ(loaded.at("row").data_ptr<float>()[0], 24.0f);
}

TEST_F(StateDictTest, SameTensorObjectLoadsOnce) {
  const std::map<std::string, at::Tensor> loaded = LoadOk(Fixture("tied.pt"));
  ASSERT_EQ(loaded.size(), 3u);
  EXPECT_TRUE(loaded.at("a").is_same(loaded.at("b")));
  EXPECT_FALSE(loaded.at("a").is_same(loaded.at("c")));
}

TEST_F(StateDictTest, ProtocolFourAndParametersLoadTheSameValues) {
  const std::map<std::string, at::Tensor> base = LoadOk(Fixture("module.pt"));
  for (const char* file : {"module_p4.pt", "module_vars.pt"}) {
    SCOPED_TRACE(file);
    const std::map<std::string, at::Tensor> other = LoadOk(Fixture(file));
    ASSERT_EQ(other.size(), base.size());
    for (const auto& [key, t] : base) {
      ASSERT_EQ(other.count(key), 1u) << key;
      EXPECT_EQ(TensorBytes(other.at(key)), TensorBytes(t)) << key;
    }
  }
}

TEST_F(StateDictTest, MissingFileIsNotFound) {
  ExpectError(Scratch("absent.pt"), absl::StatusCode::kNotFound,
              {"cannot open"});
}

TEST_F(StateDictTest, LegacyFormatAsksForZipResave) {
  ExpectError(Fixture("legacy.pt"), absl::StatusCode::kUnimplemented,
              {"legacy", "zip", "_use_new_zipfile_serialization"});
}

TEST_F(StateDictTest, NonArchivesAreRejected) {
  ExpectError(Fixture("bare_pickle.pt"), absl::StatusCode::kInvalidArgument,
              {"pickle", "zip"});
  ExpectError(Fixture("torchscript.pt"), absl::StatusCode::kInvalidArgument,
              {"TorchScript"});
  const std::string empty = Scratch("empty.pt");
  WriteFile(empty, "");
  ExpectError(empty, absl::StatusCode::kInvalidArgument,
              {"not a PyTorch zip archive"});
  std::mt19937 rng(1234);
  std::string noise(4096, '\0');
  for (char& c : noise) c = static_cast<char>(rng());
  const std::string random = Scratch("random.pt");
  WriteFile(random, noise);
  ExpectError(random, absl::StatusCode::kInvalidArgument,
              {"not a PyTorch zip archive"});
  // A zip signature followed by noise: damaged, and said so.
  WriteFile(random, "PK\x03\x04" + noise);
  ExpectError(random, absl::StatusCode::kDataLoss, {"zip archive"});
}

TEST_F(StateDictTest, UnsupportedContentsAreRejected) {
  using Code = absl::StatusCode;
  ExpectError(Fixture("unknown_global.pt"), Code::kInvalidArgument,
              {"unsupported global", "datetime.date"});
  ExpectError(Fixture("whole_module.pt"), Code::kInvalidArgument,
              {"unsupported global"});
  ExpectError(Fixture("non_tensor.pt"), Code::kInvalidArgument,
              {"'step'", "has type int"});
  ExpectError(Fixture("nested.pt"), Code::kInvalidArgument,
              {"'model'", "has type dict"});
  ExpectError(Fixture("list_root.pt"), Code::kInvalidArgument,
              {"holds type list"});
  ExpectError(Fixture("int_key.pt"), Code::kInvalidArgument,
              {"key of type int"});
  ExpectError(Fixture("meta_conj.pt"), Code::kInvalidArgument, {"'conj'"});
  ExpectError(Fixture("bad_pid.pt"), Code::kInvalidArgument, {"persistent id"});
  ExpectError(Fixture("rank_mismatch.pt"), Code::kInvalidArgument,
              {"size has 2 dims"});
  ExpectError(Fixture("long_int.pt"), Code::kInvalidArgument,
              {"does not fit in int64"});
  // 4 TiB from one element: over the file's load limit (StateDictLimits).
  ExpectError(Fixture("huge_expand.pt"), Code::kResourceExhausted,
              {"repeats storage elements", "over the limit of"});
  ExpectError(Fixture("big_endian.pt"), Code::kUnimplemented, {"byteorder"});
}

TEST_F(StateDictTest, InconsistentArchivesAreDataLoss) {
  using Code = absl::StatusCode;
  ExpectError(Fixture("out_of_bounds.pt"), Code::kDataLoss,
              {"outside its storage"});
  ExpectError(Fixture("numel_overflow.pt"), Code::kDataLoss,
              {"overflows int64"});
  ExpectError(Fixture("negative_stride.pt"), Code::kDataLoss,
              {"negative size or stride"});
  ExpectError(Fixture("numel_mismatch.pt"), Code::kDataLoss,
              {"declares 24 bytes", "need 32"});
  ExpectError(Fixture("missing_record.pt"), Code::kDataLoss,
              {"'data/9'", "missing"});
  ExpectError(Fixture("dtype_conflict.pt"), Code::kDataLoss,
              {"storage '0' referenced as Int"});
}

TEST_F(StateDictTest, HandWrittenPickles) {
  using Code = absl::StatusCode;
  const std::string file = Scratch("hand.pt");
  const auto check = [&](const std::string& pickle, Code code,
                         const std::string& substring) {
    SCOPED_TRACE(substring);
    WriteArchive(file, pickle);
    ExpectError(file, code, {substring});
  };
  WriteArchive(file, Bytes("\x80\x02}q\x00."));
  EXPECT_TRUE(LoadOk(file).empty());
  check(Bytes("\x80\x02}"), Code::kDataLoss, "without STOP");
  check(Bytes("\x80\x02s."), Code::kDataLoss, "stack underflow");
  // SETITEMS with no dict below its MARK.
  check(Bytes("\x80\x02(K\x01K\x02u."), Code::kDataLoss, "stack underflow");
  check(Bytes("\x80\x02h\x05."), Code::kDataLoss, "memo entry 5 not set");
  check(Bytes("\x80\x02I1\n."), Code::kInvalidArgument,
        "unsupported pickle opcode");
  check(Bytes("\x80\x09}."), Code::kInvalidArgument, "protocol 9");
  check(Bytes("\x80\x02X\xff\xff\xff\x7f"), Code::kDataLoss, "truncated");
  check(Bytes("\x80\x02}X\x02\x00\x00\x00\xc3\x28K\x01s."),
        Code::kInvalidArgument, "UTF-8");
  check(Bytes("\x80\x02}}."), Code::kDataLoss, "2 values");
  // POP on an empty MARK frame drops the MARK, as in CPython.
  WriteArchive(file, Bytes("\x80\x02}(0."));
  EXPECT_TRUE(LoadOk(file).empty());
  check(Bytes("\x80\x02"
              "cos\nsystem\n."),
        Code::kInvalidArgument, "'os.system'");
  check(Bytes("\x80\x02"
              "ctorch\nFloatStorage\n)R."),
        Code::kInvalidArgument, "not callable");
  // BUILD on a plain dict, and a dict state with a non-string attribute name.
  check(Bytes("\x80\x02}}b."), Code::kInvalidArgument,
        "cannot set state of type dict");
  check(Bytes("\x80\x02"
              "ccollections\nOrderedDict\n)R}K\x01K\x02sb."),
        Code::kInvalidArgument, "attribute name");
  // A list that contains itself, and a million nested tuples: no recursion.
  check(Bytes("\x80\x02]q\x00h\x00"
              "a."),
        Code::kInvalidArgument, "holds type list");
  check(Bytes("\x80\x02)") + std::string(1000000, '\x85') + ".",
        Code::kInvalidArgument, "holds type tuple");
  // The OrderedDict/_metadata shape torch.save writes, with no tensors:
  // od = OrderedDict(); od.__dict__.update({'_metadata':
  //     OrderedDict({'': {'version': 1}})}).
  WriteArchive(file, Bytes("\x80\x02"
                           "ccollections\nOrderedDict\nq\x00)Rq\x01}"
                           "X\t\x00\x00\x00_metadatah\x00)R"
                           "X\x00\x00\x00\x00}X\x07\x00\x00\x00versionK\x01s"
                           "ssb."));
  EXPECT_TRUE(LoadOk(file).empty());
}

// Every strict prefix of a real file's pickle must fail; every single-byte
// corruption must fail or load cleanly, never crash (run under ASan/UBSan to
// make that meaningful).
TEST_F(StateDictTest, MutatedPicklesNeverCrash) {
  caffe2::serialize::PyTorchStreamReader reader(Fixture("module.pt"));
  auto [pickle_data, pickle_size] = reader.getRecord("data.pkl");
  const std::string pickle(static_cast<const char*>(pickle_data.get()),
                           pickle_size);
  std::vector<std::pair<std::string, std::string>> records;
  for (const std::string& name : reader.getAllRecords()) {
    if (name.rfind("data/", 0) != 0) continue;
    auto [data, size] = reader.getRecord(name);
    records.emplace_back(
        name, std::string(static_cast<const char*>(data.get()), size));
  }
  ASSERT_EQ(records.size(), 10u);
  const std::string file = Scratch("mutated.pt");
  for (size_t length = 0; length < pickle.size(); ++length) {
    WriteArchive(file, pickle.substr(0, length), records);
    absl::StatusOr<std::map<std::string, at::Tensor>> loaded =
        LoadStateDict(file);
    EXPECT_FALSE(loaded.ok()) << "prefix of " << length << " bytes loaded";
  }
  int loaded_ok = 0;
  for (size_t i = 0; i < pickle.size(); ++i) {
    for (const char replacement :
         {'\x00', '\xff', '\x80', static_cast<char>(pickle[i] ^ 1)}) {
      if (replacement == pickle[i]) continue;
      std::string mutated = pickle;
      mutated[i] = replacement;
      WriteArchive(file, mutated, records);
      absl::StatusOr<std::map<std::string, at::Tensor>> loaded =
          LoadStateDict(file);
      if (!loaded.ok()) continue;
      ++loaded_ok;
      for (const auto& [key, t] : *loaded) {
        ASSERT_TRUE(t.defined()) << key;
        ASSERT_TRUE(t.is_contiguous()) << key;
      }
    }
  }
  // Some mutations are harmless (a changed memo slot or a tensor value); most
  // are not.
  EXPECT_GT(loaded_ok, 0);
}

TEST_F(StateDictTest, TruncatedAndCorruptedFilesNeverCrash) {
  const std::string original = ReadFileOrEmpty(Fixture("views.pt"));
  ASSERT_GT(original.size(), 100u);
  const std::string file = Scratch("damaged.pt");
  for (size_t length = 0; length < original.size(); ++length) {
    WriteFile(file, original.substr(0, length));
    absl::StatusOr<std::map<std::string, at::Tensor>> loaded =
        LoadStateDict(file);
    ASSERT_FALSE(loaded.ok()) << "prefix of " << length << " bytes loaded";
    EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(file));
  }
  for (size_t i = 0; i < original.size(); ++i) {
    std::string corrupted = original;
    corrupted[i] = static_cast<char>(corrupted[i] ^ 0x5a);
    WriteFile(file, corrupted);
    absl::StatusOr<std::map<std::string, at::Tensor>> loaded =
        LoadStateDict(file);
    if (loaded.ok()) {
      for (const auto& [key, t] : *loaded) ASSERT_TRUE(t.defined()) << key;
    }
  }
}

}  // namespace
}  // namespace attnscore::scoring
