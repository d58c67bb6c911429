// The accelerator benchmark of scripts/device-check.sh: the batched path
// (batched_attention.h) against PyTorch's own implementations on one device,
// with two floors from ceilings measured in the same run: the device-memory
// floor (bytes that must move over the copy bandwidth) and the compute floor
// (flops over the rate of a large matrix product in the case's dtype).
//
//   attnscore_bench_device [--device cpu|cuda] [--small]
//
//  copy     dst.copy_(src) over 1 GiB (64 MiB with --small): bytes read plus
//           written over time, the bandwidth every memory floor uses;
//  mm f32, mm bf16   a square matrix product (8192, 1024 with --small): the
//           rates the compute floors use;
//  logits   ALiBi causal logits, B8 H8 L512 D64 float32: the batched path
//           (with its fused kernel on CUDA, then again with the library's
//           products) against a plain batched eager implementation (matmul,
//           add of a materialised bias, masked_fill); memory floor = (q, k
//           read + logits written) / copy bandwidth; on CUDA also the
//           kernel alone (alibi_logits.h) into a preallocated output: the
//           computing and writing the floor bounds, without the host's work;
//  context  ALiBi causal context, B8 H32 L4096 D128 bfloat16: the batched
//           path against scaled_dot_product_attention given the same
//           materialised bias ("not available" where the LibTorch lacks it);
//  decode   ALiBi logits+probs B32 H8 Lq1 Lk2048 D64 float32, the decode
//           preset's batch: one batched call against the same 32 items
//           computed one call each (what batching saves on the device);
//  staging  the host side of a batch (CUDA only): 128 MiB memcpy into a
//           pinned buffer on one thread and on all intra-op threads, and
//           copies host to device from pinned and from pageable memory and
//           back into pinned memory: the ceilings of the scorer's staging;
//  scorer   the same 32 decode steps through the server's scorer (the batched
//           path) from host bytes to host bytes: staging, copies both ways,
//           compute and splitting, as one batch of 32 against 32 batches of 1.
// --small shrinks every shape for a CPU dry run. Prints a Markdown table
// (name, shape, ms, baseline ms, floors, ratios). Exits 1 when a check of
// the outputs against the baseline fails.
//
// Timing: warm-up runs, then the mean over repetitions, synchronised by
// reading one element back (device-generic; waits for the stream).
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "server/scoring/accelerator.h"
#include "server/scoring/alibi.h"
#include "server/scoring/alibi_logits.h"
#include "server/scoring/aten_scorer.h"
#include "server/scoring/attention.h"
#include "server/scoring/batched_attention.h"
#include "server/scoring/buffer_pool.h"
#include "server/scoring/fused_attention.h"

namespace attnscore::scoring {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Options {
  std::string device = "cpu";
  bool small = false;
};

// Mean milliseconds of `run` (which returns a tensor produced on the device)
// after `warmup` runs.
double TimeMs(const std::function<at::Tensor()>& run, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) run().view(-1)[0].item<float>();
  const auto start = std::chrono::steady_clock::now();
  at::Tensor last;
  for (int i = 0; i < reps; ++i) last = run();
  last.view(-1)[0].item<float>();
  const std::chrono::duration<double, std::milli> elapsed =
      std::chrono::steady_clock::now() - start;
  return elapsed.count() / reps;
}

// The materialised ALiBi bias with the causal mask, [1, H, L, L].
at::Tensor MaterialisedBias(int64_t heads, int64_t len,
                            const at::TensorOptions& opts) {
  at::Tensor pos = at::arange(len, opts.dtype(at::kFloat));
  at::Tensor d = pos.unsqueeze(1) - pos.unsqueeze(0);  // [L, L]
  at::Tensor slopes =
      at::tensor(AlibiSlopes(heads), at::kFloat).to(opts.device());
  at::Tensor bias = -slopes.view({heads, 1, 1}) * d;
  bias.masked_fill_((d < 0).unsqueeze(0), kNegInf);
  return bias.unsqueeze(0).to(opts.dtype());
}

// Causal ALiBi with the paper's slopes and 1/sqrt(D), asking for `logits`,
// `probs` and `context`.
AttentionConfig CausalAlibi(int64_t heads, int64_t head_dim, bool logits,
                            bool probs, bool context) {
  AttentionConfig config;
  config.bias = ResolvedAlibi{AlibiSlopes(heads)};
  config.causal = true;
  config.scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  config.want_logits = logits;
  config.want_probs = probs;
  config.want_context = context;
  return config;
}

double RelativeError(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.to(at::kDouble).cpu();
  at::Tensor w = want.to(at::kDouble).cpu();
  const at::Tensor finite = at::isfinite(w);
  if (!at::equal(finite, at::isfinite(g))) return 1e300;
  at::Tensor zero = at::zeros_like(w);
  return (at::where(finite, g - w, zero).norm() /
          at::where(finite, w, zero).norm())
      .item<double>();
}

struct Row {
  std::string name, shape;
  double ms = 0, baseline_ms = -1, floor_ms = -1, compute_floor_ms = -1;
  double error = 0;
  std::string baseline;
};

std::string Ms(double ms) {
  if (ms < 0) return "n/a";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.4f", ms);
  return buffer;
}

std::string Ratio(double num, double den) {
  if (num < 0 || den <= 0) return "n/a";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f", num / den);
  return buffer;
}

void Print(const Row& r) {
  std::printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2e |\n",
              r.name.c_str(), r.shape.c_str(), Ms(r.ms).c_str(),
              r.baseline.c_str(), Ms(r.baseline_ms).c_str(),
              Ratio(r.baseline_ms, r.ms).c_str(), Ms(r.floor_ms).c_str(),
              Ratio(r.ms, r.floor_ms).c_str(), Ms(r.compute_floor_ms).c_str(),
              r.error);
}

// Bytes per millisecond, read plus written.
double CopyBandwidth(const Options& o, const at::TensorOptions& f32) {
  const int64_t bytes = (o.small ? int64_t{64} : int64_t{1024}) << 20;
  at::Tensor src = at::rand({bytes / 4}, f32);
  at::Tensor dst = at::empty_like(src);
  const double ms = TimeMs([&] { return dst.copy_(src); }, 3, 20);
  Row r;
  r.name = "copy";
  r.shape = std::to_string(bytes >> 20) + " MiB";
  r.ms = ms;
  r.baseline = "-";
  r.error = 0;
  Print(r);
  const double moved = 2.0 * static_cast<double>(bytes);  // read + written
  std::printf("<!-- copy bandwidth %.1f GB/s -->\n", moved / ms / 1e6);
  return moved / ms;
}

// Flops per millisecond of a square matrix product in `opts`' dtype.
double MatmulRate(const Options& o, const at::TensorOptions& opts) {
  const int64_t n = o.small ? 1024 : 8192;
  at::Tensor a = at::randn({n, n}, opts);
  at::Tensor b = at::randn({n, n}, opts);
  const double ms = TimeMs([&] { return at::mm(a, b); }, 2, 10);
  Row r;
  r.name = std::string("mm ") + (opts.dtype() == at::kFloat ? "f32" : "bf16");
  r.shape = std::to_string(n) + "^3";
  r.ms = ms;
  r.baseline = "-";
  Print(r);
  const auto size = static_cast<double>(n);
  const double flops = 2.0 * size * size * size;
  std::printf("<!-- %s rate %.1f TFLOP/s -->\n", r.name.c_str(),
              flops / ms / 1e9);
  return flops / ms;
}

// The logits case, B8 H8 L512 D64 float32 ALiBi causal (B2 H4 L128 D32 with
// --small): its inputs, shape and floors, shared by the rows that time it.
struct LogitsCase {
  int64_t b, h, l, d;
  at::Tensor q, k;
  AttentionConfig config;
  std::string shape;
  double floor_ms;          // (q, k read + logits written) / bandwidth
  double compute_floor_ms;  // the products over the f32 rate
};

LogitsCase MakeLogitsCase(const Options& o, const at::TensorOptions& f32,
                          double bw, double rate) {
  LogitsCase c;
  c.b = o.small ? 2 : 8;
  c.h = o.small ? 4 : 8;
  c.l = o.small ? 128 : 512;
  c.d = o.small ? 32 : 64;
  c.q = at::randn({c.b, c.h, c.l, c.d}, f32);
  c.k = at::randn({c.b, c.h, c.l, c.d}, f32);
  c.config = CausalAlibi(c.h, c.d, true, false, false);
  c.shape = "B" + std::to_string(c.b) + " H" + std::to_string(c.h) + " L" +
            std::to_string(c.l) + " D" + std::to_string(c.d) + " f32";
  const int64_t stack = c.b * c.h;
  c.floor_ms =
      static_cast<double>(4 * (2 * stack * c.l * c.d + stack * c.l * c.l)) / bw;
  c.compute_floor_ms =
      2.0 * static_cast<double>(stack * c.l * c.l * c.d) / rate;
  return c;
}

// `kernel`: the batched path with its fused ALiBi logits kernel where it runs
// (alibi_logits.h; a CUDA build), else with the library's products.
Row Logits(const LogitsCase& c, bool kernel) {
  const at::Tensor bias = MaterialisedBias(c.h, c.l, c.q.options());
  const auto ours = [&] {
    return BatchedAttention(c.q, c.k, at::Tensor(), {}, c.config, 0, kernel)
        .logits;
  };
  const auto eager = [&] {
    return at::matmul(c.q, c.k.transpose(-1, -2))
        .mul_(c.config.scale)
        .add_(bias);
  };
  Row r;
  r.name = kernel ? "alibi logits" : "alibi logits, library products";
  r.shape = c.shape;
  r.error = RelativeError(ours(), eager());
  r.ms = TimeMs(ours, 3, 20);
  r.baseline = "eager matmul+bias";
  r.baseline_ms = TimeMs(eager, 3, 20);
  r.floor_ms = c.floor_ms;
  r.compute_floor_ms = c.compute_floor_ms;
  return r;
}

// The ALiBi logits kernel alone (alibi_logits.h; where the build has it) on
// the logits case, into one output allocated beforehand: the computing and
// writing that the device-memory floor bounds, without the batched path's host
// work around it (operands, output allocation), which a GPU finishes faster
// than the host issues it.
Row KernelAlone(const LogitsCase& c) {
  AlibiLogitsOperands ops;
  ops.query = c.q;
  ops.key = c.k;
  ops.neg_slopes =
      at::tensor(AlibiSlopes(c.h), at::kFloat).neg().to(c.q.device());
  ops.out = at::empty({c.b, c.h, c.l, c.l}, c.q.options());
  ops.first_position = 0;
  ops.scale = c.config.scale;
  ops.causal = true;
  const auto kernel = [&] {
    RunAlibiLogitsKernel(ops);
    return ops.out;
  };
  Row r;
  r.name = "alibi logits, kernel alone";
  r.shape = c.shape;
  r.error = RelativeError(
      kernel().clone(),
      BatchedAttention(c.q, c.k, at::Tensor(), {}, c.config, 0, false).logits);
  r.ms = TimeMs(kernel, 3, 50);
  r.baseline = "-";
  r.floor_ms = c.floor_ms;
  r.compute_floor_ms = c.compute_floor_ms;
  return r;
}

Row Context(const Options& o, const at::TensorOptions& opts, double bw,
            double rate) {
  const int64_t b = o.small ? 1 : 8, h = o.small ? 4 : 32;
  const int64_t l = o.small ? 256 : 4096, d = o.small ? 32 : 128;
  const at::TensorOptions io =
      o.small ? opts.dtype(at::kFloat) : opts.dtype(at::kBFloat16);
  at::Tensor q = at::randn({b, h, l, d}, io);
  at::Tensor k = at::randn({b, h, l, d}, io);
  at::Tensor v = at::randn({b, h, l, d}, io);
  const AttentionConfig config = CausalAlibi(h, d, false, false, true);
  const auto ours = [&] {
    return BatchedAttention(q, k, v, {}, config).context;
  };
  Row r;
  r.name = "alibi context";
  r.shape = "B" + std::to_string(b) + " H" + std::to_string(h) + " L" +
            std::to_string(l) + " D" + std::to_string(d) +
            (o.small ? " f32" : " bf16");
  r.ms = TimeMs(ours, 2, 5);
  // q, k, v read, context written.
  const auto bytes = static_cast<double>(
      static_cast<int64_t>(io.dtype().itemsize()) * 4 * b * h * l * d);
  r.floor_ms = bytes / bw;
  // Two products over the visible (causal: about half) scores.
  r.compute_floor_ms = 2.0 * static_cast<double>(b * h * l * l * d) / rate;
  if (!FusedAttentionAvailable()) {
    r.baseline = "SDPA not available";
    return r;
  }
  const at::Tensor bias = MaterialisedBias(h, l, io);
  const auto sdpa = [&] { return FusedAttention(q, k, v, bias, config.scale); };
  r.baseline = "SDPA, materialised bias";
  r.error = RelativeError(ours(), sdpa());
  r.baseline_ms = TimeMs(sdpa, 2, 5);
  return r;
}

// The decode preset's batch: B items of one query row each, logits and
// probabilities, in one batched call against one call per item.
Row Decode(const Options& o, const at::TensorOptions& f32, double bw) {
  const int64_t b = o.small ? 8 : 32, h = 8, lk = o.small ? 256 : 2048, d = 64;
  at::Tensor q = at::randn({b, h, 1, d}, f32);
  at::Tensor k = at::randn({b, h, lk, d}, f32);
  const AttentionConfig config = CausalAlibi(h, d, true, true, false);
  const auto batched = [&] {
    return BatchedAttention(q, k, at::Tensor(), {}, config).probs;
  };
  std::vector<at::Tensor> items_q, items_k;
  for (int64_t i = 0; i < b; ++i) {
    items_q.push_back(q.narrow(0, i, 1));
    items_k.push_back(k.narrow(0, i, 1));
  }
  const auto one_by_one = [&] {
    std::vector<at::Tensor> probs;
    for (int64_t i = 0; i < b; ++i) {
      probs.push_back(
          BatchedAttention(items_q[i], items_k[i], at::Tensor(), {}, config)
              .probs);
    }
    return at::cat(probs);
  };
  Row r;
  r.name = "decode batch";
  r.shape =
      "B" + std::to_string(b) + " H8 Lq1 Lk" + std::to_string(lk) + " D64 f32";
  r.error = RelativeError(batched(), one_by_one());
  r.ms = TimeMs(batched, 3, 20);
  r.baseline = std::to_string(b) + " calls of B1";
  r.baseline_ms = TimeMs(one_by_one, 3, 20);
  // q, k read; logits and probabilities written.
  r.floor_ms =
      static_cast<double>(4 * (b * h * (d + lk * d) + 2 * b * h * lk)) / bw;
  return r;
}

// One staging row: `bytes` moved by `run` (which returns a tensor to wait on).
void StagingRow(const std::string& name, int64_t bytes,
                const std::function<at::Tensor()>& run) {
  Row r;
  r.name = "staging";
  r.shape = name;
  r.ms = TimeMs(run, 2, 10);
  r.baseline = "-";
  Print(r);
  std::printf("<!-- staging %s %.1f GB/s -->\n", name.c_str(),
              static_cast<double>(bytes) / r.ms / 1e6);
}

// The host-side ceilings of a batch's staging, 128 MiB each way.
void Staging(const at::TensorOptions& device) {
  if (!device.device().is_cuda()) return;
  const int64_t bytes = int64_t{128} << 20;
  const at::Tensor pageable = at::rand({bytes / 4});
  const at::Tensor pageable_out = at::empty_like(pageable);
  const at::Tensor pinned = at::empty_like(pageable).pin_memory();
  const at::Tensor on_device = at::rand({bytes / 4}, device);
  const auto* src = static_cast<const char*>(pageable.data_ptr());
  auto* dst = static_cast<char*>(pinned.data_ptr());
  StagingRow("memcpy to pinned, 1 thread", bytes, [&] {
    std::memcpy(dst, src, static_cast<size_t>(bytes));
    return pinned.narrow(0, 0, 1);
  });
  StagingRow(
      "memcpy to pinned, " + std::to_string(at::get_num_threads()) + " threads",
      bytes, [&] {
        const int64_t chunk = int64_t{1} << 20;
        at::parallel_for(0, bytes / chunk, 1, [&](int64_t b, int64_t e) {
          std::memcpy(dst + b * chunk, src + b * chunk,
                      static_cast<size_t>((e - b) * chunk));
        });
        return pinned.narrow(0, 0, 1);
      });
  StagingRow("memcpy pageable to pageable, 1 thread", bytes, [&] {
    std::memcpy(pageable_out.data_ptr(), src, static_cast<size_t>(bytes));
    return pageable_out.narrow(0, 0, 1);
  });
  StagingRow("host to device from pinned", bytes,
             [&] { return on_device.copy_(pinned, /*non_blocking=*/true); });
  StagingRow("host to device from pageable", bytes,
             [&] { return on_device.copy_(pageable); });
  StagingRow("device to host into pinned", bytes,
             [&] { return pinned.copy_(on_device); });
}

// 32 decode steps through the scorer, host bytes in and out: one batch of 32
// against 32 batches of one. bfloat16 inputs are staged and cross to the
// device at half float32's bytes. `in_blocks`: each tensor in a block of the
// host pool, as the server parses requests (page-locked on a GPU, so the
// batch goes to the device by DMA without staging), else pageable memory.
Row ScorerDecode(const Options& o, DType dtype, bool in_blocks) {
  const int64_t items = o.small ? 8 : 32, h = 8, lk = o.small ? 256 : 2048;
  const int64_t d = 64;
  ScorerOptions options;
  options.device = o.device;
  options.compute_path = ComputePath::kBatched;
  absl::StatusOr<std::unique_ptr<Scorer>> scorer = CreateAtenScorer(options);
  if (!scorer.ok()) throw std::runtime_error(scorer.status().ToString());
  const at::ScalarType type =
      dtype == DType::kFloat32 ? at::kFloat : at::kBFloat16;
  const at::Tensor q = at::randn({items, h, 1, d}).to(type);
  const at::Tensor k = at::randn({items, h, lk, d}).to(type);
  const auto element = static_cast<int64_t>(ElementSize(dtype));
  std::vector<PooledBytes> blocks;
  // The bytes of `t` where the scorer reads them.
  const auto place = [&](const at::Tensor& t) -> const void* {
    if (!in_blocks) return t.data_ptr();
    blocks.push_back(AcquireBytes(t.nbytes()));
    std::memcpy(blocks.back().get(), t.data_ptr(), t.nbytes());
    return blocks.back().get();
  };
  std::vector<ScoreItem> batch(static_cast<size_t>(items));
  for (int64_t i = 0; i < items; ++i) {
    ScoreItem& item = batch[static_cast<size_t>(i)];
    item.query = TensorRef{
        dtype, {1, h, 1, d}, place(q[i]), static_cast<size_t>(h * d * element)};
    item.key = TensorRef{dtype,
                         {1, h, lk, d},
                         place(k[i]),
                         static_cast<size_t>(h * lk * d * element)};
  }
  ScoreSpec spec;
  spec.causal = true;
  spec.want_probs = true;
  const auto score = [&](absl::Span<const ScoreItem> some) {
    absl::StatusOr<std::vector<ScoreResult>> r =
        (*scorer)->ScoreBatch(spec, some);
    if (!r.ok()) throw std::runtime_error(r.status().ToString());
    return *std::move(r);
  };
  // The last item's probabilities, copied out of the reply's bytes.
  const auto last_probs = [](const std::vector<ScoreResult>& r) {
    const OutputTensor& p = *r.back().probs;
    return at::from_blob(const_cast<void*>(p.data), p.shape).clone();
  };
  const auto together = [&] { return last_probs(score(batch)); };
  const auto one_by_one = [&] {
    std::vector<ScoreResult> last;
    for (const ScoreItem& item : batch) last = score({&item, 1});
    return last_probs(last);
  };
  Row r;
  r.name = "scorer decode";
  r.shape = std::to_string(items) + " x B1 H8 Lq1 Lk" + std::to_string(lk) +
            " D64 " + (dtype == DType::kFloat32 ? "f32" : "bf16") +
            ", host to host, " + (in_blocks ? "pool blocks" : "pageable");
  r.error = RelativeError(together(), one_by_one());
  r.ms = TimeMs(together, 3, 20);
  r.baseline = std::to_string(items) + " batches of 1";
  r.baseline_ms = TimeMs(one_by_one, 3, 20);
  return r;
}

int Run(const Options& o) {
  const at::Device device(o.device);
  const at::TensorOptions f32 = at::TensorOptions().device(device);
  if (device.is_cuda()) {
    absl::StatusOr<AcceleratorInfo> info =
        DescribeCudaDevice(device.index() < 0 ? 0 : device.index());
    if (!info.ok()) {
      const std::string message(info.status().message());
      std::fprintf(stderr, "%s\n", message.c_str());
      return 1;
    }
    std::printf("device: %s, sm_%d%d, %d SMs, %.1f GiB (%.1f free)\n\n",
                info->name.c_str(), info->compute_major, info->compute_minor,
                info->multiprocessors,
                static_cast<double>(info->total_bytes) / 1073741824.0,
                static_cast<double>(info->free_bytes) / 1073741824.0);
  } else {
    std::printf("device: %s\n\n", o.device.c_str());
  }
  std::printf("fused attention: %s\n\n", FusedAttentionDescription());
  std::printf(
      "| case | shape | ms | baseline | baseline ms | speed-up | memory floor "
      "ms | x memory floor | compute floor ms | rel. error |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n");
  const double bw = CopyBandwidth(o, f32.dtype(at::kFloat));
  const double f32_rate = MatmulRate(o, f32.dtype(at::kFloat));
  const double context_rate =
      o.small ? f32_rate : MatmulRate(o, f32.dtype(at::kBFloat16));
  const LogitsCase logits_case =
      MakeLogitsCase(o, f32.dtype(at::kFloat), bw, f32_rate);
  const Row logits = Logits(logits_case, true);
  Print(logits);
  const Row library_logits = Logits(logits_case, false);
  Print(library_logits);
  Row kernel_logits;
  if (AlibiLogitsKernelAvailable(f32.device())) {
    kernel_logits = KernelAlone(logits_case);
    Print(kernel_logits);
  }
  const Row context = Context(o, f32, bw, context_rate);
  Print(context);
  const Row decode = Decode(o, f32.dtype(at::kFloat), bw);
  Print(decode);
  Staging(f32);
  const Row scorer = ScorerDecode(o, DType::kFloat32, false);
  Print(scorer);
  const Row scorer_blocks = ScorerDecode(o, DType::kFloat32, true);
  Print(scorer_blocks);
  const Row scorer16 = ScorerDecode(o, DType::kBFloat16, true);
  Print(scorer16);
  // float32 lands far under 1e-3; bf16 operands under 1e-2.
  const bool ok = logits.error < 1e-3 && library_logits.error < 1e-3 &&
                  kernel_logits.error < 1e-3 && context.error < 2e-2 &&
                  decode.error < 1e-5 && scorer.error < 1e-5 &&
                  scorer_blocks.error < 1e-5 && scorer16.error < 1e-5;
  if (!ok) {
    std::fprintf(stderr, "device_bench: outputs differ from the baseline\n");
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace attnscore::scoring

int main(int argc, char** argv) {
  attnscore::scoring::Options options;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--small") == 0) {
      options.small = true;
    } else if (std::strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
      options.device = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--device cpu|cuda] [--small]\n",
                   argv[0]);
      return 2;
    }
  }
  try {
    return attnscore::scoring::Run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "device_bench: %s\n", e.what());
    return 1;
  }
}
