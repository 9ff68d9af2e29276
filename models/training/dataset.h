// Training data of a DINO in memory (paper §2): parameters m, outputs q = q(m) and Jacobian
// information ∇q(m), in one of the forms the paper trains on. The library does no file or
// network I/O: whoever reads NumPy files, a repository or a stream builds a Dataset.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace dino::training {

// How a dataset carries ∇q. Exactly one form (or none) per dataset.
enum class JacobianForm {
  kNone,          // Outputs only: enough for L² training (3.5a).
  kFull,          // J [n, d_Q, d_M].
  kTruncatedSvd,  // J ≈ U_r diag(σ) V_rᵀ per sample (2.5a), from O(r) Jacobian actions.
  kReduced,       // Uᵀ J V [n, r_Q, r_M] in a DIPNet's own bases (§2.3), the cheapest form.
};

// "none", "full", "truncated_svd", "reduced".
const char* JacobianFormName(JacobianForm form);

struct Dataset {
  torch::Tensor m;  // [n, d_M]
  torch::Tensor q;  // [n, d_Q]

  // At most one of the following Jacobian forms.
  torch::Tensor jacobian;  // Full J [n, d_Q, d_M].

  torch::Tensor svd_u;      // U_r [n, d_Q, r], orthonormal columns per sample.
  torch::Tensor svd_sigma;  // σ [n, r], the singular values (any order).
  torch::Tensor svd_v;      // V_r [n, d_M, r], orthonormal columns per sample.

  // Uᵀ J V [n, r_Q, r_M], where U = output_basis and V = input_basis of the DIPNet that is
  // trained or evaluated on it. The data cannot say which bases it was computed with: using it
  // with another model is the caller's error and goes undetected.
  torch::Tensor reduced_jacobian;
  // Optional with reduced_jacobian: ‖J‖²_F [n]. With it the full H¹ loss and metric are exact
  // (Prop. 2.4); without it the part of J outside the bases is unknown.
  torch::Tensor jacobian_norm_sq;

  int64_t size() const { return m.defined() ? m.size(0) : 0; }
  int64_t input_dim() const { return m.size(1); }
  int64_t output_dim() const { return q.size(1); }
  // The defined fields with their names ("m", "q", "jacobian", "svd_u", "svd_sigma",
  // "svd_v", "reduced_jacobian", "jacobian_norm_sq"), in that order.
  std::vector<std::pair<const torch::Tensor*, const char*>> Fields() const;
  // Throws std::invalid_argument when more than one form is present.
  JacobianForm jacobian_form() const;
  // Rank r of the truncated SVD; [r_Q, r_M] of the reduced form; 0 otherwise.
  int64_t svd_rank() const { return svd_sigma.defined() ? svd_sigma.size(1) : 0; }

  // Checks shapes, a common floating dtype and device, finite values and, for the truncated
  // SVD, orthonormal factors. Throws std::invalid_argument naming the field and, for values,
  // the first offending sample.
  void Validate() const;

  // The samples `indices` (int64 [k]) of every field, in that order.
  Dataset Select(const torch::Tensor& indices) const;
  // Every field on `device` in `dtype` (no copy when it already is).
  Dataset To(torch::Device device, torch::Dtype dtype) const;

  // {"samples", "input_dim", "output_dim", "jacobian_form", and "svd_rank" or
  // "reduced_shape" with "jacobian_norms" for the reduced form}: for model metadata.
  nlohmann::json Summary() const;
};

// The samples of `parts` one after the other (each must carry the same fields; shapes past the
// sample axis must agree). Throws std::invalid_argument otherwise.
Dataset ConcatDatasets(const std::vector<Dataset>& parts);

// A seeded random split: `validation_size` samples for validation, the rest for training
// (copies of the selected samples; with validation_size 0 the training set is `data` itself).
struct DatasetSplit {
  Dataset train;
  Dataset validation;  // size() == 0 when validation_size == 0.
};
DatasetSplit SplitDataset(const Dataset& data, int64_t validation_size, uint64_t seed);

// ---- Jacobian data in the forms the losses and metrics need --------------------------------
// All of them work in chunks of `chunk` samples so that peak memory stays at the size of the
// result plus one chunk of full Jacobians.

// ‖J‖²_F per sample [n]; undefined for the reduced form without jacobian_norm_sq and for kNone.
torch::Tensor JacobianNormSq(const Dataset& data);

// Uᵀ J V per sample [n, r_Q, r_M] for bases U [d_Q, r_Q], V [d_M, r_M] with orthonormal
// columns: from J directly, or (UᵀU_r) diag(σ) (V_rᵀV) from the truncated SVD, or the reduced
// form itself (whose shape must be [r_Q, r_M]). Throws std::invalid_argument for kNone.
torch::Tensor ProjectJacobian(const Dataset& data, const torch::Tensor& output_basis,
                              const torch::Tensor& input_basis, int64_t chunk = 64);

// The per-sample SVD truncated to its `rank` largest singular values, σ descending.
struct SampleSvd {
  torch::Tensor u;      // [n, d_Q, rank]
  torch::Tensor sigma;  // [n, rank]
  torch::Tensor v;      // [n, d_M, rank]
};
// From full Jacobians (one batched SVD per chunk) or by truncating the data's SVD. `rank` 0
// means all there is: min(d_Q, d_M) for full Jacobians, r for the SVD form. Throws
// std::invalid_argument for the reduced form (it does not determine the SVD of J), kNone, or a
// rank above what the data has.
SampleSvd TruncatedSampleSvd(const Dataset& data, int64_t rank, int64_t chunk = 64);

// The full Jacobians of the samples `indices` [k, d_Q, d_M]: J itself or U_r diag(σ) V_rᵀ.
// Throws std::invalid_argument for the reduced form and kNone.
torch::Tensor FullJacobianRows(const Dataset& data, const torch::Tensor& indices);

}  // namespace dino::training
