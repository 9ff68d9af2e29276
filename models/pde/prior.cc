#include "models/pde/prior.h"

#include <Eigen/SparseCholesky>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

namespace dino::pde {

struct BiLaplacianPrior::Solvers {
  Eigen::SimplicialLLT<SparseMatrix> a;
  Eigen::SimplicialLLT<SparseMatrix> mass;
};

PriorConfig PoissonPrior() {
  PriorConfig config;
  config.delta = 0.5;
  config.gamma = 0.1;
  return config;
}

PriorConfig ReactionDiffusionPrior() {
  PriorConfig config;
  config.delta = 1.0;
  config.gamma = 0.1;
  return config;
}

Eigen::Matrix2d AnisotropyTensor(double theta0, double theta1, double alpha) {
  const double s = std::sin(alpha);
  const double c = std::cos(alpha);
  Eigen::Matrix2d tensor;
  tensor(0, 0) = theta0 * s * s + theta1 * c * c;
  tensor(0, 1) = (theta0 - theta1) * s * c;
  tensor(1, 0) = tensor(0, 1);
  tensor(1, 1) = theta0 * c * c + theta1 * s * s;
  return tensor;
}

BiLaplacianPrior::BiLaplacianPrior(const StructuredTriMesh& mesh, const PriorConfig& config)
    : mesh_(mesh), config_(config), solvers_(std::make_unique<Solvers>()) {
  if (!(std::isfinite(config.delta) && config.delta > 0.0) ||
      !(std::isfinite(config.gamma) && config.gamma > 0.0)) {
    std::ostringstream msg;
    msg << "BiLaplacianPrior: delta and gamma must be finite and positive, got delta = "
        << config.delta << ", gamma = " << config.gamma;
    throw std::invalid_argument(msg.str());
  }
  if (!std::isfinite(config.mean)) {
    throw std::invalid_argument("BiLaplacianPrior: the prior mean must be finite");
  }
  mass_ = AssembleMass(mesh_);
  try {
    stiffness_ = AssembleStiffness(mesh_, config.anisotropy);
  } catch (const std::invalid_argument& error) {
    throw std::invalid_argument(std::string("BiLaplacianPrior: anisotropy: ") + error.what());
  }
  a_ = config.delta * mass_ + config.gamma * stiffness_;
  lumped_mass_ = LumpedMass(mesh_);
  if (config.noise_factor == NoiseFactor::kQuadrature) {
    noise_factor_ = AssembleQuadratureMassFactor(mesh_);
  } else {
    noise_factor_.resize(dim(), dim());
    noise_factor_.reserve(Eigen::VectorXi::Constant(dim(), 1));
    for (int i = 0; i < dim(); ++i) noise_factor_.insert(i, i) = std::sqrt(lumped_mass_[i]);
    noise_factor_.makeCompressed();
  }
  solvers_->a.compute(a_);
  solvers_->mass.compute(mass_);
  if (solvers_->a.info() != Eigen::Success || solvers_->mass.info() != Eigen::Success) {
    // Unreachable for δ, γ > 0 and SPD Θ (A and M are SPD); kept as a guard against
    // corrupted input rather than an assert, since samples would silently be garbage.
    throw std::runtime_error(
        "BiLaplacianPrior: Cholesky factorization of A = δM + γK or of M failed");
  }
}

BiLaplacianPrior::~BiLaplacianPrior() = default;
BiLaplacianPrior::BiLaplacianPrior(BiLaplacianPrior&&) noexcept = default;
BiLaplacianPrior& BiLaplacianPrior::operator=(BiLaplacianPrior&&) noexcept = default;

Eigen::VectorXd BiLaplacianPrior::MeanVector() const {
  return Eigen::VectorXd::Constant(dim(), config_.mean);
}

void BiLaplacianPrior::CheckRows(const Eigen::MatrixXd& x, const char* method) const {
  if (x.rows() != dim()) {
    std::ostringstream msg;
    msg << "BiLaplacianPrior::" << method << ": input has " << x.rows()
        << " rows, expected the parameter dimension " << dim();
    throw std::invalid_argument(msg.str());
  }
}

Eigen::MatrixXd BiLaplacianPrior::ApplyA(const Eigen::MatrixXd& x) const {
  CheckRows(x, "ApplyA");
  return a_ * x;
}

Eigen::MatrixXd BiLaplacianPrior::SolveA(const Eigen::MatrixXd& x) const {
  CheckRows(x, "SolveA");
  return solvers_->a.solve(x);
}

Eigen::MatrixXd BiLaplacianPrior::ApplyMass(const Eigen::MatrixXd& x) const {
  CheckRows(x, "ApplyMass");
  return mass_ * x;
}

Eigen::MatrixXd BiLaplacianPrior::SolveMass(const Eigen::MatrixXd& x) const {
  CheckRows(x, "SolveMass");
  return solvers_->mass.solve(x);
}

Eigen::MatrixXd BiLaplacianPrior::ApplyNoiseMass(const Eigen::MatrixXd& x) const {
  if (config_.noise_factor == NoiseFactor::kQuadrature) return mass_ * x;
  return lumped_mass_.asDiagonal() * x;
}

Eigen::MatrixXd BiLaplacianPrior::SolveNoiseMass(const Eigen::MatrixXd& x) const {
  if (config_.noise_factor == NoiseFactor::kQuadrature) return solvers_->mass.solve(x);
  return lumped_mass_.cwiseInverse().asDiagonal() * x;
}

Eigen::MatrixXd BiLaplacianPrior::ApplyCovariance(const Eigen::MatrixXd& x) const {
  CheckRows(x, "ApplyCovariance");
  return solvers_->a.solve(ApplyNoiseMass(solvers_->a.solve(x)));
}

Eigen::MatrixXd BiLaplacianPrior::ApplyPrecision(const Eigen::MatrixXd& x) const {
  CheckRows(x, "ApplyPrecision");
  return a_ * SolveNoiseMass(a_ * x);
}

Eigen::MatrixXd BiLaplacianPrior::ApplyCovarianceFactor(const Eigen::MatrixXd& x) const {
  CheckRows(x, "ApplyCovarianceFactor");
  if (config_.noise_factor == NoiseFactor::kLumped) {
    return solvers_->a.solve(lumped_mass_.cwiseSqrt().asDiagonal() * x);
  }
  // F x = Pᵀ (L x) with P M Pᵀ = L Lᵀ.
  const Eigen::MatrixXd lx = solvers_->mass.matrixL() * x;
  return solvers_->a.solve(solvers_->mass.permutationPinv() * lx);
}

Eigen::MatrixXd BiLaplacianPrior::ApplyCovarianceFactorTranspose(const Eigen::MatrixXd& x) const {
  CheckRows(x, "ApplyCovarianceFactorTranspose");
  const Eigen::MatrixXd a_inv_x = solvers_->a.solve(x);
  if (config_.noise_factor == NoiseFactor::kLumped) {
    return lumped_mass_.cwiseSqrt().asDiagonal() * a_inv_x;
  }
  // Fᵀ y = Lᵀ (P y).
  const Eigen::MatrixXd py = solvers_->mass.permutationP() * a_inv_x;
  return solvers_->mass.matrixU() * py;
}

Eigen::MatrixXd BiLaplacianPrior::SolveCovarianceFactor(const Eigen::MatrixXd& x) const {
  CheckRows(x, "SolveCovarianceFactor");
  const Eigen::MatrixXd ax = a_ * x;
  if (config_.noise_factor == NoiseFactor::kLumped) {
    return lumped_mass_.cwiseSqrt().cwiseInverse().asDiagonal() * ax;
  }
  // F⁻¹ y = L⁻¹ (P y).
  const Eigen::MatrixXd py = solvers_->mass.permutationP() * ax;
  return solvers_->mass.matrixL().solve(py);
}

Eigen::VectorXd BiLaplacianPrior::SampleFromNoise(const Eigen::VectorXd& noise) const {
  if (noise.size() != noise_dim()) {
    std::ostringstream msg;
    msg << "BiLaplacianPrior::SampleFromNoise: noise has length " << noise.size()
        << ", expected noise_dim() = " << noise_dim();
    throw std::invalid_argument(msg.str());
  }
  Eigen::VectorXd sample = solvers_->a.solve(noise_factor_ * noise);
  sample.array() += config_.mean;
  return sample;
}

Eigen::VectorXd BiLaplacianPrior::Sample(NormalRng& rng) const {
  return SampleFromNoise(rng.Vector(noise_dim()));
}

Eigen::MatrixXd BiLaplacianPrior::CovarianceMatrix() const {
  constexpr int kMaxDenseDim = 10000;
  if (dim() > kMaxDenseDim) {
    std::ostringstream msg;
    msg << "BiLaplacianPrior::CovarianceMatrix: dimension " << dim() << " exceeds the dense limit "
        << kMaxDenseDim << "; use ApplyCovariance";
    throw std::invalid_argument(msg.str());
  }
  const Eigen::MatrixXd a_inv = solvers_->a.solve(Eigen::MatrixXd::Identity(dim(), dim()));
  Eigen::MatrixXd covariance = a_inv * ApplyNoiseMass(a_inv);
  // A⁻¹ M_w A⁻¹ is symmetric; remove the rounding asymmetry so callers can rely on it.
  covariance = 0.5 * (covariance + covariance.transpose()).eval();
  return covariance;
}

}  // namespace dino::pde
