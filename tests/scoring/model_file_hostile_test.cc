// Hostile parameter files (issue 9, requirement 4): zip bombs, many views of
// one storage, pickles that fill the interpreter's tables, overflowing
// safetensors shapes. Each must be refused with a precise error, before the
// memory it asks for is allocated. The archives are built here, byte by byte
// (a minimal zip writer and pickle emitter), so that every field a hostile
// writer controls can be set: no Python, no fixtures on disk.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/scoring/model_loader.h"
#include "server/scoring/state_dict.h"
#include "tests/testing/test_util.h"

namespace attnscore::scoring {
namespace {

using ::testing::HasSubstr;
using std::string_literals::operator""s;

std::string Le(uint64_t value, size_t width) {
  std::string out(width, '\0');
  for (size_t i = 0; i < width; ++i) {
    out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  }
  return out;
}

uint32_t Crc32(const std::string& data) {
  uint32_t crc = 0xffffffff;
  for (char c : data) {
    crc ^= static_cast<unsigned char>(c);
    for (int k = 0; k < 8; ++k) {
      crc = (crc >> 1) ^ (0xedb88320 & (0 - (crc & 1)));
    }
  }
  return ~crc;
}

// One zip entry. `stored` is what goes into the archive; `method`, `size`
// (the declared uncompressed size) and `crc` are what the headers claim.
struct ZipEntry {
  std::string name;
  std::string stored;
  uint16_t method = 0;
  uint64_t size = 0;
  uint32_t crc = 0;
};

ZipEntry Stored(std::string name, const std::string& data) {
  ZipEntry entry{std::move(name), data, 0, data.size(), Crc32(data)};
  return entry;
}

// `data` as one final stored deflate block (RFC 1951 3.2.4), declared to
// inflate to `declared_size` bytes.
ZipEntry Deflated(std::string name, const std::string& data,
                  uint64_t declared_size) {
  const std::string block =
      "\x01" + Le(data.size(), 2) + Le(~data.size() & 0xffff, 2) + data;
  return ZipEntry{std::move(name), block, 8, declared_size, Crc32(data)};
}

std::string Zip(const std::vector<ZipEntry>& entries) {
  std::string out;
  std::string directory;
  for (const ZipEntry& e : entries) {
    const std::string common = Le(20, 2) + Le(0, 2) + Le(e.method, 2) +
                               Le(0, 4) + Le(e.crc, 4) +
                               Le(e.stored.size(), 4) + Le(e.size, 4) +
                               Le(e.name.size(), 2) + Le(0, 2);
    directory += "PK\x01\x02" + Le(20, 2) + common + Le(0, 2) + Le(0, 2) +
                 Le(0, 2) + Le(0, 4) + Le(out.size(), 4) + e.name;
    out += "PK\x03\x04" + common + e.name + e.stored;
  }
  const size_t directory_offset = out.size();
  out += directory;
  out += "PK\x05\x06" + Le(0, 2) + Le(0, 2) + Le(entries.size(), 2) +
         Le(entries.size(), 2) + Le(directory.size(), 4) +
         Le(directory_offset, 4) + Le(0, 2);
  return out;
}

// Pickle pieces, protocol 2, as torch.save writes them.
std::string Str(const std::string& s) { return "X" + Le(s.size(), 4) + s; }
std::string Int(int64_t v) { return "J" + Le(static_cast<uint64_t>(v), 4); }
std::string Ints(const std::vector<int64_t>& values) {
  std::string out = "(";
  for (int64_t v : values) out += Int(v);
  return out + "t";
}

struct View {
  std::string name;
  std::string storage_key;
  int64_t storage_numel;
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
};

std::string StateDictPickle(const std::vector<View>& views) {
  std::string out = "\x80\x02}(";
  for (const View& v : views) {
    out += Str(v.name) + "ctorch._utils\n_rebuild_tensor_v2\n(" + "(" +
           Str("storage") + "ctorch\nFloatStorage\n" + Str(v.storage_key) +
           Str("cpu") + Int(v.storage_numel) + "tQ" + Int(0) + Ints(v.sizes) +
           Ints(v.strides) + "\x89}tR";
  }
  return out + "u.";
}

std::string Floats(int64_t n) {
  std::vector<float> values(static_cast<size_t>(n));
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i);
  return std::string(reinterpret_cast<const char*>(values.data()),
                     values.size() * sizeof(float));
}

// An archive with data.pkl = `pickle` plus `storages`, in torch.save's layout.
std::string Archive(const std::string& pickle,
                    const std::vector<ZipEntry>& storages) {
  std::vector<ZipEntry> entries = {Stored("archive/data.pkl", pickle),
                                   Stored("archive/byteorder", "little"),
                                   Stored("archive/version", "3\n")};
  entries.insert(entries.end(), storages.begin(), storages.end());
  return Zip(entries);
}

class ModelFileHostileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& bytes) {
    std::string path = dir_.File(name);
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  attnscore::testing::TempDir dir_;
};

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& part : parts) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(part));
  }
}

TEST_F(ModelFileHostileTest, TheBuilderMakesFilesTheLoaderAccepts) {
  const std::string path =
      Write("ok.pt", Archive(StateDictPickle({{"w", "0", 6, {2, 3}, {3, 1}},
                                              {"b", "0", 6, {3}, {1}}}),
                             {Stored("archive/data/0", Floats(6))}));
  absl::StatusOr<std::map<std::string, at::Tensor>> state = LoadStateDict(path);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->at("w").sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(state->at("b").sum().item<float>(), 0 + 1 + 2);
}

TEST_F(ModelFileHostileTest, ManyViewsOfOneStorageCountTowardsOneTotal) {
  // 64 views of one 256 KiB storage: 16 MiB of copies from a 256 KiB file.
  constexpr int64_t kNumel = 65536;
  std::vector<View> views;
  views.reserve(64);
  for (int i = 0; i < 64; ++i) {
    views.push_back({absl::StrCat("t", i), "0", kNumel, {kNumel}, {1}});
  }
  const std::string path =
      Write("views.pt", Archive(StateDictPickle(views),
                                {Stored("archive/data/0", Floats(kNumel))}));
  StateDictLimits limits;
  limits.slack_bytes = int64_t{1} << 20;
  ExpectError(LoadStateDict(path, limits).status(),
              absl::StatusCode::kResourceExhausted,
              {path, "tensor copy of 65536 Float elements from storage '0'",
               "over the limit of", "+ 1048576)"});
  // The same file within the default limits: counted, not refused on sight.
  EXPECT_TRUE(LoadStateDict(path).ok());
}

TEST_F(ModelFileHostileTest, ExpandedViewsAreChargedInFull) {
  // A 4-byte storage viewed as [2^20, 2^20] with zero strides: 4 TiB.
  const std::string path = Write(
      "expand.pt",
      Archive(StateDictPickle({{"t", "0", 1, {1 << 20, 1 << 20}, {0, 0}}}),
              {Stored("archive/data/0", Floats(1))}));
  ExpectError(LoadStateDict(path).status(),
              absl::StatusCode::kResourceExhausted,
              {path, "needs 4398046511104 bytes",
               "its view repeats storage elements", "over the limit of"});
}

TEST_F(ModelFileHostileTest, ZipBombIsRefusedBeforeInflating) {
  // 8 bytes of deflate that claim to inflate to 4 GiB - 16.
  constexpr uint64_t kDeclared = 0xfffffff0;
  const std::string path = Write(
      "bomb.pt",
      Archive(StateDictPickle({{"t", "0", int64_t{kDeclared / 4}, {1}, {1}}}),
              {Deflated("archive/data/0", Floats(2), kDeclared)}));
  ExpectError(LoadStateDict(path).status(),
              absl::StatusCode::kResourceExhausted,
              {path, "zip records declare 4294967", "uncompressed bytes",
               "over the limit of"});
}

TEST_F(ModelFileHostileTest, RecordThatInflatesPastItsDeclaredSizeIsDataLoss) {
  // 64 bytes of data declared as 16: miniz inflates into a 16-byte buffer
  // and must stop, not write past it.
  const std::string path = Write(
      "overflow.pt", Archive(StateDictPickle({{"t", "0", 4, {4}, {1}}}),
                             {Deflated("archive/data/0", Floats(16), 16)}));
  ExpectError(LoadStateDict(path).status(), absl::StatusCode::kDataLoss,
              {path, "zip record 'data/0': CRC-32 of its 16 inflated bytes",
               "inflates past its declared size"});
}

TEST_F(ModelFileHostileTest, StorageWhoseDeclaredSizeDisagreesIsRefused) {
  const std::string path =
      Write("short.pt", Archive(StateDictPickle({{"t", "0", 1000, {4}, {1}}}),
                                {Stored("archive/data/0", Floats(4))}));
  ExpectError(LoadStateDict(path).status(), absl::StatusCode::kDataLoss,
              {path, "storage record 'data/0' declares 16 bytes",
               "1000 Float elements need 4000"});
}

TEST_F(ModelFileHostileTest, OversizedSmallRecordsAndPickleAreRefused) {
  const std::string version =
      Write("version.pt",
            Zip({Stored("archive/data.pkl", StateDictPickle({})),
                 Deflated("archive/version", "3\n", uint64_t{1} << 20)}));
  ExpectError(LoadStateDict(version).status(),
              absl::StatusCode::kResourceExhausted,
              {version, "zip record 'version' declares 1048576"});
  const std::string pickle =
      Write("pickle.pt", Zip({Deflated("archive/data.pkl", ".", 1000000000),
                              Stored("archive/version", "3\n")}));
  ExpectError(LoadStateDict(pickle).status(),
              absl::StatusCode::kInvalidArgument,
              {pickle, "data.pkl is 1000000000 bytes, more than the 67108864"});
}

// A pickle of `body` after an empty dict memoized as entry 0.
std::string Pickle(const std::string& body) {
  return Archive("\x80\x02}q\x00"s + body + ".", {});
}

TEST_F(ModelFileHostileTest, PickleStackIsBounded) {
  std::string body;
  for (int i = 0; i <= (1 << 20); ++i) body += "h\x00"s;
  const std::string path = Write("stack.pt", Pickle(body));
  ExpectError(LoadStateDict(path).status(),
              absl::StatusCode::kResourceExhausted,
              {path, "(BINGET): stack deeper than 1048576 values"});
  const std::string marks =
      Write("marks.pt", Pickle(std::string((1 << 20) + 1, '(')));
  ExpectError(LoadStateDict(marks).status(),
              absl::StatusCode::kResourceExhausted,
              {"(MARK): more than 1048576 open MARKs"});
}

TEST_F(ModelFileHostileTest, PickleMemoIsBounded) {
  std::string body;
  for (uint64_t i = 1; i <= (1 << 20) + 1; ++i) body += "r" + Le(i, 4);
  const std::string path = Write("memo.pt", Pickle(body));
  ExpectError(LoadStateDict(path).status(),
              absl::StatusCode::kResourceExhausted,
              {path, "(LONG_BINPUT): more than 1048576 memo entries"});
}

TEST_F(ModelFileHostileTest, ContainerItemsAreBoundedTogether) {
  // A list that APPENDS itself, a million at a time, 5 times: 5M references
  // from a 10 MB pickle.
  std::string body = "]q\x01"s;
  for (int batch = 0; batch < 5; ++batch) {
    body += "(";
    for (int i = 0; i < (1 << 20) - 8; ++i) body += "h\x01"s;
    body += "e";
  }
  const std::string path = Write("items.pt", Pickle(body));
  ExpectError(LoadStateDict(path).status(),
              absl::StatusCode::kResourceExhausted,
              {path, "(APPENDS): containers hold more than 4194304 items"});
}

TEST_F(ModelFileHostileTest, ModelDirNamesTheBrokenSafetensorsFile) {
  // A good parameter set beside one whose shape overflows: the directory
  // fails as a whole (so a reload keeps the previous set), naming the file.
  SafetensorsWriter good;
  ASSERT_TRUE(
      good.AddFloats("key_pos_embeddings", {4, 1, 2}, std::vector<float>(8, 0))
          .ok());
  ASSERT_TRUE(
      good.AddFloats("key_pos_bias", {4, 1}, std::vector<float>(4, 0)).ok());
  ASSERT_TRUE(
      good.AddFloats("query_pos_bias", {1, 2}, std::vector<float>(2, 0)).ok());
  ASSERT_TRUE(good.Write(dir_.File("a.safetensors")).ok());
  const std::string json =
      R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],)"
      R"("data_offsets":[0,0]}})";
  const std::string bad_path =
      Write("b.safetensors", Le(json.size(), 8) + json);
  absl::StatusOr<std::shared_ptr<const ModelSet>> set =
      LoadModelDir(dir_.path());
  ExpectError(set.status(), absl::StatusCode::kInvalidArgument,
              {bad_path, "tensor 't'", "overflows int64 at dim 1"});
}

TEST_F(ModelFileHostileTest, ModelDirNamesTheBrokenPtFile) {
  const std::string path = Write(
      "m.pt",
      Archive(StateDictPickle({{"t", "0", 1, {1 << 20, 1 << 20}, {0, 0}}}),
              {Stored("archive/data/0", Floats(1))}));
  ExpectError(LoadModelDir(dir_.path()).status(),
              absl::StatusCode::kResourceExhausted,
              {path, "its view repeats storage elements"});
}

}  // namespace
}  // namespace attnscore::scoring
