// Shared-memory outputs without gRPC: the registry's checks (prefix, names,
// page-aligned offsets, ranges within the object, owners, the region cap),
// mappings that outlive Unregister, the SIGBUS handler that breaks a region
// whose object is truncated under a writer, and the placements of a request
// (resolved against the validated request, kept apart from each other and
// from the inputs through every registration of an object, written from a
// result).
#include "server/service/shared_memory.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/service/output_placement.h"
#include "server/service/request_validation.h"
#include "tests/service/shm_object.h"
#include "tests/service/test_requests.h"

namespace attnscore::service {
namespace {

using ::testing::HasSubstr;

using testing::kShmTestPrefix;
using testing::ShmObject;

constexpr const char* kPrefix = kShmTestPrefix;

SharedMemorySpec Spec(const std::string& name, const std::string& key,
                      uint64_t offset, uint64_t byte_size) {
  SharedMemorySpec spec;
  spec.name = name;
  spec.key = key;
  spec.offset = offset;
  spec.byte_size = byte_size;
  return spec;
}

SharedMemoryRegistry Registry(int max_regions = 64) {
  SharedMemoryOptions options;
  options.prefix = kPrefix;
  options.max_regions = max_regions;
  return SharedMemoryRegistry(options);
}

TEST(SharedMemoryRegistryTest, OffWithoutAPrefix) {
  SharedMemoryRegistry registry{SharedMemoryOptions()};
  ShmObject object(4096);
  const absl::Status status =
      registry.Register("anonymous", Spec("r", object.key(), 0, 4096));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("--shm-prefix"));
  EXPECT_EQ(registry.Find("anonymous", "r").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(registry.UnregisterAll("anonymous").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(SharedMemoryRegistryTest, RefusesBadSpecsNamingTheField) {
  SharedMemoryRegistry registry = Registry();
  ShmObject object(8192);
  struct Case {
    SharedMemorySpec spec;
    absl::StatusCode code;
    const char* message;
  };
  const std::vector<Case> cases = {
      {Spec("", object.key(), 0, 1), absl::StatusCode::kInvalidArgument,
       "name: expected 1 to 64 bytes, got 0"},
      {Spec("a/b", object.key(), 0, 1), absl::StatusCode::kInvalidArgument,
       "name: expected letters"},
      {Spec("r", "other-app", 0, 1), absl::StatusCode::kInvalidArgument,
       "key: expected a shared-memory object name starting with "
       "\"attnscore-test-\""},
      {Spec("r", std::string(kPrefix) + "../x", 0, 1),
       absl::StatusCode::kInvalidArgument, "key: expected letters"},
      {Spec("r", object.key(), 100, 1), absl::StatusCode::kInvalidArgument,
       "offset: expected a multiple of the page size"},
      {Spec("r", object.key(), 0, 0), absl::StatusCode::kInvalidArgument,
       "byte_size: expected > 0, got 0"},
      {Spec("r", object.key(), 4096, 8192), absl::StatusCode::kInvalidArgument,
       "within the object's 8192 bytes, got 4096 + 8192"},
      {Spec("r", std::string(kPrefix) + "missing", 0, 1),
       absl::StatusCode::kNotFound, "No such file"},
  };
  for (const Case& c : cases) {
    const absl::Status status = registry.Register("anonymous", c.spec);
    EXPECT_EQ(status.code(), c.code) << status;
    EXPECT_THAT(status.message(), HasSubstr(c.message));
  }
  EXPECT_TRUE(registry.List("anonymous").empty());
}

TEST(SharedMemoryRegistryTest, RegionsBelongToTheirOwner) {
  SharedMemoryRegistry registry = Registry();
  ShmObject object(8192);
  ASSERT_TRUE(
      registry.Register("alice", Spec("r", object.key(), 4096, 4096)).ok());
  EXPECT_EQ(registry.Register("alice", Spec("r", object.key(), 0, 4096)).code(),
            absl::StatusCode::kAlreadyExists);
  // Bob may use the same name for his own region, and cannot see Alice's.
  EXPECT_EQ(registry.Find("bob", "r").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.Unregister("bob", "r").code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(registry.Register("bob", Spec("r", object.key(), 0, 4096)).ok());
  const std::vector<SharedMemorySpec> alice = registry.List("alice");
  ASSERT_EQ(alice.size(), 1u);
  EXPECT_EQ(alice[0].offset, 4096u);
  EXPECT_EQ(registry.List("bob").size(), 1u);
  EXPECT_TRUE(registry.List("carol").empty());
  ASSERT_TRUE(registry.Unregister("alice", "r").ok());
  EXPECT_TRUE(registry.List("alice").empty());
  EXPECT_TRUE(registry.Find("bob", "r").ok());
  // Unregistering all of one owner's regions leaves the others'.
  ASSERT_TRUE(
      registry.Register("alice", Spec("s", object.key(), 0, 4096)).ok());
  ASSERT_TRUE(
      registry.Register("alice", Spec("t", object.key(), 0, 4096)).ok());
  ASSERT_TRUE(registry.UnregisterAll("alice").ok());
  EXPECT_TRUE(registry.List("alice").empty());
  EXPECT_TRUE(registry.Find("bob", "r").ok());
  EXPECT_TRUE(registry.UnregisterAll("carol").ok());  // none: not an error
}

TEST(SharedMemoryRegistryTest, CapsTheRegionsOfAllOwners) {
  SharedMemoryRegistry registry = Registry(/*max_regions=*/2);
  ShmObject object(4096);
  ASSERT_TRUE(registry.Register("a", Spec("r", object.key(), 0, 4096)).ok());
  ASSERT_TRUE(registry.Register("b", Spec("r", object.key(), 0, 4096)).ok());
  const absl::Status third =
      registry.Register("c", Spec("r", object.key(), 0, 4096));
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(), HasSubstr("--max-shm-regions"));
  ASSERT_TRUE(registry.Unregister("a", "r").ok());
  EXPECT_TRUE(registry.Register("c", Spec("r", object.key(), 0, 4096)).ok());
}

TEST(SharedMemoryRegistryTest, OneIdentityHoldsAtMostItsShare) {
  ShmObject object(4096);
  SharedMemoryRegistry registry = Registry(/*max_regions=*/4);  // 2 each
  for (const char* name : {"a", "b"}) {
    ASSERT_TRUE(
        registry.Register("greedy", Spec(name, object.key(), 0, 4096)).ok());
  }
  const absl::Status third =
      registry.Register("greedy", Spec("c", object.key(), 0, 4096));
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(),
              HasSubstr("at most 2 registered by one identity (the server's "
                        "--max-shm-regions-per-client)"));
  EXPECT_TRUE(
      registry.Register("other", Spec("c", object.key(), 0, 4096)).ok());
  // 0: no per-identity cap, only the total.
  SharedMemoryOptions options;
  options.prefix = kPrefix;
  options.max_regions = 3;
  options.max_regions_per_client = 0;
  SharedMemoryRegistry uncapped(options);
  for (const char* name : {"a", "b", "c"}) {
    ASSERT_TRUE(
        uncapped.Register("greedy", Spec(name, object.key(), 0, 4096)).ok());
  }
  EXPECT_THAT(
      uncapped.Register("greedy", Spec("d", object.key(), 0, 4096)).message(),
      HasSubstr("--max-shm-regions)"));
}

TEST(SharedMemoryRegistryTest, WritesLandInTheClientsMappingAtTheOffset) {
  SharedMemoryRegistry registry = Registry();
  ShmObject object(size_t{3} * 4096);
  ASSERT_TRUE(
      registry.Register("anonymous", Spec("r", object.key(), 4096, 8192)).ok());
  absl::StatusOr<std::shared_ptr<const MappedRegion>> region =
      registry.Find("anonymous", "r");
  ASSERT_TRUE(region.ok()) << region.status();
  const std::string bytes = "placed bytes";
  ASSERT_TRUE((*region)->Write(100, bytes.data(), bytes.size()).ok());
  // Region offset 100 is object offset 4096 + 100.
  EXPECT_EQ(std::string(object.data() + 4096 + 100, bytes.size()), bytes);
  // A write past the region is refused, not done.
  EXPECT_EQ((*region)->Write(8192 - 4, bytes.data(), bytes.size()).code(),
            absl::StatusCode::kInternal);
}

TEST(SharedMemoryRegistryTest, MappingOutlivesUnregisterWhileHeld) {
  SharedMemoryRegistry registry = Registry();
  ShmObject object(4096);
  ASSERT_TRUE(
      registry.Register("anonymous", Spec("r", object.key(), 0, 4096)).ok());
  std::shared_ptr<const MappedRegion> held = *registry.Find("anonymous", "r");
  ASSERT_TRUE(registry.Unregister("anonymous", "r").ok());
  const char byte = 'x';
  EXPECT_TRUE(held->Write(4095, &byte, 1).ok());
  EXPECT_EQ(object.data()[4095], 'x');
}

// A GPU server's page lock sees each region once as it is mapped (its
// mapping's address and size) and once as the last holder lets it go, before
// the unmapping; a region whose lock fails stays pageable and is never
// unlocked. Either way the region works.
TEST(SharedMemoryRegistryTest, PageLocksRegionsWhileMapped) {
  std::vector<std::pair<void*, size_t>> locked;
  std::vector<void*> unlocked;
  bool refuse = false;
  SharedMemoryOptions options;
  options.prefix = kPrefix;
  options.page_lock.lock = [&](void* base, size_t bytes) {
    if (refuse) return false;
    locked.emplace_back(base, bytes);
    return true;
  };
  options.page_lock.unlock = [&](void* base) { unlocked.push_back(base); };
  SharedMemoryRegistry registry(options);
  ShmObject object(size_t{3} * 4096);
  ASSERT_TRUE(
      registry.Register("anonymous", Spec("r", object.key(), 4096, 8192)).ok());
  std::shared_ptr<const MappedRegion> held = *registry.Find("anonymous", "r");
  ASSERT_EQ(locked.size(), 1u);
  EXPECT_EQ(locked[0],
            std::make_pair(static_cast<void*>(held->At(0)), size_t{8192}));
  EXPECT_TRUE(held->page_locked());
  const char byte = 'x';
  EXPECT_TRUE(held->Write(0, &byte, 1).ok());
  EXPECT_EQ(object.data()[4096], 'x');
  ASSERT_TRUE(registry.Unregister("anonymous", "r").ok());
  EXPECT_TRUE(unlocked.empty());  // still held
  held.reset();
  ASSERT_EQ(unlocked.size(), 1u);
  EXPECT_EQ(unlocked[0], locked[0].first);

  refuse = true;
  ASSERT_TRUE(
      registry.Register("anonymous", Spec("s", object.key(), 0, 4096)).ok());
  held = *registry.Find("anonymous", "s");
  EXPECT_FALSE(held->page_locked());
  EXPECT_TRUE(held->Write(4095, &byte, 1).ok());
  EXPECT_EQ(object.data()[4095], 'x');
  ASSERT_TRUE(registry.Unregister("anonymous", "s").ok());
  held.reset();
  EXPECT_EQ(unlocked.size(), 1u);  // the refused region is not unlocked
}

// `object` (4 pages) registered whole as "anonymous"'s region "r"; null when
// that failed.
std::shared_ptr<const MappedRegion> RegisterWhole(
    SharedMemoryRegistry& registry, const ShmObject& object) {
  constexpr uint64_t kBytes = uint64_t{4} * 4096;
  if (!registry.Register("anonymous", Spec("r", object.key(), 0, kBytes))
           .ok()) {
    return nullptr;
  }
  absl::StatusOr<std::shared_ptr<const MappedRegion>> region =
      registry.Find("anonymous", "r");
  return region.ok() ? *region : nullptr;
}

TEST(SharedMemoryRegistryTest, TruncatedObjectFailsTheWriteNotTheProcess) {
  SharedMemoryRegistry registry = Registry();
  ShmObject object(size_t{4} * 4096);
  std::shared_ptr<const MappedRegion> region = RegisterWhole(registry, object);
  ASSERT_NE(region, nullptr);
  object.Truncate(4096);
  const std::vector<char> bytes(size_t{4} * 4096, 'y');
  const absl::Status status = region->Write(0, bytes.data(), bytes.size());
  EXPECT_EQ(status.code(), absl::StatusCode::kAborted) << status;
  EXPECT_THAT(status.message(), HasSubstr("shrank below the registered range"));
  EXPECT_THAT(status.message(), HasSubstr("registered again"));
  // The region is broken for good: its mapping no longer shows the object,
  // so even a write within what is left of it fails and does not land.
  const std::vector<char> other(4096, 'z');
  EXPECT_EQ(region->Write(0, other.data(), other.size()).code(),
            absl::StatusCode::kAborted);
  EXPECT_NE(object.data()[4095], 'z');
  // Registered again (the object grown back), the region works.
  region.reset();
  ASSERT_TRUE(registry.Unregister("anonymous", "r").ok());
  object.Truncate(size_t{4} * 4096);
  region = RegisterWhole(registry, object);
  ASSERT_NE(region, nullptr);
  EXPECT_TRUE(region->Write(0, other.data(), other.size()).ok());
  EXPECT_EQ(object.data()[4095], 'z');
}

// The scorer writes placed outputs in place from its own threads: a fault on
// any thread marks the region, which the request checks afterwards.
TEST(SharedMemoryRegistryTest, AFaultOnAnyThreadBreaksTheRegion) {
  SharedMemoryRegistry registry = Registry();
  ShmObject object(size_t{4} * 4096);
  std::shared_ptr<const MappedRegion> region = RegisterWhole(registry, object);
  ASSERT_NE(region, nullptr);
  EXPECT_TRUE(region->CheckIntact().ok());
  object.Truncate(4096);
  std::thread writer(
      [&] { std::memset(region->At(0), 'w', size_t{4} * 4096); });
  writer.join();
  const absl::Status status = region->CheckIntact();
  EXPECT_EQ(status.code(), absl::StatusCode::kAborted) << status;
  EXPECT_THAT(status.message(), HasSubstr("\"r\""));
  // Another region of the process is untouched.
  ShmObject second(4096);
  ASSERT_TRUE(
      registry.Register("anonymous", Spec("s", second.key(), 0, 4096)).ok());
  EXPECT_TRUE((*registry.Find("anonymous", "s"))->CheckIntact().ok());
}

// The handler is for the regions alone: a SIGBUS anywhere else still ends the
// process (the previous disposition, here the default).
TEST(SharedMemoryGuardDeathTest, BusErrorsElsewhereStillEndTheProcess) {
  SharedMemoryRegistry registry = Registry();
  ShmObject registered(4096);
  // The first mapping installs the handler.
  ASSERT_TRUE(
      registry.Register("anonymous", Spec("r", registered.key(), 0, 4096))
          .ok());
  // Created here, so that this process unlinks it after the child died.
  ShmObject object(size_t{2} * 4096);
  EXPECT_DEATH(
      {
        object.Truncate(0);
        // Reading the vanished page faults outside any region.
        std::printf("%d\n", static_cast<int>(object.data()[4096]));
      },
      "");
}

// A validated 2x2x3x4 float32 request with every output (48 floats = 192
// bytes each for logits and probs, [2,2,3,8] = 384 bytes of context).
ValidatedRequest Validated(v1::ScoreRequest& request) {
  request = testing::AlibiRequest(2, 2, 3, 4, 8);
  request.add_outputs(v1::LOGITS);
  request.add_outputs(v1::PROBS);
  request.add_outputs(v1::CONTEXT);
  scoring::ModelSet models;
  absl::StatusOr<ValidatedRequest> validated =
      ValidateRequest(request, RequestLimits(), models);
  EXPECT_TRUE(validated.ok()) << validated.status();
  return *std::move(validated);
}

void Place(v1::ScoreRequest& request, v1::Output output,
           const std::string& region, uint64_t offset, uint64_t byte_size) {
  v1::OutputPlacement* placement = request.add_placements();
  placement->set_output(output);
  placement->mutable_range()->set_region(region);
  placement->mutable_range()->set_offset(offset);
  placement->mutable_range()->set_byte_size(byte_size);
}

// A 4096-byte region "r" of "anonymous", and a request for it to place.
class OutputPlacementTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(
        registry.Register("anonymous", Spec("r", object.key(), 0, 4096)).ok());
    validated = Validated(request);
  }

  SharedMemoryRegistry registry = Registry();
  ShmObject object{4096};
  v1::ScoreRequest request;
  ValidatedRequest validated;
};

TEST_F(OutputPlacementTest, ResolvesAndChecksEveryPlacement) {
  struct Case {
    std::vector<std::tuple<v1::Output, std::string, uint64_t, uint64_t>> place;
    absl::StatusCode code;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{{v1::LOGITS, "r", 0, 192}, {v1::CONTEXT, "r", 192, 384}},
       absl::StatusCode::kOk,
       ""},
      {{{v1::LOGITS, "r", 0, 191}},
       absl::StatusCode::kInvalidArgument,
       "placements[0].range.byte_size: expected at least the LOGITS output's "
       "192 bytes, got 191"},
      {{{v1::CONTEXT, "r", 4000, 384}},
       absl::StatusCode::kInvalidArgument,
       "placements[0].range: expected offset + byte_size within the region's "
       "4096 bytes, got 4000 + 384"},
      {{{v1::LOGITS, "nope", 0, 192}},
       absl::StatusCode::kNotFound,
       "placements[0].range.region: shared-memory region \"nope\""},
      {{{v1::LOGITS, "r", 0, 192}, {v1::PROBS, "r", 100, 192}},
       absl::StatusCode::kInvalidArgument,
       "placements[1].range: expected bytes apart from the other placements', "
       "got [100, 292) overlapping placements[0].range's [0, 192)"},
      {{{v1::PROBS, "r", 0, 192}, {v1::PROBS, "r", 1024, 192}},
       absl::StatusCode::kInvalidArgument,
       "placements[1].output: expected each output placed at most once"},
      {{{v1::OUTPUT_UNSPECIFIED, "r", 0, 192}},
       absl::StatusCode::kInvalidArgument,
       "placements[0].output: expected one of the request's outputs, got "
       "OUTPUT_UNSPECIFIED"},
  };
  for (const Case& c : cases) {
    request.clear_placements();
    for (const auto& [output, region, offset, size] : c.place) {
      Place(request, output, region, offset, size);
    }
    absl::StatusOr<std::vector<ResolvedPlacement>> placed =
        ResolvePlacements(request, validated, &registry, "anonymous");
    EXPECT_EQ(placed.status().code(), c.code) << placed.status();
    if (!placed.ok()) {
      EXPECT_THAT(placed.status().message(), HasSubstr(c.message));
    }
  }
  // Another identity does not see the region.
  request.clear_placements();
  Place(request, v1::LOGITS, "r", 0, 192);
  EXPECT_EQ(
      ResolvePlacements(request, validated, &registry, "bob").status().code(),
      absl::StatusCode::kNotFound);
  // Off: FAILED_PRECONDITION, naming the flag.
  const absl::Status off =
      ResolvePlacements(request, validated, nullptr, "anonymous").status();
  EXPECT_EQ(off.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(off.message(), HasSubstr("--shm-prefix"));
}

// Overlap is a matter of the object's bytes, not of region names: "r2", a
// second registration of "r"'s object, overlaps "r"; "s" and "s0" map two
// ranges of another object, counted from their own offsets.
TEST_F(OutputPlacementTest, FindsOverlapsThroughEveryRegistrationOfAnObject) {
  ShmObject other{8192};
  ASSERT_TRUE(
      registry.Register("anonymous", Spec("r2", object.key(), 0, 4096)).ok());
  ASSERT_TRUE(
      registry.Register("anonymous", Spec("s", other.key(), 4096, 4096)).ok());
  ASSERT_TRUE(
      registry.Register("anonymous", Spec("s0", other.key(), 0, 8192)).ok());
  Place(request, v1::LOGITS, "r", 0, 192);
  Place(request, v1::PROBS, "r2", 100, 192);
  const absl::Status overlap =
      ResolvePlacements(request, validated, &registry, "anonymous").status();
  EXPECT_EQ(overlap.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(overlap.message(),
              HasSubstr("placements[1].range: expected bytes apart from the "
                        "other placements', got [100, 292) overlapping "
                        "placements[0].range's [0, 192) (regions \"r2\" and "
                        "\"r\" map the same object, those bytes too)"));

  request.clear_placements();
  Place(request, v1::LOGITS, "r", 0, 192);
  Place(request, v1::PROBS, "r2", 192, 192);
  Place(request, v1::CONTEXT, "s", 0, 384);  // the object's [4096, 4480)
  absl::StatusOr<std::vector<ResolvedPlacement>> placed =
      ResolvePlacements(request, validated, &registry, "anonymous");
  ASSERT_TRUE(placed.ok()) << placed.status();

  struct Case {
    const char* region;
    uint64_t offset;
    const char* message;  // "" when apart from every placement
  };
  const std::vector<Case> cases = {
      {"r2", 64,
       "placements[0].range: expected bytes apart from the inputs', got [0, "
       "192) overlapping query.shared_memory's [64, 128) (regions \"r\" and "
       "\"r2\" map the same object, those bytes too)"},
      {"r2", 512, ""},
      {"s0", 4096 + 100,
       "placements[2].range: expected bytes apart from the inputs', got [0, "
       "384) overlapping query.shared_memory's [4196, 4260) (regions \"s\" "
       "and \"s0\" map the same object, those bytes too)"},
      {"s0", 100, ""},
      {"s", 320,
       "placements[2].range: expected bytes apart from the inputs', got [0, "
       "384) overlapping query.shared_memory's [320, 384) of region \"s\""},
  };
  for (const Case& c : cases) {
    v1::SharedMemoryRange range;
    range.set_region(c.region);
    range.set_offset(c.offset);
    range.set_byte_size(64);
    absl::StatusOr<ResolvedInput> input =
        ResolveInput(range, "query.shared_memory.region", "query.shared_memory",
                     &registry, "anonymous");
    ASSERT_TRUE(input.ok()) << input.status();
    const absl::Status apart = CheckInputsApart(*placed, {*input});
    if (*c.message == '\0') {
      EXPECT_TRUE(apart.ok()) << c.region << " " << c.offset << ": " << apart;
    } else {
      EXPECT_EQ(apart.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(apart.message(), HasSubstr(c.message));
    }
  }
}

TEST_F(OutputPlacementTest, WritesPlacedOutputsAndReportsTheirRanges) {
  Place(request, v1::PROBS, "r", 512, 1024);
  absl::StatusOr<std::vector<ResolvedPlacement>> placed =
      ResolvePlacements(request, validated, &registry, "anonymous");
  ASSERT_TRUE(placed.ok()) << placed.status();

  std::vector<float> probs(48);
  for (size_t i = 0; i < probs.size(); ++i) {
    probs[i] = 0.25f * static_cast<float>(i);
  }
  scoring::ScoreResult result;
  result.probs.emplace();
  result.probs->shape = {2, 2, 3, 4};
  result.probs->data = probs.data();
  result.probs->size_bytes = probs.size() * sizeof(float);
  result.logits.emplace(*result.probs);
  absl::StatusOr<PlacedRanges> ranges = WritePlacements(*placed, result);
  ASSERT_TRUE(ranges.ok()) << ranges.status();
  EXPECT_EQ(ranges->logits, nullptr);
  EXPECT_EQ(ranges->context, nullptr);
  ASSERT_NE(ranges->probs, nullptr);
  EXPECT_EQ(ranges->probs->offset(), 512u);
  EXPECT_EQ(ranges->probs->byte_size(), 192u);  // what was written
  std::vector<float> written(48);
  std::memcpy(written.data(), object.data() + 512, 192);
  EXPECT_EQ(written, probs);

  // The result's size must be what the request was validated for.
  result.probs->size_bytes = 96;
  EXPECT_EQ(WritePlacements(*placed, result).status().code(),
            absl::StatusCode::kInternal);
}

// Logits and probs placements become the item's destinations, and an output
// the scorer wrote there is not copied again; a broken region fails it.
TEST_F(OutputPlacementTest, OffersDestinationsAndTrustsInPlaceWrites) {
  Place(request, v1::LOGITS, "r", 0, 256);
  Place(request, v1::CONTEXT, "r", 2048, 384);
  absl::StatusOr<std::vector<ResolvedPlacement>> placed =
      ResolvePlacements(request, validated, &registry, "anonymous");
  ASSERT_TRUE(placed.ok()) << placed.status();
  scoring::ScoreItem item = validated.item;
  OfferDestinations(*placed, &item);
  std::shared_ptr<const MappedRegion> region = *registry.Find("anonymous", "r");
  EXPECT_EQ(item.logits_destination.data, region->At(0));
  EXPECT_EQ(item.logits_destination.capacity, 192u);  // the logits' bytes
  EXPECT_EQ(item.logits_destination.keepalive, region);
  EXPECT_EQ(item.probs_destination.data, nullptr);  // not placed
  // Context is converted to its layout and dtype after the scorer: copied.

  // The scorer wrote the logits in place: the tensor views the region.
  std::memset(region->At(0), 0x3f, 192);
  const std::vector<float> context(96, 1.5f);
  scoring::ScoreResult result;
  result.logits.emplace();
  result.logits->shape = {2, 2, 3, 4};
  result.logits->data = region->At(0);
  result.logits->size_bytes = 192;
  result.context.emplace();
  result.context->shape = {2, 2, 3, 8};
  result.context->data = context.data();
  result.context->size_bytes = 384;
  absl::StatusOr<PlacedRanges> ranges = WritePlacements(*placed, result);
  ASSERT_TRUE(ranges.ok()) << ranges.status();
  ASSERT_NE(ranges->logits, nullptr);
  ASSERT_NE(ranges->context, nullptr);
  EXPECT_EQ(std::string(object.data(), 192), std::string(192, '\x3f'));
  float copied = 0;
  std::memcpy(&copied, object.data() + 2048 + 380, sizeof(copied));
  EXPECT_EQ(copied, 1.5f);

  // The object shrank under the scorer's writes: the request fails.
  object.Truncate(0);
  std::memset(region->At(0), 0, 192);
  const absl::Status broken = WritePlacements(*placed, result).status();
  EXPECT_EQ(broken.code(), absl::StatusCode::kAborted) << broken;
}

}  // namespace
}  // namespace attnscore::service
