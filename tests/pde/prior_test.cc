// BiLaplacian prior: operators and the Monte Carlo covariance of its samples.
#include "models/pde/prior.h"

#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>

#include "models/pde/fem.h"
#include "models/pde/random.h"

namespace dino::pde {
namespace {

PriorConfig Config(NoiseFactor factor) {
  PriorConfig config = PoissonPrior();
  config.noise_factor = factor;
  return config;
}

// C = A⁻¹ M_w A⁻¹ from the FEM matrices directly (independent of the prior's internals).
Eigen::MatrixXd TheoreticalCovariance(const StructuredTriMesh& mesh, const PriorConfig& config,
                                      NoiseFactor factor) {
  const Eigen::MatrixXd m = Eigen::MatrixXd(AssembleMass(mesh));
  const Eigen::MatrixXd a =
      config.delta * m + config.gamma * Eigen::MatrixXd(AssembleStiffness(mesh, config.anisotropy));
  const Eigen::MatrixXd noise_mass =
      factor == NoiseFactor::kQuadrature ? m : Eigen::MatrixXd(LumpedMass(mesh).asDiagonal());
  const Eigen::MatrixXd a_inv = a.inverse();
  return a_inv * noise_mass * a_inv;
}

TEST(BiLaplacianPrior, PaperParameters) {
  EXPECT_EQ(PoissonPrior().delta, 0.5);
  EXPECT_EQ(PoissonPrior().gamma, 0.1);
  EXPECT_EQ(ReactionDiffusionPrior().delta, 1.0);
  EXPECT_EQ(ReactionDiffusionPrior().gamma, 0.1);
  EXPECT_EQ(PoissonPrior().noise_factor, NoiseFactor::kQuadrature);
  EXPECT_TRUE(PoissonPrior().anisotropy.isIdentity());
}

TEST(BiLaplacianPrior, OperatorsAreConsistent) {
  const StructuredTriMesh mesh(6);
  PriorConfig config = ReactionDiffusionPrior();
  config.anisotropy = AnisotropyTensor(2.0, 0.5, 0.785398163397448309615660845819875721);  // π/4
  const BiLaplacianPrior prior(mesh, config);
  NormalRng rng(3);
  const Eigen::MatrixXd x = rng.Matrix(prior.dim(), 3);
  EXPECT_NEAR((prior.ApplyA(prior.SolveA(x)) - x).norm() / x.norm(), 0.0, 1e-13);
  EXPECT_NEAR((prior.ApplyMass(prior.SolveMass(x)) - x).norm() / x.norm(), 0.0, 1e-13);
  EXPECT_NEAR((prior.ApplyPrecision(prior.ApplyCovariance(x)) - x).norm() / x.norm(), 0.0, 1e-12);
  const Eigen::MatrixXd covariance = prior.CovarianceMatrix();
  EXPECT_NEAR((covariance * x - prior.ApplyCovariance(x)).norm() / covariance.norm(), 0.0, 1e-13);
  const Eigen::MatrixXd theory = TheoreticalCovariance(mesh, config, NoiseFactor::kQuadrature);
  EXPECT_NEAR((covariance - theory).norm() / theory.norm(), 0.0, 1e-12);
  // hIPPYlib's AnisTensor2D(2, 0.5, π/4) = [[1.25, 0.75], [0.75, 1.25]].
  EXPECT_NEAR((config.anisotropy - (Eigen::Matrix2d() << 1.25, 0.75, 0.75, 1.25).finished()).norm(),
              0.0, 1e-15);
  EXPECT_THROW(prior.SolveA(Eigen::MatrixXd::Zero(3, 1)), std::invalid_argument);
  EXPECT_THROW(prior.SampleFromNoise(Eigen::VectorXd::Zero(5)), std::invalid_argument);
}

// G = A⁻¹F, the square covariance factor: G Gᵀ = C, G⁻¹ inverts G, Gᵀ is G's transpose, and
// G⁻ᵀG⁻¹ = C⁻¹, for both noise factors.
TEST(BiLaplacianPrior, CovarianceFactor) {
  const StructuredTriMesh mesh(5);
  for (NoiseFactor factor : {NoiseFactor::kQuadrature, NoiseFactor::kLumped}) {
    SCOPED_TRACE(factor == NoiseFactor::kQuadrature ? "quadrature" : "lumped");
    const BiLaplacianPrior prior(mesh, Config(factor));
    const Eigen::MatrixXd identity = Eigen::MatrixXd::Identity(prior.dim(), prior.dim());
    const Eigen::MatrixXd g = prior.ApplyCovarianceFactor(identity);
    const Eigen::MatrixXd covariance = prior.CovarianceMatrix();
    EXPECT_LT((g * g.transpose() - covariance).norm() / covariance.norm(), 1e-13);
    EXPECT_LT((prior.ApplyCovarianceFactorTranspose(identity) - g.transpose()).norm() / g.norm(),
              1e-13);
    EXPECT_LT((prior.SolveCovarianceFactor(g) - identity).norm() / identity.norm(), 1e-12);
    const Eigen::MatrixXd g_inv = prior.SolveCovarianceFactor(identity);
    const Eigen::MatrixXd precision = prior.ApplyPrecision(identity);
    EXPECT_LT((g_inv.transpose() * g_inv - precision).norm() / precision.norm(), 1e-12);
    // Not symmetric: a factor, not the symmetric square root.
    EXPECT_GT((g - g.transpose()).norm() / g.norm(), 1e-3);
    EXPECT_THROW(prior.ApplyCovarianceFactor(Eigen::MatrixXd::Zero(3, 1)), std::invalid_argument);
  }
}

TEST(BiLaplacianPrior, RejectsInvalidParameters) {
  const StructuredTriMesh mesh(4);
  PriorConfig config = PoissonPrior();
  config.delta = 0.0;
  EXPECT_THROW(BiLaplacianPrior(mesh, config), std::invalid_argument);
  config = PoissonPrior();
  config.gamma = -1.0;
  EXPECT_THROW(BiLaplacianPrior(mesh, config), std::invalid_argument);
  config = PoissonPrior();
  config.anisotropy << 1.0, 2.0, 2.0, 1.0;  // Indefinite.
  EXPECT_THROW(BiLaplacianPrior(mesh, config), std::invalid_argument);
}

// Monte Carlo check of Cov(m) = A⁻¹ M_w A⁻¹ for both noise factors. With N samples of a
// centred Gaussian and the known mean, Ĉ_ij = N⁻¹ Σ m_i m_j is unbiased with
// Var(Ĉ_ij) = (C_ii C_jj + C_ij²)/N; every entry must lie within 5 of its standard errors
// (a two-sided 5σ event has probability 6e-7 per entry; the seed is fixed anyway). The test
// also shows it can tell the two factors apart: the other factor's covariance fails the same
// bound on some entry.
class PriorCovarianceTest : public ::testing::TestWithParam<NoiseFactor> {};

TEST_P(PriorCovarianceTest, SampleCovarianceMatchesTheory) {
  const NoiseFactor factor = GetParam();
  const NoiseFactor other =
      factor == NoiseFactor::kQuadrature ? NoiseFactor::kLumped : NoiseFactor::kQuadrature;
  const StructuredTriMesh mesh(4);
  const PriorConfig config = Config(factor);
  const BiLaplacianPrior prior(mesh, config);
  const Eigen::MatrixXd theory = TheoreticalCovariance(mesh, config, factor);
  const Eigen::MatrixXd wrong = TheoreticalCovariance(mesh, config, other);
  EXPECT_NEAR((prior.CovarianceMatrix() - theory).norm() / theory.norm(), 0.0, 1e-12);

  constexpr int kSamples = 40000;
  NormalRng rng(20240607, static_cast<std::uint64_t>(factor));
  const int dim = prior.dim();
  Eigen::MatrixXd samples(dim, kSamples);
  for (int s = 0; s < kSamples; ++s) samples.col(s) = prior.Sample(rng);
  const Eigen::MatrixXd estimate = samples * samples.transpose() / kSamples;
  const Eigen::VectorXd mean = samples.rowwise().mean();

  double max_z = 0.0, max_z_wrong = 0.0, max_mean_z = 0.0;
  for (int i = 0; i < dim; ++i) {
    max_mean_z = std::max(max_mean_z, std::abs(mean[i]) / std::sqrt(theory(i, i) / kSamples));
    for (int j = 0; j < dim; ++j) {
      const double se =
          std::sqrt((theory(i, i) * theory(j, j) + theory(i, j) * theory(i, j)) / kSamples);
      const double se_wrong =
          std::sqrt((wrong(i, i) * wrong(j, j) + wrong(i, j) * wrong(i, j)) / kSamples);
      max_z = std::max(max_z, std::abs(estimate(i, j) - theory(i, j)) / se);
      max_z_wrong = std::max(max_z_wrong, std::abs(estimate(i, j) - wrong(i, j)) / se_wrong);
    }
  }
  std::printf("noise factor %s: max |z| vs its theory %.2f, vs the other factor %.2f, mean %.2f\n",
              factor == NoiseFactor::kQuadrature ? "quadrature" : "lumped", max_z, max_z_wrong,
              max_mean_z);
  EXPECT_LT(max_z, 5.0);
  EXPECT_LT(max_mean_z, 5.0);
  EXPECT_GT(max_z_wrong, 5.0);
}

INSTANTIATE_TEST_SUITE_P(NoiseFactors, PriorCovarianceTest,
                         ::testing::Values(NoiseFactor::kQuadrature, NoiseFactor::kLumped));

TEST(BiLaplacianPrior, NonzeroMeanIsAdded) {
  const StructuredTriMesh mesh(4);
  PriorConfig config = ReactionDiffusionPrior();
  config.mean = -1.0;
  const BiLaplacianPrior prior(mesh, config);
  const Eigen::VectorXd zero_noise = Eigen::VectorXd::Zero(prior.noise_dim());
  EXPECT_NEAR((prior.SampleFromNoise(zero_noise) - prior.MeanVector()).norm(), 0.0, 1e-15);
  EXPECT_DOUBLE_EQ(prior.MeanVector()[7], -1.0);
}

}  // namespace
}  // namespace dino::pde
