// The DIPNet bases: planted subspaces and spectra, agreement of the matrix-free active subspace
// and KLE with dense eigendecompositions, orthonormality, and the Euclidean form of the KLE.
#include "models/bases/bases.h"

#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <Eigen/SVD>
#include <cmath>
#include <vector>

#include "models/bases/jacobian_samples.h"
#include "models/pde/model.h"
#include "models/pde/prior.h"
#include "models/pde/random.h"
#include "models/pde/sample.h"

namespace dino::bases {
namespace {

using RowMajorMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// n Jacobians stored as J_data stores them: [n, d_Q, d_M] in C order.
struct FullJacobians {
  Eigen::Index n, d_q, d_m;
  std::vector<double> data;
  Eigen::Map<RowMajorMatrix> at(Eigen::Index i) {
    return Eigen::Map<RowMajorMatrix>(data.data() + i * d_q * d_m, d_q, d_m);
  }
  JacobianSamples view() const { return JacobianSamples::Full(data.data(), n, d_q, d_m); }
  Eigen::MatrixXd InputGram() const {
    Eigen::MatrixXd h = Eigen::MatrixXd::Zero(d_m, d_m);
    for (Eigen::Index i = 0; i < n; ++i) {
      const Eigen::Map<const RowMajorMatrix> j(data.data() + i * d_q * d_m, d_q, d_m);
      h += j.transpose() * j;
    }
    return h / static_cast<double>(n);
  }
  Eigen::MatrixXd OutputGram() const {
    Eigen::MatrixXd h = Eigen::MatrixXd::Zero(d_q, d_q);
    for (Eigen::Index i = 0; i < n; ++i) {
      const Eigen::Map<const RowMajorMatrix> j(data.data() + i * d_q * d_m, d_q, d_m);
      h += j * j.transpose();
    }
    return h / static_cast<double>(n);
  }
};

// Random Jacobians whose columns decay (column a scaled by 0.93^a), so H_M has a decaying,
// generically simple spectrum.
FullJacobians RandomJacobians(Eigen::Index n, Eigen::Index d_q, Eigen::Index d_m,
                              std::uint64_t seed) {
  FullJacobians jac{n, d_q, d_m, std::vector<double>(n * d_q * d_m)};
  pde::NormalRng rng(seed, 0);
  for (Eigen::Index i = 0; i < n; ++i) {
    Eigen::MatrixXd j = rng.Matrix(d_q, d_m);
    for (Eigen::Index a = 0; a < d_m; ++a) j.col(a) *= std::pow(0.93, static_cast<double>(a));
    jac.at(i) = j;
  }
  return jac;
}

// The same Jacobians as (U, σ, V) files hold them: U [n, d_Q, r], σ [n, r], V [n, d_M, r].
struct SvdJacobians {
  Eigen::Index n, d_q, d_m, r;
  std::vector<double> u, sigma, v;
  JacobianSamples view() const {
    return JacobianSamples::TruncatedSvd(u.data(), sigma.data(), v.data(), n, d_q, d_m, r);
  }
};

SvdJacobians ToSvd(FullJacobians& full, Eigen::Index r) {
  SvdJacobians s{full.n,
                 full.d_q,
                 full.d_m,
                 r,
                 std::vector<double>(full.n * full.d_q * r),
                 std::vector<double>(full.n * r),
                 std::vector<double>(full.n * full.d_m * r)};
  for (Eigen::Index i = 0; i < full.n; ++i) {
    const Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(full.at(i)),
                                                Eigen::ComputeThinU | Eigen::ComputeThinV);
    Eigen::Map<RowMajorMatrix>(s.u.data() + i * full.d_q * r, full.d_q, r) =
        svd.matrixU().leftCols(r);
    Eigen::Map<Eigen::VectorXd>(s.sigma.data() + i * r, r) = svd.singularValues().head(r);
    Eigen::Map<RowMajorMatrix>(s.v.data() + i * full.d_m * r, full.d_m, r) =
        svd.matrixV().leftCols(r);
  }
  return s;
}

TEST(JacobianSamples, GramProductsMatchDenseSums) {
  FullJacobians full = RandomJacobians(7, 5, 40, 1);
  const JacobianSamples view = full.view();
  pde::NormalRng rng(2, 0);
  const Eigen::MatrixXd x = rng.Matrix(40, 3);
  const Eigen::MatrixXd y = rng.Matrix(5, 4);
  const Eigen::MatrixXd h_m = full.InputGram();
  const Eigen::MatrixXd h_q = full.OutputGram();
  EXPECT_LT((view.ApplyInputGram(x) - h_m * x).norm(), 1e-12 * (h_m * x).norm());
  EXPECT_LT((view.ApplyInputGram(x, 3) - h_m * x).norm(), 1e-12 * (h_m * x).norm());
  EXPECT_LT((view.ApplyOutputGram(y, 2) - h_q * y).norm(), 1e-12 * (h_q * y).norm());
  EXPECT_LT((view.OutputGram(4) - h_q).norm(), 1e-12 * h_q.norm());
  EXPECT_NEAR(view.MeanSquaredNorm(), h_m.trace(), 1e-12 * h_m.trace());
  EXPECT_EQ(view.Jacobian(3), Eigen::MatrixXd(full.at(3)));

  // The SVD form (full rank d_Q here) is the same operator; factors that are not orthonormal
  // (U scaled by 2, σ by ½) still describe the same Jacobians and must give the same products.
  SvdJacobians svd = ToSvd(full, 5);
  for (double& value : svd.u) value *= 2.0;
  for (double& value : svd.sigma) value *= 0.5;
  const JacobianSamples svd_view = svd.view();
  EXPECT_LT((svd_view.Jacobian(3) - full.at(3)).norm(), 1e-12 * full.at(3).norm());
  EXPECT_LT((svd_view.ApplyInputGram(x, 2) - h_m * x).norm(), 1e-11 * (h_m * x).norm());
  EXPECT_LT((svd_view.ApplyOutputGram(y) - h_q * y).norm(), 1e-11 * (h_q * y).norm());
  EXPECT_LT((svd_view.OutputGram(2) - h_q).norm(), 1e-11 * h_q.norm());
  EXPECT_NEAR(svd_view.MeanSquaredNorm(), h_m.trace(), 1e-11 * h_m.trace());

  EXPECT_THROW(view.ApplyInputGram(Eigen::MatrixXd(39, 2)), std::invalid_argument);
  EXPECT_THROW(view.ApplyInputGram(x, 0), std::invalid_argument);
  EXPECT_THROW(view.Jacobian(7), std::invalid_argument);
  EXPECT_THROW(JacobianSamples::Full(nullptr, 1, 1, 1), std::invalid_argument);
}

TEST(ActiveSubspace, RecoversAPlantedSubspaceWithZeroTail) {
  // Jᵢ = Aᵢ Wᵀ: every Jacobian sees only the 4-dimensional span of W.
  const Eigen::Index n = 30, d_q = 6, d_m = 120, k = 4;
  pde::NormalRng rng(9, 0);
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(rng.Matrix(d_m, k));
  const Eigen::MatrixXd w = qr.householderQ() * Eigen::MatrixXd::Identity(d_m, k);
  FullJacobians full{n, d_q, d_m, std::vector<double>(n * d_q * d_m)};
  for (Eigen::Index i = 0; i < n; ++i) full.at(i) = rng.Matrix(d_q, k) * w.transpose();

  EigensolverOptions options;
  options.rank = 6;
  const EigenDecomposition as = ActiveSubspace(full.view(), options, 2);
  ASSERT_TRUE(as.converged);
  EXPECT_LT(SubspaceDistance(as.vectors.leftCols(k), w), 1e-10);
  EXPECT_GT(as.values(k - 1), 0.1);
  EXPECT_LT(std::abs(as.values(k)), 1e-12 * as.values(0));
  EXPECT_LT(std::abs(as.values(k + 1)), 1e-12 * as.values(0));
  EXPECT_LT(OrthonormalityDefect(as.vectors), 1e-13);
  // The spectrum's total is E‖J‖²_F.
  EXPECT_NEAR(as.values.sum(), full.view().MeanSquaredNorm(), 1e-10 * as.values.sum());
}

TEST(ActiveSubspace, MatrixFreeAgreesWithDenseEigendecomposition) {
  FullJacobians full = RandomJacobians(8, 5, 60, 4);
  const EigenDecomposition dense = DenseSymmetricEigenpairs(full.InputGram());
  EigensolverOptions options;
  options.rank = 10;
  options.tolerance = 1e-11;
  const EigenDecomposition as = ActiveSubspace(full.view(), options);
  ASSERT_TRUE(as.converged);
  for (int k = 0; k < 10; ++k) {
    EXPECT_NEAR(as.values(k), dense.values(k), 1e-10 * dense.values(0)) << k;
    // Both use the same sign convention, so the vectors agree entrywise.
    EXPECT_LT((as.vectors.col(k) - dense.vectors.col(k)).cwiseAbs().maxCoeff(), 1e-7) << k;
  }
  // Same operator from the (full-rank) truncated SVDs of the same Jacobians, on 3 threads.
  const SvdJacobians svd = ToSvd(full, 5);
  const EigenDecomposition from_svd = ActiveSubspace(svd.view(), options, 3);
  EXPECT_LT((from_svd.values - as.values).cwiseAbs().maxCoeff(), 1e-10 * as.values(0));
  EXPECT_LT((from_svd.vectors - as.vectors).cwiseAbs().maxCoeff(), 1e-7);
}

TEST(ActiveSubspace, MatchesDenseOnThePoissonProblem) {
  // The real map on an 8 × 8 mesh (d_M = 81): adjoint Jacobians of 6 prior samples.
  pde::LogDiffusionModel model(pde::PoissonProblem(8));
  const pde::BiLaplacianPrior prior(model.mesh(), pde::PoissonPrior());
  const Eigen::Index n = 6, d_q = model.observation_dim(), d_m = model.parameter_dim();
  FullJacobians full{n, d_q, d_m, std::vector<double>(n * d_q * d_m)};
  pde::JacobianOptions jacobian;
  jacobian.mode = pde::JacobianMode::kFull;
  for (Eigen::Index i = 0; i < n; ++i) {
    full.at(i) = pde::GenerateSample(model, prior, 5, i, jacobian).jacobian;
  }
  const EigenDecomposition dense = DenseSymmetricEigenpairs(full.InputGram());
  EigensolverOptions options;
  options.rank = 15;
  options.tolerance = 1e-11;
  const EigenDecomposition as = ActiveSubspace(full.view(), options, 2);
  ASSERT_TRUE(as.converged);
  EXPECT_LT((as.values - dense.values.head(15)).cwiseAbs().maxCoeff(), 1e-10 * dense.values(0));
  for (int k : {1, 5, 10, 15}) {
    EXPECT_LT(SubspaceDistance(as.vectors.leftCols(k), dense.vectors.leftCols(k)), 1e-6) << k;
  }
}

TEST(OutputDerivativeBasis, IsTheDenseEigenbasisOfTheOutputGram) {
  FullJacobians full = RandomJacobians(9, 7, 30, 6);
  const EigenDecomposition dense = DenseSymmetricEigenpairs(full.OutputGram());
  EigensolverOptions options;
  options.rank = 4;
  const EigenDecomposition basis = OutputDerivativeBasis(full.view(), options, 2);
  ASSERT_EQ(basis.vectors.cols(), 4);
  EXPECT_LT((basis.values - dense.values.head(4)).cwiseAbs().maxCoeff(), 1e-12 * dense.values(0));
  EXPECT_LT((basis.vectors - dense.vectors.leftCols(4)).cwiseAbs().maxCoeff(), 1e-10);
  EXPECT_LT(OrthonormalityDefect(basis.vectors), 1e-13);
  // H_Q and H_M differ, but both have trace E‖J‖²_F.
  EXPECT_NEAR(dense.values.sum(), full.view().MeanSquaredNorm(), 1e-12 * dense.values.sum());
  options.rank = 8;
  EXPECT_THROW(OutputDerivativeBasis(full.view(), options), std::invalid_argument);
}

TEST(OutputPod, RecoversMeanAndPlantedModes) {
  // q = b + Σₖ sₖ ξₖ uₖ with three planted orthonormal modes.
  const Eigen::Index n = 400, d_q = 12;
  pde::NormalRng rng(8, 0);
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(rng.Matrix(d_q, 3));
  const Eigen::MatrixXd u = qr.householderQ() * Eigen::MatrixXd::Identity(d_q, 3);
  const Eigen::Vector3d scales(3.0, 1.0, 0.2);
  const Eigen::VectorXd b = rng.Vector(d_q);
  RowMajorMatrix q(n, d_q);
  for (Eigen::Index i = 0; i < n; ++i) {
    q.row(i) = (b + u * scales.cwiseProduct(rng.Vector(3))).transpose();
  }
  const Pod pod = OutputPod(q.data(), n, d_q, 5);
  const Eigen::VectorXd mean = q.colwise().mean().transpose();
  EXPECT_LT((pod.mean - mean).cwiseAbs().maxCoeff(), 1e-14);
  EXPECT_LT(SubspaceDistance(pod.basis.leftCols(3), u), 1e-12);
  EXPECT_LT(std::abs(pod.eigenvalues(3)), 1e-20);
  EXPECT_LT(OrthonormalityDefect(pod.basis), 1e-13);
  // Eigenvalues are those of the empirical second moment (1/n) Σ (qᵢ − b)(qᵢ − b)ᵀ.
  const Eigen::MatrixXd centred = q.rowwise() - mean.transpose();
  const EigenDecomposition dense =
      DenseSymmetricEigenpairs(centred.transpose() * centred / static_cast<double>(n));
  EXPECT_LT((pod.eigenvalues.head(3) - dense.values.head(3)).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_NEAR(pod.total_variance, dense.values.sum(), 1e-12);
  EXPECT_NEAR(pod.eigenvalues(0), 9.0, 1.5);  // ≈ s₁² up to sampling error.
}

TEST(OutputPod, CompletesTheBasisWhenSamplesAreFew) {
  const Eigen::Index n = 3, d_q = 8;
  pde::NormalRng rng(10, 0);
  RowMajorMatrix q = rng.Matrix(n, d_q);
  const Pod pod = OutputPod(q.data(), n, d_q, 8);
  EXPECT_EQ(pod.basis.cols(), 8);
  EXPECT_LT(OrthonormalityDefect(pod.basis), 1e-13);
  // Centring leaves n − 1 = 2 directions of variance.
  EXPECT_GT(pod.eigenvalues(1), 1e-3);
  for (int k = 2; k < 8; ++k) EXPECT_LT(pod.eigenvalues(k), 1e-25) << k;
  EXPECT_THROW(OutputPod(q.data(), n, d_q, 9), std::invalid_argument);
  q(1, 1) = std::nan("");
  EXPECT_THROW(OutputPod(q.data(), n, d_q, 2), std::invalid_argument);
}

class PriorKleTest : public ::testing::TestWithParam<pde::NoiseFactor> {};

TEST_P(PriorKleTest, MatchesDenseGeneralizedEigenproblem) {
  const pde::StructuredTriMesh mesh(6);  // d_M = 49
  pde::PriorConfig config = pde::PoissonPrior();
  config.noise_factor = GetParam();
  const pde::BiLaplacianPrior prior(mesh, config);
  const Eigen::MatrixXd c = prior.CovarianceMatrix();
  const Eigen::MatrixXd m = Eigen::MatrixXd(prior.mass());
  const Eigen::GeneralizedSelfAdjointEigenSolver<Eigen::MatrixXd> dense(m * c * m, m);
  const Eigen::VectorXd reference = dense.eigenvalues().reverse();
  const Eigen::MatrixXd reference_modes = dense.eigenvectors().rowwise().reverse();

  EigensolverOptions options;
  options.rank = 12;
  options.tolerance = 1e-11;
  const KarhunenLoeve kle = PriorKle(prior, options);
  ASSERT_TRUE(kle.solver.converged) << kle.solver.max_relative_residual;
  EXPECT_LT((kle.eigenvalues - reference.head(12)).cwiseAbs().maxCoeff(), 1e-10 * reference(0));
  // Neumann modes on the square come in pairs cos(iπx)cos(jπy), cos(jπx)cos(iπy) that the
  // mesh's symmetry keeps degenerate, so compare whole eigenspaces: 1, 3, 4, 6, 8 modes.
  for (int k : {1, 3, 4, 6, 8}) {
    EXPECT_LT(SubspaceDistance(kle.modes.leftCols(k), reference_modes.leftCols(k)), 1e-7) << k;
  }
  const Eigen::MatrixXd mass_gram = kle.modes.transpose() * m * kle.modes;
  EXPECT_LT((mass_gram - Eigen::MatrixXd::Identity(12, 12)).cwiseAbs().maxCoeff(), 1e-12);

  // Euclidean form: orthonormal, spans MΨ, and decorrelates the prior.
  EXPECT_LT(OrthonormalityDefect(kle.basis), 1e-13);
  EXPECT_LT(SubspaceDistance(kle.basis, m * kle.modes), 1e-10);
  const Eigen::MatrixXd projected = kle.basis.transpose() * c * kle.basis;
  Eigen::MatrixXd off_diagonal = projected;
  off_diagonal.diagonal().setZero();
  EXPECT_LT(off_diagonal.cwiseAbs().maxCoeff(), 1e-12 * projected(0, 0));
  EXPECT_LT((projected.diagonal() - kle.coordinate_variances).cwiseAbs().maxCoeff(),
            1e-12 * projected(0, 0));
  for (int k = 1; k < 12; ++k) {
    EXPECT_LE(kle.coordinate_variances(k), kle.coordinate_variances(k - 1));
  }
}

INSTANTIATE_TEST_SUITE_P(NoiseFactors, PriorKleTest,
                         ::testing::Values(pde::NoiseFactor::kQuadrature,
                                           pde::NoiseFactor::kLumped));

TEST(PriorKle, EigenvaluesAreInverseSquaresOfTheOperatorSpectrum) {
  // With L Lᵀ = M (quadrature noise), C M = A⁻¹MA⁻¹M, and A v = α M v gives C M v = v / α²:
  // the KLE is the (A, M) eigenbasis, an independent check through sparse data only.
  const pde::StructuredTriMesh mesh(10);
  const pde::BiLaplacianPrior prior(mesh, pde::ReactionDiffusionPrior());
  const Eigen::GeneralizedSelfAdjointEigenSolver<Eigen::MatrixXd> pencil(
      Eigen::MatrixXd(prior.operator_matrix()), Eigen::MatrixXd(prior.mass()));
  EigensolverOptions options;
  options.rank = 20;
  options.tolerance = 1e-11;
  const KarhunenLoeve kle = PriorKle(prior, options);
  ASSERT_TRUE(kle.solver.converged);
  for (int k = 0; k < 20; ++k) {
    const double alpha = pencil.eigenvalues()(k);  // ascending
    EXPECT_NEAR(kle.eigenvalues(k), 1.0 / (alpha * alpha), 1e-10 * kle.eigenvalues(0)) << k;
  }
  // The constant mode is the first: A 1 = δ M 1, so λ₁ = 1/δ² = 1 for δ = 1.
  EXPECT_NEAR(kle.eigenvalues(0), 1.0, 1e-10);
}

}  // namespace
}  // namespace dino::bases
