// Runs one scoring request through the ATen scorer in a fresh process and
// prints how much memory it took at its peak, with the scorer's resource
// estimate for comparison:  "growth <bytes> estimate <bytes>".
//
//   scoring_memory_probe alibi|relative causal|full B H Lq Lk D Dv
//       OUTPUTS(any of l, p, c) float32|float16 [blocked|batched [DEVICE]]
//
// With ATTNSCORE_PROBE_HELD=N it runs the request N times and keeps every
// result, as a server holds the replies of the requests it has admitted: the
// estimate printed is then the in-flight budget's charge for them, the first
// request's peak and N - 1 more requests' in_flight_bytes().
//
// On the CPU the growth is that of the peak resident memory, reset
// (/proc/self/clear_refs "5") after the inputs exist and the compute threads
// are started, so it is what the request allocated. On a CUDA device it is
// the device allocator's peak over what it held before the request (the
// inputs start on the host, as a request's bytes do).
#include <ATen/core/Tensor.h>
#include <ATen/ops/randn.h>
#include <c10/core/Device.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "server/scoring/accelerator.h"
#include "server/scoring/alibi.h"
#include "server/scoring/aten_scorer.h"
#include "server/scoring/relative_model.h"
#include "server/scoring/resource_estimate.h"

namespace {

// A "VmRSS:" or "VmHWM:" line of /proc/self/status, in bytes.
int64_t StatusBytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) == 0) {
      return std::atoll(line.c_str() + key.size()) * 1024;
    }
  }
  return -1;
}

using attnscore::DType;
using attnscore::scoring::ScoreItem;
using attnscore::scoring::ScoreSpec;
using attnscore::scoring::TensorRef;

TensorRef Ref(const at::Tensor& t, DType dtype) {
  return TensorRef{dtype, t.sizes().vec(), t.data_ptr(), t.nbytes()};
}

// Where the request's memory is counted: the process's resident memory on the
// CPU, the allocator's bytes on a CUDA device.
class PeakMeter {
 public:
  explicit PeakMeter(const at::Device& device)
      : cuda_index_(!device.is_cuda()    ? -1
                    : device.has_index() ? device.index()
                                         : 0) {}

  // Starts counting from here.
  bool Reset() {
    if (cuda_index_ < 0) {
      std::ofstream("/proc/self/clear_refs") << "5";
      before_ = StatusBytes("VmRSS:");
      return before_ >= 0;
    }
    if (!attnscore::scoring::ResetPeakDeviceBytes(cuda_index_).ok()) {
      return false;
    }
    const auto bytes = attnscore::scoring::DeviceAllocatedBytes(cuda_index_);
    if (!bytes.ok()) return false;
    before_ = bytes->current_bytes;
    return true;
  }

  // The peak's growth since Reset(), or -1.
  int64_t Growth() const {
    if (cuda_index_ < 0) return StatusBytes("VmHWM:") - before_;
    const auto bytes = attnscore::scoring::DeviceAllocatedBytes(cuda_index_);
    return bytes.ok() ? bytes->peak_bytes - before_ : -1;
  }

 private:
  int cuda_index_;
  int64_t before_ = 0;
};

int Run(int argc, char** argv) {
  const bool relative = std::string(argv[1]) == "relative";
  const bool causal = std::string(argv[2]) == "causal";
  const int64_t b = std::atoll(argv[3]), h = std::atoll(argv[4]),
                lq = std::atoll(argv[5]), lk = std::atoll(argv[6]),
                d = std::atoll(argv[7]), dv = std::atoll(argv[8]);
  const std::string outputs = argv[9];
  const bool half = std::string(argv[10]) == "float16";
  attnscore::scoring::ScorerOptions options;
  if (argc > 11) {
    options.compute_path =
        attnscore::scoring::ParseComputePath(argv[11]).value();
  }
  if (argc > 12) options.device = argv[12];
  auto scorer = attnscore::scoring::CreateAtenScorer(options).value();
  ScoreSpec spec;
  spec.causal = causal;
  spec.want_logits = outputs.find('l') != std::string::npos;
  spec.want_probs = outputs.find('p') != std::string::npos;
  spec.want_context = outputs.find('c') != std::string::npos;
  spec.output_dtype = half ? DType::kFloat16 : DType::kFloat32;
  if (relative) {
    const int64_t p = std::max(lq, lk);
    spec.bias = attnscore::scoring::RelativeBias{
        *attnscore::scoring::AtenRelativeModel::Create(
            "probe", "probe", at::randn({2 * p, h, d}), at::randn({2 * p, h}),
            at::randn({h, d}))};
  }
  const auto dtype = half ? at::kHalf : at::kFloat;
  const DType wire = half ? DType::kFloat16 : DType::kFloat32;
  at::Tensor q = at::randn({b, h, lq, d}).to(dtype);
  at::Tensor k = at::randn({b, h, lk, d}).to(dtype);
  at::Tensor v = at::randn({b, h, lk, dv}).to(dtype);
  ScoreItem item;
  item.query = Ref(q, wire);
  item.key = Ref(k, wire);
  if (spec.want_context) item.value = Ref(v, wire);
  // Warm-up: starts the compute threads and LibTorch's lazy state.
  {
    ScoreItem small = item;
    at::Tensor sq = at::randn({1, h, 4, d}).to(dtype);
    at::Tensor sk = at::randn({1, h, 4, d}).to(dtype);
    at::Tensor sv = at::randn({1, h, 4, dv}).to(dtype);
    small.query = Ref(sq, wire);
    small.key = Ref(sk, wire);
    if (spec.want_context) small.value = Ref(sv, wire);
    if (!scorer->ScoreBatch(spec, absl::MakeConstSpan(&small, 1)).ok()) {
      return 2;
    }
  }
  PeakMeter meter(at::Device(options.device));
  if (!meter.Reset()) return 2;
  const char* held_env = std::getenv("ATTNSCORE_PROBE_HELD");
  const int64_t held = held_env == nullptr ? 1 : std::atoll(held_env);
  std::vector<std::vector<attnscore::scoring::ScoreResult>> results;
  for (int64_t i = 0; i < held; ++i) {
    auto result = scorer->ScoreBatch(spec, absl::MakeConstSpan(&item, 1));
    if (!result.ok()) {
      std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
      return 2;
    }
    results.push_back(*std::move(result));
  }
  const int64_t growth = meter.Growth();
  const auto estimate =
      scorer->Estimate(spec, attnscore::scoring::ProblemSizeOf(spec, item));
  std::printf("growth %" PRId64 " estimate %" PRId64 "\n", growth,
              estimate.peak_bytes + (held - 1) * estimate.in_flight_bytes());
  std::fprintf(stderr, "breakdown: %s\n", estimate.breakdown.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 11 || argc > 13) {
    std::fprintf(stderr,
                 "usage: %s alibi|relative causal|full B H Lq Lk D Dv "
                 "OUTPUTS float32|float16 [blocked|batched [DEVICE]]\n",
                 argv[0]);
    return 1;
  }
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "probe failed: %s\n", e.what());
    return 2;
  }
}
