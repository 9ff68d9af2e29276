// Randomized truncated SVD against dense SVDs.
#include "models/pde/randomized_svd.h"

#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>

#include "models/pde/model.h"
#include "models/pde/prior.h"
#include "models/pde/random.h"

namespace dino::pde {
namespace {

Eigen::MatrixXd RandomOrthonormal(NormalRng& rng, int rows, int cols) {
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(rng.Matrix(rows, cols));
  return qr.householderQ() * Eigen::MatrixXd::Identity(rows, cols);
}

LinearOperator DenseOperator(const Eigen::MatrixXd& a) {
  LinearOperator op;
  op.rows = a.rows();
  op.cols = a.cols();
  op.apply = [a](const Eigen::MatrixXd& x) -> Eigen::MatrixXd { return a * x; };
  op.apply_transpose = [a](const Eigen::MatrixXd& y) -> Eigen::MatrixXd {
    return a.transpose() * y;
  };
  return op;
}

void ExpectOrthonormalColumns(const Eigen::MatrixXd& q) {
  EXPECT_NEAR((q.transpose() * q - Eigen::MatrixXd::Identity(q.cols(), q.cols())).norm(), 0.0,
              1e-12);
}

TEST(RandomizedSvd, RecoversTheLeadingTripletsOfADecayingSpectrum) {
  // A = U diag(σ) Vᵀ, σ_k = 2^{−k}, 50 × 800 like a Jacobian with d_Q = 50.
  NormalRng rng(1);
  const Eigen::MatrixXd u0 = RandomOrthonormal(rng, 50, 50);
  const Eigen::MatrixXd v0 = RandomOrthonormal(rng, 800, 50);
  Eigen::VectorXd sigma(50);
  for (int k = 0; k < 50; ++k) sigma[k] = std::pow(2.0, -k);
  const Eigen::MatrixXd a = u0 * sigma.asDiagonal() * v0.transpose();

  RandomizedSvdOptions options;
  options.rank = 10;
  options.oversampling = 10;
  options.power_iterations = 1;
  NormalRng sketch(2);
  const TruncatedSvd svd = RandomizedSvd(DenseOperator(a), options, sketch);
  ASSERT_EQ(svd.u.rows(), 50);
  ASSERT_EQ(svd.u.cols(), 10);
  ASSERT_EQ(svd.v.rows(), 800);
  ASSERT_EQ(svd.singular_values.size(), 10);
  ExpectOrthonormalColumns(svd.u);
  ExpectOrthonormalColumns(svd.v);
  for (int k = 0; k < 10; ++k) {
    EXPECT_NEAR(svd.singular_values[k] / sigma[k], 1.0, 1e-10) << "σ_" << k;
    // Singular vectors up to sign; accuracy degrades with the gap, so check the first 8.
    if (k < 8) {
      EXPECT_NEAR(std::abs(svd.u.col(k).dot(u0.col(k))), 1.0, 1e-8) << "u_" << k;
      EXPECT_NEAR(std::abs(svd.v.col(k).dot(v0.col(k))), 1.0, 1e-8) << "v_" << k;
    }
  }
  // Rank-r error close to the optimal σ_{r+1} (HMT: within a small factor).
  const Eigen::MatrixXd approx = svd.u * svd.singular_values.asDiagonal() * svd.v.transpose();
  const double spectral_error = Eigen::JacobiSVD<Eigen::MatrixXd>(a - approx).singularValues()[0];
  EXPECT_LT(spectral_error, 2.0 * sigma[10]);
}

TEST(RandomizedSvd, FullSketchGivesTheExactSvd) {
  NormalRng rng(3);
  const Eigen::MatrixXd a = rng.Matrix(30, 200);
  RandomizedSvdOptions options;
  options.rank = 30;
  options.oversampling = 10;  // Capped at min(rows, cols) = 30.
  options.power_iterations = 0;
  NormalRng sketch(4);
  const TruncatedSvd svd = RandomizedSvd(DenseOperator(a), options, sketch);
  const Eigen::MatrixXd approx = svd.u * svd.singular_values.asDiagonal() * svd.v.transpose();
  EXPECT_NEAR((approx - a).norm() / a.norm(), 0.0, 1e-13);
  const Eigen::VectorXd exact = Eigen::JacobiSVD<Eigen::MatrixXd>(a).singularValues();
  EXPECT_NEAR((svd.singular_values - exact).norm() / exact.norm(), 0.0, 1e-13);
}

TEST(RandomizedSvd, ReproducesThePdeJacobianSpectrum) {
  LogDiffusionModel model(PoissonProblem(16));
  const BiLaplacianPrior prior(model.mesh(), PoissonPrior());
  NormalRng rng(5);
  const Evaluation evaluation = model.Evaluate(prior.Sample(rng));
  const Eigen::VectorXd exact =
      Eigen::JacobiSVD<Eigen::MatrixXd>(evaluation.Jacobian()).singularValues();
  // Pointwise observations make this spectrum decay slowly (σ_1/σ_50 ≈ 100), the hard case for
  // sketching: the error falls geometrically with the power iterations, by roughly
  // (σ_{ℓ+1}/σ_k)^{2q} (HMT §10.4), and three are needed for 1e-4 at r = 10, p = 10.
  std::printf("Poisson n = 16 Jacobian: σ_1 = %.3e, σ_10 = %.3e, σ_21 = %.3e, σ_50 = %.3e\n",
              exact[0], exact[9], exact[20], exact[49]);
  RandomizedSvdOptions options;
  options.rank = 10;
  options.oversampling = 10;
  TruncatedSvd svd;
  double previous_error = 1.0;
  for (int q = 0; q <= 3; ++q) {
    options.power_iterations = q;
    NormalRng sketch(6);
    svd = evaluation.JacobianSvd(options, sketch);
    double error = 0.0;
    for (int k = 0; k < 10; ++k) {
      error = std::max(error, std::abs(svd.singular_values[k] / exact[k] - 1.0));
    }
    std::printf("power iterations %d: max relative error of σ_1..σ_10 %.2e\n", q, error);
    EXPECT_LT(error, previous_error);
    previous_error = error;
  }
  EXPECT_LT(previous_error, 1e-4);
  ExpectOrthonormalColumns(svd.u);
  ExpectOrthonormalColumns(svd.v);
  // J v_1 = σ_1 u_1 for the leading, well-separated triplet.
  const Eigen::VectorXd jv = evaluation.ApplyJacobian(svd.v.col(0));
  EXPECT_NEAR((jv - svd.singular_values[0] * svd.u.col(0)).norm() / svd.singular_values[0], 0.0,
              1e-4);
}

TEST(ExactTruncatedSvd, TruncatesTheDenseSvd) {
  NormalRng rng(10);
  const Eigen::MatrixXd a = rng.Matrix(12, 40);
  const TruncatedSvd svd = ExactTruncatedSvd(a, 5);
  const Eigen::JacobiSVD<Eigen::MatrixXd> dense(a);
  EXPECT_NEAR((svd.singular_values - dense.singularValues().head(5)).norm(), 0.0, 1e-13);
  ExpectOrthonormalColumns(svd.u);
  ExpectOrthonormalColumns(svd.v);
  EXPECT_NEAR((a * svd.v - svd.u * svd.singular_values.asDiagonal()).norm(), 0.0, 1e-12);
  EXPECT_THROW(ExactTruncatedSvd(a, 13), std::invalid_argument);
}

TEST(RandomizedSvd, SameStreamSameResult) {
  NormalRng rng(7);
  const Eigen::MatrixXd a = rng.Matrix(20, 60);
  RandomizedSvdOptions options;
  options.rank = 5;
  NormalRng s1(8), s2(8);
  const TruncatedSvd first = RandomizedSvd(DenseOperator(a), options, s1);
  const TruncatedSvd second = RandomizedSvd(DenseOperator(a), options, s2);
  EXPECT_EQ(first.singular_values, second.singular_values);
  EXPECT_EQ(first.u, second.u);
  EXPECT_EQ(first.v, second.v);
}

TEST(RandomizedSvd, RejectsBadOptionsAndOperators) {
  NormalRng rng(9);
  const LinearOperator op = DenseOperator(Eigen::MatrixXd::Ones(5, 8));
  RandomizedSvdOptions options;
  options.rank = 6;  // > min(5, 8)
  EXPECT_THROW(RandomizedSvd(op, options, rng), std::invalid_argument);
  options.rank = 2;
  options.oversampling = -1;
  EXPECT_THROW(RandomizedSvd(op, options, rng), std::invalid_argument);
  options.oversampling = 2;
  LinearOperator wrong = op;
  wrong.apply = [](const Eigen::MatrixXd& x) -> Eigen::MatrixXd {
    return Eigen::MatrixXd::Zero(4, x.cols());
  };
  EXPECT_THROW(RandomizedSvd(wrong, options, rng), std::invalid_argument);
  LinearOperator missing = op;
  missing.apply_transpose = nullptr;
  EXPECT_THROW(RandomizedSvd(missing, options, rng), std::invalid_argument);
}

}  // namespace
}  // namespace dino::pde
