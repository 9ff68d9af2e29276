// Training samples: reproducibility, Jacobian modes, and the paper-size configuration.
#include "models/pde/sample.h"

#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <chrono>
#include <cstdio>

#include "models/pde/model.h"
#include "models/pde/prior.h"

namespace dino::pde {
namespace {

TEST(GenerateSample, IsReproducibleAndIndependentOfOrder) {
  LogDiffusionModel model(ReactionDiffusionProblem(12));
  const BiLaplacianPrior prior(model.mesh(), ReactionDiffusionPrior());
  JacobianOptions options;
  options.mode = JacobianMode::kFull;
  const Sample later = GenerateSample(model, prior, 99, 5, options);
  const Sample first = GenerateSample(model, prior, 99, 0, options);
  const Sample again = GenerateSample(model, prior, 99, 5, options);
  EXPECT_EQ(later.parameter, again.parameter);
  EXPECT_EQ(later.observables, again.observables);
  EXPECT_EQ(later.jacobian, again.jacobian);
  EXPECT_EQ(later.index, 5u);
  EXPECT_NE(first.parameter, later.parameter);
  EXPECT_NE(GenerateSample(model, prior, 100, 5, options).parameter, later.parameter);
}

TEST(GenerateSample, ModesProduceConsistentJacobianData) {
  LogDiffusionModel model(PoissonProblem(12));
  const BiLaplacianPrior prior(model.mesh(), PoissonPrior());
  JacobianOptions full;
  full.mode = JacobianMode::kFull;
  JacobianOptions none;
  none.mode = JacobianMode::kNone;
  JacobianOptions randomized;
  randomized.mode = JacobianMode::kRandomizedSvd;
  randomized.svd.rank = 50;  // d_Q: the randomized SVD is then exact.
  randomized.svd.power_iterations = 0;
  JacobianOptions exact;
  exact.mode = JacobianMode::kExactSvd;
  exact.svd.rank = 20;
  const Sample a = GenerateSample(model, prior, 7, 3, full);
  const Sample b = GenerateSample(model, prior, 7, 3, none);
  const Sample c = GenerateSample(model, prior, 7, 3, randomized);
  const Sample d = GenerateSample(model, prior, 7, 3, exact);
  EXPECT_EQ(a.observables, b.observables);
  EXPECT_EQ(b.jacobian.size(), 0);
  EXPECT_EQ(b.jacobian_svd.u.size(), 0);
  EXPECT_EQ(c.jacobian.size(), 0);
  const Eigen::MatrixXd reconstructed =
      c.jacobian_svd.u * c.jacobian_svd.singular_values.asDiagonal() * c.jacobian_svd.v.transpose();
  EXPECT_NEAR((reconstructed - a.jacobian).norm() / a.jacobian.norm(), 0.0, 1e-11);
  ASSERT_EQ(d.jacobian_svd.singular_values.size(), 20);
  EXPECT_NEAR((d.jacobian_svd.singular_values - c.jacobian_svd.singular_values.head(20)).norm() /
                  d.jacobian_svd.singular_values.norm(),
              0.0, 1e-12);
}

TEST(GenerateSample, RejectsMismatchedMeshes) {
  LogDiffusionModel model(PoissonProblem(8));
  const BiLaplacianPrior prior(StructuredTriMesh(9), PoissonPrior());
  EXPECT_THROW(GenerateSample(model, prior, 1, 0, JacobianOptions{}), std::invalid_argument);
}

// The configuration of paper §3.1 at full size: d_M = 4225, d_Q = 50.
TEST(GenerateSample, PaperSizeProblems) {
  for (bool reaction : {false, true}) {
    LogDiffusionModel model(reaction ? ReactionDiffusionProblem() : PoissonProblem());
    const BiLaplacianPrior prior(model.mesh(),
                                 reaction ? ReactionDiffusionPrior() : PoissonPrior());
    EXPECT_EQ(model.parameter_dim(), 4225);
    EXPECT_EQ(model.observation_dim(), 50);
    JacobianOptions options;
    options.mode = JacobianMode::kFull;
    const auto start = std::chrono::steady_clock::now();
    const Sample sample = GenerateSample(model, prior, 1, 0, options);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%s n = 64: sample with full Jacobian in %.3f s (%d Newton iterations)\n",
                reaction ? "reaction-diffusion" : "Poisson", seconds, sample.report.iterations);
    ASSERT_EQ(sample.jacobian.rows(), 50);
    ASSERT_EQ(sample.jacobian.cols(), 4225);
    EXPECT_TRUE(sample.jacobian.allFinite());
    EXPECT_TRUE(sample.observables.allFinite());
    EXPECT_GT(sample.jacobian.norm(), 0.0);
  }
}

}  // namespace
}  // namespace dino::pde
