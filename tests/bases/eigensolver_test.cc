// The matrix-free eigensolver against operators with known spectra and against Eigen's dense
// (generalized) symmetric eigensolvers.
#include "models/bases/eigensolver.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <stdexcept>

#include "models/bases/bases.h"
#include "models/pde/random.h"

namespace dino::bases {
namespace {

using ::testing::HasSubstr;

Eigen::MatrixXd RandomOrthogonal(Eigen::Index dim, std::uint64_t seed) {
  pde::NormalRng rng(seed, 7);
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(rng.Matrix(dim, dim));
  return qr.householderQ();
}

// Q diag(λ) Qᵀ with λ_k = 0.8^k: a geometric spectrum, the active subspace's typical shape.
struct PlantedOperator {
  Eigen::MatrixXd q;
  Eigen::VectorXd values;
  Eigen::MatrixXd dense() const { return q * values.asDiagonal() * q.transpose(); }
  BlockOperator op() const {
    return [this](const Eigen::MatrixXd& x) -> Eigen::MatrixXd {
      return q * (values.asDiagonal() * (q.transpose() * x));
    };
  }
};

PlantedOperator Geometric(Eigen::Index dim, double ratio) {
  PlantedOperator planted;
  planted.q = RandomOrthogonal(dim, 11);
  planted.values.resize(dim);
  for (Eigen::Index k = 0; k < dim; ++k) planted.values(k) = std::pow(ratio, k);
  return planted;
}

TEST(DominantEigenpairs, RecoversAPlantedSpectrumAndEigenvectors) {
  const PlantedOperator planted = Geometric(150, 0.8);
  EigensolverOptions options;
  options.rank = 12;
  options.tolerance = 1e-10;
  const EigenDecomposition eig = DominantEigenpairs(150, planted.op(), {}, options);
  ASSERT_TRUE(eig.converged) << eig.max_relative_residual;
  EXPECT_LE(eig.max_relative_residual, 1e-10);
  ASSERT_EQ(eig.values.size(), 12);
  ASSERT_EQ(eig.vectors.rows(), 150);
  ASSERT_EQ(eig.vectors.cols(), 12);
  for (int k = 0; k < 12; ++k) {
    EXPECT_NEAR(eig.values(k), planted.values(k), 1e-10) << k;
    // Distinct eigenvalues: each vector is the planted one up to sign.
    EXPECT_NEAR(std::abs(eig.vectors.col(k).dot(planted.q.col(k))), 1.0, 1e-8) << k;
  }
  EXPECT_LT(OrthonormalityDefect(eig.vectors), 1e-13);
  EXPECT_EQ(eig.operator_columns, eig.iterations * BlockSize(150, options));
}

TEST(DominantEigenpairs, GeneralizedProblemMatchesDenseSolver) {
  const Eigen::Index dim = 80;
  pde::NormalRng rng(3, 0);
  const Eigen::MatrixXd g = rng.Matrix(dim, dim);
  // B: SPD and not diagonal (like a mass matrix); H: SPD with a spread spectrum.
  const Eigen::MatrixXd b =
      Eigen::MatrixXd::Identity(dim, dim) + 0.02 * g * g.transpose() / static_cast<double>(dim);
  const PlantedOperator planted = Geometric(dim, 0.7);
  const Eigen::MatrixXd h = planted.dense();
  const Eigen::LLT<Eigen::MatrixXd> b_factor(b);
  const BlockOperator t = [&](const Eigen::MatrixXd& x) -> Eigen::MatrixXd {
    return b_factor.solve(h * x);
  };
  const BlockOperator inner = [&](const Eigen::MatrixXd& x) -> Eigen::MatrixXd { return b * x; };

  EigensolverOptions options;
  options.rank = 10;
  options.tolerance = 1e-11;
  const EigenDecomposition eig = DominantEigenpairs(dim, t, inner, options);
  ASSERT_TRUE(eig.converged);

  const Eigen::GeneralizedSelfAdjointEigenSolver<Eigen::MatrixXd> dense(h, b);
  const Eigen::VectorXd reference = dense.eigenvalues().reverse();
  const Eigen::MatrixXd reference_vectors = dense.eigenvectors().rowwise().reverse();
  for (int k = 0; k < 10; ++k) {
    EXPECT_NEAR(eig.values(k), reference(k), 1e-10 * reference(0)) << k;
    // B-normalized on both sides, so equal up to sign.
    const double cosine = eig.vectors.col(k).dot(b * reference_vectors.col(k));
    EXPECT_NEAR(std::abs(cosine), 1.0, 1e-8) << k;
  }
  const Eigen::MatrixXd gram = eig.vectors.transpose() * b * eig.vectors;
  EXPECT_LT((gram - Eigen::MatrixXd::Identity(10, 10)).cwiseAbs().maxCoeff(), 1e-13);
}

TEST(DominantEigenpairs, HandlesOperatorsOfLowRank) {
  // Rank 3, but 6 pairs wanted and ℓ = 16: most of every block is mapped to zero.
  const Eigen::Index dim = 40;
  const Eigen::MatrixXd w = RandomOrthogonal(dim, 5).leftCols(3);
  const Eigen::Vector3d values(5.0, 2.0, 0.5);
  const BlockOperator op = [&](const Eigen::MatrixXd& x) -> Eigen::MatrixXd {
    return w * (values.asDiagonal() * (w.transpose() * x));
  };
  EigensolverOptions options;
  options.rank = 6;
  const EigenDecomposition eig = DominantEigenpairs(dim, op, {}, options);
  EXPECT_TRUE(eig.converged);
  EXPECT_NEAR(eig.values(0), 5.0, 1e-12);
  EXPECT_NEAR(eig.values(1), 2.0, 1e-12);
  EXPECT_NEAR(eig.values(2), 0.5, 1e-12);
  for (int k = 3; k < 6; ++k) EXPECT_NEAR(eig.values(k), 0.0, 1e-12) << k;
  EXPECT_LT(OrthonormalityDefect(eig.vectors), 1e-13);
  EXPECT_LT(SubspaceDistance(eig.vectors.leftCols(3), w), 1e-10);
}

TEST(DominantEigenpairs, FullRankBlockIsExactInOneIteration) {
  const PlantedOperator planted = Geometric(30, 0.9);
  EigensolverOptions options;
  options.rank = 30;
  const EigenDecomposition eig = DominantEigenpairs(30, planted.op(), {}, options);
  EXPECT_EQ(eig.iterations, 1);
  EXPECT_TRUE(eig.converged);
  EXPECT_LT((eig.values - planted.values).cwiseAbs().maxCoeff(), 1e-13);
}

TEST(DominantEigenpairs, ReportsNonConvergenceWithoutThrowing) {
  const PlantedOperator planted = Geometric(200, 0.98);
  EigensolverOptions options;
  options.rank = 20;
  options.oversampling = 0;
  options.max_iterations = 2;
  options.tolerance = 1e-12;
  const EigenDecomposition eig = DominantEigenpairs(200, planted.op(), {}, options);
  EXPECT_FALSE(eig.converged);
  EXPECT_EQ(eig.iterations, 2);
  EXPECT_GT(eig.max_relative_residual, 1e-12);
  EXPECT_EQ(eig.vectors.cols(), 20);
  EXPECT_LT(OrthonormalityDefect(eig.vectors), 1e-13);
}

TEST(DominantEigenpairs, IsReproducibleAndSignNormalized) {
  const PlantedOperator planted = Geometric(60, 0.75);
  EigensolverOptions options;
  options.rank = 5;
  options.seed = 42;
  const EigenDecomposition a = DominantEigenpairs(60, planted.op(), {}, options);
  const EigenDecomposition b = DominantEigenpairs(60, planted.op(), {}, options);
  EXPECT_EQ(a.vectors, b.vectors);
  EXPECT_EQ(a.values, b.values);
  options.seed = 43;
  const EigenDecomposition c = DominantEigenpairs(60, planted.op(), {}, options);
  // Another start converges to the same pairs, and the sign convention makes them identical
  // up to rounding rather than up to sign.
  EXPECT_LT((a.vectors - c.vectors).cwiseAbs().maxCoeff(), 1e-7);
  for (int k = 0; k < 5; ++k) {
    Eigen::Index largest = 0;
    a.vectors.col(k).cwiseAbs().maxCoeff(&largest);
    EXPECT_GT(a.vectors(largest, k), 0.0);
  }
}

TEST(DominantEigenpairs, RejectsBadArgumentsAndBadOperators) {
  const PlantedOperator planted = Geometric(10, 0.5);
  EigensolverOptions options;
  options.rank = 0;
  EXPECT_THROW(DominantEigenpairs(10, planted.op(), {}, options), std::invalid_argument);
  options.rank = 11;
  try {
    DominantEigenpairs(10, planted.op(), {}, options, "test operator");
    FAIL() << "rank above the dimension was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("test operator"));
    EXPECT_THAT(e.what(), HasSubstr("rank 11"));
  }
  options.rank = 2;
  options.tolerance = 0.0;
  EXPECT_THROW(DominantEigenpairs(10, planted.op(), {}, options), std::invalid_argument);
  options.tolerance = 1e-8;
  options.max_iterations = 0;
  EXPECT_THROW(DominantEigenpairs(10, planted.op(), {}, options), std::invalid_argument);
  options.max_iterations = 10;

  const BlockOperator wrong_shape = [](const Eigen::MatrixXd& x) -> Eigen::MatrixXd {
    return Eigen::MatrixXd::Zero(x.rows() + 1, x.cols());
  };
  try {
    DominantEigenpairs(10, wrong_shape, {}, options, "shape test");
    FAIL() << "a wrongly shaped block was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("shape test"));
    EXPECT_THAT(e.what(), HasSubstr("[11 × "));
  }
  const BlockOperator not_finite = [](const Eigen::MatrixXd& x) -> Eigen::MatrixXd {
    return Eigen::MatrixXd::Constant(x.rows(), x.cols(), std::nan(""));
  };
  EXPECT_THROW(DominantEigenpairs(10, not_finite, {}, options), std::invalid_argument);
  const BlockOperator indefinite = [](const Eigen::MatrixXd& x) -> Eigen::MatrixXd { return -x; };
  try {
    DominantEigenpairs(10, planted.op(), indefinite, options, "inner product test");
    FAIL() << "an indefinite inner product was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("not positive definite"));
  }
}

TEST(DenseSymmetricEigenpairs, SortsDescendingWithSignConvention) {
  Eigen::Matrix3d m;
  m << 2, 1, 0, 1, 2, 0, 0, 0, 5;
  const EigenDecomposition eig = DenseSymmetricEigenpairs(m);
  EXPECT_NEAR(eig.values(0), 5.0, 1e-14);
  EXPECT_NEAR(eig.values(1), 3.0, 1e-14);
  EXPECT_NEAR(eig.values(2), 1.0, 1e-14);
  EXPECT_NEAR(eig.vectors(2, 0), 1.0, 1e-14);
  EXPECT_GT(eig.vectors.col(1).sum(), 0.0);
  EXPECT_THROW(DenseSymmetricEigenpairs(Eigen::MatrixXd(2, 3)), std::invalid_argument);
}

TEST(SubspaceDistance, MeasuresPrincipalAngles) {
  Eigen::MatrixXd a = Eigen::MatrixXd::Zero(3, 1);
  a(0, 0) = 1.0;
  Eigen::MatrixXd b = Eigen::MatrixXd::Zero(3, 1);
  b(0, 0) = std::cos(0.3);
  b(1, 0) = std::sin(0.3);
  EXPECT_NEAR(SubspaceDistance(a, b), std::sin(0.3), 1e-14);
  EXPECT_NEAR(SubspaceDistance(a, 3.0 * a), 0.0, 1e-15);
  EXPECT_NEAR(SubspaceDistance(a, Eigen::MatrixXd::Identity(3, 2)), 1.0, 1e-15);
  EXPECT_THROW(SubspaceDistance(a, Eigen::MatrixXd::Zero(4, 1)), std::invalid_argument);
}

}  // namespace
}  // namespace dino::bases
