// The generalization metrics of the paper (3.6a–c), for any model that follows the contract
// (DIPNet or generic) on any dataset:
//
//   L² accuracy               1 − E[ ‖q − f‖ / ‖q‖ ]                          (3.6a)
//   H¹ semi-norm accuracy     1 − E[ ‖∇q − ∇f‖_F / ‖∇q‖_F ]                   (3.6b)
//   reduced H¹ accuracy       1 − E[ ‖Σ_r − U_rᵀ∇f V_r‖_F / ‖Σ_r‖_F ]         (3.6c)
//
// with E the mean over the dataset's samples and U_r Σ_r V_rᵀ the per-sample SVD of ∇q
// truncated to rank r. The errors are not squared, as the paper writes them. The reference
// code's Keras metrics reported 1 − sqrt(E[relative error²]) instead; those are given too
// (the *_rms fields) for comparison with the paper's figures.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>

#include "models/architectures/network.h"
#include "models/training/dataset.h"
#include "models/training/prepared.h"

namespace dino::training {

struct MetricsOptions {
  // r of (3.6c): 0 means all the data has (the truncated SVD's rank, or min(d_Q, d_M) for
  // full Jacobians).
  int64_t reduced_rank = 0;
  // Samples per batched evaluation: bounds memory (a generic model's full Jacobian costs
  // chunk·d_Q·d_M numbers).
  int64_t chunk = 64;
};

struct Accuracies {
  int64_t samples = 0;
  double l2 = 0.0;                       // (3.6a)
  double l2_rms = 0.0;                   // 1 − sqrt(E[‖q − f‖²/‖q‖²])
  std::optional<double> h1;              // (3.6b), when the data determine ‖∇q − ∇f‖_F:
  std::optional<double> h1_rms;          //   full or SVD Jacobians; reduced ones with their norms
                                         //   for a DIPNet (Prop. 2.4).
  std::optional<double> reduced_h1;      // (3.6c), when the data determine the per-sample SVD:
  std::optional<double> reduced_h1_rms;  // full or SVD Jacobians.
  int64_t reduced_rank = 0;              // The r used for reduced_h1.
  // Reduced-basis models: the ceilings of their bases (above); basis_h1 when h1 is known
  // exactly (full or SVD Jacobians, or reduced ones with their norms).
  std::optional<double> basis_l2;
  std::optional<double> basis_h1;

  // {"samples", "l2_accuracy", "l2_accuracy_rms", and where available "h1_accuracy",
  // "h1_accuracy_rms", "reduced_h1_accuracy", "reduced_h1_accuracy_rms", "reduced_rank",
  // "basis_l2_accuracy", "basis_h1_accuracy"}.
  nlohmann::json ToJson() const;
};

// The metrics of one model on one dataset, evaluated repeatedly (e.g. after every epoch):
// the constructor does the once-per-dataset work (prepared.h), after which an evaluation of
// a DIPNet costs O(r_Q·r_M) per sample beyond its reduced network, whatever d_M and d_Q.
// Generic models need Jacobian products: d_Q (H¹) and r (reduced H¹) reverse passes, and
// keep the data and, for the reduced metric, the per-sample SVD factors (for full Jacobians
// as large as J itself).
class AccuracyEvaluator {
 public:
  // Throws std::invalid_argument on invalid data, data the model does not fit, an invalid
  // reduced_rank, or a sample whose normaliser (‖q‖, ‖∇q‖, ‖Σ_r‖) is zero.
  AccuracyEvaluator(const models::Network& network, const Dataset& data,
                    const MetricsOptions& options = {});

  // The metrics for the model's current weights, without gradients of the weights.
  Accuracies Evaluate() const;

 private:
  models::Network network_;
  MetricsOptions options_;
  bool has_h1_ = false;
  bool has_reduced_ = false;
  PreparedData prepared_;
};

// AccuracyEvaluator(Network(module), data, options).Evaluate().
Accuracies EvaluateAccuracies(const torch::jit::Module& module, const Dataset& data,
                              const MetricsOptions& options = {});

}  // namespace dino::training
