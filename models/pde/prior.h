// Gaussian prior ν = N(m̄, C) of the parameter field (paper §3.1): the Matérn-type
// BiLaplacian prior C = 𝒜⁻², 𝒜 = δI − γ∇·(Θ∇) with homogeneous Neumann boundary conditions,
// discretized with P1 elements as in hIPPYlib's BiLaplacianPrior (robin_bc = False).
//
// Discretization. A = δM + γK_Θ, with M the consistent mass matrix and K_Θ the stiffness
// matrix of Θ (weak form of 𝒜, Neumann conditions natural). A sample is
//     m = m̄ + A⁻¹ L w,   w ~ N(0, I_{noise_dim}),
// where L is a factor of (an approximation of) the mass matrix, L Lᵀ = M_w. Because
// Cov(L w) = M_w, the samples' covariance is exactly
//     C = A⁻¹ M_w A⁻¹,
// the discretization of 𝒜⁻² whose inverse (the precision) is R = A M_w⁻¹ A. Two factors:
//  * NoiseFactor::kQuadrature (default, hIPPYlib's choice): L from the degree-2 quadrature
//    space, L_{i,(e,q)} = √(w_q|T|) φ_i(x_{e,q}), with L Lᵀ = M (consistent mass) exactly;
//    noise_dim = 3·num_elements. C = A⁻¹ M A⁻¹.
//  * NoiseFactor::kLumped: L = diag(√M_L) with M_L the lumped (row-sum) mass;
//    noise_dim = num_nodes. C = A⁻¹ M_L A⁻¹.
//
// Operators for bases (KLE etc.): ApplyA/SolveA (A, A⁻¹), ApplyMass/SolveMass (consistent
// M, M⁻¹), ApplyCovariance (C), ApplyPrecision (C⁻¹). All take a block of column vectors.
//
// A square factor of the covariance, for samplers that work in whitened coordinates
// (m = m̄ + G ξ, ξ ~ N(0, I_dim)): G = A⁻¹ F with F Fᵀ = M_w, so G Gᵀ = C exactly. F is the
// sparse Cholesky factor of M_w: F = Pᵀ L from P M Pᵀ = L Lᵀ (the AMD-ordered factorization
// the prior already holds) for the quadrature noise, diag(√M_L) for the lumped one. G is not
// symmetric (the symmetric square root of C would need a dense eigendecomposition, O(dim³));
// every G product costs one sparse solve with A and one triangular product or solve.
// ApplyCovarianceFactor (G), ApplyCovarianceFactorTranspose (Gᵀ), SolveCovarianceFactor (G⁻¹:
// whitening, G⁻ᵀG⁻¹ = C⁻¹).
//
// The factorizations make the class move-only. Const methods are safe to call concurrently.
#ifndef DINO_MODELS_PDE_PRIOR_H_
#define DINO_MODELS_PDE_PRIOR_H_

#include <Eigen/Core>
#include <Eigen/SparseCore>
#include <memory>

#include "models/pde/fem.h"
#include "models/pde/mesh.h"
#include "models/pde/random.h"

namespace dino::pde {

enum class NoiseFactor { kQuadrature, kLumped };

struct PriorConfig {
  double delta = 0.5;
  double gamma = 0.1;
  // Θ in 𝒜 = δI − γ∇·(Θ∇). The paper (and the default) is isotropic; the authors' code used
  // AnisotropyTensor(2.0, 0.5, π/4), see README.md.
  Eigen::Matrix2d anisotropy = Eigen::Matrix2d::Identity();
  double mean = 0.0;  // Constant prior mean m̄.
  NoiseFactor noise_factor = NoiseFactor::kQuadrature;
};

// Paper §3.1.1: δ = 0.5, γ = 0.1, isotropic, zero mean.
PriorConfig PoissonPrior();
// Paper §3.1.2: δ = 1.0, γ = 0.1, isotropic, zero mean.
PriorConfig ReactionDiffusionPrior();

// hIPPYlib's AnisTensor2D: Θ = [[θ0 sin²α + θ1 cos²α, (θ0 − θ1) sin α cos α],
//                               [(θ0 − θ1) sin α cos α, θ0 cos²α + θ1 sin²α]].
Eigen::Matrix2d AnisotropyTensor(double theta0, double theta1, double alpha);

class BiLaplacianPrior {
 public:
  // Throws std::invalid_argument unless δ > 0, γ > 0, the mean is finite and Θ is SPD.
  BiLaplacianPrior(const StructuredTriMesh& mesh, const PriorConfig& config);
  ~BiLaplacianPrior();
  BiLaplacianPrior(BiLaplacianPrior&&) noexcept;
  BiLaplacianPrior& operator=(BiLaplacianPrior&&) noexcept;

  const StructuredTriMesh& mesh() const { return mesh_; }
  const PriorConfig& config() const { return config_; }
  int dim() const { return mesh_.num_nodes(); }
  Eigen::Index noise_dim() const { return noise_factor_.cols(); }

  const SparseMatrix& mass() const { return mass_; }                  // M
  const SparseMatrix& stiffness() const { return stiffness_; }        // K_Θ
  const SparseMatrix& operator_matrix() const { return a_; }          // A = δM + γK_Θ
  const SparseMatrix& noise_factor() const { return noise_factor_; }  // L
  Eigen::VectorXd MeanVector() const;

  // Each takes a [dim × k] block (k ≥ 1) and returns [dim × k]; std::invalid_argument on a
  // row-count mismatch.
  Eigen::MatrixXd ApplyA(const Eigen::MatrixXd& x) const;
  Eigen::MatrixXd SolveA(const Eigen::MatrixXd& x) const;
  Eigen::MatrixXd ApplyMass(const Eigen::MatrixXd& x) const;
  Eigen::MatrixXd SolveMass(const Eigen::MatrixXd& x) const;
  Eigen::MatrixXd ApplyCovariance(const Eigen::MatrixXd& x) const;        // A⁻¹ M_w A⁻¹ x
  Eigen::MatrixXd ApplyPrecision(const Eigen::MatrixXd& x) const;         // A M_w⁻¹ A x
  Eigen::MatrixXd ApplyCovarianceFactor(const Eigen::MatrixXd& x) const;  // G x = A⁻¹ F x
  Eigen::MatrixXd ApplyCovarianceFactorTranspose(const Eigen::MatrixXd& x) const;  // Fᵀ A⁻¹ x
  Eigen::MatrixXd SolveCovarianceFactor(const Eigen::MatrixXd& x) const;           // F⁻¹ A x

  // m̄ + A⁻¹ L w for a given noise vector w of length noise_dim().
  Eigen::VectorXd SampleFromNoise(const Eigen::VectorXd& noise) const;
  // Draws w with rng.Vector(noise_dim()) and returns SampleFromNoise(w).
  Eigen::VectorXd Sample(NormalRng& rng) const;

  // Dense C = A⁻¹ M_w A⁻¹, for tests and small meshes: O(dim²) memory, so dim() must not
  // exceed 10,000 (std::invalid_argument otherwise).
  Eigen::MatrixXd CovarianceMatrix() const;

 private:
  struct Solvers;
  void CheckRows(const Eigen::MatrixXd& x, const char* method) const;
  // M_w x and M_w⁻¹ x.
  Eigen::MatrixXd ApplyNoiseMass(const Eigen::MatrixXd& x) const;
  Eigen::MatrixXd SolveNoiseMass(const Eigen::MatrixXd& x) const;

  StructuredTriMesh mesh_;
  PriorConfig config_;
  SparseMatrix mass_;
  SparseMatrix stiffness_;
  SparseMatrix a_;
  SparseMatrix noise_factor_;
  Eigen::VectorXd lumped_mass_;
  std::unique_ptr<Solvers> solvers_;
};

}  // namespace dino::pde

#endif  // DINO_MODELS_PDE_PRIOR_H_
