// The accelerator benchmark of scripts/device-check.sh: the batched path
// (batched_attention.h) against PyTorch's own implementations on one device,
// with the device-memory floor from a copy bandwidth measured in the same run.
//
//   attnscore_bench_device [--device cpu|cuda] [--small]
//
//  copy     dst.copy_(src) over 1 GiB (64 MiB with --small): bytes read plus
//           written over time, the bandwidth every floor below uses;
//  logits   ALiBi causal logits, B8 H8 L512 D64 float32: the batched path
//           against a plain batched eager implementation (matmul, add of a
//           materialised bias, masked_fill); floor = (q, k read + logits
//           written) / copy bandwidth;
//  context  ALiBi causal context, B8 H32 L4096 D128 bfloat16: the batched
//           path against scaled_dot_product_attention given the same
//           materialised bias ("not available" where the LibTorch lacks it).
// --small shrinks every shape for a CPU dry run. Prints a Markdown table
// (name, shape, ms, baseline ms, floor ms, ratios). Exits 1 when a check of
// the outputs against the baseline fails.
//
// Timing: warm-up runs, then the mean over repetitions, synchronised by
// reading one element back (device-generic; waits for the stream).
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

#include "server/scoring/accelerator.h"
#include "server/scoring/alibi.h"
#include "server/scoring/attention.h"
#include "server/scoring/batched_attention.h"
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
  double ms = 0, baseline_ms = -1, floor_ms = -1, error = 0;
  std::string baseline;
};

void Print(const Row& r) {
  std::printf(
      "| %s | %s | %.4f | %s | %s | %s | %s | %.2e |\n", r.name.c_str(),
      r.shape.c_str(), r.ms, r.baseline.c_str(),
      r.baseline_ms < 0 ? "n/a" : std::to_string(r.baseline_ms).c_str(),
      r.floor_ms < 0 ? "n/a" : std::to_string(r.floor_ms).c_str(),
      r.floor_ms < 0 ? "n/a" : std::to_string(r.ms / r.floor_ms).c_str(),
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

Row Logits(const Options& o, const at::TensorOptions& f32, double bw) {
  const int64_t b = o.small ? 2 : 8, h = o.small ? 4 : 8;
  const int64_t l = o.small ? 128 : 512, d = o.small ? 32 : 64;
  at::Tensor q = at::randn({b, h, l, d}, f32);
  at::Tensor k = at::randn({b, h, l, d}, f32);
  AttentionConfig config;
  config.bias = ResolvedAlibi{AlibiSlopes(h)};
  config.causal = true;
  config.scale = 1.0 / std::sqrt(static_cast<double>(d));
  config.want_logits = true;
  const at::Tensor bias = MaterialisedBias(h, l, f32);
  const auto ours = [&] {
    return BatchedAttention(q, k, at::Tensor(), {}, config).logits;
  };
  const auto eager = [&] {
    return at::matmul(q, k.transpose(-1, -2)).mul_(config.scale).add_(bias);
  };
  Row r;
  r.name = "alibi logits";
  r.shape = "B" + std::to_string(b) + " H" + std::to_string(h) + " L" +
            std::to_string(l) + " D" + std::to_string(d) + " f32";
  r.error = RelativeError(ours(), eager());
  r.ms = TimeMs(ours, 3, 20);
  r.baseline = "eager matmul+bias";
  r.baseline_ms = TimeMs(eager, 3, 20);
  const auto bytes =
      static_cast<double>(4 * (2 * b * h * l * d + b * h * l * l));
  r.floor_ms = bytes / bw;
  return r;
}

Row Context(const Options& o, const at::TensorOptions& opts, double bw) {
  const int64_t b = o.small ? 1 : 8, h = o.small ? 4 : 32;
  const int64_t l = o.small ? 256 : 4096, d = o.small ? 32 : 128;
  const at::TensorOptions io =
      o.small ? opts.dtype(at::kFloat) : opts.dtype(at::kBFloat16);
  at::Tensor q = at::randn({b, h, l, d}, io);
  at::Tensor k = at::randn({b, h, l, d}, io);
  at::Tensor v = at::randn({b, h, l, d}, io);
  AttentionConfig config;
  config.bias = ResolvedAlibi{AlibiSlopes(h)};
  config.causal = true;
  config.scale = 1.0 / std::sqrt(static_cast<double>(d));
  config.want_logits = false;
  config.want_context = true;
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
      "| case | shape | ms | baseline | baseline ms | floor ms | x floor | "
      "rel. error |\n|---|---|---|---|---|---|---|---|\n");
  const double bw = CopyBandwidth(o, f32.dtype(at::kFloat));
  const Row logits = Logits(o, f32.dtype(at::kFloat), bw);
  Print(logits);
  const Row context = Context(o, f32, bw);
  Print(context);
  // float32 lands far under 1e-3; bf16 operands under 1e-2.
  const bool ok = logits.error < 1e-3 && context.error < 2e-2;
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
