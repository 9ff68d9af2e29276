// The trust score (models/architectures/training_inputs.h) and the trust signal of served
// requests (server/core/surrogate_model.h): the summary against a brute-force reference, the
// score against an independent torch computation, the signal of every method, the fast path
// without it, and the flag rates of the bundled Poisson DIPNet on prior samples.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "models/architectures/architectures.h"
#include "models/architectures/model_file.h"
#include "models/architectures/training_inputs.h"
#include "models/pde/mesh.h"
#include "models/pde/prior.h"
#include "models/pde/random.h"
#include "server/core/surrogate_model.h"
#include "tests/common/test_models.h"

namespace dino::serving {
namespace {

namespace dm = dino::models;
using ::testing::HasSubstr;

constexpr dino::testing::SmallDims kDims{};

torch::Tensor InputBasis(const torch::jit::Module& module) {
  return module.attr(dm::kInputBasis).toTensor();
}

// Training inputs with anisotropic reduced coordinates and a residual of varying size.
torch::Tensor TrainingInputs(int64_t n, int64_t d_m, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor scales = torch::linspace(0.2, 3.0, d_m, torch::kFloat64);
  return torch::randn({n, d_m}, torch::kFloat64) * scales + 0.5;
}

// The score of points m by the documented formula, from the raw training inputs, with none of
// training_inputs.cc: linear solves instead of the whitening, explicit leave-one-out refits
// for the distance scale, sorted values for the quantiles.
struct ReferenceScore {
  torch::Tensor basis, train_z, mean, covariance;
  double distance_scale, residual_mean, residual_scale, threshold;

  static double Quantile(torch::Tensor values) {  // numpy.quantile(method="higher")
    torch::Tensor sorted = std::get<0>(values.sort());
    const auto rank = static_cast<int64_t>(std::ceil(0.999 * (sorted.numel() - 1)));
    return sorted[rank].item<double>();
  }
  static torch::Tensor Distance(const torch::Tensor& z, const torch::Tensor& mean,
                                const torch::Tensor& covariance) {
    torch::Tensor d = z - mean;
    return (d * torch::linalg_solve(covariance, d.t(), true).t()).sum(1).sqrt();
  }
  static torch::Tensor Residual(const torch::Tensor& m, const torch::Tensor& basis) {
    torch::Tensor projected = torch::mm(torch::mm(m, basis), basis.t());
    return (m - projected).square().sum(1).sqrt() / m.square().sum(1).sqrt();
  }

  ReferenceScore(const torch::Tensor& v, const torch::Tensor& m) : basis(v) {
    train_z = torch::mm(m, v);
    mean = train_z.mean(0);
    covariance = torch::cov(train_z.t());
    const int64_t n = m.size(0);
    std::vector<double> loo(n);
    for (int64_t i = 0; i < n; ++i) {
      torch::Tensor others =
          torch::cat({train_z.narrow(0, 0, i), train_z.narrow(0, i + 1, n - i - 1)});
      loo[i] =
          Distance(train_z.narrow(0, i, 1), others.mean(0), torch::cov(others.t())).item<double>();
    }
    torch::Tensor loo_distance = torch::tensor(loo, torch::kFloat64);
    distance_scale = Quantile(loo_distance);
    torch::Tensor residual = Residual(m, v);
    residual_mean = residual.mean().item<double>();
    residual_scale = Quantile(residual) - residual_mean;
    threshold = Quantile(
        torch::maximum(loo_distance / distance_scale, (residual - residual_mean) / residual_scale));
  }

  torch::Tensor Score(const torch::Tensor& m) const {
    return torch::maximum(Distance(torch::mm(m, basis), mean, covariance) / distance_scale,
                          (Residual(m, basis) - residual_mean) / residual_scale) /
           threshold;
  }
};

TEST(TrainingInputSummaryTest, MatchesTheBruteForceReference) {
  const torch::jit::Module module = dino::testing::SmallDipnet(kDims, torch::kFloat64, 3);
  const torch::Tensor v = InputBasis(module);
  const torch::Tensor m = TrainingInputs(200, kDims.d_m, 1);
  const dm::TrainingInputSummary summary = dm::TrainingInputSummary::Fit(v, m);
  const ReferenceScore reference(v, m);
  EXPECT_EQ(summary.samples, 200);
  EXPECT_NEAR(summary.distance_scale, reference.distance_scale, 1e-10);
  EXPECT_NEAR(summary.residual_mean, reference.residual_mean, 1e-12);
  EXPECT_NEAR(summary.residual_scale, reference.residual_scale, 1e-12);
  EXPECT_NEAR(summary.threshold, reference.threshold, 1e-10);

  // Fresh points from the training distribution and far from it, in both dtypes.
  torch::Tensor points =
      torch::cat({TrainingInputs(20, kDims.d_m, 2), 4 * TrainingInputs(5, kDims.d_m, 3),
                  torch::zeros({1, kDims.d_m}, torch::kFloat64)});
  const torch::Tensor expected = reference.Score(points).nan_to_num(0.0);
  for (torch::Dtype dtype : {torch::kFloat64, torch::kFloat32}) {
    torch::Tensor p = points.to(dtype);
    const std::vector<double> scores = summary.Score(p, torch::mm(p, v.to(dtype)));
    ASSERT_EQ(scores.size(), static_cast<size_t>(points.size(0)));
    const double tolerance = dtype == torch::kFloat64 ? 1e-10 : 1e-4;
    for (int64_t i = 0; i + 1 < points.size(0); ++i) {
      EXPECT_NEAR(scores[i], expected[i].item<double>(), tolerance * (1 + scores[i])) << i;
    }
    // m = 0: distance of z = 0 only; ρ(0) is defined as 0, a share never out of distribution.
    const double zero_distance =
        ReferenceScore::Distance(torch::zeros({1, kDims.r_m}, torch::kFloat64), reference.mean,
                                 reference.covariance)
            .item<double>();
    EXPECT_NEAR(scores.back(), zero_distance / reference.distance_scale / reference.threshold,
                tolerance);
  }
  // The scaled points are far out, the training-like ones mostly in.
  const std::vector<double> scores = summary.Score(points, torch::mm(points, v));
  for (int64_t i = 20; i < 25; ++i) EXPECT_GT(scores[i], 1.0) << i;
}

TEST(TrainingInputSummaryTest, JsonRoundTripIsExactAndChecked) {
  const torch::jit::Module module = dino::testing::SmallDipnet(kDims, torch::kFloat64, 3);
  const dm::TrainingInputSummary summary =
      dm::TrainingInputSummary::Fit(InputBasis(module), TrainingInputs(50, kDims.d_m, 1));
  const nlohmann::json json = nlohmann::json::parse(summary.ToJson().dump());
  const dm::TrainingInputSummary back = dm::TrainingInputSummary::FromJson(json, kDims.r_m);
  EXPECT_TRUE(torch::equal(back.mean, summary.mean));
  EXPECT_TRUE(torch::equal(back.whitening, summary.whitening));
  EXPECT_EQ(back.threshold, summary.threshold);
  EXPECT_EQ(back.distance_scale, summary.distance_scale);

  EXPECT_THAT([&] { dm::TrainingInputSummary::FromJson(json, kDims.r_m + 1); },
              ::testing::ThrowsMessage<std::invalid_argument>(HasSubstr("input_rank")));
  nlohmann::json broken = json;
  broken["whitening"][2].erase(0);
  EXPECT_THAT([&] { dm::TrainingInputSummary::FromJson(broken, kDims.r_m); },
              ::testing::ThrowsMessage<std::invalid_argument>(HasSubstr("whitening")));
  broken = json;
  broken.erase("threshold");
  EXPECT_THAT([&] { dm::TrainingInputSummary::FromJson(broken, kDims.r_m); },
              ::testing::ThrowsMessage<std::invalid_argument>(HasSubstr("threshold")));
  EXPECT_THAT(
      [&] { dm::TrainingInputSummary::Fit(InputBasis(module), TrainingInputs(10, kDims.d_m, 1)); },
      ::testing::ThrowsMessage<std::invalid_argument>(HasSubstr("r_M + 2")));
}

std::shared_ptr<const SurrogateModel> SmallModel(bool with_summary) {
  const torch::jit::Module module = dino::testing::SmallDipnet(kDims, torch::kFloat64, 3);
  nlohmann::json summary = nullptr;
  if (with_summary) {
    summary = dm::TrainingInputSummary::Fit(InputBasis(module), TrainingInputs(100, kDims.d_m, 1))
                  .ToJson();
  }
  auto model = SurrogateModel::FromModule(
      module.clone(), nlohmann::json::parse(dino::testing::SmallMetadata("dipnet", kDims.d_m)),
      "small", {}, summary);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

TEST(TrustSignalTest, EveryMethodScoresItsPointsAndKeepsItsValues) {
  auto model = SmallModel(true);
  ASSERT_TRUE(model->info().has_trust_score);
  const torch::Tensor v = model->GetBases()->input_basis;
  const torch::jit::Module module = dino::testing::SmallDipnet(kDims, torch::kFloat64, 3);
  const dm::TrainingInputSummary summary =
      dm::TrainingInputSummary::Fit(InputBasis(module), TrainingInputs(100, kDims.d_m, 1));
  const torch::Tensor m =
      torch::cat({TrainingInputs(3, kDims.d_m, 9), 5 * TrainingInputs(1, kDims.d_m, 9)});
  const std::vector<double> expected = summary.Score(m, torch::mm(m, v));

  std::vector<Query> queries(5);
  queries[0].method = Method::kEvaluate;
  queries[1].method = Method::kJvp;
  queries[1].directions = torch::randn({4, kDims.d_m}, torch::kFloat64);
  queries[2].method = Method::kVjp;
  queries[2].cotangents = torch::randn({4, 2, kDims.d_q}, torch::kFloat64);
  queries[3].method = Method::kReducedJacobian;
  queries[4].method = Method::kJacobian;
  for (Query& query : queries) query.m = query.method == Method::kJacobian ? m.narrow(0, 3, 1) : m;

  std::vector<PreparedQuery> plain, trusted;
  for (Query query : queries) {
    plain.push_back(*model->Prepare(query));
    query.want_trust = true;
    trusted.push_back(*model->Prepare(query));
  }
  // One batch with plain and trusted queries of every method, as the batcher would stack them.
  std::vector<const PreparedQuery*> batch;
  for (size_t i = 0; i < queries.size(); ++i) {
    batch.push_back(&plain[i]);
    batch.push_back(&trusted[i]);
  }
  const std::vector<absl::StatusOr<Answer>> answers = model->Compute(batch);
  for (size_t i = 0; i < queries.size(); ++i) {
    const Answer& without = *answers[2 * i];
    const Answer& with = *answers[2 * i + 1];
    SCOPED_TRACE(MethodName(queries[i].method));
    EXPECT_FALSE(without.trust.has_value());
    ASSERT_TRUE(with.trust.has_value());
    EXPECT_TRUE(torch::allclose(with.values, without.values, 1e-12, 1e-12));
    const size_t first = queries[i].method == Method::kJacobian ? 3 : 0;
    ASSERT_EQ(with.trust->score.size(), expected.size() - first);
    int64_t flagged = 0;
    for (size_t j = 0; j < with.trust->score.size(); ++j) {
      EXPECT_NEAR(with.trust->score[j], expected[first + j], 1e-12);
      EXPECT_EQ(with.trust->out_of_distribution[j], expected[first + j] > 1.0);
      flagged += expected[first + j] > 1.0;
    }
    EXPECT_EQ(with.trust->flagged, flagged);
    EXPECT_TRUE(with.trust->out_of_distribution.back()) << "5× the training inputs";
  }
  // Alone, a trusted Evaluate gets what it got in the batch.
  auto alone = model->Run([&] {
    Query q = queries[0];
    q.want_trust = true;
    return q;
  }());
  ASSERT_TRUE(alone.ok());
  EXPECT_EQ(alone->trust->score, answers[1]->trust->score);
}

TEST(TrustSignalTest, ModelsWithoutASummaryRefuseIt) {
  Query query;
  query.m = TrainingInputs(1, kDims.d_m, 1);
  query.want_trust = true;
  auto refused = SmallModel(false)->Run(query);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("return_trust"));
  EXPECT_THAT(refused.status().message(), HasSubstr("dino-train training-inputs"));
  EXPECT_FALSE(SmallModel(false)->info().has_trust_score);

  auto generic = SurrogateModel::FromModule(
      dino::testing::SmallGeneric(kDims, torch::kFloat64, 1),
      nlohmann::json::parse(dino::testing::SmallMetadata("generic", kDims.d_m)), "generic", {});
  ASSERT_TRUE(generic.ok()) << generic.status();
  EXPECT_THAT((*generic)->Run(query).status().message(), HasSubstr("only reduced-basis"));
}

// A bundled DIPNet and the prior its training inputs were drawn from.
struct BundledModel {
  std::string version_folder;  // <name>/<version> in models/repository
  pde::PriorConfig (*prior)();
};

// The bundled DIPNets on prior samples (the acceptance numbers).
class BundledModelTest : public ::testing::TestWithParam<BundledModel> {
 protected:
  void SetUp() override {
    auto loaded = SurrogateModel::Load(std::string(DINO_SOURCE_DIR) + "/models/repository/" +
                                           GetParam().version_folder + "/model.pt",
                                       {});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model_ = *loaded;
  }

  // The share of `count` samples of `config` (mean + scale·(sample − mean)) flagged.
  double FlagRate(const pde::PriorConfig& config, double scale, int count, uint64_t seed) const {
    const pde::BiLaplacianPrior prior(pde::StructuredTriMesh(64), config);
    pde::NormalRng rng(seed);
    torch::Tensor m = torch::empty({count, prior.dim()}, torch::kFloat64);
    const Eigen::VectorXd mean = prior.MeanVector();
    for (int i = 0; i < count; ++i) {
      const Eigen::VectorXd sample = mean + scale * (prior.Sample(rng) - mean);
      std::copy(sample.data(), sample.data() + sample.size(), m[i].data_ptr<double>());
    }
    Query query;
    query.m = m;
    query.want_trust = true;
    auto answer = model_->Run(query);
    EXPECT_TRUE(answer.ok()) << answer.status();
    return answer.ok() ? static_cast<double>(answer->trust->flagged) / count : 1.0;
  }

  std::shared_ptr<const SurrogateModel> model_;
};

TEST_P(BundledModelTest, FlagsFewFreshPriorSamplesAndAlmostAllWiderOnes) {
  ASSERT_TRUE(model_->info().has_trust_score);
  const pde::PriorConfig training_prior = GetParam().prior();
  // Seeds other than the training data's (dino-train generate --seed 1 draws from its own
  // streams), so these are fresh samples.
  const double fresh = FlagRate(training_prior, 1.0, 2000, 77);
  const double wider = FlagRate(training_prior, std::sqrt(3.0), 500, 78);
  pde::PriorConfig longer = training_prior;
  // Correlation length ∝ √(γ/δ), pointwise variance ∝ 1/(γδ): twice the length, same variance.
  longer.gamma *= 2.0;
  longer.delta /= 2.0;
  const double smoother = FlagRate(longer, 1.0, 500, 79);
  RecordProperty("fresh_prior_flag_rate", std::to_string(fresh));
  RecordProperty("three_times_variance_flag_rate", std::to_string(wider));
  RecordProperty("twice_correlation_length_flag_rate", std::to_string(smoother));
  std::printf("%s flag rates: fresh prior %.4f, 3x variance %.4f, 2x correlation length %.4f\n",
              GetParam().version_folder.c_str(), fresh, wider, smoother);
  EXPECT_LE(fresh, 0.005);
  EXPECT_GE(wider, 0.99);
}

INSTANTIATE_TEST_SUITE_P(
    Repository, BundledModelTest,
    ::testing::Values(BundledModel{"poisson_dipnet/3", pde::PoissonPrior},
                      BundledModel{"poisson_dipnet/4", pde::PoissonPrior},
                      BundledModel{"poisson_dipnet/5", pde::PoissonPrior},
                      BundledModel{"reaction_diffusion_dipnet/1", pde::ReactionDiffusionPrior},
                      BundledModel{"reaction_diffusion_dipnet/2", pde::ReactionDiffusionPrior}),
    [](const ::testing::TestParamInfo<BundledModel>& info) {
      std::string name = info.param.version_folder;
      std::replace(name.begin(), name.end(), '/', '_');
      return name;
    });

}  // namespace
}  // namespace dino::serving
