// Exactness of the served derivatives on float64 models of both architectures: Jvp and Vjp
// against central finite differences, the adjoint identity, reduced Jacobians against the
// full Jacobian, and the precise errors of bad inputs.
#include "server/core/surrogate_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

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

  auto not_point = model->Jvp(Gaussian({2, kDims.d_m}, 1), Gaussian({1, kDims.d_m}, 2), false);
  EXPECT_THAT(std::string(not_point.status().message()), HasSubstr("m must be one point"));

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
