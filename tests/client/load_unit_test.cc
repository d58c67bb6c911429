// The load tester's parts without a server: the log histogram against exact
// percentiles, workload presets and shape parsing, shared-memory inputs and
// output slots, RunLoad's refusals, and report formats.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_split.h"
#include "client/load/histogram.h"
#include "client/load/report.h"
#include "client/load/runner.h"
#include "client/load/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace attnscore::client::load {
namespace {

using ::testing::HasSubstr;

TEST(LogHistogramTest, BucketsTileTheValueRange) {
  // Every index's range starts right after the previous one ends, and values
  // map back into it.
  for (size_t i = 1; i < 40000; ++i) {
    ASSERT_EQ(LogHistogram::LowestOf(i), LogHistogram::HighestOf(i - 1) + 1)
        << i;
  }
  for (int64_t v :
       {int64_t{0}, int64_t{1}, int64_t{2047}, int64_t{2048}, int64_t{2049},
        int64_t{123456789}, int64_t{1} << 40, (int64_t{1} << 62) + 12345}) {
    const size_t i = LogHistogram::IndexOf(v);
    EXPECT_LE(LogHistogram::LowestOf(i), v);
    EXPECT_GE(LogHistogram::HighestOf(i), v);
    // Relative width below 0.1%.
    EXPECT_LE(static_cast<double>(LogHistogram::HighestOf(i) -
                                  LogHistogram::LowestOf(i)),
              std::max(1.0, static_cast<double>(v) / 1000.0))
        << v;
  }
}

TEST(LogHistogramTest, PercentilesWithinATenthOfAPercent) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> latency(std::log(2e6),
                                              1.0);  // ~2 ms, long tail
  std::vector<int64_t> samples;
  LogHistogram h;
  for (int i = 0; i < 200000; ++i) {
    const auto v = static_cast<int64_t>(latency(rng));
    samples.push_back(v);
    h.Record(v);
  }
  std::sort(samples.begin(), samples.end());
  EXPECT_EQ(h.count(), 200000);
  EXPECT_EQ(h.min(), samples.front());
  EXPECT_EQ(h.max(), samples.back());
  int64_t previous = 0;
  for (double p : {1.0, 10.0, 50.0, 90.0, 99.0, 99.9, 99.99}) {
    const auto rank = static_cast<size_t>(std::ceil(
                          p / 100 * static_cast<double>(samples.size()))) -
                      1;
    const double exact = static_cast<double>(samples[rank]);
    const double got = static_cast<double>(h.Percentile(p));
    EXPECT_NEAR(got, exact, exact * 1e-3) << "p" << p;
    EXPECT_GE(h.Percentile(p), previous);
    previous = h.Percentile(p);
  }
  EXPECT_EQ(h.Percentile(100), samples.back());
  EXPECT_EQ(h.Percentile(0), samples.front());
}

TEST(LogHistogramTest, MergeEqualsRecordingEverything) {
  LogHistogram a, b, all;
  for (int64_t v = 0; v < 100000; v += 37) {
    ((v / 37) % 2 ? a : b).Record(v * 11);
    all.Record(v * 11);
  }
  a.Merge(b);
  EXPECT_EQ(a.count(), all.count());
  EXPECT_EQ(a.min(), all.min());
  EXPECT_EQ(a.max(), all.max());
  EXPECT_DOUBLE_EQ(a.mean(), all.mean());
  for (double p : {5.0, 50.0, 99.0}) {
    EXPECT_EQ(a.Percentile(p), all.Percentile(p));
  }
  LogHistogram empty;
  EXPECT_EQ(empty.Percentile(50), 0);
  EXPECT_EQ(empty.mean(), 0);
  empty.Record(-5);  // clamped
  EXPECT_EQ(empty.max(), 0);
}

TEST(WorkloadTest, ShapesPresetsAndWeights) {
  absl::StatusOr<std::pair<RequestShape, double>> shape =
      ParseShape("B2,H8,Lq16,Lk32,D64:3");
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(shape->first.batch, 2);
  EXPECT_EQ(shape->first.key_len, 32);
  EXPECT_EQ(shape->second, 3.0);
  EXPECT_TRUE(ParseShape("1,2,3,4,5").ok());
  EXPECT_FALSE(ParseShape("1,2,3,4").ok());
  EXPECT_FALSE(ParseShape("1,2,0,4,5").ok());
  EXPECT_FALSE(ParseShape("1,2,3,4,5:0").ok());

  WorkloadOptions options;
  options.preset = "mixed";
  options.outputs = Outputs{true, false, true};
  absl::StatusOr<Workload> mixed = Workload::Create(options);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  ASSERT_EQ(mixed->kinds().size(), 3u);
  EXPECT_EQ(mixed->kinds()[0].name, "decode");
  EXPECT_EQ(mixed->kinds()[0].request.key.shape,
            (std::vector<int64_t>{1, 8, 2048, 64}));
  EXPECT_TRUE(mixed->kinds()[0].request.value.has_value());
  EXPECT_TRUE(mixed->kinds()[0].request.query.Validate().ok());
  EXPECT_EQ(mixed->kinds()[2].response_bytes,
            int64_t{8} * 2048 * 2048 * 4 + int64_t{8} * 2048 * 64 * 4);
  std::vector<int> picks(3);
  for (uint64_t i = 0; i < 100000; ++i) ++picks[mixed->Pick(i)];
  EXPECT_NEAR(picks[0] / 1e5, 0.90, 0.01);
  EXPECT_NEAR(picks[1] / 1e5, 0.09, 0.01);
  EXPECT_NEAR(picks[2] / 1e5, 0.01, 0.005);
  EXPECT_EQ(mixed->Pick(12345), mixed->Pick(12345));

  options = WorkloadOptions();
  options.mode = "relative";
  EXPECT_THAT(Workload::Create(options).status().message(), HasSubstr("model"));
  options.model = "m";
  options.preset = "prefill9";
  EXPECT_FALSE(Workload::Create(options).ok());
  options.preset = "";
  options.shapes = {"1,2,3,4,5", "B1,H1,Lq1,Lk1,D1:2"};
  options.dtype = DType::kBFloat16;
  absl::StatusOr<Workload> custom = Workload::Create(options);
  ASSERT_TRUE(custom.ok()) << custom.status();
  EXPECT_EQ(custom->kinds()[1].name, "B1,H1,Lq1,Lk1,D1");
  EXPECT_EQ(custom->kinds()[0].request.query.dtype, DType::kBFloat16);
  EXPECT_EQ(std::get<Relative>(custom->kinds()[0].request.bias).model, "m");
  options.shapes = {"1048576,1048576,1048576,1048576,1048576"};
  EXPECT_FALSE(Workload::Create(options).ok());
}

// Every kind's inputs land in the region at aligned, disjoint ranges that its
// requests name instead of their bytes.
TEST(WorkloadTest, SharedInputsAreCopiedAndNamed) {
  WorkloadOptions options;
  options.preset = "decode";
  options.shapes = {"B2,H2,Lq3,Lk5,D7"};
  options.outputs = Outputs{true, false, true};  // context: values too
  absl::StatusOr<Workload> workload = Workload::Create(options);
  ASSERT_TRUE(workload.ok()) << workload.status();
  const size_t bytes = workload->SharedInputBytes();
  std::vector<uint8_t> region(bytes + 64, 0xee);
  workload->UseSharedInputs("in", region.data());
  EXPECT_TRUE(std::all_of(region.end() - 64, region.end(), [](uint8_t b) {
    return b == 0xee;
  })) << "wrote past SharedInputBytes()";

  std::vector<std::pair<uint64_t, uint64_t>> taken;
  for (const Workload::Kind& kind : workload->kinds()) {
    const ScoreRequest& r = kind.request;
    const std::pair<const TensorView*, std::optional<SharedMemoryRange>>
        inputs[] = {{&r.query, r.shared_inputs.query},
                    {&r.key, r.shared_inputs.key},
                    {&*r.value, r.shared_inputs.value}};
    for (const auto& [view, range] : inputs) {
      ASSERT_TRUE(range.has_value()) << kind.name;
      EXPECT_EQ(range->region, "in");
      EXPECT_EQ(range->offset % 64, 0u);
      EXPECT_EQ(range->byte_size, view->size_bytes);
      ASSERT_LE(range->offset + range->byte_size, bytes);
      EXPECT_EQ(std::memcmp(region.data() + range->offset, view->data,
                            view->size_bytes),
                0)
          << kind.name;
      for (const auto& [start, end] : taken) {
        EXPECT_TRUE(range->offset >= end ||
                    range->offset + range->byte_size <= start)
            << kind.name << " overlaps an earlier input";
      }
      taken.emplace_back(range->offset, range->offset + range->byte_size);
    }
    EXPECT_EQ(r.shared_inputs.query->offset % 4096, 0u) << kind.name;
  }
  // The decode kind's 4 MiB of keys and values, its query, the custom kind's
  // three inputs at its 4096-byte boundary.
  EXPECT_EQ(taken.size(), 6u);
  EXPECT_EQ(taken[3].first % 4096, 0u);
  EXPECT_EQ(bytes, taken.back().second);  // no padding after the last
}

// Output slots: each kind's outputs (logits when none is asked for) at
// 64-byte boundaries within a slot of SharedOutputSlotBytes(), slots apart,
// and the default output then asked for explicitly.
TEST(WorkloadTest, SharedOutputsGetASlotPerRequestInFlight) {
  for (const bool asked : {true, false}) {
    SCOPED_TRACE(asked ? "logits, probs and context" : "the default");
    WorkloadOptions options;
    options.preset = "decode";
    options.shapes = {"B2,H2,Lq3,Lk5,D7"};
    options.output_dtype = DType::kBFloat16;
    if (asked) options.outputs = Outputs{true, true, true};
    absl::StatusOr<Workload> workload = Workload::Create(options);
    ASSERT_TRUE(workload.ok()) << workload.status();
    EXPECT_EQ(workload->output_slots(), 0);
    // decode: 2 x [1, 8, 1, 2048] + [1, 8, 1, 64] bfloat16 = 65,536 + 1,024
    // bytes, or logits alone, 32,768; rounded up to 4096.
    const size_t slot = workload->SharedOutputSlotBytes();
    EXPECT_EQ(slot, asked ? 69632u : 32768u);
    // The slots from the first page boundary past the inputs.
    const size_t base = workload->SharedBytes(0);
    EXPECT_EQ(base % 4096, 0u);
    EXPECT_GE(base, workload->SharedInputBytes());
    EXPECT_LT(base, workload->SharedInputBytes() + 4096);
    EXPECT_EQ(workload->SharedBytes(3), base + 3 * slot);
    workload->UseSharedOutputs("out", 3);
    EXPECT_EQ(workload->output_slots(), 3);
    for (size_t k = 0; k < workload->kinds().size(); ++k) {
      const Workload::Kind& kind = workload->kinds()[k];
      EXPECT_TRUE(kind.request.outputs.logits) << kind.name;
      EXPECT_EQ(kind.request.outputs.probs, asked) << kind.name;
      std::vector<std::pair<uint64_t, uint64_t>> taken;
      for (int s = 0; s < 3; ++s) {
        const std::vector<OutputPlacement> placements =
            workload->PlacementsFor(k, s);
        ASSERT_EQ(placements.size(), asked ? 3u : 1u) << kind.name;
        size_t bytes = 0;
        for (size_t i = 0; i < placements.size(); ++i) {
          const SharedMemoryRange& range = placements[i].range;
          EXPECT_EQ(placements[i].output, kind.output_bytes[i].first);
          EXPECT_EQ(range.region, "out");
          EXPECT_EQ(range.byte_size, kind.output_bytes[i].second);
          EXPECT_EQ(range.offset % 64, 0u);
          EXPECT_GE(range.offset, base + s * slot);
          EXPECT_LE(range.offset + range.byte_size, base + (s + 1) * slot);
          for (const auto& [start, end] : taken) {
            EXPECT_TRUE(range.offset >= end ||
                        range.offset + range.byte_size <= start)
                << kind.name << " slot " << s << " overlaps";
          }
          taken.emplace_back(range.offset, range.offset + range.byte_size);
          bytes += range.byte_size;
        }
        EXPECT_EQ(bytes, static_cast<size_t>(kind.response_bytes));
      }
    }
  }
}

// Each request in flight needs a slot of its own: a run with fewer slots than
// its concurrency is refused before anything is sent (the client's target is
// never dialled).
TEST(RunLoadTest, RefusesFewerOutputSlotsThanRequestsInFlight) {
  WorkloadOptions workload_options;
  workload_options.preset = "decode";
  absl::StatusOr<Workload> workload = Workload::Create(workload_options);
  ASSERT_TRUE(workload.ok()) << workload.status();
  workload->UseSharedOutputs("out", 2);
  ClientOptions client_options;
  client_options.target = "127.0.0.1:1";
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Create(client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  LoadOptions options;
  options.concurrency = 3;
  absl::StatusOr<LoadResult> result = RunLoad(**client, *workload, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("2 output slots in shared memory, fewer than the "
                        "concurrency, 3"));
}

LoadResult SampleResult() {
  LoadResult r;
  r.kind_names = {"decode", "B1,H2,Lq3,Lk4,D5"};
  r.by_kind.resize(2);
  for (int i = 1; i <= 100; ++i) {
    for (Stats* s : {&r.all, &r.by_kind[static_cast<size_t>(i % 2)]}) {
      ++s->count;
      s->latency_ns.Record(static_cast<int64_t>(i) * 1'000'000);
      if (i % 10 == 0) {
        ++s->errors;
      } else {
        ++s->ok;
        s->queue_ns.Record(100'000);
        s->compute_ns.Record(200'000);
        s->overhead_ns.Record(i * 1'000'000 - 300'000);
        s->batch_size.Record(2);
      }
    }
  }
  r.status_codes = {{"OK", 90}, {"UNAVAILABLE", 10}};
  r.error_messages = {{"UNAVAILABLE: queue full", 10}};
  r.elapsed = absl::Seconds(2);
  return r;
}

TEST(ReportTest, JsonIsConsistent) {
  const LoadResult r = SampleResult();
  const nlohmann::json j = nlohmann::json::parse(
      FormatReport(r, {{"target", "x"}}, ReportFormat::kJson));
  EXPECT_EQ(j["count"], 100);
  EXPECT_EQ(j["ok"], 90);
  EXPECT_EQ(j["errors"], 10);
  EXPECT_DOUBLE_EQ(j["rps"].get<double>(), 50.0);
  EXPECT_DOUBLE_EQ(j["error_rate"].get<double>(), 0.1);
  EXPECT_EQ(j["options"]["target"], "x");
  EXPECT_NEAR(j["latency_ms"]["p50"].get<double>(), 50.0, 0.05);
  EXPECT_NEAR(j["latency_ms"]["p99.9"].get<double>(), 100.0, 0.1);
  EXPECT_DOUBLE_EQ(j["latency_ms"]["fastest"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["latency_ms"]["slowest"].get<double>(), 100.0);
  int64_t histogram_total = 0;
  for (const auto& bucket : j["histogram"]) {
    histogram_total += bucket["count"].get<int64_t>();
  }
  EXPECT_EQ(histogram_total, 100);
  EXPECT_EQ(j["histogram"].size(), 10u);
  EXPECT_EQ(j["status_codes"]["UNAVAILABLE"], 10);
  EXPECT_EQ(j["kinds"].size(), 2u);
  EXPECT_EQ(
      j["kinds"][0]["count"].get<int>() + j["kinds"][1]["count"].get<int>(),
      100);
  EXPECT_DOUBLE_EQ(j["server"]["batch_size"]["mean"].get<double>(), 2.0);
  EXPECT_NEAR(j["server"]["queue_ms"]["p50"].get<double>(), 0.1, 1e-3);
}

TEST(ReportTest, TextAndCsv) {
  const LoadResult r = SampleResult();
  const std::string text = FormatReport(r, {}, ReportFormat::kText);
  for (const char* part :
       {"Summary:", "Count:\t100", "Requests/sec:\t50.00", "99.99 % in",
        "[UNAVAILABLE]\t10 responses", "queue full",
        "By request kind:", "Response time histogram:"}) {
    EXPECT_THAT(text, HasSubstr(part));
  }
  const std::string csv = FormatReport(r, {}, ReportFormat::kCsv);
  std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u);  // header, two kinds, all
  EXPECT_THAT(lines[0], HasSubstr("kind,count,ok,errors,rps"));
  EXPECT_THAT(lines[2], HasSubstr("\"B1,H2,Lq3,Lk4,D5\",50,"));
  EXPECT_THAT(lines[3], HasSubstr("all,100,90,10,50.000"));
}

}  // namespace
}  // namespace attnscore::client::load
