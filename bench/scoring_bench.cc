// Scoring core vs. the literal LibTorch port of the seed's algorithm, in the
// same run, printing times and the speed-up ratio per case. Every case first
// checks that both agree (and aborts if not), so a fast wrong answer cannot
// pass for an improvement.
//
//   build/bench/attnscore_bench_scoring [--benchmark_filter=REGEX]
//   [--benchmark_min_time=S]
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/randn.h>
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "bench/literal_port.h"
#include "server/cpu/aten_capability.h"
#include "server/cpu/matched_kernels.h"
#include "server/scoring/alibi.h"
#include "server/scoring/aten_scorer.h"
#include "server/scoring/relative_model.h"
#include "server/scoring/row_loops.h"
#include "server/scoring/target_clones.h"

namespace attnscore::bench {
namespace {

using scoring::AlibiBias;
using scoring::kStreamPrefetchBytes;
using scoring::PrefetchLines;
using scoring::RelativeBias;
using scoring::ScoreItem;
using scoring::Scorer;
using scoring::ScoreSpec;
using scoring::TensorRef;

struct Shape {
  const char* name;
  int64_t b, h, lq, lk, d;
};

constexpr Shape kPrefill{"B8_H8_L512_D64", 8, 8, 512, 512, 64};
constexpr Shape kDecode{"decode_B32_H8_Lq1_Lk2048_D64", 32, 8, 1, 2048, 64};
// The end-to-end benchmark's mid-size request (bench/e2e): per-call costs.
constexpr Shape kSmall{"B1_H8_L128_D64", 1, 8, 128, 128, 64};
constexpr int64_t kRelativePositions = 2048;

struct Fixture {
  at::Tensor q, k;
  std::shared_ptr<const scoring::AtenRelativeModel> model;
  ScoreItem item;
};

Fixture& GetFixture(const Shape& shape) {
  static std::map<std::string, Fixture>* fixtures =
      new std::map<std::string, Fixture>();
  auto it = fixtures->find(shape.name);
  if (it != fixtures->end()) return it->second;
  at::manual_seed(0);
  Fixture f;
  f.q = at::randn({shape.b, shape.h, shape.lq, shape.d});
  f.k = at::randn({shape.b, shape.h, shape.lk, shape.d});
  f.model = *scoring::AtenRelativeModel::Create(
      "bench", "bench", at::randn({2 * kRelativePositions, shape.h, shape.d}),
      at::randn({2 * kRelativePositions, shape.h}),
      at::randn({shape.h, shape.d}));
  f.item.query = TensorRef{DType::kFloat32, f.q.sizes().vec(), f.q.data_ptr(),
                           f.q.nbytes()};
  f.item.key = TensorRef{DType::kFloat32, f.k.sizes().vec(), f.k.data_ptr(),
                         f.k.nbytes()};
  return fixtures->emplace(shape.name, std::move(f)).first->second;
}

// ATTNSCORE_THREADS overrides the intra-op thread count (default: every core).
Scorer& GetScorer() {
  static Scorer* scorer = [] {
    scoring::ScorerOptions options;
    if (const char* threads = std::getenv("ATTNSCORE_THREADS")) {
      options.intra_op_threads = std::atoi(threads);
    }
    return scoring::CreateAtenScorer(options).value().release();
  }();
  return *scorer;
}

ScoreSpec Spec(const Fixture& f, bool relative, bool probs) {
  ScoreSpec spec;
  spec.causal = true;
  spec.want_logits = true;
  spec.want_probs = probs;
  if (relative) {
    spec.bias = RelativeBias{f.model};
  } else {
    spec.bias = AlibiBias{};  // the paper's slopes, as RunLiteral uses
  }
  return spec;
}

scoring::ScoreResult RunCore(const Fixture& f, const ScoreSpec& spec) {
  auto out = GetScorer().ScoreBatch(spec, absl::MakeConstSpan(&f.item, 1));
  if (!out.ok()) {
    std::fprintf(stderr, "core failed: %s\n", out.status().ToString().c_str());
    std::abort();
  }
  return std::move((*out)[0]);
}

LiteralResult RunLiteral(const Fixture& f, bool relative, bool probs) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(f.q.size(3)));
  if (relative) {
    return LiteralRelative(f.q, f.k, f.model->key_pos_embeddings(),
                           f.model->key_pos_bias(), f.model->query_pos_bias(),
                           true, scale, probs);
  }
  return LiteralAlibi(f.q, f.k, scoring::AlibiSlopes(f.q.size(1)), true, scale,
                      probs);
}

void CheckAgreement(const Fixture& f, bool relative, bool probs,
                    const char* name) {
  scoring::ScoreResult core = RunCore(f, Spec(f, relative, probs));
  LiteralResult lit = RunLiteral(f, relative, probs);
  at::Tensor logits = at::from_blob(const_cast<void*>(core.logits->data),
                                    core.logits->shape, at::kFloat);
  const at::Tensor& want = lit.logits.contiguous();
  const bool same_inf = at::equal(at::isinf(logits), at::isinf(want));
  at::Tensor finite = at::isfinite(want);
  const bool close = at::allclose(logits.masked_select(finite),
                                  want.masked_select(finite), 1e-4, 1e-4);
  if (!same_inf || !close) {
    std::fprintf(stderr,
                 "%s: core and literal port disagree (inf %d close %d)\n", name,
                 same_inf, close);
    std::abort();
  }
}

void BM_Core(benchmark::State& state, Shape shape, bool relative, bool probs) {
  Fixture& f = GetFixture(shape);
  ScoreSpec spec = Spec(f, relative, probs);
  CheckAgreement(f, relative, probs, shape.name);
  for (auto _ : state) benchmark::DoNotOptimize(RunCore(f, spec));
}

void BM_Literal(benchmark::State& state, Shape shape, bool relative,
                bool probs) {
  Fixture& f = GetFixture(shape);
  for (auto _ : state) benchmark::DoNotOptimize(RunLiteral(f, relative, probs));
}

// The machine's sgemm rate on the scorer's threads and kernels (1024^3 float32,
// at::mm): the roofline the prefill case is measured against (bench/report.py
// prints the share).
void BM_Sgemm(benchmark::State& state) {
  constexpr int64_t kN = 1024;
  at::manual_seed(0);
  const at::Tensor a = at::randn({kN, kN});
  const at::Tensor b = at::randn({kN, kN});
  at::Tensor c = at::empty({kN, kN});
  for (auto _ : state) {
    at::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  state.counters["GFLOPS"] = benchmark::Counter(
      2.0 * kN * kN * kN * static_cast<double>(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
}

// The sum of x[0, n) (n a multiple of 64) in four independent vectors, so
// that the loads, not the adder's latency, bound it; at the CPU's width,
// asking for the lines as far ahead as the scoring core does (row_loops.h).
ATTNSCORE_TARGET_CLONES float StreamSum(const float* x, int64_t n) {
  using Vector = float __attribute__((vector_size(64)));
  Vector acc[4] = {};
  for (int64_t i = 0; i + 64 <= n; i += 64) {
    PrefetchLines(x + i, kStreamPrefetchBytes, 64 * sizeof(float));
    for (int64_t v = 0; v < 4; ++v) {
      Vector t;
      std::memcpy(&t, x + i + 16 * v, sizeof(t));
      acc[v] += t;
    }
  }
  const Vector all = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  float sum = 0;
  for (int k = 0; k < 16; ++k) sum += all[k];
  return sum;
}

// 256 MiB of float32 (far beyond the caches) that stream/ and keydots/ read.
constexpr int64_t kStreamFloats = int64_t{64} << 20;
const std::vector<float>& StreamData() {
  static const auto* data = new std::vector<float>(kStreamFloats, 0.5f);
  return *data;
}

// Runs read(t, begin, count) on as many threads as the scorer's, thread t
// reading floats [begin, begin + count) of StreamData() (count a multiple of
// `unit`), once per iteration; reports the rate read as GBps.
template <typename Read>
void ReadOnThreads(benchmark::State& state, int64_t unit, Read read) {
  const int threads = at::get_num_threads();
  const int64_t share = kStreamFloats / threads / unit * unit;
  for (auto _ : state) {
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] { read(t, t * share, share); });
    }
    for (std::thread& thread : pool) thread.join();
  }
  state.counters["GBps"] =
      benchmark::Counter(static_cast<double>(share * threads * 4) *
                             static_cast<double>(state.iterations()) / 1e9,
                         benchmark::Counter::kIsRate);
}

// The machine's memory read bandwidth: each thread sums its share. The floor
// of the decode batch, which reads 128 MiB of keys for 4 MiB of outputs
// (bench/report.py). (ATen's sum read slower than the scoring core streams
// its keys.)
void BM_Stream(benchmark::State& state) {
  std::vector<float> sums(static_cast<size_t>(at::get_num_threads()));
  ReadOnThreads(state, 64, [&](int t, int64_t begin, int64_t count) {
    sums[t] = StreamSum(StreamData().data() + begin, count);
  });
  benchmark::DoNotOptimize(sums.data());
}

// The decode batch's key stream alone: each thread runs ScaledDotRows (the
// scoring core's GEMV for one query row) over its share of the same 256 MiB
// as [2048, 64] key blocks. Against stream/256MiB's rate: how close the
// kernel comes to the memory floor, without the softmax and the outputs.
void BM_KeyDots(benchmark::State& state) {
  constexpr int64_t kRows = 2048, kDim = 64;
  const std::vector<float> query(kDim, 0.25f);
  std::vector<float> dots(static_cast<size_t>(at::get_num_threads() * kRows));
  ReadOnThreads(state, kRows * kDim, [&](int t, int64_t begin, int64_t count) {
    for (int64_t b = begin; b < begin + count; b += kRows * kDim) {
      scoring::ScaledDotRows(StreamData().data() + b, kDim, kRows, query.data(),
                             kDim, 0.125f, false, dots.data() + t * kRows);
    }
  });
  benchmark::DoNotOptimize(dots.data());
}

// Issue 9's many-tiny-items case: 2,000,000 float16 items of H = Lq = Lk =
// D = 1 in one batch (logits), the per-item overhead the cost cap charges.
void BM_TinyItems(benchmark::State& state) {
  constexpr int64_t kItems = 2'000'000;
  static const std::vector<uint16_t> bytes(2 * kItems, 0x3c00);  // 1.0
  std::vector<ScoreItem> items(kItems);
  for (int64_t i = 0; i < kItems; ++i) {
    items[i].query = TensorRef{DType::kFloat16, {1, 1, 1, 1}, &bytes[2 * i], 2};
    items[i].key =
        TensorRef{DType::kFloat16, {1, 1, 1, 1}, &bytes[2 * i + 1], 2};
  }
  ScoreSpec spec;
  spec.output_dtype = DType::kFloat16;
  for (auto _ : state) {
    auto out = GetScorer().ScoreBatch(spec, items);
    if (!out.ok()) std::abort();
    benchmark::DoNotOptimize(out);
  }
}

// The decode batch with 16-bit query and key (a float16 or bfloat16 KV
// cache), ALiBi logits+probs in float32: the core alone (the literal port
// would convert them first, as the report's float32 rows measure).
void BM_Core16(benchmark::State& state, DType dtype) {
  Fixture& f = GetFixture(kDecode);
  static std::map<DType, std::pair<at::Tensor, at::Tensor>>* inputs =
      new std::map<DType, std::pair<at::Tensor, at::Tensor>>();
  const at::ScalarType type =
      dtype == DType::kFloat16 ? at::kHalf : at::kBFloat16;
  auto& [q, k] = (*inputs)[dtype];
  if (!q.defined()) {
    q = f.q.to(type).contiguous();
    k = f.k.to(type).contiguous();
  }
  ScoreItem item;
  item.query = TensorRef{dtype, q.sizes().vec(), q.data_ptr(), q.nbytes()};
  item.key = TensorRef{dtype, k.sizes().vec(), k.data_ptr(), k.nbytes()};
  const ScoreSpec spec = Spec(f, /*relative=*/false, /*probs=*/true);
  for (auto _ : state) {
    auto out = GetScorer().ScoreBatch(spec, absl::MakeConstSpan(&item, 1));
    if (!out.ok()) std::abort();
    benchmark::DoNotOptimize(out);
  }
}

// Collects real time per benchmark to print literal/core ratios at the end.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type == Run::RT_Iteration && run.error_occurred == false) {
        seconds_[run.benchmark_name()] =
            run.GetAdjustedRealTime() /
            benchmark::GetTimeUnitMultiplier(run.time_unit);
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void PrintRatios() const {
    std::printf("\n%-52s %12s %12s %9s\n", "case", "literal ms", "core ms",
                "speed-up");
    for (const auto& [name, seconds] : seconds_) {
      if (name.rfind("core/", 0) != 0) continue;
      const std::string literal = "literal/" + name.substr(5);
      auto it = seconds_.find(literal);
      if (it == seconds_.end()) continue;
      std::printf("%-52s %12.2f %12.2f %8.2fx\n", name.substr(5).c_str(),
                  it->second * 1e3, seconds * 1e3, it->second / seconds);
    }
  }

 private:
  std::map<std::string, double> seconds_;
};

void Register() {
  struct Case {
    Shape shape;
    bool relative, probs;
    const char* what;
  };
  const Case cases[] = {
      {kPrefill, false, false, "alibi_logits"},
      {kPrefill, false, true, "alibi_logits+probs"},
      {kPrefill, true, false, "relative_logits"},
      {kPrefill, true, true, "relative_logits+probs"},
      {kDecode, false, true, "alibi_logits+probs"},
      {kDecode, true, true, "relative_logits+probs"},
      {kSmall, false, false, "alibi_logits"},
  };
  benchmark::RegisterBenchmark("stream/256MiB", BM_Stream)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("keydots/256MiB", BM_KeyDots)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("sgemm/1024", BM_Sgemm)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("core/tiny_items_B2000000_H1_L1_D1_f16",
                               BM_TinyItems)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (auto [name, dtype] : {std::pair{"f16", DType::kFloat16},
                             std::pair{"bf16", DType::kBFloat16}}) {
    benchmark::RegisterBenchmark(
        (std::string("core16/") + kDecode.name + "/alibi_logits+probs_" + name)
            .c_str(),
        BM_Core16, dtype)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (const Case& c : cases) {
    const std::string suffix = std::string(c.shape.name) + "/" + c.what;
    benchmark::RegisterBenchmark(("core/" + suffix).c_str(), BM_Core, c.shape,
                                 c.relative, c.probs)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("literal/" + suffix).c_str(), BM_Literal,
                                 c.shape, c.relative, c.probs)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
}

}  // namespace
}  // namespace attnscore::bench

int main(int argc, char** argv) {
  // First: may re-execute onto the kernels the server would choose.
  attnscore::cpu::EnsureMatchedKernels(argc, argv);
  attnscore::bench::Register();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  attnscore::bench::GetScorer();  // sets the intra-op thread count (default:
                                  // all cores)
  std::printf("intra-op threads: %d\n", at::get_num_threads());
  const attnscore::cpu::KernelInfo kernels =
      attnscore::cpu::CurrentKernelInfo();
  std::printf("kernels: %s\n", attnscore::cpu::KernelInfoLine(kernels).c_str());
  if (!kernels.below_cpu.empty()) {
    std::printf("kernels below this CPU's: %s\n", kernels.below_cpu.c_str());
  }
  attnscore::bench::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintRatios();
  benchmark::Shutdown();
  return 0;
}
