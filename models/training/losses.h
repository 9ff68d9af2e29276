// The training losses of the paper (3.5a–d) and the sketched Jacobian loss (Prop. 2.3), the
// one place that defines them. Every term is a RELATIVE squared error per sample, as in the
// reference code (normalized_mse): plain squared errors weight samples by the size of their q
// and ∇q, and reached only about half the Jacobian accuracy in the project's comparison.
// Per sample:
//
//   L²                       ‖q − f‖² / ‖q‖²                                         (3.5a)
//   full H¹                  ‖J − ∇f‖²_F / ‖J‖²_F                                    (3.5b)
//   reduced H¹               ‖Σ_r − U_rᵀ∇f V_r‖²_F / ‖Σ_r‖²_F                        (3.5c)
//   reduced H¹, subsampled   (r/k) ‖Σ_k − U_kᵀ∇f V_k‖²_F / ‖Σ_r‖²_F                  (3.5d)
//   sketched H¹              (d_Q d_M / (s_Q s_M)) ‖Q_lᵀ(J − ∇f)Q_r‖²_F / ‖J‖²_F     (Prop. 2.3)
//
// and the loss of a batch is the mean over its samples of l2_weight·L² + h1_weight·(Jacobian
// term). J = ∇q(m), f = f_w(m), U_r Σ_r V_rᵀ is the per-sample SVD truncated to rank r, [k] a
// uniformly random k-subset of {1..r} used for both rows and columns (Prop. 2.2, "dependent"
// samples, redrawn per sample and epoch), and Q_l [d_Q, s_Q], Q_r [d_M, s_M] orthonormal
// sketches from Gaussian matrices, redrawn each epoch.
//
// The factors r/k and d_Q d_M/(s_Q s_M) make the random terms exact in expectation over the
// draws: the sketched term is unbiased for the full H¹ term, and the subsampled one equals
// (‖diag E‖² + (k−1)/(r−1)‖offdiag E‖²)/‖Σ_r‖² with E = Σ_r − U_rᵀ∇fV_r, i.e. (2.11) scaled
// by r/k, which is the reduced H¹ term for k = r.
//
// For reduced-basis (DIPNet) models f = U φ(Vᵀm) + b everything is computed between the bases
// (Prop. 2.4): with z = Vᵀm, y = Uᵀ(q − b) and K = UᵀJV precomputed once per dataset,
//   ‖q − f‖² = ‖(I − UUᵀ)(q − b)‖² + ‖y − φ(z)‖²,
//   ‖J − U J_φ Vᵀ‖² = ‖J‖² − ‖K‖² + ‖K − J_φ‖²,
// so an epoch costs O(r_Q·r_M) per sample beyond the network itself, independent of d_M, d_Q.
// Generic models need Jacobian actions: d_Q for full H¹, r (or k, or s_Q) for the others.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "models/architectures/network.h"
#include "models/training/dataset.h"
#include "models/training/prepared.h"

namespace dino::training {

enum class JacobianLoss {
  kNone,                 // L² only (3.5a).
  kFullH1,               // (3.5b)
  kReducedH1,            // (3.5c)
  kReducedH1Subsampled,  // (3.5d) with dependent row/column samples (Prop. 2.2), "MS".
  kSketchedH1,           // Full H¹ through random sketches (Prop. 2.3).
};

// "l2", "h1", "reduced_h1", "reduced_h1_ms", "sketched_h1".
const char* JacobianLossName(JacobianLoss loss);
// Inverse of JacobianLossName; throws std::invalid_argument listing the valid names.
JacobianLoss ParseJacobianLoss(const std::string& name);

struct LossConfig {
  JacobianLoss jacobian_loss = JacobianLoss::kFullH1;
  double l2_weight = 1.0;  // Equal weights, as in the paper's §3.2.
  double h1_weight = 1.0;
  // r of the reduced losses: 0 means all the data has (the truncated SVD's rank, or
  // min(d_Q, d_M) for full Jacobians).
  int64_t svd_rank = 0;
  // k of the subsampled loss (the reference code drew 10 of 50).
  int64_t subsample_size = 10;
  // s of the sketched loss, on both sides; a side with s ≥ its dimension is not sketched.
  int64_t sketch_rank = 50;

  // Throws std::invalid_argument on negative weights, both weights zero, or sizes < 1.
  void Validate() const;
  nlohmann::json ToJson() const;
};

// ---- The random parts of the losses, exposed for their tests -------------------------------

// `count` independent uniformly random k-subsets of {0, …, r−1}: int64 [count, k].
torch::Tensor DrawSubsets(int64_t count, int64_t r, int64_t k, at::Generator& generator);

// ‖E_{[k],[k]}‖²_F per sample: the dependent subsample of rows and columns `subsets` [B, k]
// of e [B, r, r] → [B].
torch::Tensor SubsampledSquaredNorm(const torch::Tensor& e, const torch::Tensor& subsets);

// Its expectation over uniform k-subsets (2.11): k/r ‖diag E‖² + k(k−1)/(r(r−1)) ‖offdiag E‖²
// per sample [B].
torch::Tensor SubsampledSquaredNormExpectation(const torch::Tensor& e, int64_t k);

// An orthonormal sketch [dim, rank]: Q of the QR factorisation of a Gaussian matrix, whose
// range is uniformly distributed, so E[Q Qᵀ] = (rank/dim) I. The identity when rank ≥ dim.
torch::Tensor DrawOrthonormalSketch(int64_t dim, int64_t rank, at::Generator& generator,
                                    const torch::TensorOptions& options);

// (d_Q d_M / (s_Q s_M)): the factor that makes ‖Q_lᵀ A Q_r‖² unbiased for ‖A‖²_F.
double SketchScale(int64_t output_dim, int64_t output_sketch, int64_t input_dim,
                   int64_t input_sketch);

// SketchScale · ‖Q_lᵀ A Q_r‖²_F for a [.., d_Q, d_M], sketches [.., d_Q, s_Q], [.., d_M, s_M]
// (batch dimensions broadcast) → [..].
torch::Tensor SketchedSquaredNorm(const torch::Tensor& a, const torch::Tensor& q_left,
                                  const torch::Tensor& q_right);

// ---- Losses on a dataset -------------------------------------------------------------------

// Per-sample terms and the batch loss.
struct LossTerms {
  torch::Tensor l2;        // [B] relative L² terms.
  torch::Tensor jacobian;  // [B] Jacobian terms; undefined for JacobianLoss::kNone.
  torch::Tensor total;     // Scalar: mean of l2_weight·l2 + h1_weight·jacobian.
};

// Plain numbers for reports: means over samples.
struct LossValues {
  double total = 0.0;
  double l2 = 0.0;
  double jacobian = 0.0;
  nlohmann::json ToJson() const;
};

// A loss bound to a model and a dataset. The constructor does the once-per-dataset work (the
// projections of the data onto a DIPNet's bases, per-sample SVDs of full Jacobians, …) and
// draws the first random subsets/sketches from a generator seeded with 0.
class Loss {
 public:
  // Validates the data and the configuration against the model; throws std::invalid_argument
  // when the data lack what the loss needs (e.g. reduced H¹ from reduced-basis data, which
  // does not determine the per-sample SVD; any Jacobian loss of a generic model on data in a
  // DIPNet's bases).
  Loss(const models::Network& network, const Dataset& data, const LossConfig& config);

  // Redraws the subsets (kReducedH1Subsampled) and sketches (kSketchedH1); the trainer calls
  // it once per epoch. A no-op for the deterministic losses. New sketches cost one pass over
  // the Jacobian data (the sketching's "online overhead" of the paper's §2.2).
  void Resample(at::Generator& generator);

  // The loss on the samples `indices` (int64 [B]). With create_graph the result is
  // differentiable with respect to the model's weights; without, it is detached.
  LossTerms Evaluate(const torch::Tensor& indices, bool create_graph = true) const;

  // Means over all samples, in chunks, without gradients.
  LossValues EvaluateAll(int64_t chunk = 256) const;

  int64_t size() const { return prepared_.size; }
  const LossConfig& config() const { return config_; }
  const models::Network& network() const { return network_; }

 private:
  // Q_lᵀ J Q_r of every sample [n, s_Q, s_M], from full J or the truncated SVD.
  torch::Tensor SketchData() const;

  models::Network network_;
  LossConfig config_;
  PreparedData prepared_;
  torch::Tensor subsets_;  // [n, k] (kReducedH1Subsampled), redrawn by Resample.
  // kSketchedH1, redrawn by Resample: Q_l [d_Q, s_Q], Q_r [d_M, s_M] and, for DIPNets, Q_lᵀU
  // [s_Q, r_Q] and VᵀQ_r [r_M, s_M].
  torch::Tensor sketch_left_, sketch_right_;
  torch::Tensor sketch_left_reduced_, sketch_right_reduced_;
  torch::Tensor sketched_data_;  // Q_lᵀ J Q_r [n, s_Q, s_M]
  double sketch_scale_ = 1.0;
};

}  // namespace dino::training
