// One training datum of the data generator (paper §2, (2.3)): m ~ ν, q(m) and the Jacobian
// ∇q(m), either in full or as its randomized truncated SVD (U_r, σ_r, V_r) for the reduced
// H¹ losses (3.5c–d).
#ifndef DINO_MODELS_PDE_SAMPLE_H_
#define DINO_MODELS_PDE_SAMPLE_H_

#include <Eigen/Core>
#include <cstdint>

#include "models/pde/model.h"
#include "models/pde/prior.h"
#include "models/pde/randomized_svd.h"

namespace dino::pde {

enum class JacobianMode {
  kNone,           // q only.
  kFull,           // ∇q [d_Q × d_M] from d_Q adjoint solves.
  kRandomizedSvd,  // Truncated SVD from O(r) Jacobian actions (RandomizedSvd).
  kExactSvd,       // Truncated SVD of the full ∇q (d_Q adjoint solves + a dense SVD).
};

struct JacobianOptions {
  JacobianMode mode = JacobianMode::kFull;
  // kRandomizedSvd uses all fields, kExactSvd only the rank.
  RandomizedSvdOptions svd;
};

struct Sample {
  std::uint64_t index = 0;
  Eigen::VectorXd parameter;    // m [d_M]
  Eigen::VectorXd observables;  // q [d_Q]
  Eigen::MatrixXd jacobian;     // [d_Q × d_M] for kFull, empty otherwise.
  TruncatedSvd jacobian_svd;    // For the SVD modes, empty otherwise.
  SolveReport report;
};

// Sample `index` of the data set with base seed `seed`. Its randomness comes from two
// NormalRng streams of its own, so any subset of samples can be generated independently (in
// any order, on any process) and reproduces the same data:
//   prior noise:     NormalRng(seed, 2·index),
//   sketch Ω (SVD):  NormalRng(seed, 2·index + 1).
// Throws std::invalid_argument if the prior and the model live on different meshes, and
// whatever Evaluate / RandomizedSvd throw.
Sample GenerateSample(LogDiffusionModel& model, const BiLaplacianPrior& prior, std::uint64_t seed,
                      std::uint64_t index, const JacobianOptions& options);

}  // namespace dino::pde

#endif  // DINO_MODELS_PDE_SAMPLE_H_
