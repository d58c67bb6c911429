#include "server/scoring/state_dict.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

// Local to this file; #undef'd at the end.
#define ATTNSCORE_RETURN_IF_ERROR(expr)  \
  do {                                   \
    absl::Status status_macro_ = (expr); \
    if (!status_macro_.ok()) {           \
      return status_macro_;              \
    }                                    \
  } while (false)

namespace attnscore::scoring {
namespace {

using Ref = size_t;  // index of an Object in Unpickler::objects_

// A pickle larger than this is not a state dict (a tensor entry costs ~100
// bytes of pickle) and would only make the interpreter's object table huge.
constexpr size_t kMaxPickleBytes = size_t{64} << 20;
// Bound the interpreter's tables whatever the pickle repeats: the objects
// (~100 bytes each), the stack and the open MARKs, the memo, and the items of
// all containers together (8 bytes each). A state dict needs ~20 objects a
// tensor, so a million is ~50,000 tensors; together at most ~200 MB.
constexpr size_t kMaxObjects = size_t{1} << 20;
constexpr size_t kMaxStack = size_t{1} << 20;
constexpr size_t kMaxMemo = size_t{1} << 20;
constexpr size_t kMaxContainerItems = size_t{1} << 22;
// LibTorch's own limit on tensor rank.
constexpr size_t kMaxRank = 64;
// A central directory larger than this describes millions of records: not a
// state dict.
constexpr uint64_t kMaxCentralDirectoryBytes = uint64_t{64} << 20;
// The records torch.save writes besides data.pkl and the storages, which the
// zip reader reads in full: a few bytes each.
constexpr uint64_t kMaxSmallRecordBytes = 4096;
// The 10-byte magic number that the legacy (non-zip) torch.save pickles first,
// as LONG1.
constexpr absl::string_view kLegacyMagic(
    "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10);
constexpr absl::string_view kZipMagic("PK\x03\x04", 4);
constexpr char kResaveHint[] =
    "re-save it with the zip format: torch.save(obj, path) in PyTorch >= 1.6, "
    "without _use_new_zipfile_serialization=False";

// Pickle opcodes, named as in CPython's Lib/pickle.py. Only those torch.save
// can emit for a dict of tensors (protocols 2-5) are implemented; every other
// byte is rejected.
enum class Op : uint8_t {
  kMark = '(',
  kStop = '.',
  kPop = '0',
  kPopMark = '1',
  kBinFloat = 'G',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kNone = 'N',
  kBinPersId = 'Q',
  kReduce = 'R',
  kBinString = 'T',
  kShortBinString = 'U',
  kBinUnicode = 'X',
  kEmptyList = ']',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kAppends = 'e',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kSetItems = 'u',
  kEmptyTuple = ')',
  kEmptyDict = '}',
  kProto = 0x80,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
};

// Opcodes by what they do; Unpickler::Execute dispatches on the family, and
// each family's handler on the opcode.
enum class OpFamily : uint8_t {
  kStack,      // protocol, framing, STOP, MARK and POPs
  kNumber,     // None, bools, ints, floats
  kString,     // str and bytes, which a state dict only has as UTF-8
  kContainer,  // tuples, lists, dicts and what fills them
  kMemo,       // the memo table
  kCall,       // globals, REDUCE and persistent ids (storages)
};

struct OpInfo {
  Op op;
  const char* name;
  OpFamily family;
};

constexpr OpInfo kOps[] = {
    {Op::kMark, "MARK", OpFamily::kStack},
    {Op::kStop, "STOP", OpFamily::kStack},
    {Op::kPop, "POP", OpFamily::kStack},
    {Op::kPopMark, "POP_MARK", OpFamily::kStack},
    {Op::kBinFloat, "BINFLOAT", OpFamily::kNumber},
    {Op::kBinInt, "BININT", OpFamily::kNumber},
    {Op::kBinInt1, "BININT1", OpFamily::kNumber},
    {Op::kBinInt2, "BININT2", OpFamily::kNumber},
    {Op::kNone, "NONE", OpFamily::kNumber},
    {Op::kBinPersId, "BINPERSID", OpFamily::kCall},
    {Op::kReduce, "REDUCE", OpFamily::kCall},
    {Op::kBinString, "BINSTRING", OpFamily::kString},
    {Op::kShortBinString, "SHORT_BINSTRING", OpFamily::kString},
    {Op::kBinUnicode, "BINUNICODE", OpFamily::kString},
    {Op::kEmptyList, "EMPTY_LIST", OpFamily::kContainer},
    {Op::kAppend, "APPEND", OpFamily::kContainer},
    {Op::kBuild, "BUILD", OpFamily::kContainer},
    {Op::kGlobal, "GLOBAL", OpFamily::kCall},
    {Op::kAppends, "APPENDS", OpFamily::kContainer},
    {Op::kBinGet, "BINGET", OpFamily::kMemo},
    {Op::kLongBinGet, "LONG_BINGET", OpFamily::kMemo},
    {Op::kBinPut, "BINPUT", OpFamily::kMemo},
    {Op::kLongBinPut, "LONG_BINPUT", OpFamily::kMemo},
    {Op::kSetItem, "SETITEM", OpFamily::kContainer},
    {Op::kTuple, "TUPLE", OpFamily::kContainer},
    {Op::kSetItems, "SETITEMS", OpFamily::kContainer},
    {Op::kEmptyTuple, "EMPTY_TUPLE", OpFamily::kContainer},
    {Op::kEmptyDict, "EMPTY_DICT", OpFamily::kContainer},
    {Op::kProto, "PROTO", OpFamily::kStack},
    {Op::kTuple1, "TUPLE1", OpFamily::kContainer},
    {Op::kTuple2, "TUPLE2", OpFamily::kContainer},
    {Op::kTuple3, "TUPLE3", OpFamily::kContainer},
    {Op::kNewTrue, "NEWTRUE", OpFamily::kNumber},
    {Op::kNewFalse, "NEWFALSE", OpFamily::kNumber},
    {Op::kLong1, "LONG1", OpFamily::kNumber},
    {Op::kShortBinUnicode, "SHORT_BINUNICODE", OpFamily::kString},
    {Op::kBinUnicode8, "BINUNICODE8", OpFamily::kString},
    {Op::kStackGlobal, "STACK_GLOBAL", OpFamily::kCall},
    {Op::kMemoize, "MEMOIZE", OpFamily::kMemo},
    {Op::kFrame, "FRAME", OpFamily::kStack},
};

// nullptr for a byte that is no implemented opcode.
const OpInfo* FindOp(uint8_t byte) {
  for (const OpInfo& entry : kOps) {
    if (static_cast<uint8_t>(entry.op) == byte) return &entry;
  }
  return nullptr;
}

std::string OpNameOf(uint8_t byte) {
  if (const OpInfo* info = FindOp(byte)) return info->name;
  return absl::StrCat("opcode 0x", absl::Hex(byte, absl::kZeroPad2));
}

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor,
};

const char* KindName(Kind kind) {
  // Indexed by Kind, in declaration order.
  constexpr const char* kNames[] = {"None",   "bool",    "int",   "float",
                                    "str",    "tuple",   "list",  "dict",
                                    "global", "storage", "tensor"};
  return kNames[static_cast<size_t>(kind)];
}

// The only names GLOBAL may import: anything else could mean arbitrary code in
// Python, and is not part of a state dict anyway.
enum class Global : uint8_t {
  kOrderedDict,       // collections.OrderedDict
  kRebuildTensorV2,   // torch._utils._rebuild_tensor_v2
  kRebuildParameter,  // torch._utils._rebuild_parameter (keep_vars=True)
  kStorageType,       // torch.FloatStorage etc.: a tag in persistent ids
};

struct StorageType {
  absl::string_view name;
  c10::ScalarType dtype;
};

constexpr std::array<StorageType, 12> kStorageTypes = {{
    {"FloatStorage", c10::ScalarType::Float},
    {"DoubleStorage", c10::ScalarType::Double},
    {"HalfStorage", c10::ScalarType::Half},
    {"BFloat16Storage", c10::ScalarType::BFloat16},
    {"LongStorage", c10::ScalarType::Long},
    {"IntStorage", c10::ScalarType::Int},
    {"ShortStorage", c10::ScalarType::Short},
    {"CharStorage", c10::ScalarType::Char},
    {"ByteStorage", c10::ScalarType::Byte},
    {"BoolStorage", c10::ScalarType::Bool},
    {"ComplexFloatStorage", c10::ScalarType::ComplexFloat},
    {"ComplexDoubleStorage", c10::ScalarType::ComplexDouble},
}};

// One Python value. Containers hold Refs, never Objects, so nothing here
// recurses: a pickle that nests a million tuples or builds a cycle costs memory
// (bounded by kMaxObjects), not the stack.
struct Object {
  Kind kind = Kind::kNone;
  bool ordered = false;  // kDict made by collections.OrderedDict()
  Global global = Global::kOrderedDict;  // kGlobal
  // kGlobal of kind kStorageType: the element type of that storage class.
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  int64_t int_value = 0;   // kInt, kBool; kStorage: index into storages_
  double float_value = 0;  // kFloat
  std::string text;        // kString; kGlobal: "module.name"
  std::vector<Ref> items;  // kTuple, kList; kDict: key, value, key, value...
  at::Tensor tensor;       // kTensor
};

// One data/<key> record, read once however many tensors view it.
struct Storage {
  std::string key;
  c10::ScalarType dtype;
  int64_t numel;
  // numel elements of dtype, little-endian as torch.save wrote them.
  at::DataPtr data;
};

// A strided view into a storage, as _rebuild_tensor_v2 describes it.
struct TensorView {
  int64_t offset = 0;  // in elements
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
};

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t extra = 0;
    uint32_t code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1;
      code = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2;
      code = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3;
      code = c & 0x07;
    } else {
      return false;
    }
    if (extra > s.size() - i - 1) return false;
    for (size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      code = (code << 6) | (cc & 0x3f);
    }
    // Overlong encodings, UTF-16 surrogates and values past U+10FFFF are not
    // UTF-8.
    constexpr uint32_t kMinCode[] = {0, 0x80, 0x800, 0x10000};
    if (code < kMinCode[extra] || code > 0x10ffff ||
        (code >= 0xd800 && code <= 0xdfff)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

// Untrusted text in messages: quoted, shortened, control bytes escaped, and
// every byte >= 0x80 escaped too unless the text is valid UTF-8, so that the
// message itself always is.
std::string Quote(absl::string_view s) {
  constexpr size_t kMaxShown = 200;
  const absl::string_view shown = s.substr(0, kMaxShown);
  return absl::StrCat("'",
                      IsValidUtf8(shown) ? absl::Utf8SafeCHexEscape(shown)
                                         : absl::CHexEscape(shown),
                      s.size() > kMaxShown ? "'..." : "'");
}

// The memory one file's load may take (StateDictLimits): zip records by their
// declared uncompressed size, tensors by their contiguous copy.
class LoadBudget {
 public:
  LoadBudget(uint64_t file_size, int64_t slack_bytes)
      : file_size_(file_size),
        slack_(static_cast<uint64_t>(std::max<int64_t>(slack_bytes, 0))),
        limit_(
            Saturate(2 * static_cast<unsigned __int128>(file_size) + slack_)) {}

  uint64_t limit() const { return limit_; }

  // Adds `bytes` for `what` (a record or a tensor copy); RESOURCE_EXHAUSTED
  // with the totals (and no path: callers add where) when over the limit.
  absl::Status Charge(uint64_t bytes, absl::string_view what, bool is_record) {
    const uint64_t total =
        Saturate(static_cast<unsigned __int128>(records_) + copies_ + bytes);
    if (total > limit_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          what, " needs ", bytes, " bytes, which brings this file's load to ",
          total, " bytes (zip records ", records_ + (is_record ? bytes : 0),
          ", tensor copies ", copies_ + (is_record ? 0 : bytes),
          "), over the limit of ", limit_, " (2 x the file's ", file_size_,
          " bytes + ", slack_, ")"));
    }
    (is_record ? records_ : copies_) += bytes;
    return absl::OkStatus();
  }

 private:
  static uint64_t Saturate(unsigned __int128 v) {
    return v > ~uint64_t{0} ? ~uint64_t{0} : static_cast<uint64_t>(v);
  }

  uint64_t file_size_;
  uint64_t slack_;
  uint64_t limit_;
  uint64_t records_ = 0;
  uint64_t copies_ = 0;
};

// One zip record as the central directory declares it (which is what miniz,
// inside PyTorchStreamReader, allocates and inflates by).
struct ZipRecord {
  uint16_t method = 0;  // 0 stored, 8 deflated
  uint32_t crc = 0;
  uint64_t uncompressed = 0;
};

// The zip CRC-32 (reflected 0xedb88320).
uint32_t Crc32(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffff;
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    crc = table[(crc ^ bytes[i]) & 0xff] ^ (crc >> 8);
  }
  return ~crc;
}

// LibTorch's miniz inflates a record into a buffer of its declared size and,
// built without its CRC checks, returns data that inflates past that size cut
// short without an error. A deflated record's CRC is therefore checked here
// (stored records cannot grow).
absl::Status CheckInflated(const ZipRecord& record, const void* data,
                           size_t size, absl::string_view name) {
  if (record.method == 0 || Crc32(data, size) == record.crc) {
    return absl::OkStatus();
  }
  return absl::DataLossError(absl::StrCat(
      "zip record ", Quote(name), ": CRC-32 of its ", size,
      " inflated bytes does not match the central directory (it inflates "
      "past its declared size, or is damaged)"));
}

// Record name (after the archive's "<name>/" prefix, as PyTorchStreamReader
// names them) -> what the central directory declares.
using ZipDirectory = std::unordered_map<std::string, ZipRecord>;

uint64_t LoadLe(absl::string_view bytes, size_t at, size_t width) {
  uint64_t value = 0;
  for (size_t i = width; i-- > 0;) {
    value = (value << 8) | static_cast<unsigned char>(bytes[at + i]);
  }
  return value;
}

// Reads `n` bytes at `offset`; false if the file is shorter.
bool ReadAt(std::ifstream& in, uint64_t offset, uint64_t n, std::string* out) {
  out->assign(static_cast<size_t>(n), '\0');
  in.clear();
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(out->data(), static_cast<std::streamsize>(n));
  return in.good() || (in.eof() && static_cast<uint64_t>(in.gcount()) == n);
}

// Where the central directory lies: from the end-of-central-directory record
// (or its zip64 form, which miniz writes past 4 GiB or 65535 records).
struct DirectoryExtent {
  uint64_t offset = 0;
  uint64_t size = 0;
};

absl::StatusOr<DirectoryExtent> FindCentralDirectory(const std::string& path,
                                                     std::ifstream& in,
                                                     uint64_t file_size) {
  constexpr absl::string_view kEndMagic("PK\x05\x06", 4);
  constexpr absl::string_view kLocatorMagic("PK\x06\x07", 4);
  constexpr absl::string_view kEnd64Magic("PK\x06\x06", 4);
  const uint64_t tail_size = std::min<uint64_t>(file_size, 22 + 65535);
  std::string tail;
  const size_t end =
      file_size < 22 || !ReadAt(in, file_size - tail_size, tail_size, &tail)
          ? absl::string_view::npos
          : absl::string_view(tail).rfind(kEndMagic);
  if (end == absl::string_view::npos || end + 22 > tail.size()) {
    return absl::DataLossError(
        absl::StrCat(path,
                     ": truncated or damaged zip archive: no "
                     "end-of-central-directory record"));
  }
  DirectoryExtent extent{LoadLe(tail, end + 16, 4), LoadLe(tail, end + 12, 4)};
  if (extent.offset == 0xffffffff || extent.size == 0xffffffff ||
      LoadLe(tail, end + 10, 2) == 0xffff) {
    std::string end64;
    if (end < 20 || tail.substr(end - 20, 4) != kLocatorMagic ||
        !ReadAt(in, LoadLe(tail, end - 20 + 8, 8), 56, &end64) ||
        absl::string_view(end64).substr(0, 4) != kEnd64Magic) {
      return absl::DataLossError(
          absl::StrCat(path,
                       ": damaged zip archive: zip64 end of central directory "
                       "missing"));
    }
    extent = DirectoryExtent{LoadLe(end64, 48, 8), LoadLe(end64, 40, 8)};
  }
  if (extent.size > kMaxCentralDirectoryBytes || extent.offset > file_size ||
      extent.size > file_size - extent.offset) {
    return absl::DataLossError(absl::StrCat(
        path, ": damaged zip archive: central directory of ", extent.size,
        " bytes at offset ", extent.offset, " in a ", file_size,
        "-byte file (at most ", kMaxCentralDirectoryBytes, " bytes)"));
  }
  return extent;
}

// The 64-bit sizes of a zip64 extra field (id 1) replace the 32-bit ones that
// read 0xffffffff, in the order uncompressed, compressed.
void ApplyZip64Extra(absl::string_view extra, uint64_t* uncompressed) {
  size_t at = 0;
  while (at + 4 <= extra.size()) {
    const uint64_t id = LoadLe(extra, at, 2);
    const uint64_t len = LoadLe(extra, at + 2, 2);
    if (len > extra.size() - at - 4) return;
    if (id == 1 && *uncompressed == 0xffffffff && len >= 8) {
      *uncompressed = LoadLe(extra, at + 4, 8);
      return;
    }
    at += 4 + len;
  }
}

// Every record's declared method and uncompressed size, read from the
// central directory before PyTorchStreamReader (miniz) allocates by them.
absl::StatusOr<ZipDirectory> ReadZipDirectory(const std::string& path,
                                              uint64_t* file_size) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  *file_size = static_cast<uint64_t>(in.tellg());
  absl::StatusOr<DirectoryExtent> extent =
      FindCentralDirectory(path, in, *file_size);
  if (!extent.ok()) return extent.status();
  std::string cd;
  if (!ReadAt(in, extent->offset, extent->size, &cd)) {
    return absl::DataLossError(
        absl::StrCat(path, ": cannot read the zip central directory"));
  }
  ZipDirectory records;
  size_t at = 0;
  while (at + 46 <= cd.size() && cd.compare(at, 4, "PK\x01\x02") == 0) {
    const size_t name_len = LoadLe(cd, at + 28, 2);
    const size_t extra_len = LoadLe(cd, at + 30, 2);
    const size_t comment_len = LoadLe(cd, at + 32, 2);
    if (46 + name_len + extra_len + comment_len > cd.size() - at) break;
    ZipRecord record;
    record.method = static_cast<uint16_t>(LoadLe(cd, at + 10, 2));
    record.crc = static_cast<uint32_t>(LoadLe(cd, at + 16, 4));
    record.uncompressed = LoadLe(cd, at + 24, 4);
    ApplyZip64Extra(absl::string_view(cd).substr(at + 46 + name_len, extra_len),
                    &record.uncompressed);
    const std::string name = cd.substr(at + 46, name_len);
    const size_t slash = name.find('/');
    const std::string key =
        slash == std::string::npos ? name : name.substr(slash + 1);
    // A duplicate name: count the larger, whichever miniz picks.
    ZipRecord& slot = records[key];
    slot.method = std::max(slot.method, record.method);
    slot.crc = record.crc;
    slot.uncompressed = std::max(slot.uncompressed, record.uncompressed);
    at += 46 + name_len + extra_len + comment_len;
  }
  return records;
}

// Checks the declared sizes of every record before any is read: the small
// records the reader reads on its own (version, byteorder) and, together,
// all of them against the budget.
absl::Status CheckZipDirectory(const std::string& path,
                               const ZipDirectory& records,
                               const LoadBudget& budget) {
  unsigned __int128 total = 0;
  for (const auto& [name, record] : records) {
    const bool small =
        name == "version" || name == ".data/version" || name == "byteorder";
    if (small && record.uncompressed > kMaxSmallRecordBytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          path, ": zip record ", Quote(name), " declares ", record.uncompressed,
          " uncompressed bytes, more than the ", kMaxSmallRecordBytes,
          " it can need"));
    }
    total += record.uncompressed;
  }
  if (total > budget.limit()) {
    const uint64_t shown =
        total > ~uint64_t{0} ? ~uint64_t{0} : static_cast<uint64_t>(total);
    return absl::ResourceExhaustedError(absl::StrCat(
        path, ": zip records declare ", shown,
        " uncompressed bytes in total, over the limit of ", budget.limit(),
        " (a zip bomb, or a file that needs a larger "
        "StateDictLimits::slack_bytes)"));
  }
  return absl::OkStatus();
}

// Interprets data.pkl, loading the storage records it names from `reader`.
class Unpickler {
 public:
  // `records` and `budget` are the file's (ReadZipDirectory, LoadBudget);
  // every storage record and tensor copy is charged to `budget`.
  Unpickler(const std::string& path, absl::string_view pickle,
            caffe2::serialize::PyTorchStreamReader* reader,
            const ZipDirectory* records, LoadBudget* budget)
      : path_(path),
        pickle_(pickle),
        reader_(reader),
        records_(records),
        budget_(budget) {}

  absl::StatusOr<std::map<std::string, at::Tensor>> Run();

 private:
  // One opcode, dispatched by family (OpFamily) to the handlers below.
  absl::Status Execute(uint8_t byte, bool* stop);
  absl::Status ExecuteStack(Op op, bool* stop);
  absl::Status ExecuteNumber(Op op);
  absl::Status ExecuteString(Op op);
  absl::Status ExecuteContainer(Op op);
  absl::Status ExecuteMemo(Op op);
  absl::Status ExecuteCall(Op op);
  absl::Status Unsupported() const;

  absl::Status PushLong1();
  absl::Status PushBinFloat();
  absl::Status PushSmallTuple(size_t count);
  // SETITEM's key and value, or SETITEMS' pairs back to the MARK.
  absl::Status PopDictItems(bool to_mark, std::vector<Ref>* items);
  // APPEND's value, or APPENDS' values back to the MARK.
  absl::Status PopListItems(bool to_mark, std::vector<Ref>* items);
  // Appends `items` to the container on top of the stack, which must be of
  // `kind`; else fails with `wrong_type` and the kind found.
  absl::Status ExtendTop(Kind kind, absl::string_view wrong_type,
                         const std::vector<Ref>& items);
  absl::Status BuildState();

  // An error at the current opcode: "<path>: data.pkl byte N (OPNAME): what".
  absl::Status Fail(absl::StatusCode code, absl::string_view what) const;
  absl::Status Truncated(size_t wanted) const;

  // Reading operands; all bounds-checked against the pickle.
  absl::Status Take(size_t n, absl::string_view* out);
  absl::Status ReadUint(size_t n, uint64_t* out);  // little-endian
  // Up to '\n', which is consumed.
  absl::Status ReadLine(absl::string_view* out);
  absl::Status PushString(absl::string_view bytes);

  // The stack as seen since the innermost MARK, like CPython's metastack.
  size_t Floor() const { return marks_.empty() ? 0 : marks_.back(); }
  absl::Status Pop(Ref* out);
  absl::Status Peek(Ref* out) const;
  absl::Status PopMark(std::vector<Ref>* out);
  absl::Status Push(Object object);
  // Pushes a reference to an existing object (BINGET, _rebuild_parameter).
  absl::Status PushRef(Ref ref);
  // memo[index] = ref, within kMaxMemo entries.
  absl::Status Memoize(uint64_t index, Ref ref);
  // Counts `n` more items held by containers against kMaxContainerItems.
  absl::Status CountItems(size_t n);

  absl::Status ResolveGlobal(absl::string_view module, absl::string_view name);
  absl::Status Call(Ref callable, Ref args);
  absl::Status RebuildTensor(const std::vector<Ref>& args, Object* out);
  // _rebuild_tensor_v2's argument count and types, and its metadata.
  absl::Status CheckRebuildArgs(const std::vector<Ref>& args) const;
  absl::Status CheckTensorMetadata(Ref metadata) const;
  // Sets *numel to the view's element count.
  absl::Status CheckView(const Storage& storage, const TensorView& view,
                         int64_t* numel) const;
  absl::Status LoadStorage(Ref pid, int64_t* index);
  absl::Status ReadInts(Ref tuple, absl::string_view what,
                        std::vector<int64_t>* out) const;

  const std::string& path_;
  absl::string_view pickle_;
  caffe2::serialize::PyTorchStreamReader* reader_;
  const ZipDirectory* records_;
  LoadBudget* budget_;
  size_t container_items_ = 0;
  size_t pos_ = 0;     // next unread byte
  size_t op_pos_ = 0;  // offset of the opcode being executed, for messages
  uint8_t op_ = 0;

  std::vector<Object> objects_;
  std::vector<Ref> stack_;
  std::vector<size_t> marks_;  // stack_ sizes at each open MARK
  std::unordered_map<uint64_t, Ref> memo_;
  std::vector<Storage> storages_;
  std::unordered_map<std::string, size_t> storage_by_key_;
};

absl::Status Unpickler::Fail(absl::StatusCode code,
                             absl::string_view what) const {
  return absl::Status(code, absl::StrCat(path_, ": data.pkl byte ", op_pos_,
                                         " (", OpNameOf(op_), "): ", what));
}

absl::Status Unpickler::Truncated(size_t wanted) const {
  return Fail(absl::StatusCode::kDataLoss,
              absl::StrCat("pickle truncated: operand needs ", wanted,
                           " bytes, ", pickle_.size() - pos_, " left"));
}

absl::Status Unpickler::Take(size_t n, absl::string_view* out) {
  if (n > pickle_.size() - pos_) return Truncated(n);
  *out = pickle_.substr(pos_, n);
  pos_ += n;
  return absl::OkStatus();
}

absl::Status Unpickler::ReadUint(size_t n, uint64_t* out) {
  absl::string_view bytes;
  ATTNSCORE_RETURN_IF_ERROR(Take(n, &bytes));
  uint64_t value = 0;
  for (size_t i = n; i-- > 0;) {
    value = (value << 8) | static_cast<unsigned char>(bytes[i]);
  }
  *out = value;
  return absl::OkStatus();
}

absl::Status Unpickler::ReadLine(absl::string_view* out) {
  const size_t end = pickle_.find('\n', pos_);
  if (end == absl::string_view::npos) {
    return Fail(absl::StatusCode::kDataLoss,
                "pickle truncated: unterminated line");
  }
  *out = pickle_.substr(pos_, end - pos_);
  pos_ = end + 1;
  return absl::OkStatus();
}

absl::Status Unpickler::PushString(absl::string_view bytes) {
  if (!IsValidUtf8(bytes)) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("string is not valid UTF-8: ", Quote(bytes)));
  }
  Object object;
  object.kind = Kind::kString;
  object.text.assign(bytes.data(), bytes.size());
  return Push(std::move(object));
}

absl::Status Unpickler::Pop(Ref* out) {
  if (stack_.size() <= Floor()) {
    return Fail(absl::StatusCode::kDataLoss, "stack underflow");
  }
  *out = stack_.back();
  stack_.pop_back();
  return absl::OkStatus();
}

absl::Status Unpickler::Peek(Ref* out) const {
  if (stack_.size() <= Floor()) {
    return Fail(absl::StatusCode::kDataLoss, "stack underflow");
  }
  *out = stack_.back();
  return absl::OkStatus();
}

absl::Status Unpickler::PopMark(std::vector<Ref>* out) {
  if (marks_.empty()) {
    return Fail(absl::StatusCode::kDataLoss, "no MARK to pop to");
  }
  const size_t mark = marks_.back();
  marks_.pop_back();
  out->assign(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
  stack_.resize(mark);
  return absl::OkStatus();
}

absl::Status Unpickler::Push(Object object) {
  if (objects_.size() >= kMaxObjects) {
    return Fail(
        absl::StatusCode::kResourceExhausted,
        absl::StrCat("more than ", kMaxObjects, " objects: not a state dict"));
  }
  ATTNSCORE_RETURN_IF_ERROR(CountItems(object.items.size()));
  objects_.push_back(std::move(object));
  return PushRef(objects_.size() - 1);
}

absl::Status Unpickler::PushRef(Ref ref) {
  if (stack_.size() >= kMaxStack) {
    return Fail(absl::StatusCode::kResourceExhausted,
                absl::StrCat("stack deeper than ", kMaxStack,
                             " values: not a state dict"));
  }
  stack_.push_back(ref);
  return absl::OkStatus();
}

absl::Status Unpickler::Memoize(uint64_t index, Ref ref) {
  if (memo_.size() >= kMaxMemo && memo_.count(index) == 0) {
    return Fail(absl::StatusCode::kResourceExhausted,
                absl::StrCat("more than ", kMaxMemo,
                             " memo entries: not a state dict"));
  }
  memo_[index] = ref;
  return absl::OkStatus();
}

absl::Status Unpickler::CountItems(size_t n) {
  if (n > kMaxContainerItems - container_items_) {
    return Fail(absl::StatusCode::kResourceExhausted,
                absl::StrCat("containers hold more than ", kMaxContainerItems,
                             " items together: not a state dict"));
  }
  container_items_ += n;
  return absl::OkStatus();
}

absl::Status Unpickler::ResolveGlobal(absl::string_view module,
                                      absl::string_view name) {
  Object object;
  object.kind = Kind::kGlobal;
  object.text = absl::StrCat(module, ".", name);
  bool known = true;
  if (module == "collections" && name == "OrderedDict") {
    object.global = Global::kOrderedDict;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    object.global = Global::kRebuildTensorV2;
  } else if (module == "torch._utils" && name == "_rebuild_parameter") {
    object.global = Global::kRebuildParameter;
  } else {
    known = false;
    if (module == "torch") {
      for (const StorageType& type : kStorageTypes) {
        if (name == type.name) {
          object.global = Global::kStorageType;
          object.dtype = type.dtype;
          known = true;
        }
      }
    }
  }
  if (!known) {
    return Fail(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat(
            "unsupported global ", Quote(object.text),
            ": a state dict may only use collections.OrderedDict, "
            "torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter "
            "and torch.<Type>Storage"));
  }
  return Push(std::move(object));
}

absl::Status Unpickler::ReadInts(Ref tuple, absl::string_view what,
                                 std::vector<int64_t>* out) const {
  const Object& object = objects_[tuple];
  if (object.kind != Kind::kTuple) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat(what, " has type ", KindName(object.kind),
                             ", expected tuple of int"));
  }
  if (object.items.size() > kMaxRank) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat(what, " has ", object.items.size(),
                             " dims, more than ", kMaxRank));
  }
  out->clear();
  for (Ref item : object.items) {
    if (objects_[item].kind != Kind::kInt) {
      return Fail(
          absl::StatusCode::kInvalidArgument,
          absl::StrCat(what, " holds type ", KindName(objects_[item].kind),
                       ", expected int"));
    }
    out->push_back(objects_[item].int_value);
  }
  return absl::OkStatus();
}

// pid = ('storage', torch.<Type>Storage, key, location, numel), as torch.save's
// persistent_id writes it. The location (e.g. 'cuda:0') is ignored: everything
// loads onto the CPU.
absl::Status Unpickler::LoadStorage(Ref pid, int64_t* index) {
  const Object& tuple = objects_[pid];
  const auto kind_is = [&](size_t i, Kind kind) {
    return objects_[tuple.items[i]].kind == kind;
  };
  if (tuple.kind != Kind::kTuple || tuple.items.size() != 5 ||
      !kind_is(0, Kind::kString) ||
      objects_[tuple.items[0]].text != "storage" ||
      !kind_is(1, Kind::kGlobal) ||
      objects_[tuple.items[1]].global != Global::kStorageType ||
      !kind_is(2, Kind::kString) || !kind_is(3, Kind::kString) ||
      !kind_is(4, Kind::kInt)) {
    return Fail(absl::StatusCode::kInvalidArgument,
                "persistent id is not ('storage', torch.<Type>Storage, "
                "key: str, location: str, numel: int)");
  }
  const c10::ScalarType dtype = objects_[tuple.items[1]].dtype;
  const std::string& key = objects_[tuple.items[2]].text;
  const int64_t numel = objects_[tuple.items[4]].int_value;
  // The reader looks records up by C string; a NUL would name another record.
  if (key.empty() || key.find('\0') != std::string::npos) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("invalid storage key ", Quote(key)));
  }

  if (auto it = storage_by_key_.find(key); it != storage_by_key_.end()) {
    const Storage& seen = storages_[it->second];
    if (seen.dtype != dtype || seen.numel != numel) {
      return Fail(
          absl::StatusCode::kDataLoss,
          absl::StrCat("storage ", Quote(key), " referenced as ",
                       c10::toString(dtype), "[", numel, "] after ",
                       c10::toString(seen.dtype), "[", seen.numel, "]"));
    }
    *index = static_cast<int64_t>(it->second);
    return absl::OkStatus();
  }

  const std::string record = absl::StrCat("data/", key);
  if (!reader_->hasRecord(record)) {
    return Fail(absl::StatusCode::kDataLoss,
                absl::StrCat("storage record ", Quote(record),
                             " is missing from the archive"));
  }
  const auto item_size = static_cast<int64_t>(c10::elementSize(dtype));
  int64_t expected_bytes = 0;
  if (numel < 0 || __builtin_mul_overflow(numel, item_size, &expected_bytes)) {
    return Fail(
        absl::StatusCode::kDataLoss,
        absl::StrCat("storage ", Quote(key), " has invalid numel ", numel));
  }
  // The size the central directory declares is what the reader would
  // allocate and inflate: checked first, so a record that claims gigabytes is
  // refused before anything is allocated for it.
  const auto declared = records_->find(record);
  if (declared == records_->end() ||
      declared->second.uncompressed != static_cast<uint64_t>(expected_bytes)) {
    return Fail(absl::StatusCode::kDataLoss,
                absl::StrCat(
                    "storage record ", Quote(record), " declares ",
                    declared == records_->end()
                        ? std::string("no size")
                        : absl::StrCat(declared->second.uncompressed, " bytes"),
                    ", but ", numel, " ", c10::toString(dtype),
                    " elements need ", expected_bytes));
  }
  if (absl::Status charged = budget_->Charge(
          static_cast<uint64_t>(expected_bytes),
          absl::StrCat("storage record ", Quote(record)), /*is_record=*/true);
      !charged.ok()) {
    return Fail(charged.code(), charged.message());
  }
  auto [data, bytes] = reader_->getRecord(record);
  if (absl::Status inflated =
          CheckInflated(declared->second, data.get(), bytes, record);
      !inflated.ok()) {
    return Fail(inflated.code(), inflated.message());
  }
  if (static_cast<uint64_t>(bytes) != static_cast<uint64_t>(expected_bytes)) {
    return Fail(absl::StatusCode::kDataLoss,
                absl::StrCat("storage record ", Quote(record), " holds ", bytes,
                             " bytes, but ", numel, " ", c10::toString(dtype),
                             " elements need ", expected_bytes));
  }
  storages_.push_back(Storage{key, dtype, numel, std::move(data)});
  storage_by_key_.emplace(key, storages_.size() - 1);
  *index = static_cast<int64_t>(storages_.size() - 1);
  return absl::OkStatus();
}

absl::Status Unpickler::CheckRebuildArgs(const std::vector<Ref>& args) const {
  if (args.size() != 6 && args.size() != 7) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("_rebuild_tensor_v2 takes 6 or 7 arguments, got ",
                             args.size()));
  }
  if (objects_[args[0]].kind != Kind::kStorage ||
      objects_[args[1]].kind != Kind::kInt ||
      objects_[args[4]].kind != Kind::kBool ||
      objects_[args[5]].kind != Kind::kDict) {
    std::string kinds;
    for (size_t i = 0; i < 6; ++i) {
      absl::StrAppend(&kinds, i > 0 ? ", " : "",
                      KindName(objects_[args[i]].kind));
    }
    return Fail(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("_rebuild_tensor_v2 arguments have types (", kinds,
                     "), expected (storage, int, tuple, tuple, bool, dict)"));
  }
  if (args.size() == 7) return CheckTensorMetadata(args[6]);
  return absl::OkStatus();
}

// Newer PyTorch adds {'conj': True} / {'neg': True} for lazily conjugated or
// negated views; honouring those is not worth it for parameters, so they are
// refused rather than ignored.
absl::Status Unpickler::CheckTensorMetadata(Ref metadata_ref) const {
  const Object& metadata = objects_[metadata_ref];
  if (metadata.kind != Kind::kDict) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("tensor metadata has type ",
                             KindName(metadata.kind), ", expected dict"));
  }
  for (size_t i = 0; i < metadata.items.size(); i += 2) {
    const Object& value = objects_[metadata.items[i + 1]];
    if (value.kind != Kind::kBool || value.int_value != 0) {
      const Object& key = objects_[metadata.items[i]];
      return Fail(
          absl::StatusCode::kInvalidArgument,
          absl::StrCat(
              "unsupported tensor metadata ",
              key.kind == Kind::kString ? Quote(key.text) : KindName(key.kind),
              " (conjugate/negative-bit views are not supported)"));
    }
  }
  return absl::OkStatus();
}

// numel and the last element the view touches, with overflow checks: every
// number here came from the file. The view must lie inside its storage; its
// copy's size is charged to the budget by RebuildTensor.
absl::Status Unpickler::CheckView(const Storage& storage,
                                  const TensorView& view,
                                  int64_t* numel_out) const {
  const auto item_size = static_cast<int64_t>(c10::elementSize(storage.dtype));
  const int64_t offset = view.offset;
  if (offset < 0) {
    return Fail(absl::StatusCode::kDataLoss,
                absl::StrCat("negative storage offset ", offset));
  }
  int64_t numel = 1;
  int64_t last = offset;
  bool overflow = false;
  for (size_t d = 0; d < view.sizes.size() && !overflow; ++d) {
    const int64_t size = view.sizes[d];
    const int64_t stride = view.strides[d];
    if (size < 0 || stride < 0) {
      return Fail(absl::StatusCode::kDataLoss,
                  absl::StrCat("negative size or stride in dim ", d, " (size ",
                               size, ", stride ", stride, ")"));
    }
    int64_t span = 0;
    overflow = __builtin_mul_overflow(numel, size, &numel) ||
               (size > 0 && (__builtin_mul_overflow(size - 1, stride, &span) ||
                             __builtin_add_overflow(last, span, &last)));
  }
  int64_t view_bytes = 0;
  overflow = overflow || __builtin_mul_overflow(numel, item_size, &view_bytes);
  if (overflow) {
    return Fail(
        absl::StatusCode::kDataLoss,
        absl::StrCat("tensor view (offset ", offset, ", ", view.sizes.size(),
                     " dims) overflows int64 element counts"));
  }
  if (numel > 0 && last >= storage.numel) {
    return Fail(
        absl::StatusCode::kDataLoss,
        absl::StrCat("tensor view (offset ", offset, ", ", view.sizes.size(),
                     " dims) reaches outside its storage ", Quote(storage.key),
                     " of ", storage.numel, " elements"));
  }
  *numel_out = numel;
  return absl::OkStatus();
}

// The view copied out of its storage: contiguous, owning exactly its own
// elements. Bool storage is read as bytes and compared with zero, so a corrupt
// byte cannot become a bool that is neither true nor false.
at::Tensor MaterializeView(const Storage& storage, const TensorView& view,
                           int64_t numel) {
  const bool is_bool = storage.dtype == c10::ScalarType::Bool;
  const auto options = at::TensorOptions().dtype(is_bool ? c10::ScalarType::Byte
                                                         : storage.dtype);
  at::Tensor tensor;
  if (numel == 0) {
    tensor = at::empty(view.sizes, options);
  } else {
    at::Tensor flat =
        at::from_blob(storage.data.get(), {storage.numel}, options);
    tensor = flat.as_strided(view.sizes, view.strides, view.offset)
                 .clone(at::MemoryFormat::Contiguous);
  }
  if (is_bool) tensor = tensor.ne(0);
  return tensor;
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
// backward_hooks[, metadata]): the strided view is checked against the storage,
// then copied out so that the result is contiguous and owns exactly its own
// elements.
absl::Status Unpickler::RebuildTensor(const std::vector<Ref>& args,
                                      Object* out) {
  ATTNSCORE_RETURN_IF_ERROR(CheckRebuildArgs(args));
  const Storage& storage =
      storages_[static_cast<size_t>(objects_[args[0]].int_value)];
  TensorView view;
  view.offset = objects_[args[1]].int_value;
  ATTNSCORE_RETURN_IF_ERROR(ReadInts(args[2], "size", &view.sizes));
  ATTNSCORE_RETURN_IF_ERROR(ReadInts(args[3], "stride", &view.strides));
  if (view.sizes.size() != view.strides.size()) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("size has ", view.sizes.size(),
                             " dims but stride has ", view.strides.size()));
  }
  int64_t numel = 0;
  ATTNSCORE_RETURN_IF_ERROR(CheckView(storage, view, &numel));
  // CheckView checked that numel * item size fits in int64. A view may repeat
  // storage elements (stride 0, e.g. expand()), and many views may share one
  // storage: each copy counts, so neither multiplies a small file.
  const auto item_size = static_cast<int64_t>(c10::elementSize(storage.dtype));
  const int64_t copy_bytes = numel * item_size;
  if (absl::Status charged = budget_->Charge(
          static_cast<uint64_t>(copy_bytes),
          absl::StrCat("tensor copy of ", numel, " ",
                       c10::toString(storage.dtype), " elements from storage ",
                       Quote(storage.key),
                       copy_bytes > storage.numel * item_size
                           ? " (its view repeats storage elements)"
                           : ""),
          /*is_record=*/false);
      !charged.ok()) {
    return Fail(charged.code(), charged.message());
  }
  out->kind = Kind::kTensor;
  out->tensor = MaterializeView(storage, view, numel);
  return absl::OkStatus();
}

absl::Status Unpickler::Call(Ref callable, Ref args_ref) {
  const Object& function = objects_[callable];
  const Object& args = objects_[args_ref];
  if (function.kind != Kind::kGlobal || args.kind != Kind::kTuple) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("cannot call type ", KindName(function.kind),
                             " with type ", KindName(args.kind)));
  }
  Object result;
  switch (function.global) {
    case Global::kOrderedDict:
      if (!args.items.empty()) {
        return Fail(absl::StatusCode::kInvalidArgument,
                    "collections.OrderedDict called with arguments");
      }
      result.kind = Kind::kDict;
      result.ordered = true;
      return Push(std::move(result));
    case Global::kRebuildTensorV2: {
      // A copy: Push below may reallocate objects_, and `args` with it.
      const std::vector<Ref> items = args.items;
      ATTNSCORE_RETURN_IF_ERROR(RebuildTensor(items, &result));
      return Push(std::move(result));
    }
    case Global::kRebuildParameter:
      // _rebuild_parameter(data, requires_grad, backward_hooks): the tensor
      // itself will do.
      if (args.items.size() != 3 ||
          objects_[args.items[0]].kind != Kind::kTensor ||
          objects_[args.items[1]].kind != Kind::kBool ||
          objects_[args.items[2]].kind != Kind::kDict) {
        return Fail(
            absl::StatusCode::kInvalidArgument,
            "_rebuild_parameter arguments are not (tensor, bool, dict)");
      }
      return PushRef(args.items[0]);
    case Global::kStorageType:
      break;
  }
  return Fail(absl::StatusCode::kInvalidArgument,
              absl::StrCat(Quote(function.text), " is not callable here"));
}

absl::Status Unpickler::Unsupported() const {
  return Fail(
      absl::StatusCode::kInvalidArgument,
      "unsupported pickle opcode (not one torch.save emits for a state dict)");
}

absl::Status Unpickler::Execute(uint8_t byte, bool* stop) {
  const OpInfo* info = FindOp(byte);
  if (info == nullptr) return Unsupported();
  switch (info->family) {
    case OpFamily::kStack:
      return ExecuteStack(info->op, stop);
    case OpFamily::kNumber:
      return ExecuteNumber(info->op);
    case OpFamily::kString:
      return ExecuteString(info->op);
    case OpFamily::kContainer:
      return ExecuteContainer(info->op);
    case OpFamily::kMemo:
      return ExecuteMemo(info->op);
    case OpFamily::kCall:
      return ExecuteCall(info->op);
  }
  return Unsupported();
}

absl::Status Unpickler::ExecuteStack(Op op, bool* stop) {
  uint64_t n = 0;
  Ref ignored = 0;
  std::vector<Ref> dropped;
  switch (op) {
    case Op::kProto:
      ATTNSCORE_RETURN_IF_ERROR(ReadUint(1, &n));
      if (n < 2 || n > 5) {
        return Fail(absl::StatusCode::kInvalidArgument,
                    absl::StrCat("unsupported pickle protocol ", n));
      }
      return absl::OkStatus();
    case Op::kFrame:
      // Frames only help buffered readers; the whole pickle is in memory.
      ATTNSCORE_RETURN_IF_ERROR(ReadUint(8, &n));
      if (n > pickle_.size() - pos_) return Truncated(static_cast<size_t>(n));
      return absl::OkStatus();
    case Op::kStop:
      *stop = true;
      return absl::OkStatus();
    case Op::kMark:
      if (marks_.size() >= kMaxStack) {
        return Fail(absl::StatusCode::kResourceExhausted,
                    absl::StrCat("more than ", kMaxStack,
                                 " open MARKs: not a state dict"));
      }
      marks_.push_back(stack_.size());
      return absl::OkStatus();
    case Op::kPop:
      // As in CPython: POP on an empty frame drops the MARK that opened it.
      if (stack_.size() == Floor() && !marks_.empty()) return PopMark(&dropped);
      return Pop(&ignored);
    case Op::kPopMark:
      return PopMark(&dropped);
    default:
      return Unsupported();
  }
}

absl::Status Unpickler::ExecuteNumber(Op op) {
  uint64_t n = 0;
  Object object;
  switch (op) {
    case Op::kNone:
      return Push(Object{});
    case Op::kNewTrue:
    case Op::kNewFalse:
      object.kind = Kind::kBool;
      object.int_value = op == Op::kNewTrue ? 1 : 0;
      return Push(std::move(object));
    case Op::kBinInt1:
    case Op::kBinInt2:
      ATTNSCORE_RETURN_IF_ERROR(ReadUint(op == Op::kBinInt1 ? 1 : 2, &n));
      object.kind = Kind::kInt;
      object.int_value = static_cast<int64_t>(n);
      return Push(std::move(object));
    case Op::kBinInt:
      ATTNSCORE_RETURN_IF_ERROR(ReadUint(4, &n));
      object.kind = Kind::kInt;
      object.int_value = static_cast<int32_t>(static_cast<uint32_t>(n));
      return Push(std::move(object));
    case Op::kLong1:
      return PushLong1();
    case Op::kBinFloat:
      return PushBinFloat();
    default:
      return Unsupported();
  }
}

absl::Status Unpickler::PushLong1() {
  uint64_t n = 0;
  ATTNSCORE_RETURN_IF_ERROR(ReadUint(1, &n));
  if (n > 8) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("integer of ", n, " bytes does not fit in int64"));
  }
  const auto width = static_cast<size_t>(n);
  ATTNSCORE_RETURN_IF_ERROR(ReadUint(width, &n));
  // Two's complement over `width` bytes: sign-extend from the top byte.
  if (width > 0 && width < 8 && (n >> (8 * width - 1)) != 0) {
    n |= ~uint64_t{0} << (8 * width);
  }
  Object object;
  object.kind = Kind::kInt;
  object.int_value = static_cast<int64_t>(n);
  return Push(std::move(object));
}

absl::Status Unpickler::PushBinFloat() {
  absl::string_view bytes;
  ATTNSCORE_RETURN_IF_ERROR(Take(8, &bytes));
  uint64_t bits = 0;  // BINFLOAT is big-endian, unlike everything else
  for (char c : bytes) bits = (bits << 8) | static_cast<unsigned char>(c);
  Object object;
  object.kind = Kind::kFloat;
  std::memcpy(&object.float_value, &bits, sizeof(bits));
  return Push(std::move(object));
}

absl::Status Unpickler::ExecuteString(Op op) {
  uint64_t n = 0;
  absl::string_view bytes;
  switch (op) {
    case Op::kShortBinUnicode:
    case Op::kShortBinString:
      ATTNSCORE_RETURN_IF_ERROR(ReadUint(1, &n));
      break;
    case Op::kBinUnicode:
    case Op::kBinString:
      // BINSTRING's length is signed; a negative one reads as > 2^31 and fails
      // as truncation.
      ATTNSCORE_RETURN_IF_ERROR(ReadUint(4, &n));
      break;
    case Op::kBinUnicode8:
      ATTNSCORE_RETURN_IF_ERROR(ReadUint(8, &n));
      if (n > pickle_.size() - pos_) return Truncated(static_cast<size_t>(n));
      break;
    default:
      return Unsupported();
  }
  ATTNSCORE_RETURN_IF_ERROR(Take(static_cast<size_t>(n), &bytes));
  return PushString(bytes);
}

absl::Status Unpickler::ExecuteContainer(Op op) {
  Object object;
  std::vector<Ref> items;
  switch (op) {
    case Op::kEmptyTuple:
    case Op::kEmptyList:
    case Op::kEmptyDict:
      object.kind = op == Op::kEmptyTuple  ? Kind::kTuple
                    : op == Op::kEmptyList ? Kind::kList
                                           : Kind::kDict;
      return Push(std::move(object));
    case Op::kTuple:
      ATTNSCORE_RETURN_IF_ERROR(PopMark(&object.items));
      object.kind = Kind::kTuple;
      return Push(std::move(object));
    case Op::kTuple1:
    case Op::kTuple2:
    case Op::kTuple3:
      return PushSmallTuple(static_cast<size_t>(op) -
                            static_cast<size_t>(Op::kTuple1) + 1);
    case Op::kSetItem:
    case Op::kSetItems:
      ATTNSCORE_RETURN_IF_ERROR(PopDictItems(op == Op::kSetItems, &items));
      return ExtendTop(Kind::kDict, "cannot set items on type ", items);
    case Op::kAppend:
    case Op::kAppends:
      ATTNSCORE_RETURN_IF_ERROR(PopListItems(op == Op::kAppends, &items));
      return ExtendTop(Kind::kList, "cannot append to type ", items);
    case Op::kBuild:
      return BuildState();
    default:
      return Unsupported();
  }
}

absl::Status Unpickler::PushSmallTuple(size_t count) {
  Object object;
  object.items.resize(count);
  for (size_t i = count; i-- > 0;) {
    ATTNSCORE_RETURN_IF_ERROR(Pop(&object.items[i]));
  }
  object.kind = Kind::kTuple;
  return Push(std::move(object));
}

absl::Status Unpickler::PopDictItems(bool to_mark, std::vector<Ref>* items) {
  if (!to_mark) {
    items->resize(2);
    ATTNSCORE_RETURN_IF_ERROR(Pop(&(*items)[1]));
    return Pop(&(*items)[0]);
  }
  ATTNSCORE_RETURN_IF_ERROR(PopMark(items));
  if (items->size() % 2 != 0) {
    return Fail(absl::StatusCode::kDataLoss,
                absl::StrCat("odd number of items (", items->size(), ")"));
  }
  return absl::OkStatus();
}

absl::Status Unpickler::PopListItems(bool to_mark, std::vector<Ref>* items) {
  if (to_mark) return PopMark(items);
  items->resize(1);
  return Pop(&(*items)[0]);
}

absl::Status Unpickler::ExtendTop(Kind kind, absl::string_view wrong_type,
                                  const std::vector<Ref>& items) {
  Ref top = 0;
  ATTNSCORE_RETURN_IF_ERROR(Peek(&top));
  if (objects_[top].kind != kind) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat(wrong_type, KindName(objects_[top].kind)));
  }
  ATTNSCORE_RETURN_IF_ERROR(CountItems(items.size()));
  objects_[top].items.insert(objects_[top].items.end(), items.begin(),
                             items.end());
  return absl::OkStatus();
}

// The only BUILD a state dict has: OrderedDict.__dict__ gets {'_metadata':
// ...} (module versions for load_state_dict hooks), which tensors do not need.
absl::Status Unpickler::BuildState() {
  Ref state_ref = 0;
  Ref target_ref = 0;
  ATTNSCORE_RETURN_IF_ERROR(Pop(&state_ref));
  ATTNSCORE_RETURN_IF_ERROR(Peek(&target_ref));
  const Object& target = objects_[target_ref];
  const Object& state = objects_[state_ref];
  if (target.kind != Kind::kDict || !target.ordered ||
      state.kind != Kind::kDict) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("cannot set state of type ", KindName(target.kind),
                             target.ordered ? " (OrderedDict)" : "",
                             " from type ", KindName(state.kind)));
  }
  for (size_t i = 0; i < state.items.size(); i += 2) {
    if (objects_[state.items[i]].kind != Kind::kString) {
      return Fail(absl::StatusCode::kInvalidArgument,
                  "attribute name is not a string");
    }
  }
  return absl::OkStatus();
}

absl::Status Unpickler::ExecuteMemo(Op op) {
  uint64_t n = 0;
  Ref top = 0;
  switch (op) {
    case Op::kBinPut:
    case Op::kLongBinPut:
      ATTNSCORE_RETURN_IF_ERROR(ReadUint(op == Op::kBinPut ? 1 : 4, &n));
      ATTNSCORE_RETURN_IF_ERROR(Peek(&top));
      return Memoize(n, top);
    case Op::kMemoize:
      ATTNSCORE_RETURN_IF_ERROR(Peek(&top));
      return Memoize(memo_.size(), top);
    case Op::kBinGet:
    case Op::kLongBinGet: {
      ATTNSCORE_RETURN_IF_ERROR(ReadUint(op == Op::kBinGet ? 1 : 4, &n));
      const auto it = memo_.find(n);
      if (it == memo_.end()) {
        return Fail(absl::StatusCode::kDataLoss,
                    absl::StrCat("memo entry ", n, " not set"));
      }
      return PushRef(it->second);
    }
    default:
      return Unsupported();
  }
}

absl::Status Unpickler::ExecuteCall(Op op) {
  Ref a = 0;
  Ref b = 0;
  switch (op) {
    case Op::kGlobal: {
      absl::string_view module;
      absl::string_view name;
      ATTNSCORE_RETURN_IF_ERROR(ReadLine(&module));
      ATTNSCORE_RETURN_IF_ERROR(ReadLine(&name));
      return ResolveGlobal(module, name);
    }
    case Op::kStackGlobal:
      ATTNSCORE_RETURN_IF_ERROR(Pop(&b));
      ATTNSCORE_RETURN_IF_ERROR(Pop(&a));
      if (objects_[a].kind != Kind::kString ||
          objects_[b].kind != Kind::kString) {
        return Fail(absl::StatusCode::kInvalidArgument,
                    "module and name are not strings");
      }
      return ResolveGlobal(objects_[a].text, objects_[b].text);
    case Op::kReduce:
      ATTNSCORE_RETURN_IF_ERROR(Pop(&b));
      ATTNSCORE_RETURN_IF_ERROR(Pop(&a));
      return Call(a, b);
    case Op::kBinPersId: {
      ATTNSCORE_RETURN_IF_ERROR(Pop(&a));
      Object object;
      object.kind = Kind::kStorage;
      ATTNSCORE_RETURN_IF_ERROR(LoadStorage(a, &object.int_value));
      return Push(std::move(object));
    }
    default:
      return Unsupported();
  }
}

absl::StatusOr<std::map<std::string, at::Tensor>> Unpickler::Run() {
  bool stop = false;
  while (!stop) {
    op_pos_ = pos_;
    if (pos_ >= pickle_.size()) {
      return absl::DataLossError(absl::StrCat(
          path_, ": data.pkl truncated: ends at byte ", pos_, " without STOP"));
    }
    op_ = static_cast<uint8_t>(pickle_[pos_++]);
    ATTNSCORE_RETURN_IF_ERROR(Execute(op_, &stop));
  }
  if (!marks_.empty() || stack_.size() != 1) {
    return Fail(
        absl::StatusCode::kDataLoss,
        absl::StrCat("STOP with ", stack_.size(), " values and ", marks_.size(),
                     " open MARKs; expected exactly one value"));
  }
  const Object& root = objects_[stack_.back()];
  if (root.kind != Kind::kDict) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": holds type ", KindName(root.kind),
                     ", not a state dict (a dict of name -> tensor)"));
  }
  std::map<std::string, at::Tensor> result;
  for (size_t i = 0; i < root.items.size(); i += 2) {
    const Object& key = objects_[root.items[i]];
    const Object& value = objects_[root.items[i + 1]];
    if (key.kind != Kind::kString) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": state dict has a key of type ",
                       KindName(key.kind), ", expected str"));
    }
    if (value.kind != Kind::kTensor) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": state dict entry ", Quote(key.text),
                       " has type ", KindName(value.kind),
                       ", expected tensor; only a flat name -> tensor dict "
                       "(module.state_dict()) is supported"));
    }
    // Later entries win, as in the Python dict the pickle builds.
    result.insert_or_assign(key.text, value.tensor);
  }
  return result;
}

// Files that are not zip archives: say what they are when it is recognizable.
absl::Status NotZipError(const std::string& path, absl::string_view head) {
  if (!head.empty() &&
      static_cast<unsigned char>(head[0]) == static_cast<uint8_t>(Op::kProto)) {
    if (head.find(kLegacyMagic) != absl::string_view::npos) {
      return absl::UnimplementedError(absl::StrCat(
          path, ": legacy (non-zip) torch.save format is not supported; ",
          kResaveHint));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": a bare pickle, not a torch.save zip archive; ", kResaveHint));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      path, ": not a PyTorch zip archive (no zip signature at the start)"));
}

absl::StatusOr<std::map<std::string, at::Tensor>> LoadStateDictOrThrow(
    const std::string& path, const StateDictLimits& limits) {
  // Checking the signature first gives legacy files and strangers a precise
  // message instead of miniz's "failed finding central directory".
  std::string head(32, '\0');
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
    }
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<size_t>(in.gcount()));
  }
  if (!absl::StartsWith(head, kZipMagic)) return NotZipError(path, head);
  // Read here, not only by the reader: a truncated file fails with a precise
  // message instead of a c10::Error (whose backtrace capture is slow), and
  // every record's declared size is known before the reader allocates by it.
  uint64_t file_size = 0;
  absl::StatusOr<ZipDirectory> records = ReadZipDirectory(path, &file_size);
  if (!records.ok()) return records.status();
  LoadBudget budget(file_size, limits.slack_bytes);
  ATTNSCORE_RETURN_IF_ERROR(CheckZipDirectory(path, *records, budget));

  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    // The reader finds the "<archive_name>/" prefix from the first entry and
    // prepends it to every record name, so "data.pkl" is
    // "<archive_name>/data.pkl". LibTorch 1.13's constructor leaks miniz's
    // state (~1 KB) when it throws after opening the zip (e.g. a corrupt
    // `version` record); there is no handle to free it from here.
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const c10::Error& e) {
    return absl::DataLossError(
        absl::StrCat(path, ": damaged or truncated PyTorch zip archive: ",
                     e.what_without_backtrace()));
  }
  if (reader->hasRecord("byteorder")) {
    auto [data, size] = reader->getRecord("byteorder");
    const absl::string_view order(static_cast<const char*>(data.get()), size);
    if (order != "little") {
      return absl::UnimplementedError(
          absl::StrCat(path, ": byteorder is ", Quote(order),
                       "; only little-endian is supported"));
    }
  }
  if (reader->hasRecord("constants.pkl") || !reader->hasRecord("data.pkl")) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a torch.save archive (",
                     reader->hasRecord("constants.pkl")
                         ? "a TorchScript module from torch.jit.save"
                         : "no data.pkl",
                     "); save module.state_dict() with torch.save"));
  }
  const auto pickle_record = records->find("data.pkl");
  const uint64_t declared_pickle =
      pickle_record == records->end() ? 0 : pickle_record->second.uncompressed;
  if (declared_pickle > kMaxPickleBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": data.pkl is ", declared_pickle, " bytes, more than the ",
        kMaxPickleBytes, " a state dict needs"));
  }
  if (absl::Status charged =
          budget.Charge(declared_pickle, "data.pkl", /*is_record=*/true);
      !charged.ok()) {
    return absl::Status(charged.code(),
                        absl::StrCat(path, ": ", charged.message()));
  }
  auto [pickle_data, pickle_size] = reader->getRecord("data.pkl");
  if (pickle_record != records->end()) {
    if (absl::Status inflated = CheckInflated(
            pickle_record->second, pickle_data.get(), pickle_size, "data.pkl");
        !inflated.ok()) {
      return absl::Status(inflated.code(),
                          absl::StrCat(path, ": ", inflated.message()));
    }
  }
  if (pickle_size != declared_pickle) {
    return absl::DataLossError(
        absl::StrCat(path, ": data.pkl holds ", pickle_size,
                     " bytes, its zip entry declares ", declared_pickle));
  }
  const absl::string_view pickle(static_cast<const char*>(pickle_data.get()),
                                 pickle_size);
  return Unpickler(path, pickle, reader.get(), &*records, &budget).Run();
}

}  // namespace

absl::StatusOr<std::map<std::string, at::Tensor>> LoadStateDict(
    const std::string& path, const StateDictLimits& limits) {
  try {
    return LoadStateDictOrThrow(path, limits);
  } catch (const c10::Error& e) {
    // Almost always the zip reader meeting a damaged record (bad CRC, short
    // data).
    return absl::DataLossError(
        absl::StrCat(path, ": ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": out of memory while loading"));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(
        absl::StrCat(path, ": unknown exception while loading"));
  }
}

}  // namespace attnscore::scoring

#undef ATTNSCORE_RETURN_IF_ERROR
