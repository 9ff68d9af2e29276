// A summary of the inputs a reduced-basis model (f(m) = U φ(Vᵀm) + b) was trained on, and the
// trust score it gives any input m: how far m lies from those training inputs, in the two
// ways that matter to the model (docs/model-contract.md, "Trust score"):
//  * D(m), the Mahalanobis distance of the reduced coordinates z = Vᵀm from the training z's
//    (mean μ, covariance Σ): φ was only fitted where the training z's are, and
//  * ρ(m) = ‖m − VVᵀm‖ / ‖m‖, the share of m the input basis does not see: f ignores it,
//    which was harmless only as far as the training inputs had it too (V has orthonormal
//    columns, which the model contract requires, so ‖m − VVᵀm‖² = ‖m‖² − ‖z‖²).
// Each part is scaled by its own 99.9 % quantile on the training set, the score is the larger
// of the two (a one-sided residual part: a smaller unseen share is never a reason to distrust
// f), and divided by the 99.9 % quantile of that maximum on the training set:
//     s(m) = max(D(m) / D₉₉₉, (ρ(m) − ρ̄) / (ρ₉₉₉ − ρ̄)) / s₉₉₉,
// so that an input is out of distribution exactly when s(m) > 1. The training quantiles of D
// are leave-one-out (each sample scored against μ and Σ of the others, in closed form): an
// in-sample Mahalanobis distance is biased low by the fit, so a threshold from in-sample
// distances would flag a fresh sample from the training distribution more often than 0.1 %.
//
// Cost per input, after the projection z = Vᵀm that every request computes anyway: ‖m‖²
// (d_M multiply-adds) and one r_M × r_M product, about 1 % of the projection's d_M·r_M.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

namespace dino::models {

struct TrainingInputSummary {
  // The quantile of the training scores that the thresholds are set at.
  static constexpr double kQuantile = 0.999;

  int64_t samples = 0;      // Training inputs summarised, N.
  torch::Tensor mean;       // μ [r_M], float64.
  torch::Tensor whitening;  // W [r_M, r_M], float64, WᵀW = Σ⁻¹: D(m) = ‖W(z − μ)‖.
  // Whether an input with score s is out of distribution.
  static bool OutOfDistribution(double score) { return score > 1.0; }
  double distance_scale = 0.0;  // D₉₉₉ (leave-one-out).
  double residual_mean = 0.0;   // ρ̄.
  // ρ₉₉₉ − ρ̄; 0 when the training residuals do not vary (V spans every training input):
  // then the residual part is left out, having no scale to measure an excess by.
  double residual_scale = 0.0;
  double threshold = 0.0;  // s₉₉₉ of the unnormalised maximum.

  int64_t input_rank() const { return mean.defined() ? mean.size(0) : 0; }

  // The summary of training inputs m [N, d_M] for the input basis V [d_M, r_M] (orthonormal
  // columns). Throws std::invalid_argument unless N > r_M + 2 (Σ must be invertible and the
  // leave-one-out distances defined) and the shapes agree.
  static TrainingInputSummary Fit(const torch::Tensor& input_basis, const torch::Tensor& m);

  // s(m) of each row of m [P, d_M] with z = mV [P, r_M], both contiguous float32 or float64
  // (the same dtype): plain loops in double precision, because for one point the dispatch of
  // a dozen LibTorch operations on vectors would cost more than the arithmetic. Throws
  // std::invalid_argument on shapes or dtypes that do not fit.
  std::vector<double> Score(const torch::Tensor& m, const torch::Tensor& z) const;

  // The stored form (the model file's training_inputs.json, model_file.h): every number
  // exact (JSON doubles round-trip).
  nlohmann::json ToJson() const;
  // Throws std::invalid_argument naming the field that is missing, malformed or inconsistent
  // with `input_rank` (r_M of the model it belongs to).
  static TrainingInputSummary FromJson(const nlohmann::json& json, int64_t input_rank);

 private:
  // μ and Wᵀ (row j is column j of W) as plain arrays for Score; set by Fit and FromJson.
  void CacheForScoring();
  std::vector<double> mean_values_, whitening_columns_;
};

// The value at rank ⌈q·(n − 1)⌉ of the sorted values (numpy.quantile(…, method="higher")):
// an actual sample, so that "above the q-quantile" is never true of more than a (1 − q)
// share of the samples.
double UpperQuantile(const torch::Tensor& values, double q);

}  // namespace dino::models
