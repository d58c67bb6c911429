#include "server/scoring/aten_scorer.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/aten_dtype.h"
#include "common/dtype.h"
#include "common/layout.h"
#include "common/overloaded.h"
#include "server/scoring/accelerator.h"
#include "server/scoring/alibi.h"
#include "server/scoring/alibi_logits.h"
#include "server/scoring/attention.h"
#include "server/scoring/batched_attention.h"
#include "server/scoring/batched_estimate.h"
#include "server/scoring/blocked_attention.h"
#include "server/scoring/blocked_tiling.h"
#include "server/scoring/buffer_pool.h"
#include "server/scoring/fused_attention.h"
#include "server/scoring/host_tensor.h"
#include "server/scoring/relative_model.h"
#include "server/scoring/staging.h"

namespace attnscore::scoring {
namespace {

const TensorRef& PickQuery(const ScoreItem& item) { return item.query; }
const TensorRef& PickKey(const ScoreItem& item) { return item.key; }
const TensorRef& PickValue(const ScoreItem& item) { return *item.value; }

// The items stacked along the batch axis, canonical [B,H,S,D] views.
struct Batch {
  at::Tensor query;                  // [B,H,Lq,D]
  at::Tensor key;                    // [B,H,Lk,D]
  at::Tensor value;                  // [B,H,Lk,Dv] (when context is wanted)
  std::vector<int32_t> key_lengths;  // [B], or empty when no item has any
  std::vector<int64_t> item_batch;   // each item's B, in order
};

// `blocked`: for the CPU's blocked path, which reads a lone item's 16-bit
// keys and values in place.
Batch GatherBatch(const ScoreSpec& spec, absl::Span<const ScoreItem> items,
                  const at::Device& device, bool blocked) {
  Batch batch;
  const int64_t key_len = DimsOf(items[0].key.shape, spec.layout).seq;
  const bool any_lengths = std::any_of(
      items.begin(), items.end(),
      [](const ScoreItem& item) { return !item.key_lengths.empty(); });
  for (const ScoreItem& item : items) {
    const int64_t b = DimsOf(item.query.shape, spec.layout).batch;
    batch.item_batch.push_back(b);
    if (!any_lengths) continue;
    // An item without lengths sees every key.
    if (item.key_lengths.empty()) {
      batch.key_lengths.insert(batch.key_lengths.end(), b,
                               static_cast<int32_t>(key_len));
    } else {
      batch.key_lengths.insert(batch.key_lengths.end(),
                               item.key_lengths.begin(),
                               item.key_lengths.end());
    }
  }
  batch.query =
      ToCanonical(Gather(items, PickQuery, spec.layout, device), spec.layout);
  batch.key = ToCanonical(Gather(items, PickKey, spec.layout, device, blocked),
                          spec.layout);
  if (spec.want_context) {
    batch.value = ToCanonical(
        Gather(items, PickValue, spec.layout, device, blocked), spec.layout);
  }
  return batch;
}

// Hands out per-item views of a batch output without copying when each item's
// rows are contiguous in it (batch-major), else a contiguous copy of the item's
// slice.
class Splitter {
 public:
  Splitter(at::Tensor batch_output, DType dtype, int64_t axis)
      : owner_(std::make_shared<at::Tensor>(std::move(batch_output))),
        dtype_(dtype),
        axis_(axis) {}

  OutputTensor Slice(int64_t offset, int64_t count) const {
    if (axis_ == 0 && owner_->is_contiguous()) {
      // Batch-major: the item's rows by address, without a tensor per item.
      const int64_t row_bytes =
          owner_->size(0) > 0
              ? static_cast<int64_t>(owner_->nbytes()) / owner_->size(0)
              : 0;
      OutputTensor out;
      out.dtype = dtype_;
      out.shape.assign(owner_->sizes().begin(), owner_->sizes().end());
      out.shape[0] = count;
      out.data =
          static_cast<const char*>(owner_->data_ptr()) + offset * row_bytes;
      out.size_bytes = static_cast<size_t>(count * row_bytes);
      out.keepalive = owner_;
      return out;
    }
    at::Tensor slice = owner_->narrow(axis_, offset, count);
    OutputTensor out;
    out.dtype = dtype_;
    out.shape.assign(slice.sizes().begin(), slice.sizes().end());
    if (slice.is_contiguous()) {
      out.data = slice.data_ptr();
      out.size_bytes = slice.nbytes();
      out.keepalive = owner_;
    } else {
      auto copy = std::make_shared<at::Tensor>(slice.contiguous());
      out.data = copy->data_ptr();
      out.size_bytes = copy->nbytes();
      out.keepalive = std::move(copy);
    }
    return out;
  }

 private:
  std::shared_ptr<at::Tensor> owner_;
  DType dtype_;
  int64_t axis_;
};

// The output in the wire dtype in host memory. On an accelerator the
// conversion runs there (16-bit outputs then cross the bus at half the bytes)
// and the copy lands in pinned memory from LibTorch's caching host allocator:
// a DMA at full bus speed into a pooled buffer, which is the reply's bytes and
// returns to the pool when the reply releases it.
at::Tensor ToOutput(const at::Tensor& t, DType dtype) {
  const at::ScalarType type = ToScalarType(dtype);
  if (t.is_cpu()) return PooledContiguousAs(t, type);
  const at::Tensor converted = t.to(type).contiguous();
  at::Tensor host =
      at::empty(converted.sizes(),
                converted.options().device(at::kCPU).pinned_memory(true));
  host.copy_(converted);  // synchronous: the bytes are there on return
  return host;
}

// `destination` as the [B,H,Lq,Lk] output of `type` over `scores`, when it is
// 64-byte aligned and holds it; else undefined (the scorer allocates its own).
// The tensor keeps the destination's keepalive.
at::Tensor DestinationTensor(const OutputDestination& destination,
                             at::IntArrayRef scores, at::ScalarType type) {
  constexpr uintptr_t kAlignment = 64;
  int64_t count = 1;
  for (const int64_t size : scores) count *= size;
  const size_t bytes = static_cast<size_t>(count) * c10::elementSize(type);
  if (destination.data == nullptr || destination.capacity < bytes ||
      reinterpret_cast<uintptr_t>(destination.data) % kAlignment != 0) {
    return at::Tensor();
  }
  return at::from_blob(
      destination.data, scores,
      [keep = destination.keepalive](void* /*data*/) {},
      at::TensorOptions().dtype(type));
}

// Where each item's rows of a batch-major output [N, ...] of `type` go
// straight to: a tensor over the item's destination (a client's shared
// memory), or undefined where it offers none that DestinationTensor can use.
std::vector<at::Tensor> ItemDestinations(
    absl::Span<const ScoreItem> items, const std::vector<int64_t>& item_batch,
    const at::Tensor& output, at::ScalarType type,
    OutputDestination ScoreItem::*offered) {
  std::vector<int64_t> shape(output.sizes().begin(), output.sizes().end());
  std::vector<at::Tensor> destinations(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    shape[0] = item_batch[i];
    destinations[i] = DestinationTensor(items[i].*offered, shape, type);
  }
  return destinations;
}

// The item's rows as they lie in its destination, kept alive by it.
OutputTensor PlacedOutput(const at::Tensor& destination, DType dtype,
                          const OutputDestination& offered) {
  OutputTensor out;
  out.dtype = dtype;
  out.shape.assign(destination.sizes().begin(), destination.sizes().end());
  out.data = destination.data_ptr();
  out.size_bytes = destination.nbytes();
  out.keepalive = offered.keepalive;
  return out;
}

// One result per item, each viewing its rows of the batch outputs in host
// memory, in the output dtype. Logits and probs go straight into the
// destinations that items offer (unless the blocked path wrote them there in
// place): from the device, a copy into page-locked shared memory is a DMA
// with no host buffer between. Copies from a device may still be in flight
// on return: the caller's StreamDrain waits for them.
std::vector<ScoreResult> SplitResults(const ScoreSpec& spec,
                                      const AttentionResult& result,
                                      const std::vector<int64_t>& item_batch,
                                      absl::Span<const ScoreItem> items) {
  std::vector<ScoreResult> results(item_batch.size());
  const at::ScalarType type = ToScalarType(spec.output_dtype);
  auto split = [&](const at::Tensor& t, int64_t axis,
                   std::optional<OutputTensor> ScoreResult::*field,
                   OutputDestination ScoreItem::*offered) {
    std::vector<at::Tensor> destinations(items.size());
    if (offered != nullptr) {
      destinations = ItemDestinations(items, item_batch, t, type, offered);
    }
    // On a device the conversion runs there, once, whoever takes the rows.
    const at::Tensor source = t.is_cpu() ? t : t.to(type);
    std::optional<Splitter> splitter;
    if (std::any_of(destinations.begin(), destinations.end(),
                    [](const at::Tensor& d) { return !d.defined(); })) {
      splitter.emplace(ToOutput(source, spec.output_dtype), spec.output_dtype,
                       axis);
    }
    int64_t offset = 0;
    for (size_t i = 0; i < item_batch.size(); ++i) {
      at::Tensor& destination = destinations[i];
      if (destination.defined()) {
        const at::Tensor rows = source.narrow(0, offset, item_batch[i]);
        if (rows.data_ptr() != destination.data_ptr()) {
          destination.copy_(rows, /*non_blocking=*/true);
        }
        results[i].*field =
            PlacedOutput(destination, spec.output_dtype, items[i].*offered);
      } else {
        results[i].*field = splitter->Slice(offset, item_batch[i]);
      }
      offset += item_batch[i];
    }
  };
  if (spec.want_logits) {
    split(result.logits, 0, &ScoreResult::logits,
          &ScoreItem::logits_destination);
  }
  if (spec.want_probs) {
    split(result.probs, 0, &ScoreResult::probs, &ScoreItem::probs_destination);
  }
  if (spec.want_context) {
    // Context is never offered a destination (converted, then copied).
    split(FromCanonical(result.context, spec.layout), BatchAxis(spec.layout),
          &ScoreResult::context, nullptr);
  }
  return results;
}

// The logits and probs of `item` (scored alone) preset to its destinations,
// for the blocked path to write in place.
AttentionResult PlacedOutputs(const ScoreItem& item, const Batch& batch,
                              const AttentionConfig& config) {
  const std::vector<int64_t> scores = {batch.query.size(0), batch.query.size(1),
                                       batch.query.size(2), batch.key.size(2)};
  AttentionResult placed;
  if (config.want_logits) {
    placed.logits =
        DestinationTensor(item.logits_destination, scores, config.matrix_type);
  }
  if (config.want_probs) {
    placed.probs =
        DestinationTensor(item.probs_destination, scores, config.matrix_type);
  }
  return placed;
}

// A request's bias resolved for the computation, with the device copy of a
// relative model kept alive for as long as the computation uses it.
struct DeviceBias {
  ResolvedBias bias;
  std::shared_ptr<const AtenRelativeModel> model;  // null for ALiBi
};

// Waits, on destruction, for the work queued on `stream` (when one is given),
// however the batch ends: copies from the items' page-locked bytes may still
// be in flight when it ends early (cancelled, or an error), and its copies
// into their destinations when it succeeds. The items, which the caller frees
// when ScoreBatch returns, must outlive the former; the caller reads the
// latter.
class StreamDrain {
 public:
  explicit StreamDrain(std::optional<c10::Stream> stream) : stream_(stream) {}
  ~StreamDrain() {
    if (!stream_.has_value()) return;
    try {
      stream_->synchronize();
    } catch (const c10::Error&) {
      // The device failed: the batch's error says so already.
    }
  }
  StreamDrain(const StreamDrain&) = delete;
  StreamDrain& operator=(const StreamDrain&) = delete;

 private:
  std::optional<c10::Stream> stream_;
};

// On a CUDA server the host pool's blocks, into which requests are parsed,
// are page-locked as they are mapped: a batch then copies its inputs to the
// device by DMA, with no staging copy on the host (staging.h). Once per
// process; blocks the pool mapped before stay pageable.
void PageLockHostBlocks() {
  static std::once_flag once;
  std::call_once(once, [] {
    HostBufferPool().SetBlockHooks(
        {[](void* block, size_t capacity) { PinHostMemory(block, capacity); },
         [](void* block, size_t /*capacity*/) { UnpinHostMemory(block); }});
  });
}

class ScorerImpl final : public Scorer {
 public:
  ScorerImpl(at::Device device, bool batched, bool alibi_kernel)
      : device_(device),
        batched_(batched),
        alibi_kernel_(alibi_kernel),
        fused_available_(FusedAttentionAvailable()) {}

  using Scorer::ScoreBatch;
  absl::StatusOr<std::vector<ScoreResult>> ScoreBatch(
      const ScoreSpec& spec, absl::Span<const ScoreItem> items,
      const StopFn& stop) override {
    if (items.empty()) return std::vector<ScoreResult>();
    return Guarded([&] {
      if (ScoresItemByItem(items)) return ScoreEachOrThrow(spec, items, stop);
      return ScoreBatchOrThrow(spec, items, stop, nullptr);
    });
  }

  absl::StatusOr<std::vector<ScoreResult>> ScoreObserved(
      const ScoreSpec& spec, const ScoreItem& item, const StopFn& stop,
      RowObserver& observer) override {
    return Guarded([&] {
      return ScoreBatchOrThrow(spec, absl::MakeConstSpan(&item, 1), stop,
                               &observer);
    });
  }

  size_t ItemsPerPass(absl::Span<const ScoreItem> items) const override {
    return ScoresItemByItem(items) ? 1 : items.size();
  }

  std::string device() const override { return device_.str(); }

  std::string Describe() const override {
    std::string text = device_.str();
    if (device_.is_cuda()) {
      const absl::StatusOr<AcceleratorInfo> info =
          DescribeCudaDevice(device_.has_index() ? device_.index() : 0);
      if (info.ok()) {
        absl::StrAppend(&text, " (", info->name, ", sm_", info->compute_major,
                        info->compute_minor, ", ", info->multiprocessors,
                        " multiprocessors, ", info->total_bytes >> 20, " MiB)");
      }
    }
    if (!batched_) return absl::StrCat(text, ", blocked path");
    absl::StrAppend(&text, ", batched path; context alone: ",
                    fused_available_ ? FusedAttentionDescription()
                                     : "query tiles (no fused attention)");
    absl::StrAppend(&text, "; ALiBi logits: ",
                    !alibi_kernel_ ? "the library's products (kernel off)"
                    : AlibiLogitsKernelAvailable(device_)
                        ? "the project's kernel (query tiles of 32 rows and "
                          "more)"
                        : "the library's products");
    return text;
  }

  ResourceEstimate Estimate(const ScoreSpec& spec,
                            const ProblemSize& size) const override {
    if (!batched_) return EstimateResources(spec, size);
    return EstimateBatchedResources(
        spec, size,
        {fused_available_,
         alibi_kernel_ && AlibiLogitsKernelAvailable(device_)});
  }

 private:
  absl::StatusOr<std::vector<ScoreResult>> ScoreBatchOrThrow(
      const ScoreSpec& spec, absl::Span<const ScoreItem> items,
      const StopFn& stop, RowObserver* observer) {
    // On a GPU each batch worker thread computes on a stream of its own, so
    // concurrent batches overlap their copies and kernels; the CPU has none.
    std::optional<c10::StreamGuard> stream_guard;
    if (device_.is_cuda()) stream_guard.emplace(WorkerStream());
    const StreamDrain drain(device_.is_cuda()
                                ? std::optional<c10::Stream>(WorkerStream())
                                : std::nullopt);
    const Dims q = DimsOf(items[0].query.shape, spec.layout);
    absl::StatusOr<DeviceBias> bias = ResolveBias(spec.bias, q.heads);
    if (!bias.ok()) return bias.status();
    AttentionConfig config = MakeConfig(spec, q, bias->bias);
    // The CPU path writes 16-bit outputs per tile: no float32 copy to convert.
    if (!batched_) config.matrix_type = ToScalarType(spec.output_dtype);
    if (stop && stop()) return Cancelled();
    const Batch batch = GatherBatch(spec, items, device_, !batched_);
    // One item on the blocked path writes its logits and probs where the
    // caller asked (a client's shared memory), saving a pass over them.
    AttentionResult result = !batched_ && items.size() == 1
                                 ? PlacedOutputs(items[0], batch, config)
                                 : AttentionResult();
    if (batched_) {
      // Whole batched products on the device; stopped only between batches.
      result = BatchedAttention(batch.query, batch.key, batch.value,
                                batch.key_lengths, config, 0, alibi_kernel_);
      if (stop && stop()) return Cancelled();
    } else {
      // The blocked path: nothing that was not asked for is materialised.
      RowsDoneFn rows_done;
      if (observer != nullptr && Observable(spec, items)) {
        AllocateBlockedOutputs(batch.query, batch.key, batch.value, config,
                               &result);
        observer->OnOutputs(
            SplitResults(spec, result, batch.item_batch, items).front());
        rows_done = [observer](int64_t rows) { observer->OnRows(rows); };
      }
      if (!ComputeAttentionBlocked(batch.query, batch.key, batch.value,
                                   batch.key_lengths, config, stop, rows_done,
                                   &result)) {
        return Cancelled();
      }
    }
    return SplitResults(spec, result, batch.item_batch, items);
  }

  // Whether the blocked path can tell an observer the rows of `items` (one)
  // as they become final: its outputs are then the pass's own buffers, row
  // for row. Not context, which is converted (and laid out) after the pass,
  // nor outputs a caller offered memory for, which may be copied there after.
  bool Observable(const ScoreSpec& spec,
                  absl::Span<const ScoreItem> items) const {
    return !batched_ && device_.is_cpu() && items.size() == 1 &&
           !spec.want_context && items[0].logits_destination.data == nullptr &&
           items[0].probs_destination.data == nullptr;
  }

  // The compute boundary: LibTorch reports failures (including out of memory)
  // as exceptions.
  template <typename Fn>
  static absl::StatusOr<std::vector<ScoreResult>> Guarded(Fn&& fn) {
    try {
      return fn();
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("scoring failed: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("scoring failed: ", e.what()));
    }
  }

  // The blocked path works per (item, head) anyway, so on the CPU a batch
  // gains nothing from being stacked into one tensor, and stacking copies
  // every input: past kStackBytes of inputs each item is computed where its
  // bytes lie (a float32 item is read in place), one after the other, with
  // the same results (every tile depends on its own item alone). Smaller
  // batches are stacked: one pass over many tiny items is cheaper than a
  // pass per item.
  bool ScoresItemByItem(absl::Span<const ScoreItem> items) const {
    constexpr size_t kStackBytes = size_t{1} << 20;
    if (batched_ || !device_.is_cpu() || items.size() < 2) return false;
    size_t bytes = 0;
    for (const ScoreItem& item : items) {
      bytes += item.query.size_bytes + item.key.size_bytes +
               (item.value.has_value() ? item.value->size_bytes : 0);
    }
    return bytes >= kStackBytes;
  }

  absl::StatusOr<std::vector<ScoreResult>> ScoreEachOrThrow(
      const ScoreSpec& spec, absl::Span<const ScoreItem> items,
      const StopFn& stop) {
    std::vector<ScoreResult> results;
    results.reserve(items.size());
    for (const ScoreItem& item : items) {
      absl::StatusOr<std::vector<ScoreResult>> one =
          ScoreBatchOrThrow(spec, {&item, 1}, stop, nullptr);
      if (!one.ok()) return one.status();
      results.push_back(std::move(one->front()));
    }
    return results;
  }

  static absl::Status Cancelled() {
    return absl::CancelledError(
        "scoring stopped: the request was cancelled or its deadline passed");
  }

  static AttentionConfig MakeConfig(const ScoreSpec& spec, const Dims& q,
                                    ResolvedBias bias) {
    AttentionConfig config;
    config.bias = std::move(bias);
    config.causal = spec.causal;
    config.want_logits = spec.want_logits;
    config.want_probs = spec.want_probs;
    config.want_context = spec.want_context;
    config.scale = spec.scale.has_value()
                       ? *spec.scale
                       : 1.0 / std::sqrt(static_cast<double>(q.dim));
    return config;
  }

  // ALiBi: the given slopes or the paper's for H heads. Relative: the ATen
  // model on this scorer's device.
  absl::StatusOr<DeviceBias> ResolveBias(const Bias& bias, int64_t heads) {
    return std::visit(
        Overloaded{
            [&](const AlibiBias& alibi) -> absl::StatusOr<DeviceBias> {
              return DeviceBias{
                  ResolvedAlibi{alibi.slopes.empty() ? AlibiSlopes(heads)
                                                     : alibi.slopes},
                  nullptr};
            },
            [&](const RelativeBias& relative) {
              return ResolveRelative(relative);
            },
        },
        bias);
  }

  absl::StatusOr<DeviceBias> ResolveRelative(const RelativeBias& relative) {
    if (relative.model == nullptr) {
      return absl::InvalidArgumentError("relative.model: not loaded");
    }
    std::shared_ptr<const AtenRelativeModel> model = AsAten(relative.model);
    if (model == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "relative.model: '", relative.model->info().name,
          "' was not loaded by this scorer's loader (model_loader.h)"));
    }
    if (!device_.is_cpu()) {
      absl::StatusOr<std::shared_ptr<const AtenRelativeModel>> moved =
          OnDevice(model);
      if (!moved.ok()) return moved.status();
      model = *std::move(moved);
    }
    const AtenRelativeModel* raw = model.get();
    return DeviceBias{ResolvedRelative{raw}, std::move(model)};
  }

  // Parameters follow the compute: one device copy per loaded model, made on
  // first use and dropped when the model is (a reload replaces the set).
  absl::StatusOr<std::shared_ptr<const AtenRelativeModel>> OnDevice(
      const std::shared_ptr<const AtenRelativeModel>& model) {
    std::lock_guard<std::mutex> lock(device_models_mu_);
    for (auto it = device_models_.begin(); it != device_models_.end();) {
      it =
          it->second.first.expired() ? device_models_.erase(it) : std::next(it);
    }
    auto it = device_models_.find(model->id());
    if (it != device_models_.end()) return it->second.second;
    absl::StatusOr<std::shared_ptr<const AtenRelativeModel>> moved =
        AtenRelativeModel::Create(model->info().name, model->info().source,
                                  model->key_pos_embeddings().to(device_),
                                  model->key_pos_bias().to(device_),
                                  model->query_pos_bias().to(device_));
    if (moved.ok()) device_models_[model->id()] = {model, *moved};
    return moved;
  }

  // This thread's stream on device_, taken from the device's pool on first
  // use (device-generic c10 API: builds without CUDA, runs with it).
  c10::Stream WorkerStream() const {
    thread_local std::map<c10::DeviceIndex, c10::Stream> streams;
    auto it = streams.find(device_.index());
    if (it == streams.end()) {
      it = streams
               .emplace(device_.index(),
                        c10::impl::getDeviceGuardImpl(device_.type())
                            ->getStreamFromGlobalPool(device_))
               .first;
    }
    return it->second;
  }

  const at::Device device_;
  const bool batched_;
  const bool alibi_kernel_;  // ScorerOptions::alibi_kernel
  const bool fused_available_;
  std::mutex device_models_mu_;
  std::map<uint64_t, std::pair<std::weak_ptr<const AtenRelativeModel>,
                               std::shared_ptr<const AtenRelativeModel>>>
      device_models_;  // GUARDED_BY(device_models_mu_)
};

absl::Status BadDevice(const std::string& device) {
  return absl::InvalidArgumentError(
      absl::StrCat("device: expected cpu, cuda or cuda:N, got '", device, "'"));
}

// "cpu", "cuda" (cuda:0) or "cuda:N", checked against what this process sees.
absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  at::Device device(at::kCPU);
  try {
    device = at::Device(name);
  } catch (const c10::Error&) {
    return BadDevice(name);
  }
  if (device.is_cpu()) return device;
  if (!device.is_cuda()) return BadDevice(name);
  const auto& hooks = at::detail::getCUDAHooks();
  if (!hooks.hasCUDA()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", name,
        "' requested, but CUDA is not available: this LibTorch build ",
        "has no CUDA support or no GPU is visible; use --device cpu"));
  }
  const int count = hooks.getNumGPUs();
  if (!device.has_index()) device.set_index(0);  // "cuda" means cuda:0
  if (device.index() >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", name, "' requested, but only ", count,
                     " CUDA device(s) are visible"));
  }
  return device;
}

}  // namespace

absl::StatusOr<ComputePath> ParseComputePath(absl::string_view name) {
  if (name == "auto") return ComputePath::kAuto;
  if (name == "blocked") return ComputePath::kBlocked;
  if (name == "batched") return ComputePath::kBatched;
  return absl::InvalidArgumentError(absl::StrCat(
      "compute_path: expected auto, blocked or batched, got '", name, "'"));
}

absl::StatusOr<std::unique_ptr<Scorer>> CreateAtenScorer(
    const ScorerOptions& options) {
  absl::StatusOr<at::Device> device = ParseDevice(options.device);
  if (!device.ok()) return device.status();
  const bool batched =
      options.compute_path == ComputePath::kBatched ||
      (options.compute_path == ComputePath::kAuto && !device->is_cpu());
  if (!batched && !device->is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat("compute_path: blocked runs on the CPU only, device is '",
                     options.device, "'"));
  }
  if (options.intra_op_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "intra_op_threads: expected >= 0, got ", options.intra_op_threads));
  }
  // Debian's LibTorch starts with one intra-op thread; set it explicitly.
  const int threads =
      options.intra_op_threads > 0
          ? options.intra_op_threads
          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  SetBlockedThreads(threads);  // the resource estimate's scratch count
  if (device->is_cuda()) PageLockHostBlocks();
  return std::unique_ptr<Scorer>(
      new ScorerImpl(*device, batched, options.alibi_kernel));
}

}  // namespace attnscore::scoring
