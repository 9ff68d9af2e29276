// The served prior (server/core/model_prior.h): samples are the generator's and have the
// prior's mean and covariance; the operators are consistent (G Gᵀ = C, C C⁻¹ = I, G⁻¹ G = I);
// the affine maps use the mean; errors name the field.
#include "server/core/model_prior.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "models/pde/sample.h"

namespace dino::serving {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMaxRows = 4096;

double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected) {
  return ((actual - expected).norm() / expected.norm()).item<double>();
}

torch::Tensor Apply(const ModelPrior& prior, PriorOperator op, const torch::Tensor& x,
                    bool with_mean = false) {
  auto result = prior.Apply(op, x, with_mean, kMaxRows);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : torch::Tensor();
}

// Sample i of seed s is sample first_index + i of `dino-train generate --seed s`: the prior
// noise of pde::GenerateSample, bit for bit.
TEST(ModelPrior, SamplesAreTheGeneratorsSamples) {
  for (pipeline::Problem problem :
       {pipeline::Problem::kPoisson, pipeline::Problem::kReactionDiffusion}) {
    auto prior = ModelPrior::ForProblem(problem, 6);
    ASSERT_TRUE(prior.ok());
    auto samples = (*prior)->Sample(3, 42, 5, kMaxRows);
    ASSERT_TRUE(samples.ok());
    ASSERT_EQ(samples->sizes(), (std::vector<int64_t>{3, 49}));
    pde::LogDiffusionModel model(pipeline::ProblemConfigFor(problem, 6));
    const pde::BiLaplacianPrior reference(model.mesh(), pipeline::PriorConfigFor(problem));
    for (int64_t i = 0; i < 3; ++i) {
      pde::JacobianOptions options;
      options.mode = pde::JacobianMode::kNone;
      const pde::Sample sample = pde::GenerateSample(model, reference, 42, 5 + i, options);
      const torch::Tensor expected =
          torch::from_blob(const_cast<double*>(sample.parameter.data()), {49}, torch::kFloat64);
      EXPECT_EQ(((*samples)[i] - expected).abs().max().item<double>(), 0.0);
    }
    // Deterministic, and another seed gives other samples.
    EXPECT_TRUE(torch::equal(*samples, *(*prior)->Sample(3, 42, 5, kMaxRows)));
    EXPECT_FALSE(torch::equal(*samples, *(*prior)->Sample(3, 43, 5, kMaxRows)));
  }
}

// Monte Carlo: mean and covariance of 20,000 samples against m̄ and C (4 × 4 mesh, d_M = 25).
TEST(ModelPrior, SampleMeanAndCovariance) {
  pde::PriorConfig config = pipeline::PriorConfigFor(pipeline::Problem::kPoisson);
  config.mean = 0.3;
  const ModelPrior prior(pipeline::Problem::kPoisson, 4, config);
  const int64_t n = 20000;
  const torch::Tensor samples = *prior.Sample(n, 1, 0, n);
  const torch::Tensor covariance =
      Apply(prior, PriorOperator::kCovariance, torch::eye(25, torch::kFloat64));
  const torch::Tensor mean = samples.mean(0);
  // Each coordinate's sample mean within 5 standard errors of m̄.
  const torch::Tensor standard_error = (covariance.diagonal() / n).sqrt();
  EXPECT_LT(((mean - prior.mean()).abs() / standard_error).max().item<double>(), 5.0);
  const torch::Tensor centered = samples - mean;
  const torch::Tensor empirical = centered.t().mm(centered) / (n - 1);
  // Frobenius error of a Monte Carlo covariance: O(‖C‖/√n) ≈ 1 %.
  EXPECT_LT(RelativeError(empirical, covariance), 0.05);
}

TEST(ModelPrior, OperatorsAreConsistent) {
  pde::PriorConfig config = pipeline::PriorConfigFor(pipeline::Problem::kReactionDiffusion);
  config.mean = -0.7;  // Non-zero, so that the affine maps are tested.
  const ModelPrior prior(pipeline::Problem::kReactionDiffusion, 8, config);
  const int64_t d = prior.dim();
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({5, d}, torch::kFloat64);
  const torch::Tensor cx = Apply(prior, PriorOperator::kCovariance, x);
  // G Gᵀ = C.
  EXPECT_LT(RelativeError(Apply(prior, PriorOperator::kCovarianceSqrt,
                                Apply(prior, PriorOperator::kCovarianceSqrtTranspose, x)),
                          cx),
            1e-12);
  // C C⁻¹ = C⁻¹ C = I.
  EXPECT_LT(
      RelativeError(
          Apply(prior, PriorOperator::kCovariance, Apply(prior, PriorOperator::kPrecision, x)), x),
      1e-10);
  EXPECT_LT(RelativeError(Apply(prior, PriorOperator::kPrecision, cx), x), 1e-10);
  // G⁻¹ G = I and G⁻ᵀG⁻¹ = C⁻¹ (as ⟨G⁻¹x, G⁻¹x⟩ = ⟨x, C⁻¹x⟩).
  const torch::Tensor whitened = Apply(prior, PriorOperator::kCovarianceSqrtInverse, x);
  EXPECT_LT(RelativeError(Apply(prior, PriorOperator::kCovarianceSqrtInverse,
                                Apply(prior, PriorOperator::kCovarianceSqrt, x)),
                          x),
            1e-10);
  EXPECT_LT(RelativeError((whitened * whitened).sum(1),
                          (x * Apply(prior, PriorOperator::kPrecision, x)).sum(1)),
            1e-10);
  // Gᵀ is G's transpose: ⟨Gx, y⟩ = ⟨x, Gᵀy⟩.
  const torch::Tensor y = torch::randn({5, d}, torch::kFloat64);
  EXPECT_LT(RelativeError((Apply(prior, PriorOperator::kCovarianceSqrt, x) * y).sum(1),
                          (x * Apply(prior, PriorOperator::kCovarianceSqrtTranspose, y)).sum(1)),
            1e-12);
  // One vector [d_M] gives [d_M], the row of the batched call.
  EXPECT_LT(RelativeError(Apply(prior, PriorOperator::kCovariance, x[2]), cx[2]), 1e-15);

  // The affine maps: m = m̄ + Gξ, ξ = G⁻¹(m − m̄), C⁻¹(m − m̄).
  const torch::Tensor m = Apply(prior, PriorOperator::kCovarianceSqrt, x, /*with_mean=*/true);
  EXPECT_LT(RelativeError(m, prior.mean() + Apply(prior, PriorOperator::kCovarianceSqrt, x)),
            1e-15);
  EXPECT_LT(RelativeError(Apply(prior, PriorOperator::kCovarianceSqrtInverse, m, true), x), 1e-10);
  EXPECT_LT(RelativeError(Apply(prior, PriorOperator::kPrecision, m, true),
                          Apply(prior, PriorOperator::kPrecision, m - prior.mean())),
            1e-15);
  // Float32 input is accepted (computed in float64).
  EXPECT_LT(RelativeError(Apply(prior, PriorOperator::kCovariance, x.to(torch::kFloat32)), cx),
            1e-6);
}

TEST(ModelPrior, ErrorsNameTheField) {
  auto prior = ModelPrior::ForProblem(pipeline::Problem::kPoisson, 4);
  ASSERT_TRUE(prior.ok());
  const torch::Tensor ok = torch::zeros({2, 25}, torch::kFloat64);
  auto message = [](const absl::Status& status) { return std::string(status.message()); };

  auto wrong_shape = (*prior)->Apply(PriorOperator::kCovariance, torch::zeros({2, 24}), false, 8);
  EXPECT_EQ(wrong_shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      message(wrong_shape.status()),
      HasSubstr("vectors must have shape [k, 25] or [25] with k ≥ 1 (d_M = 25), got [2, 24]"));
  torch::Tensor nan = ok.clone();
  nan[1][3] = std::nan("");
  EXPECT_THAT(message((*prior)->Apply(PriorOperator::kPrecision, nan, false, 8).status()),
              HasSubstr("vectors contains a non-finite value (NaN or Inf) at index [1, 3]"));
  EXPECT_THAT(message((*prior)
                          ->Apply(PriorOperator::kCovariance, torch::zeros({2, 25}, torch::kInt64),
                                  false, 8)
                          .status()),
              HasSubstr("vectors must be float32 or float64"));
  EXPECT_THAT(message((*prior)->Apply(PriorOperator::kCovariance, ok, true, 8).status()),
              HasSubstr("with_mean applies to covariance_sqrt"));
  EXPECT_THAT(
      message((*prior)->Apply(PriorOperator::kCovarianceSqrtTranspose, ok, true, 8).status()),
      HasSubstr("not to covariance_sqrt_transpose"));
  auto too_many = (*prior)->Apply(PriorOperator::kCovariance, torch::zeros({9, 25}), false, 8);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(message(too_many.status()), HasSubstr("vectors has 9 rows"));

  EXPECT_THAT(message((*prior)->Sample(0, 1, 0, 8).status()),
              HasSubstr("count must be at least 1"));
  auto many_samples = (*prior)->Sample(9, 1, 0, 8);
  EXPECT_EQ(many_samples.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(message(many_samples.status()), HasSubstr("count is 9 samples"));
  EXPECT_THAT(message((*prior)->Sample(2, 1, UINT64_MAX / 2, 8).status()),
              HasSubstr("first_index"));
  EXPECT_THAT(message(ModelPrior::ForProblem(pipeline::Problem::kPoisson, 1).status()),
              HasSubstr("mesh_cells must be in [2, 1024], got 1"));
}

}  // namespace
}  // namespace dino::serving
