// The once-per-dataset work shared by the losses and the metrics: a dataset seen by one
// model. For a reduced-basis (DIPNet) model f = U φ(Vᵀm) + b everything lands between the
// bases (Prop. 2.4):
//   z = Vᵀm,  y = Uᵀ(q − b),  ‖q − f‖² = ‖(I − UUᵀ)(q − b)‖² + ‖y − φ(z)‖²,
//   K = UᵀJV, ‖J − U J_φ Vᵀ‖² = (‖J‖² − ‖K‖²) + ‖K − J_φ‖²,
//   U_rᵀ(U J_φ Vᵀ)V_r = (U_rᵀU) J_φ (VᵀV_r),
// so that evaluating a loss or a metric afterwards costs O(r_Q·r_M) per sample beyond the
// network itself. Generic models keep the data and, where asked, the per-sample SVD.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "models/architectures/network.h"
#include "models/training/dataset.h"

namespace dino::training {

struct PreparationRequest {
  // ‖J‖² per sample.
  bool jacobian_norms = false;
  // Reduced-basis models: K = UᵀJV and ‖J‖² − ‖K‖² (implies jacobian_norms).
  bool jacobian_projection = false;
  // The per-sample SVD of J truncated to svd_rank (0: all the data has).
  bool svd = false;
  int64_t svd_rank = 0;
  // Keep the data's Jacobian fields for reduced-basis models too (the sketched loss reads J
  // itself). Generic models always keep the whole dataset.
  bool keep_jacobian = false;
};

struct PreparedData {
  int64_t size = 0;
  // In the model's dtype and device. Generic models: all of it. Reduced-basis models: only
  // the Jacobian fields, and only with keep_jacobian.
  Dataset data;
  torch::Tensor q_norm_sq;  // ‖q‖² [n], all positive.

  // Reduced-basis models.
  torch::Tensor z;        // Vᵀm [n, r_M]
  torch::Tensor y;        // Uᵀ(q − b) [n, r_Q]
  torch::Tensor l2_perp;  // ‖(I − UUᵀ)(q − b)‖² [n]
  torch::Tensor k;        // UᵀJV [n, r_Q, r_M] (with jacobian_projection)
  torch::Tensor j_perp;   // ‖J‖² − ‖UᵀJV‖² ≥ 0 [n] (with jacobian_projection)

  // With jacobian_norms: ‖J‖² [n], all positive. For reduced data without jacobian_norm_sq, J is
  // taken to lie in the bases: j_norm_sq = ‖K‖², j_perp = 0 and exact_jacobian_norms false.
  torch::Tensor j_norm_sq;
  bool exact_jacobian_norms = true;

  // With svd: the per-sample SVD U_r Σ_r V_rᵀ, σ descending.
  int64_t rank = 0;
  torch::Tensor sigma;      // [n, r]
  torch::Tensor sigma_sq;   // ‖Σ_r‖² [n], all positive.
  torch::Tensor svd_left;   // Generic: U_r [n, d_Q, r]. Reduced-basis: U_rᵀU [n, r, r_Q].
  torch::Tensor svd_right;  // Generic: V_r [n, d_M, r]. Reduced-basis: VᵀV_r [n, r_M, r].
};

// Validates the data and checks that the model fits them. Throws std::invalid_argument
// naming the first sample whose normaliser (‖q‖, ‖J‖, ‖Σ_r‖) is zero, or when the data
// cannot provide what is requested (the SVD of reduced data, Jacobians from outputs only).
PreparedData Prepare(const models::Network& network, const Dataset& data,
                     const PreparationRequest& request);

// Throws std::invalid_argument naming the first sample of `data` whose ‖q‖ is zero, and, with
// `jacobian`, whose ‖J‖ (‖UᵀJV‖ for reduced data without norms) is zero: their relative
// errors are undefined.
void CheckNormalizers(const Dataset& data, bool jacobian);

}  // namespace dino::training
