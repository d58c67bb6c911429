#include "server/scoring/scorer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/scoring/alibi.h"
#include "server/scoring/attention.h"
#include "server/scoring/relative_model.h"

namespace attnscore::scoring {
namespace {

// Bias and mask tensors reused across requests; 512 MiB holds e.g. 8 heads of
// 2048x2048.
constexpr size_t kStaticBiasCacheBytes = size_t{512} << 20;


std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

const char* LayoutDims(Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return "[B,H,S,D]";
    case Layout::kBSHD:
      return "[B,S,H,D]";
    case Layout::kSBHD:
      return "[S,B,H,D]";
  }
  return "?";
}

absl::Status CheckTensor(const char* field, const TensorRef& t, Layout layout) {
  if (t.shape.size() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".shape: expected 4 dims ", LayoutDims(layout), " for layout ",
        LayoutName(layout), ", got ", ShapeString(t.shape)));
  }
  uint64_t count = 1;
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (t.shape[i] <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape[", i, "]: expected > 0, got ", t.shape[i]));
    }
    count *= static_cast<uint64_t>(t.shape[i]);
    if (count > (uint64_t{1} << 40)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape: ", ShapeString(t.shape), " is implausibly large"));
    }
  }
  const uint64_t expected = count * ElementSize(t.dtype);
  if (t.size_bytes != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".data: expected ", expected, " bytes for ", DTypeName(t.dtype),
        " ", ShapeString(t.shape), ", got ", t.size_bytes));
  }
  return absl::OkStatus();
}

// Finds the first NaN or Inf by its exponent bits, without converting.
// Index of the first element whose exponent bits are all ones (NaN or Inf), or
// `count`. Scans blocks without an early exit so the compiler vectorises the
// common all-finite case; only a block that has one is searched element-wise.
// Loads go through memcpy: request bytes need not be aligned.
template <typename Word>
size_t FirstNonFinite(const void* data, size_t count, Word exponent_mask) {
  constexpr size_t kBlock = 2048;
  const auto* bytes = static_cast<const unsigned char*>(data);
  auto load = [bytes](size_t i) {
    Word w;
    std::memcpy(&w, bytes + i * sizeof(Word), sizeof(Word));
    return w;
  };
  for (size_t begin = 0; begin < count; begin += kBlock) {
    const size_t end = std::min(count, begin + kBlock);
    bool any = false;
    for (size_t i = begin; i < end; ++i) {
      any |= (load(i) & exponent_mask) == exponent_mask;
    }
    if (!any) continue;
    for (size_t i = begin; i < end; ++i) {
      if ((load(i) & exponent_mask) == exponent_mask) return i;
    }
  }
  return count;
}

absl::Status CheckFinite(const char* field, const TensorRef& t) {
  const size_t count = t.size_bytes / ElementSize(t.dtype);
  size_t bad;
  switch (t.dtype) {
    case DType::kFloat32:
      bad = FirstNonFinite<uint32_t>(t.data, count, 0x7f800000u);
      break;
    case DType::kFloat16:
      bad = FirstNonFinite<uint16_t>(t.data, count, 0x7c00u);
      break;
    case DType::kBFloat16:
    default:
      bad = FirstNonFinite<uint16_t>(t.data, count, 0x7f80u);
      break;
  }
  if (bad == count) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ".data: expected finite values, got ",
                   "NaN or Inf at flat index ", bad));
}

at::ScalarType ScalarType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return at::kFloat;
    case DType::kFloat16:
      return at::kHalf;
    case DType::kBFloat16:
      return at::kBFloat16;
  }
  return at::kFloat;
}

at::Tensor Wrap(const TensorRef& t) {
  // The request owns the bytes; compute reads them in place (no copy for a
  // float32 batch of one).
  return at::from_blob(const_cast<void*>(t.data), t.shape,
                       at::TensorOptions().dtype(ScalarType(t.dtype)));
}

// The batch axis of a tensor in `layout`.
int64_t BatchAxis(Layout layout) { return layout == Layout::kSBHD ? 1 : 0; }

// Stacks the items' tensors along the batch axis as float32, on `device`. A
// single float32 CPU item is used in place.
at::Tensor Gather(absl::Span<const ScoreItem> items,
                  const TensorRef& (*pick)(const ScoreItem&), Layout layout,
                  const at::Device& device) {
  if (items.size() == 1 && pick(items[0]).dtype == DType::kFloat32 &&
      device.is_cpu()) {
    return Wrap(pick(items[0]));
  }
  const int64_t axis = BatchAxis(layout);
  std::vector<int64_t> shape = pick(items[0]).shape;
  int64_t total = 0;
  for (const ScoreItem& item : items) total += pick(item).shape[axis];
  shape[axis] = total;
  // Pinned host staging lets a CUDA copy run asynchronously.
  at::Tensor out = at::empty(
      shape,
      at::TensorOptions().dtype(at::kFloat).pinned_memory(device.is_cuda()));
  int64_t offset = 0;
  for (const ScoreItem& item : items) {
    const TensorRef& t = pick(item);
    out.narrow(axis, offset, t.shape[axis]).copy_(Wrap(t));
    offset += t.shape[axis];
  }
  return device.is_cpu() ? out : out.to(device, /*non_blocking=*/true);
}

const TensorRef& PickQuery(const ScoreItem& item) { return item.query; }
const TensorRef& PickKey(const ScoreItem& item) { return item.key; }
const TensorRef& PickValue(const ScoreItem& item) { return *item.value; }

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

at::Tensor ToOutput(const at::Tensor& t, DType dtype) {
  at::Tensor out = t.to(at::kCPU).to(ScalarType(dtype));
  return out.contiguous();
}

class ScorerImpl final : public Scorer {
 public:
  explicit ScorerImpl(at::Device device)
      : device_(device), cache_(kStaticBiasCacheBytes) {}

  absl::StatusOr<std::vector<ScoreResult>> ScoreBatch(
      const ScoreSpec& spec, absl::Span<const ScoreItem> items) override {
    if (items.empty()) return std::vector<ScoreResult>();
    // The compute boundary: LibTorch reports failures (including out of memory)
    // as exceptions.
    try {
      return ScoreBatchOrThrow(spec, items);
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("scoring failed: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("scoring failed: ", e.what()));
    }
  }

  std::string device() const override { return device_.str(); }

 private:
  absl::StatusOr<std::vector<ScoreResult>> ScoreBatchOrThrow(
      const ScoreSpec& spec, absl::Span<const ScoreItem> items) {
    // On a GPU each batch worker thread computes on a stream of its own, so
    // concurrent batches overlap their copies and kernels; the CPU has none.
    std::optional<c10::StreamGuard> stream_guard;
    if (device_.is_cuda()) stream_guard.emplace(WorkerStream());
    const Dims q = DimsOf(items[0].query.shape, spec.layout);
    const Dims k = DimsOf(items[0].key.shape, spec.layout);

    AttentionConfig config;
    config.bias = spec.bias;
    config.causal = spec.causal;
    config.want_probs = spec.want_probs;
    config.want_context = spec.want_context;
    config.scale = spec.scale.has_value()
                       ? *spec.scale
                       : 1.0 / std::sqrt(static_cast<double>(q.dim));
    if (spec.bias == BiasKind::kAlibi) {
      config.alibi_slopes =
          spec.alibi_slopes.empty() ? AlibiSlopes(q.heads) : spec.alibi_slopes;
    } else {
      if (spec.model == nullptr)
        return absl::InvalidArgumentError("relative.model: not loaded");
      config.model = spec.model.get();
    }

    std::vector<int32_t> key_lengths;
    bool any_lengths = false;
    for (const ScoreItem& item : items)
      any_lengths |= !item.key_lengths.empty();
    std::vector<int64_t> item_batch;
    for (const ScoreItem& item : items) {
      const int64_t b = DimsOf(item.query.shape, spec.layout).batch;
      item_batch.push_back(b);
      if (!any_lengths) continue;
      if (item.key_lengths.empty()) {
        key_lengths.insert(key_lengths.end(), b, static_cast<int32_t>(k.seq));
      } else {
        key_lengths.insert(key_lengths.end(), item.key_lengths.begin(),
                           item.key_lengths.end());
      }
    }

    at::Tensor query = ToCanonical(
        Gather(items, PickQuery, spec.layout, device_), spec.layout);
    at::Tensor key =
        ToCanonical(Gather(items, PickKey, spec.layout, device_), spec.layout);
    at::Tensor value;
    if (spec.want_context) {
      value = ToCanonical(Gather(items, PickValue, spec.layout, device_),
                          spec.layout);
    }
    std::shared_ptr<const RelativeModel> device_model;
    if (config.model != nullptr && !device_.is_cpu()) {
      absl::StatusOr<std::shared_ptr<const RelativeModel>> moved =
          OnDevice(spec.model);
      if (!moved.ok()) return moved.status();
      device_model = *std::move(moved);
      config.model = device_model.get();
    }

    AttentionResult result =
        ComputeAttention(query, key, value, key_lengths, config, &cache_);

    std::vector<ScoreResult> results(items.size());
    auto split = [&](const at::Tensor& t, int64_t axis,
                     std::optional<OutputTensor> ScoreResult::*field) {
      Splitter splitter(ToOutput(t, spec.output_dtype), spec.output_dtype,
                        axis);
      int64_t offset = 0;
      for (size_t i = 0; i < items.size(); ++i) {
        results[i].*field = splitter.Slice(offset, item_batch[i]);
        offset += item_batch[i];
      }
    };
    if (spec.want_logits) split(result.logits, 0, &ScoreResult::logits);
    if (spec.want_probs) split(result.probs, 0, &ScoreResult::probs);
    if (spec.want_context) {
      split(FromCanonical(result.context, spec.layout), BatchAxis(spec.layout),
            &ScoreResult::context);
    }
    return results;
  }

  // Parameters follow the compute: one device copy per loaded model, made on
  // first use and dropped when the model is (a reload replaces the set).
  absl::StatusOr<std::shared_ptr<const RelativeModel>> OnDevice(
      const std::shared_ptr<const RelativeModel>& model) {
    std::lock_guard<std::mutex> lock(device_models_mu_);
    for (auto it = device_models_.begin(); it != device_models_.end();) {
      it =
          it->second.first.expired() ? device_models_.erase(it) : std::next(it);
    }
    auto it = device_models_.find(model->id());
    if (it != device_models_.end()) return it->second.second;
    absl::StatusOr<std::shared_ptr<const RelativeModel>> moved =
        RelativeModel::Create(model->info().name, model->info().source,
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
  StaticBiasCache cache_;
  std::mutex device_models_mu_;
  std::map<uint64_t, std::pair<std::weak_ptr<const RelativeModel>,
                               std::shared_ptr<const RelativeModel>>>
      device_models_;  // GUARDED_BY(device_models_mu_)
};

}  // namespace

Dims DimsOf(const std::vector<int64_t>& shape, Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return {shape[0], shape[1], shape[2], shape[3]};
    case Layout::kBSHD:
      return {shape[0], shape[2], shape[1], shape[3]};
    case Layout::kSBHD:
      return {shape[1], shape[2], shape[0], shape[3]};
  }
  return {};
}

const char* LayoutName(Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return "BHSD";
    case Layout::kBSHD:
      return "BSHD";
    case Layout::kSBHD:
      return "SBHD";
  }
  return "?";
}

absl::Status ValidateItem(const ScoreSpec& spec, const ScoreItem& item) {
  if (absl::Status s = CheckTensor("query", item.query, spec.layout); !s.ok())
    return s;
  if (absl::Status s = CheckTensor("key", item.key, spec.layout); !s.ok())
    return s;
  const Dims q = DimsOf(item.query.shape, spec.layout);
  const Dims k = DimsOf(item.key.shape, spec.layout);
  if (item.key.dtype != item.query.dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("key.dtype: expected ", DTypeName(item.query.dtype),
                     " (the query's), got ", DTypeName(item.key.dtype)));
  }
  auto mismatch = [](const char* what, int64_t expected, int64_t actual) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": expected ", expected, " (from query), got ", actual));
  };
  if (k.batch != q.batch) return mismatch("key batch size", q.batch, k.batch);
  if (k.heads != q.heads) return mismatch("key heads", q.heads, k.heads);
  if (k.dim != q.dim) return mismatch("key head_dim", q.dim, k.dim);
  if (item.value.has_value()) {
    if (absl::Status s = CheckTensor("value", *item.value, spec.layout);
        !s.ok())
      return s;
    const Dims v = DimsOf(item.value->shape, spec.layout);
    if (item.value->dtype != item.query.dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat("value.dtype: expected ", DTypeName(item.query.dtype),
                       " (the query's), got ", DTypeName(item.value->dtype)));
    }
    if (v.batch != q.batch)
      return mismatch("value batch size", q.batch, v.batch);
    if (v.heads != q.heads) return mismatch("value heads", q.heads, v.heads);
    if (v.seq != k.seq) {
      return absl::InvalidArgumentError(
          absl::StrCat("value sequence length: expected ", k.seq,
                       " (the key's), got ", v.seq));
    }
  } else if (spec.want_context) {
    return absl::InvalidArgumentError(
        "value: required for the CONTEXT output, got none");
  }
  if (!item.key_lengths.empty()) {
    if (static_cast<int64_t>(item.key_lengths.size()) != q.batch) {
      return absl::InvalidArgumentError(absl::StrCat(
          "key_lengths: expected ", q.batch,
          " values (one per batch item), got ", item.key_lengths.size()));
    }
    for (size_t b = 0; b < item.key_lengths.size(); ++b) {
      const int32_t len = item.key_lengths[b];
      if (len < 0 || len > k.seq) {
        return absl::InvalidArgumentError(
            absl::StrCat("key_lengths[", b, "]: expected 0..", k.seq,
                         " (the key length), got ", len));
      }
    }
  }
  if (spec.causal && q.seq > k.seq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "causal: query length ", q.seq, " exceeds key length ", k.seq,
        "; causal attention needs query_len <= key_len (queries are the last "
        "positions)"));
  }
  if (spec.scale.has_value() &&
      !(std::isfinite(*spec.scale) && *spec.scale > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale: expected a finite value > 0, got ", *spec.scale));
  }
  if (spec.bias == BiasKind::kAlibi) {
    if (!spec.alibi_slopes.empty()) {
      if (static_cast<int64_t>(spec.alibi_slopes.size()) != q.heads) {
        return absl::InvalidArgumentError(absl::StrCat(
            "alibi.slopes: expected ", q.heads,
            " values (one per head) or none, got ", spec.alibi_slopes.size()));
      }
      for (size_t h = 0; h < spec.alibi_slopes.size(); ++h) {
        if (!std::isfinite(spec.alibi_slopes[h])) {
          return absl::InvalidArgumentError(absl::StrCat(
              "alibi.slopes[", h, "]: expected a finite value, got ",
              spec.alibi_slopes[h]));
        }
      }
    }
  } else {
    if (spec.model == nullptr) {
      return absl::InvalidArgumentError(
          "relative.model: expected a loaded parameter set, got none");
    }
    const RelativeModelInfo& info = spec.model->info();
    if (info.heads != q.heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("query heads: model '", info.name, "' expects ",
                       info.heads, ", got ", q.heads));
    }
    if (info.head_dim != q.dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("query head_dim: model '", info.name, "' expects ",
                       info.head_dim, ", got ", q.dim));
    }
    const int64_t longest = std::max(q.seq, k.seq);
    if (longest > info.max_relative_positions) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence length: model '", info.name,
          "' has P = ", info.max_relative_positions,
          " relative positions, expected query and key lengths <= P, got ",
          longest));
    }
  }
  if (absl::Status s = CheckFinite("query", item.query); !s.ok()) return s;
  if (absl::Status s = CheckFinite("key", item.key); !s.ok()) return s;
  if (item.value.has_value() && spec.want_context) {
    if (absl::Status s = CheckFinite("value", *item.value); !s.ok()) return s;
  }
  return absl::OkStatus();
}

std::string BatchKey(const ScoreSpec& spec, const ScoreItem& item) {
  const Dims q = DimsOf(item.query.shape, spec.layout);
  const Dims k = DimsOf(item.key.shape, spec.layout);
  const int64_t dv =
      item.value.has_value() ? DimsOf(item.value->shape, spec.layout).dim : 0;
  std::string key =
      absl::StrCat(spec.bias == BiasKind::kAlibi ? "alibi" : "rel", "|",
                   spec.model != nullptr ? spec.model->id() : 0, "|", q.heads,
                   "|", q.dim, "|", dv, "|", q.seq, "|", k.seq, "|",
                   DTypeName(item.query.dtype), "|", LayoutName(spec.layout),
                   "|", spec.causal, "|", spec.want_logits, spec.want_probs,
                   spec.want_context, "|", DTypeName(spec.output_dtype), "|");
  if (spec.scale.has_value()) {
    const float scale = *spec.scale;
    key.append(reinterpret_cast<const char*>(&scale), sizeof(scale));
  }
  key += "|";
  key.append(reinterpret_cast<const char*>(spec.alibi_slopes.data()),
             spec.alibi_slopes.size() * sizeof(float));
  return key;
}

absl::StatusOr<std::unique_ptr<Scorer>> Scorer::Create(
    const ScorerOptions& options) {
  at::Device device(at::kCPU);
  try {
    device = at::Device(options.device);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device: expected cpu, cuda or cuda:N, got '", options.device, "'"));
  }
  if (device.is_cuda()) {
    const auto& hooks = at::detail::getCUDAHooks();
    if (!hooks.hasCUDA()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "device '", options.device,
          "' requested, but CUDA is not available: this LibTorch build ",
          "has no CUDA support or no GPU is visible; use --device cpu"));
    }
    const int count = hooks.getNumGPUs();
    if (!device.has_index()) device.set_index(0);  // "cuda" means cuda:0
    if (device.has_index() && device.index() >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", options.device, "' requested, but only ",
                       count, " CUDA device(s) are visible"));
    }
  } else if (!device.is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device: expected cpu, cuda or cuda:N, got '", options.device, "'"));
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
  return std::unique_ptr<Scorer>(new ScorerImpl(device));
}

}  // namespace attnscore::scoring
