#include "server/scoring/relative_model.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/zeros.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/scoring/row_loops.h"

namespace attnscore::scoring {
namespace {

std::string Shape(at::IntArrayRef sizes) {
  return absl::StrCat("[", absl::StrJoin(sizes, ","), "]");
}

// The three shapes agree: e [2P,H,D] with P >= 1, s [2P,H], u [H,D].
absl::Status CheckShapes(const std::string& source, const at::Tensor& e,
                         const at::Tensor& s, const at::Tensor& u) {
  if (e.dim() != 3 || e.size(0) < 2 || e.size(0) % 2 != 0 || e.size(1) < 1 ||
      e.size(2) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tensor '", kKeyPosEmbeddings, "' has shape ",
                     Shape(e.sizes()), ", expected [2P,H,D] with P >= 1"));
  }
  const int64_t two_p = e.size(0);
  const int64_t heads = e.size(1);
  const int64_t head_dim = e.size(2);
  if (!s.sizes().equals({two_p, heads})) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": tensor '", kKeyPosBias, "' has shape ", Shape(s.sizes()),
        ", expected [", two_p, ",", heads, "] (2P,H)"));
  }
  if (!u.sizes().equals({heads, head_dim})) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": tensor '", kQueryPosBias, "' has shape ", Shape(u.sizes()),
        ", expected [", heads, ",", head_dim, "] (H,D)"));
  }
  for (const at::Tensor* t : {&e, &s, &u}) {
    if (!at::isfinite(*t).all().item<bool>()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": a relative-position parameter holds NaN or Inf"));
    }
  }
  return absl::OkStatus();
}

// e [2P,H,D] as [H, ceil(2P/W), D, W], W = kPanelCols, zeros past 2P.
at::Tensor Panels(const at::Tensor& e) {
  const int64_t two_p = e.size(0), heads = e.size(1), dim = e.size(2);
  const int64_t panels = (two_p + kPanelCols - 1) / kPanelCols;
  at::Tensor padded = at::zeros({panels * kPanelCols, heads, dim}, e.options());
  padded.narrow(0, 0, two_p).copy_(e);
  // [P', W, H, D] -> [H, P', D, W]
  return padded.view({panels, kPanelCols, heads, dim})
      .permute({2, 0, 3, 1})
      .contiguous();
}

}  // namespace

AtenRelativeModel::AtenRelativeModel(RelativeModelInfo info,
                                     at::Tensor key_pos_embeddings,
                                     at::Tensor key_pos_bias,
                                     at::Tensor query_pos_bias)
    : RelativeModel(std::move(info)),
      key_pos_embeddings_(std::move(key_pos_embeddings)),
      key_pos_bias_(std::move(key_pos_bias)),
      query_pos_bias_(std::move(query_pos_bias)),
      // Only the CPU's blocked path reads them.
      key_pos_embeddings_panels_(key_pos_embeddings_.is_cpu()
                                     ? Panels(key_pos_embeddings_)
                                     : at::Tensor()),
      key_pos_bias_by_head_(key_pos_bias_.is_cpu()
                                ? key_pos_bias_.t().contiguous()
                                : at::Tensor()) {}

absl::StatusOr<std::shared_ptr<const AtenRelativeModel>>
AtenRelativeModel::Create(std::string name, std::string source,
                          const at::Tensor& key_pos_embeddings,
                          const at::Tensor& key_pos_bias,
                          const at::Tensor& query_pos_bias) {
  if (absl::Status s =
          CheckShapes(source, key_pos_embeddings, key_pos_bias, query_pos_bias);
      !s.ok()) {
    return s;
  }
  RelativeModelInfo info{std::move(name), std::move(source),
                         key_pos_embeddings.size(1), key_pos_embeddings.size(2),
                         key_pos_embeddings.size(0) / 2};
  // Not make_shared: the constructor is private.
  return std::shared_ptr<const AtenRelativeModel>(new AtenRelativeModel(
      std::move(info), key_pos_embeddings.to(at::kFloat).contiguous(),
      key_pos_bias.to(at::kFloat).contiguous(),
      query_pos_bias.to(at::kFloat).contiguous()));
}

const AtenRelativeModel* AsAten(const RelativeModel& model) {
  return dynamic_cast<const AtenRelativeModel*>(&model);
}

std::shared_ptr<const AtenRelativeModel> AsAten(
    const std::shared_ptr<const RelativeModel>& model) {
  return std::dynamic_pointer_cast<const AtenRelativeModel>(model);
}

}  // namespace attnscore::scoring
