// Exactness of the served derivatives on float64 models of both architectures: Jvp and Vjp
// against central finite differences, the adjoint identity, reduced Jacobians against the
// full Jacobian, and the precise errors of bad inputs.
#include "server/core/surrogate_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "models/architectures/architectures.h"
#include "nlohmann/json.hpp"
#include "tests/common/test_models.h"

namespace dino::serving {
namespace {

using dino::testing::SmallDims;
using ::testing::HasSubstr;

constexpr SmallDims kDims{};

std::shared_ptr<const SurrogateModel> Wrap(torch::jit::Module module, ComputeLimits limits = {}) {
  auto model = SurrogateModel::FromModule(
      std::move(module), nlohmann::json::parse(dino::testing::SmallMetadata("test", kDims.d_m)),
      "test model", limits);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected) {
  return (actual - expected).norm().item<double>() / expected.norm().item<double>();
}

torch::Tensor Gaussian(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn(shape, torch::kFloat64);
}

// Central finite-difference Jacobian [d_Q, d_M] of the model at m [d_M].
torch::Tensor FiniteDifferenceJacobian(const SurrogateModel& model, const torch::Tensor& m) {
  const double h = 1e-5;
  const int64_t d_m = m.size(0);
  torch::Tensor plus = m.unsqueeze(0).repeat({d_m, 1}) + h * torch::eye(d_m, torch::kFloat64);
  torch::Tensor minus = m.unsqueeze(0).repeat({d_m, 1}) - h * torch::eye(d_m, torch::kFloat64);
  return ((*model.Evaluate(plus) - *model.Evaluate(minus)) / (2 * h)).t();
}

class DerivativeTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_ = GetParam() == "dipnet" ? Wrap(dino::testing::SmallDipnet(kDims, torch::kFloat64, 7))
                                    : Wrap(dino::testing::SmallGeneric(kDims, torch::kFloat64, 7));
    m_ = Gaussian({kDims.d_m}, 11);
    jacobian_fd_ = FiniteDifferenceJacobian(*model_, m_);
  }
  std::shared_ptr<const SurrogateModel> model_;
  torch::Tensor m_, jacobian_fd_;
};

TEST_P(DerivativeTest, ArchitectureIsDetected) {
  EXPECT_EQ(model_->info().has_reduced_bases, GetParam() == "dipnet");
  EXPECT_EQ(model_->info().input_dim, kDims.d_m);
  EXPECT_EQ(model_->info().output_dim, kDims.d_q);
  EXPECT_EQ(model_->info().dtype, torch::kFloat64);
}

TEST_P(DerivativeTest, JvpMatchesFiniteDifferences) {
  // k = 3 < d_Q exercises the double-backward path of generic models, k = d_Q + 2 the
  // full-Jacobian path.
  for (int64_t k : {int64_t{1}, int64_t{3}, kDims.d_q + 2}) {
    torch::Tensor v = Gaussian({k, kDims.d_m}, 100 + k);
    auto result = model_->Jvp(m_, v, /*want_q=*/true);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->values.sizes(), (std::vector<int64_t>{k, kDims.d_q}));
    EXPECT_LE(RelativeError(result->values, torch::mm(v, jacobian_fd_.t())), 1e-6) << "k=" << k;
    EXPECT_LE(RelativeError(result->q, (*model_->Evaluate(m_))[0]), 1e-14);
  }
}

TEST_P(DerivativeTest, VjpMatchesFiniteDifferences) {
  for (int64_t k : {int64_t{1}, int64_t{4}}) {
    torch::Tensor w = Gaussian({k, kDims.d_q}, 200 + k);
    auto result = model_->Vjp(m_.unsqueeze(0), w, /*want_q=*/false);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->values.sizes(), (std::vector<int64_t>{k, kDims.d_m}));
    EXPECT_LE(RelativeError(result->values, torch::mm(w, jacobian_fd_)), 1e-6);
    EXPECT_FALSE(result->q.defined());
  }
}

TEST_P(DerivativeTest, AdjointIdentityHolds) {
  for (uint64_t trial = 0; trial < 5; ++trial) {
    torch::Tensor v = Gaussian({1, kDims.d_m}, 300 + trial);
    torch::Tensor w = Gaussian({1, kDims.d_q}, 400 + trial);
    const double w_jv = (w * model_->Jvp(m_, v, false)->values).sum().item<double>();
    const double jtw_v = (model_->Vjp(m_, w, false)->values * v).sum().item<double>();
    EXPECT_NEAR(w_jv, jtw_v, 1e-10 * std::max(1.0, std::abs(w_jv)));
  }
}

TEST_P(DerivativeTest, JacobianIsStackedJvpOfUnitVectors) {
  auto jacobian = model_->Jacobian(m_, /*want_q=*/true);
  ASSERT_TRUE(jacobian.ok()) << jacobian.status();
  auto columns = model_->Jvp(m_, torch::eye(kDims.d_m, torch::kFloat64), false);
  ASSERT_TRUE(columns.ok());
  EXPECT_LE(RelativeError(jacobian->values, columns->values.t()), 1e-12);
  EXPECT_LE(RelativeError(jacobian->values, jacobian_fd_), 1e-6);
}

TEST_P(DerivativeTest, ClientBasisReducedJacobianIsProjectedJacobian) {
  torch::Tensor u_c = dino::models::RandomOrthonormalColumns(kDims.d_q, 5, 21);
  torch::Tensor v_c = dino::models::RandomOrthonormalColumns(kDims.d_m, 7, 22);
  torch::Tensor batch = torch::stack({m_, Gaussian({kDims.d_m}, 23)});
  auto reduced = model_->ReducedJacobian(batch, u_c, v_c);
  ASSERT_TRUE(reduced.ok()) << reduced.status();
  ASSERT_EQ(reduced->reduced_jacobian.sizes(), (std::vector<int64_t>{2, 5, 7}));
  for (int64_t b = 0; b < 2; ++b) {
    torch::Tensor full = model_->Jacobian(batch[b], false)->values;
    EXPECT_LE(RelativeError(reduced->reduced_jacobian[b], torch::mm(torch::mm(u_c.t(), full), v_c)),
              1e-12);
  }
  EXPECT_LE(RelativeError(reduced->q, *model_->Evaluate(batch)), 1e-14);
}

TEST_P(DerivativeTest, HessianVectorProductMatchesFiniteDifferencesOfVjp) {
  // ∂²⟨s, f⟩/∂m² · v = d/dt [J(m + t v)ᵀ s] at t = 0, by central differences of the served
  // Vjp (whose own exactness the tests above establish).
  torch::Tensor s = Gaussian({kDims.d_q}, 61);
  torch::Tensor v = Gaussian({kDims.d_m}, 62);
  auto action = model_->HessianVectorProduct(m_, s, v);
  ASSERT_TRUE(action.ok()) << action.status();
  ASSERT_EQ(action->sizes(), (std::vector<int64_t>{1, kDims.d_m}));
  const double h = 1e-5;
  auto plus = model_->Vjp(m_ + h * v, s, /*want_q=*/false);
  auto minus = model_->Vjp(m_ - h * v, s, /*want_q=*/false);
  ASSERT_TRUE(plus.ok() && minus.ok());
  torch::Tensor expected = (plus->values - minus->values) / (2 * h);
  // A nonlinear model: the action is far from zero, so the comparison tests something.
  ASSERT_GT(expected.norm().item<double>(), 1e-3);
  EXPECT_LE(RelativeError((*action)[0], expected[0]), 1e-6);
  // Symmetry of the Hessian of ⟨s, f⟩: ⟨w, H v⟩ = ⟨v, H w⟩.
  torch::Tensor w = Gaussian({kDims.d_m}, 63);
  auto action_w = model_->HessianVectorProduct(m_, s, w);
  ASSERT_TRUE(action_w.ok()) << action_w.status();
  EXPECT_NEAR(torch::dot((*action)[0], w).item<double>(),
              torch::dot((*action_w)[0], v).item<double>(),
              1e-10 * (1 + std::abs(torch::dot((*action)[0], w).item<double>())));
}

TEST_P(DerivativeTest, HessianVectorProductPerPointEqualsEachPointAlone) {
  torch::Tensor m = Gaussian({3, kDims.d_m}, 64);
  torch::Tensor s = Gaussian({3, kDims.d_q}, 65);
  torch::Tensor v = Gaussian({3, kDims.d_m}, 66);
  auto together = model_->HessianVectorProduct(m, s, v);
  ASSERT_TRUE(together.ok()) << together.status();
  ASSERT_EQ(together->sizes(), (std::vector<int64_t>{3, kDims.d_m}));
  for (int64_t b = 0; b < 3; ++b) {
    auto alone = model_->HessianVectorProduct(m[b], s[b], v[b]);
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_LE(RelativeError((*together)[b], (*alone)[0]), 1e-12) << "point " << b;
  }
}

TEST_P(DerivativeTest, HessianVectorProductTakesJvpShapesOfDirections) {
  // One point with k directions: [k, d_M]; B points with k each: [B, k, d_M]. Every action is
  // the one of its point and direction alone.
  torch::Tensor m = Gaussian({2, kDims.d_m}, 67);
  torch::Tensor s = Gaussian({2, kDims.d_q}, 68);
  torch::Tensor directions = Gaussian({2, 3, kDims.d_m}, 69);
  auto per_point = model_->HessianVectorProduct(m, s, directions);
  ASSERT_TRUE(per_point.ok()) << per_point.status();
  ASSERT_EQ(per_point->sizes(), directions.sizes());
  for (int64_t b = 0; b < 2; ++b) {
    auto one_point = model_->HessianVectorProduct(m[b], s[b], directions[b]);
    ASSERT_TRUE(one_point.ok()) << one_point.status();
    ASSERT_EQ(one_point->sizes(), (std::vector<int64_t>{3, kDims.d_m}));
    for (int64_t i = 0; i < 3; ++i) {
      auto alone = model_->HessianVectorProduct(m[b], s[b], directions[b][i]);
      ASSERT_TRUE(alone.ok()) << alone.status();
      EXPECT_LE(RelativeError((*per_point)[b][i], (*alone)[0]), 1e-12) << b << ", " << i;
      EXPECT_LE(RelativeError((*one_point)[i], (*alone)[0]), 1e-12) << b << ", " << i;
    }
  }
  auto wrong = model_->HessianVectorProduct(m, s, Gaussian({3, 2, kDims.d_m}, 70));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong.status().message(), HasSubstr("directions of rank 3"));
}

TEST_P(DerivativeTest, HessianVectorProductErrorsNameTheField) {
  auto wrong_s = model_->HessianVectorProduct(m_, Gaussian({kDims.d_q + 1}, 1), m_);
  EXPECT_EQ(wrong_s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_s.status().message(), HasSubstr("cotangents"));
  auto wrong_v = model_->HessianVectorProduct(m_, Gaussian({kDims.d_q}, 1), Gaussian({3}, 2));
  EXPECT_EQ(wrong_v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_v.status().message(), HasSubstr("directions"));
  auto rows = model_->HessianVectorProduct(Gaussian({2, kDims.d_m}, 3), Gaussian({kDims.d_q}, 1),
                                           Gaussian({2, kDims.d_m}, 2));
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(rows.status().message(), HasSubstr("cotangents must have one row per point"));
}

INSTANTIATE_TEST_SUITE_P(BothArchitectures, DerivativeTest, ::testing::Values("dipnet", "generic"));

TEST(DipnetTest, ReducedJacobianInModelBasesIsUtJV) {
  auto model = Wrap(dino::testing::SmallDipnet(kDims, torch::kFloat64, 3));
  auto bases = model->GetBases();
  ASSERT_TRUE(bases.ok());
  torch::Tensor batch = Gaussian({3, kDims.d_m}, 5);
  auto reduced = model->ReducedJacobian(batch, torch::Tensor(), torch::Tensor());
  ASSERT_TRUE(reduced.ok()) << reduced.status();
  ASSERT_EQ(reduced->reduced_jacobian.sizes(), (std::vector<int64_t>{3, kDims.r_q, kDims.r_m}));
  for (int64_t b = 0; b < 3; ++b) {
    torch::Tensor full = model->Jacobian(batch[b], false)->values;
    torch::Tensor projected =
        torch::mm(torch::mm(bases->output_basis.t(), full), bases->input_basis);
    EXPECT_LE(RelativeError(reduced->reduced_jacobian[b], projected), 1e-12);
  }
}

TEST(DipnetTest, Float32ModelAgreesWithFloat64Model) {
  auto model64 = Wrap(dino::testing::SmallDipnet(kDims, torch::kFloat64, 3));
  auto model32 = Wrap(dino::testing::SmallDipnet(kDims, torch::kFloat32, 3));
  EXPECT_EQ(model32->info().dtype, torch::kFloat32);
  torch::Tensor m = Gaussian({kDims.d_m}, 8);  // float64 input to a float32 model
  torch::Tensor w = Gaussian({2, kDims.d_q}, 9);
  auto vjp32 = model32->Vjp(m, w, true);
  ASSERT_TRUE(vjp32.ok());
  EXPECT_EQ(vjp32->values.scalar_type(), torch::kFloat32);
  EXPECT_LE(RelativeError(vjp32->values.to(torch::kFloat64), model64->Vjp(m, w, true)->values),
            1e-5);
}

TEST(GenericTest, ReducedJacobianWithoutClientBasesIsFailedPrecondition) {
  auto model = Wrap(dino::testing::SmallGeneric(kDims, torch::kFloat64, 1));
  auto reduced =
      model->ReducedJacobian(Gaussian({1, kDims.d_m}, 1), torch::Tensor(), torch::Tensor());
  EXPECT_EQ(reduced.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(model->GetBases().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ValidationTest, BadInputsNameTheField) {
  auto model = Wrap(dino::testing::SmallDipnet(kDims, torch::kFloat64, 3),
                    ComputeLimits{/*max_batch_size=*/8, /*max_jacobian_elements=*/100});
  const torch::Tensor m = Gaussian({kDims.d_m}, 1);

  auto wrong_width = model->Evaluate(Gaussian({2, kDims.d_m + 1}, 1));
  EXPECT_EQ(wrong_width.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_width.status().message()), HasSubstr("m must have shape"));

  torch::Tensor with_nan = Gaussian({2, kDims.d_m}, 1);
  with_nan[1][4] = std::nan("");
  auto nan = model->Evaluate(with_nan);
  EXPECT_EQ(nan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(nan.status().message()), HasSubstr("m contains a non-finite value"));
  EXPECT_THAT(std::string(nan.status().message()), HasSubstr("[1, 4]"));
  for (double bad :
       {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()}) {
    torch::Tensor with_inf = Gaussian({3, kDims.d_m}, 1);
    with_inf[2][kDims.d_m - 1] = bad;
    EXPECT_THAT(std::string(model->Evaluate(with_inf).status().message()),
                HasSubstr(absl::StrCat("at index [2, ", kDims.d_m - 1, "]")));
    EXPECT_THAT(std::string(model->Evaluate(with_inf.to(torch::kFloat32)).status().message()),
                HasSubstr("m contains a non-finite value"));
  }
  // The largest finite values are finite.
  EXPECT_TRUE(model
                  ->Evaluate(torch::full({1, kDims.d_m}, -1e300, torch::kFloat64) * 0 +
                             std::numeric_limits<double>::denorm_min())
                  .ok());

  // Two points need one direction each (or [B, k, d_M]); one direction for two is ambiguous.
  auto not_per_point = model->Jvp(Gaussian({2, kDims.d_m}, 1), Gaussian({1, kDims.d_m}, 2), false);
  EXPECT_EQ(not_per_point.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(not_per_point.status().message()),
              HasSubstr("directions must have shape [B, 40] (one per point) or [B, k, 40] with "
                        "B = 2"));
  auto wrong_points =
      model->Vjp(Gaussian({2, kDims.d_m}, 1), Gaussian({3, 1, kDims.d_q}, 2), false);
  EXPECT_THAT(std::string(wrong_points.status().message()),
              HasSubstr("cotangents of rank 3 must have shape [B, k, 12] with B = 2"));
  auto jacobian_of_two = model->Jacobian(Gaussian({2, kDims.d_m}, 1), false);
  EXPECT_EQ(jacobian_of_two.status().code(), absl::StatusCode::kResourceExhausted);  // d_Q·d_M

  auto bad_cotangent = model->Vjp(m, Gaussian({1, kDims.d_q + 3}, 2), false);
  EXPECT_EQ(bad_cotangent.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_cotangent.status().message()), HasSubstr("cotangents"));

  auto too_many = model->Evaluate(Gaussian({9, kDims.d_m}, 1));
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kResourceExhausted);

  auto too_big = model->Jacobian(m, false);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(too_big.status().message()), HasSubstr("full Jacobian"));

  torch::Tensor skewed = dino::models::RandomOrthonormalColumns(kDims.d_q, 3, 1) * 1.01;
  auto not_orthonormal =
      model->ReducedJacobian(m, skewed, dino::models::RandomOrthonormalColumns(kDims.d_m, 3, 2));
  EXPECT_EQ(not_orthonormal.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(not_orthonormal.status().message()),
              HasSubstr("output_basis must have orthonormal columns"));

  auto one_basis = model->ReducedJacobian(m, torch::Tensor(),
                                          dino::models::RandomOrthonormalColumns(kDims.d_m, 3, 2));
  EXPECT_THAT(std::string(one_basis.status().message()), HasSubstr("output_basis is missing"));

  auto integer = model->Evaluate(torch::ones({1, kDims.d_m}, torch::kInt64));
  EXPECT_THAT(std::string(integer.status().message()), HasSubstr("m must be float32 or float64"));
}

// ---------------------------------------------------------------------------------------
// Per-point batched derivatives: B points, one (or k) directions/cotangents per point.

TEST_P(DerivativeTest, PerPointJvpAndVjpMatchFiniteDifferences) {
  const int64_t b = 3, k = 2;
  torch::Tensor points = Gaussian({b, kDims.d_m}, 21);
  std::vector<torch::Tensor> jacobians;
  for (int64_t i = 0; i < b; ++i) jacobians.push_back(FiniteDifferenceJacobian(*model_, points[i]));

  // One direction per point: [B, d_M] → [B, d_Q].
  torch::Tensor v = Gaussian({b, kDims.d_m}, 22);
  auto jvp = model_->Jvp(points, v, /*want_q=*/true);
  ASSERT_TRUE(jvp.ok()) << jvp.status();
  ASSERT_EQ(jvp->values.sizes(), (std::vector<int64_t>{b, kDims.d_q}));
  ASSERT_EQ(jvp->q.sizes(), (std::vector<int64_t>{b, kDims.d_q}));
  EXPECT_LE(RelativeError(jvp->q, *model_->Evaluate(points)), 1e-12);
  // k cotangents per point: [B, k, d_Q] → [B, k, d_M].
  torch::Tensor w = Gaussian({b, k, kDims.d_q}, 23);
  auto vjp = model_->Vjp(points, w, /*want_q=*/false);
  ASSERT_TRUE(vjp.ok()) << vjp.status();
  ASSERT_EQ(vjp->values.sizes(), (std::vector<int64_t>{b, k, kDims.d_m}));
  // k directions per point, and one point in the rank-3 form.
  torch::Tensor vk = Gaussian({b, k, kDims.d_m}, 24);
  auto jvp_k = model_->Jvp(points, vk, false);
  ASSERT_TRUE(jvp_k.ok()) << jvp_k.status();
  auto one = model_->Jvp(points[0], vk.narrow(0, 0, 1), /*want_q=*/true);
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->values.sizes(), (std::vector<int64_t>{1, k, kDims.d_q}));
  ASSERT_EQ(one->q.sizes(), (std::vector<int64_t>{1, kDims.d_q}));
  for (int64_t i = 0; i < b; ++i) {
    EXPECT_LE(RelativeError(jvp->values[i], torch::mv(jacobians[i], v[i])), 1e-6) << i;
    EXPECT_LE(RelativeError(vjp->values[i], torch::mm(w[i], jacobians[i])), 1e-6) << i;
    EXPECT_LE(RelativeError(jvp_k->values[i], torch::mm(vk[i], jacobians[i].t())), 1e-6) << i;
  }
  EXPECT_LE(RelativeError(one->values[0], jvp_k->values[0]), 1e-12);
}

// A mixed batch of every method against each query computed alone.
class BatchedTest : public ::testing::TestWithParam<std::tuple<std::string, torch::Dtype>> {};

TEST_P(BatchedTest, BatchedAnswersEqualUnbatchedAnswers) {
  const auto [architecture, dtype] = GetParam();
  auto model = Wrap(architecture == "dipnet" ? dino::testing::SmallDipnet(kDims, dtype, 5)
                                             : dino::testing::SmallGeneric(kDims, dtype, 5));
  const double tolerance = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
  std::vector<Query> queries;
  auto add = [&](Method method, torch::Tensor m, bool want_q = false) -> Query& {
    Query query;
    query.method = method;
    query.m = std::move(m);
    query.want_q = want_q;
    queries.push_back(query);
    return queries.back();
  };
  add(Method::kEvaluate, Gaussian({3, kDims.d_m}, 31));
  add(Method::kEvaluate, Gaussian({kDims.d_m}, 32));
  add(Method::kJvp, Gaussian({kDims.d_m}, 33), true).directions = Gaussian({2, kDims.d_m}, 34);
  add(Method::kJvp, Gaussian({4, kDims.d_m}, 35), true).directions = Gaussian({4, kDims.d_m}, 36);
  add(Method::kJvp, Gaussian({2, kDims.d_m}, 37)).directions =
      Gaussian({2, kDims.d_q + 1, kDims.d_m}, 38);  // k ≥ d_Q: generic models use J's rows.
  add(Method::kVjp, Gaussian({kDims.d_m}, 39), true).cotangents = Gaussian({3, kDims.d_q}, 40);
  add(Method::kVjp, Gaussian({2, kDims.d_m}, 41)).cotangents = Gaussian({2, 3, kDims.d_q}, 42);
  add(Method::kJacobian, Gaussian({kDims.d_m}, 43), true);
  Query& client = add(Method::kReducedJacobian, Gaussian({2, kDims.d_m}, 44));
  client.output_basis = dino::models::RandomOrthonormalColumns(kDims.d_q, 3, 45);
  client.input_basis = dino::models::RandomOrthonormalColumns(kDims.d_m, 4, 46);
  Query& hessian = add(Method::kHessianVectorProduct, Gaussian({2, kDims.d_m}, 48));
  hessian.cotangents = Gaussian({2, kDims.d_q}, 49);
  hessian.directions = Gaussian({2, kDims.d_m}, 50);
  Query& hessians = add(Method::kHessianVectorProduct, Gaussian({2, kDims.d_m}, 51));
  hessians.cotangents = Gaussian({2, kDims.d_q}, 52);
  hessians.directions = Gaussian({2, 3, kDims.d_m}, 53);  // k = 3 per point.
  if (architecture == "dipnet") add(Method::kReducedJacobian, Gaussian({3, kDims.d_m}, 47));
  queries.back().output_dtype = torch::kFloat32;  // Conversions happen per query.

  std::vector<PreparedQuery> prepared;
  for (const Query& query : queries) {
    auto p = model->Prepare(query);
    ASSERT_TRUE(p.ok()) << p.status();
    prepared.push_back(*std::move(p));
  }
  std::vector<const PreparedQuery*> batch;
  for (const PreparedQuery& p : prepared) batch.push_back(&p);
  std::vector<absl::StatusOr<Answer>> batched = model->Compute(batch);
  ASSERT_EQ(batched.size(), queries.size());
  for (size_t i = 0; i < queries.size(); ++i) {
    SCOPED_TRACE(absl::StrCat(MethodName(queries[i].method), " #", i));
    auto alone = model->Run(queries[i]);
    ASSERT_TRUE(alone.ok()) << alone.status();
    ASSERT_TRUE(batched[i].ok()) << batched[i].status();
    ASSERT_EQ(batched[i]->values.sizes(), alone->values.sizes());
    ASSERT_EQ(batched[i]->values.scalar_type(), alone->values.scalar_type());
    EXPECT_LE(
        RelativeError(batched[i]->values.to(torch::kFloat64), alone->values.to(torch::kFloat64)),
        tolerance);
    ASSERT_EQ(batched[i]->q.defined(), alone->q.defined());
    if (alone->q.defined()) {
      ASSERT_EQ(batched[i]->q.sizes(), alone->q.sizes());
      EXPECT_LE(RelativeError(batched[i]->q.to(torch::kFloat64), alone->q.to(torch::kFloat64)),
                tolerance);
    }
  }
}

// Large batches take their own paths: from 128 rows on the folded first layer is multiplied
// transposed, and J_φ runs in chunks of 32 points (here with a partial last chunk). Each row
// must still be what the point alone gets.
TEST_P(BatchedTest, LargeBatchRowsEqualSinglePointAnswers) {
  const auto [architecture, dtype] = GetParam();
  auto model = Wrap(architecture == "dipnet" ? dino::testing::SmallDipnet(kDims, dtype, 5)
                                             : dino::testing::SmallGeneric(kDims, dtype, 5));
  const double tolerance = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
  const int64_t b = 300;
  const torch::Tensor points = Gaussian({b, kDims.d_m}, 61);
  std::vector<Method> methods = {Method::kEvaluate};
  // Generic models need client bases for ReducedJacobian (GenericTest).
  if (architecture == "dipnet") methods.push_back(Method::kReducedJacobian);
  for (Method method : methods) {
    SCOPED_TRACE(MethodName(method));
    Query query;
    query.method = method;
    query.m = points;
    auto all = model->Run(query);
    ASSERT_TRUE(all.ok()) << all.status();
    ASSERT_EQ(all->values.size(0), b);
    for (int64_t i : {0, 1, 31, 32, 127, 128, 255, 256, 299}) {
      query.m = points.narrow(0, i, 1);
      auto alone = model->Run(query);
      ASSERT_TRUE(alone.ok()) << alone.status();
      EXPECT_LE(RelativeError(all->values.narrow(0, i, 1).to(torch::kFloat64),
                              alone->values.to(torch::kFloat64)),
                tolerance)
          << "row " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BothArchitecturesAndDtypes, BatchedTest,
                         ::testing::Combine(::testing::Values("dipnet", "generic"),
                                            ::testing::Values(torch::kFloat64, torch::kFloat32)),
                         [](const auto& info) {
                           return std::get<0>(info.param) +
                                  (std::get<1>(info.param) == torch::kFloat64 ? "_fp64" : "_fp32");
                         });

TEST(BatchedTest, OneFailingQueryDoesNotFailTheOthers) {
  // A model that fails at run time on inputs beyond a bound (as a model with a domain check,
  // or one running out of memory, would): there a shape mismatch makes LibTorch throw. The
  // batch is then recomputed query by query.
  torch::jit::Module module("Picky");
  module.register_buffer("weight", torch::ones({kDims.d_m + 1, kDims.d_q}, torch::kFloat64));
  module.define(R"(
def forward(self, m: Tensor) -> Tensor:
    rows = m.size(1) + int(bool(torch.abs(m).max() > 100.0))
    return torch.mm(torch.sin(m), self.weight[:rows])
)");
  auto model = Wrap(module);
  std::vector<Query> queries(3);
  for (auto& query : queries) query.m = Gaussian({2, kDims.d_m}, 51);
  queries[1].m = queries[1].m * 1000.0;
  queries[2].method = Method::kVjp;
  queries[2].cotangents = Gaussian({2, kDims.d_q}, 52);
  std::vector<PreparedQuery> prepared;
  for (const Query& query : queries) prepared.push_back(*model->Prepare(query));
  std::vector<absl::StatusOr<Answer>> answers =
      model->Compute({&prepared[0], &prepared[1], &prepared[2]});
  ASSERT_TRUE(answers[0].ok()) << answers[0].status();
  EXPECT_EQ(answers[1].status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(answers[1].status().message()),
              HasSubstr("the model failed while computing"));
  ASSERT_TRUE(answers[2].ok()) << answers[2].status();
  EXPECT_LE(RelativeError(answers[0]->values, *model->Evaluate(queries[0].m)), 1e-14);
}

TEST(LoadTest, ModelBreakingTheContractIsRefused) {
  // forward(m) is twice what reduced_forward and the bases say it is.
  torch::jit::Module module("Broken");
  module.register_buffer("input_basis", dino::models::RandomOrthonormalColumns(10, 4, 1));
  module.register_buffer("output_basis", dino::models::RandomOrthonormalColumns(6, 4, 2));
  module.register_buffer("output_shift", torch::zeros({6}, torch::kFloat64));
  module.define(R"(
def reduced_forward(self, z: Tensor) -> Tensor:
    return torch.tanh(z)

def forward(self, m: Tensor) -> Tensor:
    z = torch.mm(m, self.input_basis)
    return torch.addmm(self.output_shift, self.reduced_forward(z), self.output_basis.t()) * 2.0
)");
  auto model = SurrogateModel::FromModule(module, nlohmann::json::object(), "broken", {});
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("model contract"));
}

TEST(LoadTest, GenericModelWithoutInputDimIsRefused) {
  auto model = SurrogateModel::FromModule(dino::testing::SmallGeneric(kDims, torch::kFloat64, 1),
                                          nlohmann::json::object(), "nodims", {});
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("input_dim"));
}

}  // namespace
}  // namespace dino::serving
