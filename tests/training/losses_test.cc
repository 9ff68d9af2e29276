// The losses of models/training: gradients with respect to the weights against central finite
// differences for every loss, architecture and Jacobian data form; Prop. 2.4 (full H¹ between
// the bases equals the direct Frobenius computation); Prop. 2.2 (the subsampled loss in
// expectation) exactly and by Monte Carlo; Prop. 2.3 (unbiased sketches) by Monte Carlo; and
// the errors for data a loss cannot use.
#include "models/training/losses.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "models/architectures/architectures.h"
#include "models/architectures/network.h"
#include "tests/training/synthetic.h"

namespace dino::training {
namespace {

using ::testing::HasSubstr;
using ::testing::ThrowsMessage;
using namespace dino::training::testing;  // NOLINT: the test's own helpers.

constexpr int64_t kDm = 9, kDq = 5, kH = 4, kRm = 3, kRq = 3, kN = 6;

struct Problem {
  SmoothMap map;
  Dataset full, svd, reduced, reduced_without_norms, outputs_only;
  torch::Tensor u, v, b;
};

// Random (not derivative-informed) bases, so that a good part of each J lies outside them and
// Prop. 2.4's complement term is far from zero.
const Problem& TheProblem() {
  static const Problem* problem = [] {
    auto* p = new Problem;
    p->map = MakeSmoothMap(kDm, kDq, kH, 1);
    p->full = MakeFullDataset(p->map, kN, 2);
    p->svd = WithTruncatedSvd(p->full, kH);  // Exact: J has rank h.
    p->v = dino::models::RandomOrthonormalColumns(kDm, kRm, 3);
    p->u = dino::models::RandomOrthonormalColumns(kDq, kRq, 4);
    p->b = 0.1 * Gaussian({kDq}, 5);
    p->reduced = WithReducedJacobian(p->full, p->u, p->v, /*with_norms=*/true);
    p->reduced_without_norms = WithReducedJacobian(p->full, p->u, p->v, /*with_norms=*/false);
    p->outputs_only.m = p->full.m;
    p->outputs_only.q = p->full.q;
    return p;
  }();
  return *problem;
}

// "dipnet" and "dipnet_autograd" are the same DIPNet, seen with each ReducedJacobianMethod.
torch::jit::Module MakeModel(const std::string& architecture) {
  const Problem& p = TheProblem();
  return architecture == "generic" ? SmallGeneric(kDm, kDq, {6, 6}, 7, /*rough=*/true)
                                   : SmallDipnet(p.v, p.u, p.b, {6, 6}, 7, /*rough=*/true);
}

models::Network MakeNetwork(const std::string& architecture, const torch::jit::Module& module) {
  return models::Network(module, /*allow_layer_propagation=*/architecture != "dipnet_autograd");
}

const Dataset& DataFor(const std::string& form) {
  const Problem& p = TheProblem();
  if (form == "full") return p.full;
  if (form == "svd") return p.svd;
  if (form == "reduced") return p.reduced;
  return p.outputs_only;
}

LossConfig ConfigFor(JacobianLoss loss) {
  LossConfig config;
  config.jacobian_loss = loss;
  config.l2_weight = 0.7;
  config.h1_weight = 1.3;
  config.svd_rank = 3;  // Truncates both the SVD data (rank 4) and full Jacobians (rank 5).
  config.subsample_size = 2;
  config.sketch_rank = 3;  // Sketches both sides (d_Q = 5, d_M = 9).
  return config;
}

torch::Tensor Indices(std::vector<int64_t> values) { return torch::tensor(values, torch::kLong); }

torch::Tensor AllIndices() { return torch::arange(kN, torch::kLong); }

double RelativeDifference(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).norm().item<double>() / std::max(1e-300, b.norm().item<double>());
}

// ---- Gradients against finite differences --------------------------------------------------

// The directional derivative of the loss along a random direction of the weights, from
// autograd and from central differences, for one architecture and data form.
void CheckGradient(const std::string& architecture, JacobianLoss jacobian_loss,
                   const std::string& form) {
  SCOPED_TRACE(architecture + ", " + JacobianLossName(jacobian_loss) + ", " + form + " data");
  torch::jit::Module module = MakeModel(architecture);
  const models::Network network = MakeNetwork(architecture, module);
  ASSERT_EQ(network.reduced_jacobian_method(),
            architecture == "dipnet" ? models::ReducedJacobianMethod::kLayerPropagation
                                     : models::ReducedJacobianMethod::kAutograd);
  Loss loss(network, DataFor(form), ConfigFor(jacobian_loss));
  auto generator = at::make_generator<at::CPUGeneratorImpl>(11);
  loss.Resample(generator);
  const torch::Tensor batch = Indices({0, 2, 3, 5});

  std::vector<torch::Tensor> parameters = network.TrainableParameters();
  // Warm up TorchScript's profiling executor, so that the optimised graph is what is checked.
  for (int i = 0; i < 3; ++i) (void)loss.Evaluate(batch);
  LossTerms terms = loss.Evaluate(batch);
  ASSERT_EQ(terms.l2.sizes(), (std::vector<int64_t>{4}));
  EXPECT_TRUE(torch::all(terms.l2 >= 0).item<bool>());
  if (jacobian_loss != JacobianLoss::kNone) {
    ASSERT_EQ(terms.jacobian.sizes(), (std::vector<int64_t>{4}));
    EXPECT_TRUE(torch::all(terms.jacobian > 0).item<bool>());
  }
  torch::Tensor expected_total = 0.7 * terms.l2;
  if (jacobian_loss != JacobianLoss::kNone) expected_total = expected_total + 1.3 * terms.jacobian;
  EXPECT_NEAR(terms.total.item<double>(), expected_total.mean().item<double>(), 1e-14);
  // Without the graph: the same numbers.
  EXPECT_NEAR(loss.Evaluate(batch, /*create_graph=*/false).total.item<double>(),
              terms.total.item<double>(), 1e-13);

  std::vector<torch::Tensor> gradients = torch::autograd::grad({terms.total}, parameters);
  double analytic = 0.0;
  std::vector<torch::Tensor> directions;
  for (size_t i = 0; i < parameters.size(); ++i) {
    directions.push_back(Gaussian(parameters[i].sizes().vec(), 1000 + i));
    analytic += (gradients[i] * directions[i]).sum().item<double>();
  }
  const double h = 1e-5;
  auto shifted = [&](double step) {
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < parameters.size(); ++i) parameters[i].add_(step * directions[i]);
    }
    const double value = loss.Evaluate(batch, /*create_graph=*/false).total.item<double>();
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < parameters.size(); ++i) parameters[i].sub_(step * directions[i]);
    return value;
  };
  const double numeric = (shifted(h) - shifted(-h)) / (2 * h);
  EXPECT_NEAR(analytic, numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
      << "analytic " << analytic << ", finite differences " << numeric;
}

class LossGradientTest : public ::testing::TestWithParam<JacobianLoss> {};

// Every architecture (and both ways of computing a DIPNet's J_φ) with every data form the
// loss accepts.
TEST_P(LossGradientTest, MatchesCentralFiniteDifferences) {
  const JacobianLoss loss = GetParam();
  std::vector<std::string> dipnet_forms = {"full", "svd"};
  std::vector<std::string> generic_forms = {"full", "svd"};
  if (loss == JacobianLoss::kNone) {
    dipnet_forms = {"none", "full", "reduced"};
    generic_forms = {"none"};
  } else if (loss == JacobianLoss::kFullH1) {
    dipnet_forms.push_back("reduced");
  }
  for (const char* architecture : {"dipnet", "dipnet_autograd"}) {
    for (const auto& form : dipnet_forms) CheckGradient(architecture, loss, form);
  }
  for (const auto& form : generic_forms) CheckGradient("generic", loss, form);
}

INSTANTIATE_TEST_SUITE_P(AllLosses, LossGradientTest,
                         ::testing::Values(JacobianLoss::kNone, JacobianLoss::kFullH1,
                                           JacobianLoss::kReducedH1,
                                           JacobianLoss::kReducedH1Subsampled,
                                           JacobianLoss::kSketchedH1),
                         [](const ::testing::TestParamInfo<JacobianLoss>& info) {
                           return std::string(JacobianLossName(info.param));
                         });

// ---- Values against direct computations ----------------------------------------------------

// ‖J − ∇f‖²_F / ‖J‖²_F and ‖q − f‖²/‖q‖² per sample, from plain autograd on forward.
struct DirectTerms {
  torch::Tensor l2, h1, network_jacobian;
};
DirectTerms Direct(const torch::jit::Module& module) {
  const Problem& p = TheProblem();
  DirectTerms direct;
  direct.network_jacobian = DirectJacobian(module, p.full.m);
  direct.l2 =
      (p.full.q - DirectForward(module, p.full.m)).square().sum(1) / p.full.q.square().sum(1);
  direct.h1 = (p.full.jacobian - direct.network_jacobian).square().sum({1, 2}) /
              p.full.jacobian.square().sum({1, 2});
  return direct;
}

class Prop24 : public ::testing::TestWithParam<std::string> {};

TEST_P(Prop24, FullH1BetweenTheBasesEqualsTheDirectFrobeniusError) {
  const Problem& p = TheProblem();
  torch::jit::Module module = MakeModel(GetParam());
  const models::Network network = MakeNetwork(GetParam(), module);
  const DirectTerms direct = Direct(module);
  // The complement term ‖J‖² − ‖UᵀJV‖² carries much of the error: the identity is not
  // trivially satisfied by J lying in the bases.
  torch::Tensor j_sq = p.full.jacobian.square().sum({1, 2});
  torch::Tensor k_sq = p.reduced.reduced_jacobian.square().sum({1, 2});
  EXPECT_TRUE(torch::all(j_sq - k_sq > 0.2 * j_sq).item<bool>());

  for (const char* form : {"full", "svd", "reduced"}) {
    Loss loss(network, DataFor(form), ConfigFor(JacobianLoss::kFullH1));
    LossTerms terms = loss.Evaluate(AllIndices(), /*create_graph=*/false);
    EXPECT_LE(RelativeDifference(terms.jacobian, direct.h1), 1e-10) << form;
    EXPECT_LE(RelativeDifference(terms.l2, direct.l2), 1e-12) << form;
  }
  // Without ‖J‖ the reduced data can only measure the error inside the bases.
  Loss loss(network, p.reduced_without_norms, ConfigFor(JacobianLoss::kFullH1));
  torch::Tensor inside = torch::matmul(torch::matmul(p.u.t(), direct.network_jacobian), p.v);
  torch::Tensor expected = (p.reduced.reduced_jacobian - inside).square().sum({1, 2}) / k_sq;
  EXPECT_LE(RelativeDifference(loss.Evaluate(AllIndices(), false).jacobian, expected), 1e-10);
}

INSTANTIATE_TEST_SUITE_P(BothMethods, Prop24, ::testing::Values("dipnet", "dipnet_autograd"));

TEST(Prop24Architecture, ReducedModelsCannotRepresentJacobiansOutsideTheirBases) {
  const Problem& p = TheProblem();
  torch::jit::Module module = MakeModel("dipnet");
  torch::Tensor jacobian = DirectJacobian(module, p.full.m);
  torch::Tensor projected = torch::matmul(
      torch::matmul(p.u, torch::matmul(torch::matmul(p.u.t(), jacobian), p.v)), p.v.t());
  EXPECT_LE(RelativeDifference(jacobian, projected), 1e-12);
}

// ‖Σ_r − U_rᵀ∇f V_r‖²/‖Σ_r‖² per sample with the rank-r SVD of J computed here.
torch::Tensor DirectReducedTerm(const torch::Tensor& network_jacobian, int64_t rank,
                                torch::Tensor* misfit = nullptr) {
  const Problem& p = TheProblem();
  auto [u, s, vh] = torch::linalg_svd(p.full.jacobian, false);
  torch::Tensor u_r = u.narrow(2, 0, rank), s_r = s.narrow(1, 0, rank);
  torch::Tensor v_r = vh.narrow(1, 0, rank).transpose(1, 2);
  torch::Tensor e = torch::diag_embed(s_r) -
                    torch::matmul(torch::matmul(u_r.transpose(1, 2), network_jacobian), v_r);
  if (misfit != nullptr) *misfit = e;
  return e.square().sum({1, 2}) / s_r.square().sum(1);
}

TEST(ReducedH1, MatchesTheDirectProjectedError) {
  for (const char* architecture : {"dipnet", "dipnet_autograd", "generic"}) {
    torch::jit::Module module = MakeModel(architecture);
    const models::Network network = MakeNetwork(architecture, module);
    const DirectTerms direct = Direct(module);
    torch::Tensor expected = DirectReducedTerm(direct.network_jacobian, 3);
    for (const char* form : {"full", "svd"}) {
      Loss loss(network, DataFor(form), ConfigFor(JacobianLoss::kReducedH1));
      EXPECT_LE(RelativeDifference(loss.Evaluate(AllIndices(), false).jacobian, expected), 1e-10)
          << architecture << " " << form;
    }
    // Subsampling all r rows and columns is the reduced loss itself.
    LossConfig all = ConfigFor(JacobianLoss::kReducedH1Subsampled);
    all.subsample_size = 3;
    Loss subsampled(network, TheProblem().full, all);
    EXPECT_LE(RelativeDifference(subsampled.Evaluate(AllIndices(), false).jacobian, expected),
              1e-10)
        << architecture;
  }
}

TEST(FullH1, GenericModelsMatchTheDirectFrobeniusError) {
  torch::jit::Module module = MakeModel("generic");
  const models::Network network(module);
  const DirectTerms direct = Direct(module);
  for (const char* form : {"full", "svd"}) {
    Loss loss(network, DataFor(form), ConfigFor(JacobianLoss::kFullH1));
    LossTerms terms = loss.Evaluate(AllIndices(), /*create_graph=*/false);
    EXPECT_LE(RelativeDifference(terms.jacobian, direct.h1), 1e-10) << form;
    EXPECT_LE(RelativeDifference(terms.l2, direct.l2), 1e-12) << form;
  }
}

// ---- The two ways of computing J_φ ------------------------------------------------------------

TEST(ReducedJacobian, LayerPropagationEqualsAutogradWithWhitening) {
  torch::jit::Module module = MakeModel("dipnet");
  {
    torch::NoGradGuard no_grad;
    module.attr("reduced_input_shift").toTensor().copy_(Gaussian({kRm}, 71));
    module.attr("reduced_input_scale").toTensor().copy_(1.0 + 0.5 * Gaussian({kRm}, 72).abs());
  }
  const models::Network fast(module), reference(module, /*allow_layer_propagation=*/false);
  ASSERT_EQ(fast.reduced_jacobian_method(), models::ReducedJacobianMethod::kLayerPropagation);
  ASSERT_EQ(reference.reduced_jacobian_method(), models::ReducedJacobianMethod::kAutograd);
  EXPECT_STREQ(models::ReducedJacobianMethodName(fast.reduced_jacobian_method()),
               "layer_propagation");
  // Inputs large enough that some pre-activations pass softplus's threshold of 20.
  const torch::Tensor z = 15.0 * Gaussian({8, kRm}, 73);
  auto [value, jacobian] = models::ReducedValueAndJacobian(fast, z, false);
  auto [value_ref, jacobian_ref] = models::ReducedValueAndJacobian(reference, z, false);
  EXPECT_LE(RelativeDifference(value, value_ref), 1e-13);
  EXPECT_LE(RelativeDifference(jacobian, jacobian_ref), 1e-12);
  EXPECT_FALSE(jacobian.requires_grad());
  // Gradients of a Jacobian loss agree too.
  std::vector<torch::Tensor> parameters = fast.TrainableParameters();
  auto loss_of = [&](const models::Network& network) {
    auto [v, j] = models::ReducedValueAndJacobian(network, z, true);
    return torch::autograd::grad({j.square().sum() + v.square().sum()}, parameters);
  };
  std::vector<torch::Tensor> a = loss_of(fast), b = loss_of(reference);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LE(RelativeDifference(a[i], b[i]), 1e-11) << i;
}

// A model with the DIPNet's parameter names and buffers whose reduced_forward is `body`.
torch::jit::Module LookalikeDipnet(const std::string& body) {
  const Problem& p = TheProblem();
  torch::jit::Module module("Lookalike");
  module.register_buffer("input_basis", p.v);
  module.register_buffer("output_basis", p.u);
  module.register_buffer("output_shift", p.b);
  module.register_buffer("reduced_input_shift", torch::zeros({kRm}, torch::kFloat64));
  module.register_buffer("reduced_input_scale", torch::ones({kRm}, torch::kFloat64));
  module.register_parameter("W0", Gaussian({kRm, 4}, 81), false);
  module.register_parameter("b0", Gaussian({4}, 82), false);
  module.register_parameter("W1", Gaussian({4, kRq}, 83), false);
  module.register_parameter("b1", Gaussian({kRq}, 84), false);
  module.define("def reduced_forward(self, z: Tensor) -> Tensor:\n" + body +
                "\n"
                "def forward(self, m: Tensor) -> Tensor:\n"
                "    return torch.addmm(self.output_shift, "
                "self.reduced_forward(torch.mm(m, self.input_basis)), self.output_basis.t())\n");
  return module;
}

TEST(ReducedJacobian, OtherModelsGetAutograd) {
  const std::string whitened =
      "    h = (z - self.reduced_input_shift) * self.reduced_input_scale\n";
  const std::string tail = "    return torch.addmm(self.b1, h, self.W1)\n";
  // The same layers as the project's DIPNet: recognised.
  torch::jit::Module same = LookalikeDipnet(
      whitened + "    h = torch.softplus(torch.addmm(self.b0, h, self.W0), 1.0, 20.0)\n" + tail);
  EXPECT_EQ(models::Network(same).reduced_jacobian_method(),
            models::ReducedJacobianMethod::kLayerPropagation);
  // Another activation, or whitening buffers that are ignored: not recognised.
  for (const std::string& body :
       {whitened + "    h = torch.tanh(torch.addmm(self.b0, h, self.W0))\n" + tail,
        "    h = torch.softplus(torch.addmm(self.b0, z, self.W0), 1.0, 20.0)\n" + tail}) {
    torch::jit::Module other = LookalikeDipnet(body);
    const models::Network network(other);
    EXPECT_EQ(network.reduced_jacobian_method(), models::ReducedJacobianMethod::kAutograd) << body;
    // And its Jacobian is still right.
    auto [value, jacobian] = models::ReducedValueAndJacobian(
        network, torch::mm(TheProblem().full.m, TheProblem().v), false);
    torch::Tensor direct = DirectJacobian(other, TheProblem().full.m);
    torch::Tensor inside = torch::matmul(torch::matmul(TheProblem().u.t(), direct), TheProblem().v);
    EXPECT_LE(RelativeDifference(jacobian, inside), 1e-12);
  }
}

// A first hidden layer narrower than r_M: served inputs reach it through one folded matrix
// V diag(scale) W₀, which must give the model's values and Jacobians, and must stop being used
// once an optimizer step changes a weight in place.
TEST(InputFold, FoldedFirstLayerEqualsTheModelUntilAWeightChanges) {
  const Problem& p = TheProblem();
  torch::jit::Module module("NarrowFirstLayer");
  module.register_buffer("input_basis", p.v);
  module.register_buffer("output_basis", p.u);
  module.register_buffer("output_shift", p.b);
  module.register_buffer("reduced_input_shift", Gaussian({kRm}, 91));
  module.register_buffer("reduced_input_scale", 1.0 + Gaussian({kRm}, 92).abs());
  module.register_parameter("W0", Gaussian({kRm, 2}, 93), false);
  module.register_parameter("b0", Gaussian({2}, 94), false);
  module.register_parameter("W1", Gaussian({2, kRq}, 95), false);
  module.register_parameter("b1", Gaussian({kRq}, 96), false);
  module.define(
      "def reduced_forward(self, z: Tensor) -> Tensor:\n"
      "    h = (z - self.reduced_input_shift) * self.reduced_input_scale\n"
      "    h = torch.softplus(torch.addmm(self.b0, h, self.W0), 1.0, 20.0)\n"
      "    return torch.addmm(self.b1, h, self.W1)\n"
      "def forward(self, m: Tensor) -> Tensor:\n"
      "    return torch.addmm(self.output_shift, "
      "self.reduced_forward(torch.mm(m, self.input_basis)), self.output_basis.t())\n");
  const models::Network network(module), reference(module, /*allow_layer_propagation=*/false);
  ASSERT_EQ(network.reduced_jacobian_method(), models::ReducedJacobianMethod::kLayerPropagation);
  EXPECT_TRUE(network.folds_input_basis());
  EXPECT_FALSE(reference.folds_input_basis());
  torch::NoGradGuard no_grad;
  auto expect_model_values = [&](const char* when) {
    const torch::Tensor m = p.full.m;
    const torch::Tensor q = module.forward({m}).toTensor();
    EXPECT_LE(RelativeDifference(network.Forward(m), q), 1e-13) << when;
    auto [value, jacobian] = models::ReducedValueAndJacobianAtInputs(network, m);
    auto [value_ref, jacobian_ref] =
        models::ReducedValueAndJacobian(reference, torch::mm(m, p.v), false);
    EXPECT_LE(RelativeDifference(value, value_ref), 1e-13) << when;
    EXPECT_LE(RelativeDifference(jacobian, jacobian_ref), 1e-12) << when;
    // One point, as a batch-1 request computes it.
    EXPECT_LE(RelativeDifference(network.Forward(m.narrow(0, 0, 1)), q.narrow(0, 0, 1)), 1e-13)
        << when;
    // A large batch: from 128 rows on the folded layer is multiplied transposed, and J_φ
    // runs in chunks of 32 points.
    const torch::Tensor big = Gaussian({300, m.size(1)}, 97);
    EXPECT_LE(RelativeDifference(network.Forward(big), module.forward({big}).toTensor()), 1e-13)
        << when;
    auto [big_value, big_jacobian] = models::ReducedValueAndJacobianAtInputs(network, big);
    auto [big_value_ref, big_jacobian_ref] =
        models::ReducedValueAndJacobian(reference, torch::mm(big, p.v), false);
    EXPECT_LE(RelativeDifference(big_value, big_value_ref), 1e-13) << when;
    EXPECT_LE(RelativeDifference(big_jacobian, big_jacobian_ref), 1e-12) << when;
  };
  expect_model_values("folded");
  module.attr("W0").toTensor().add_(0.25);  // What an optimizer step does.
  EXPECT_FALSE(network.folds_input_basis());
  expect_model_values("after an in-place update");
}

// ---- Prop. 2.2: dependent row/column subsampling in expectation -----------------------------

std::vector<std::vector<int64_t>> AllSubsets(int64_t r, int64_t k) {
  std::vector<std::vector<int64_t>> subsets;
  std::vector<int64_t> current;
  std::function<void(int64_t)> extend = [&](int64_t next) {
    if (static_cast<int64_t>(current.size()) == k) {
      subsets.push_back(current);
      return;
    }
    for (int64_t i = next; i < r; ++i) {
      current.push_back(i);
      extend(i + 1);
      current.pop_back();
    }
  };
  extend(0);
  return subsets;
}

TEST(Prop22, AverageOverAllSubsetsIsEquation211) {
  const int64_t r = 5;
  torch::Tensor e = Gaussian({1, r, r}, 21);
  for (int64_t k = 1; k <= r; ++k) {
    std::vector<torch::Tensor> rows;
    for (const auto& subset : AllSubsets(r, k)) rows.push_back(torch::tensor(subset, torch::kLong));
    torch::Tensor subsets = torch::stack(rows);
    const int64_t count = subsets.size(0);
    const double average =
        SubsampledSquaredNorm(e.expand({count, r, r}), subsets).mean().item<double>();
    const double expected = SubsampledSquaredNormExpectation(e, k).item<double>();
    EXPECT_NEAR(average, expected, 1e-12 * expected) << "k = " << k;
  }
  // k = r keeps everything.
  EXPECT_NEAR(SubsampledSquaredNormExpectation(e, r).item<double>(),
              e.square().sum().item<double>(), 1e-12);
}

TEST(Prop22, DrawnSubsetsAreUniformAndUnbiased) {
  const int64_t r = 6, k = 2, count = 20000;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(22);
  torch::Tensor subsets = DrawSubsets(count, r, k, generator);
  ASSERT_EQ(subsets.sizes(), (std::vector<int64_t>{count, k}));
  // Distinct indices within each subset.
  EXPECT_TRUE(torch::all(subsets.select(1, 0) != subsets.select(1, 1)).item<bool>());
  // Each index appears with probability k/r.
  torch::Tensor frequency = torch::bincount(subsets.flatten(), {}, r).to(torch::kFloat64) / count;
  const double p = static_cast<double>(k) / r;
  const double standard_error = std::sqrt(p * (1 - p) / count);
  EXPECT_LE((frequency - p).abs().max().item<double>(), 5 * standard_error);

  torch::Tensor e = Gaussian({1, r, r}, 23);
  torch::Tensor values = SubsampledSquaredNorm(e.expand({count, r, r}), subsets);
  const double mean = values.mean().item<double>();
  const double error = values.std().item<double>() / std::sqrt(static_cast<double>(count));
  EXPECT_NEAR(mean, SubsampledSquaredNormExpectation(e, k).item<double>(), 5 * error);
}

// Means and standard errors over draws of the per-sample Jacobian terms of a random loss.
std::pair<torch::Tensor, torch::Tensor> MonteCarloJacobianTerms(Loss& loss, int64_t draws,
                                                                uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<torch::Tensor> samples;
  for (int64_t i = 0; i < draws; ++i) {
    loss.Resample(generator);
    samples.push_back(loss.Evaluate(AllIndices(), /*create_graph=*/false).jacobian);
  }
  torch::Tensor stacked = torch::stack(samples);
  return {stacked.mean(0), stacked.std(0) / std::sqrt(static_cast<double>(draws))};
}

TEST(Prop22, SubsampledLossIsTheWeightedReducedLossInExpectation) {
  for (const char* architecture : {"dipnet", "generic"}) {
    torch::jit::Module module = MakeModel(architecture);
    const models::Network network = MakeNetwork(architecture, module);
    torch::Tensor e;
    DirectReducedTerm(Direct(module).network_jacobian, 3, &e);
    const int64_t r = 3, k = 2;
    auto [u, s, vh] = torch::linalg_svd(TheProblem().full.jacobian, false);
    torch::Tensor sigma_sq = s.narrow(1, 0, r).square().sum(1);
    // (2.11) scaled by r/k, over ‖Σ_r‖².
    torch::Tensor expected =
        SubsampledSquaredNormExpectation(e, k) * (static_cast<double>(r) / k) / sigma_sq;
    Loss loss(network, TheProblem().full, ConfigFor(JacobianLoss::kReducedH1Subsampled));
    auto [mean, error] = MonteCarloJacobianTerms(loss, 600, 24);
    EXPECT_TRUE(torch::all((mean - expected).abs() <= 5 * error + 1e-12).item<bool>())
        << architecture << ": mean " << mean << " expected " << expected << " error " << error;
  }
}

// ---- Prop. 2.3: sketching --------------------------------------------------------------------

TEST(Prop23, ScaledSketchesAreUnbiasedForTheFrobeniusNorm) {
  const int64_t count = 20000;
  torch::Tensor a = Gaussian({kDq, kDm}, 31);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(32);
  std::vector<torch::Tensor> left, right;
  for (int64_t i = 0; i < count; ++i) {
    left.push_back(DrawOrthonormalSketch(kDq, 2, generator, torch::kFloat64));
    right.push_back(DrawOrthonormalSketch(kDm, 3, generator, torch::kFloat64));
  }
  torch::Tensor q_left = torch::stack(left), q_right = torch::stack(right);
  EXPECT_LE(dino::models::OrthonormalityDefect(q_left[0]), 1e-12);
  EXPECT_LE(dino::models::OrthonormalityDefect(q_right[0]), 1e-12);
  // E[Q Qᵀ] = (s/d) I.
  torch::Tensor projector = torch::matmul(q_right, q_right.transpose(1, 2)).mean(0);
  EXPECT_LE((projector - (3.0 / kDm) * torch::eye(kDm, torch::kFloat64)).abs().max().item<double>(),
            0.02);
  torch::Tensor values = SketchedSquaredNorm(a.unsqueeze(0), q_left, q_right);
  ASSERT_EQ(values.sizes(), (std::vector<int64_t>{count}));
  const double mean = values.mean().item<double>();
  const double error = values.std().item<double>() / std::sqrt(static_cast<double>(count));
  EXPECT_NEAR(mean, a.square().sum().item<double>(), 5 * error);
  // Sketches at least as wide as the matrix are exact.
  torch::Tensor exact =
      SketchedSquaredNorm(a, DrawOrthonormalSketch(kDq, kDq, generator, torch::kFloat64),
                          DrawOrthonormalSketch(kDm, 20, generator, torch::kFloat64));
  EXPECT_NEAR(exact.item<double>(), a.square().sum().item<double>(), 1e-12);
}

TEST(Prop23, SketchedLossIsTheFullH1LossInExpectation) {
  for (const char* architecture : {"dipnet", "generic"}) {
    torch::jit::Module module = MakeModel(architecture);
    const models::Network network = MakeNetwork(architecture, module);
    const torch::Tensor expected = Direct(module).h1;
    for (const char* form : {"full", "svd"}) {
      Loss loss(network, DataFor(form), ConfigFor(JacobianLoss::kSketchedH1));
      auto [mean, error] = MonteCarloJacobianTerms(loss, 600, 33);
      EXPECT_TRUE(torch::all((mean - expected).abs() <= 5 * error).item<bool>())
          << architecture << " " << form << ": mean " << mean << " expected " << expected;
      // With sketches as wide as J the sketched loss is the full one.
      LossConfig wide = ConfigFor(JacobianLoss::kSketchedH1);
      wide.sketch_rank = kDm;
      Loss exact(network, DataFor(form), wide);
      EXPECT_LE(RelativeDifference(exact.Evaluate(AllIndices(), false).jacobian, expected), 1e-10);
    }
  }
}

// ---- Errors ------------------------------------------------------------------------------------

TEST(LossErrors, DataThatALossCannotUse) {
  torch::jit::Module dipnet = MakeModel("dipnet"), generic = MakeModel("generic");
  const models::Network reduced_model(dipnet), generic_model(generic);
  const Problem& p = TheProblem();
  EXPECT_THAT([&] { Loss(reduced_model, p.reduced, ConfigFor(JacobianLoss::kReducedH1)); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("determines neither")));
  EXPECT_THAT([&] { Loss(reduced_model, p.reduced, ConfigFor(JacobianLoss::kSketchedH1)); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("train on it with the h1 loss")));
  EXPECT_THAT([&] { Loss(generic_model, p.reduced, ConfigFor(JacobianLoss::kFullH1)); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("generic model")));
  EXPECT_THAT([&] { Loss(generic_model, p.outputs_only, ConfigFor(JacobianLoss::kFullH1)); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("outputs only")));
  LossConfig too_many = ConfigFor(JacobianLoss::kReducedH1Subsampled);
  too_many.subsample_size = 4;
  EXPECT_THAT([&] { Loss(generic_model, p.full, too_many); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("exceeds the SVD rank 3")));

  Dataset zero = p.full;
  zero.q = p.full.q.clone();
  zero.q[3].zero_();
  EXPECT_THAT([&] { Loss(generic_model, zero, ConfigFor(JacobianLoss::kNone)); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("q of sample 3 is zero")));
  Dataset flat = p.full;
  flat.jacobian = p.full.jacobian.clone();
  flat.jacobian[4].zero_();
  EXPECT_THAT([&] { Loss(generic_model, flat, ConfigFor(JacobianLoss::kFullH1)); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("Jacobian of sample 4 is zero")));
  // The L² loss does not look at the Jacobian.
  EXPECT_NO_THROW(Loss(generic_model, flat, ConfigFor(JacobianLoss::kNone)));

  Dataset wide;
  wide.m = torch::zeros({2, kDm + 1}, torch::kFloat64);
  wide.q = torch::ones({2, kDq}, torch::kFloat64);
  EXPECT_THAT([&] { Loss(reduced_model, wide, ConfigFor(JacobianLoss::kNone)); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("bases are for d_M = 9")));
  EXPECT_THAT([&] { Loss(generic_model, wide, ConfigFor(JacobianLoss::kNone)); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("forward fails")));
}

TEST(LossErrors, Configuration) {
  for (JacobianLoss loss : {JacobianLoss::kNone, JacobianLoss::kFullH1, JacobianLoss::kReducedH1,
                            JacobianLoss::kReducedH1Subsampled, JacobianLoss::kSketchedH1}) {
    EXPECT_EQ(ParseJacobianLoss(JacobianLossName(loss)), loss);
  }
  EXPECT_THAT([] { ParseJacobianLoss("h2"); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("reduced_h1_ms")));
  LossConfig config;
  config.l2_weight = -1;
  EXPECT_THROW(config.Validate(), std::invalid_argument);
  config.l2_weight = 0;
  config.h1_weight = 0;
  EXPECT_THAT([&] { config.Validate(); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("all zero")));
  config.h1_weight = 1;
  config.subsample_size = 0;
  EXPECT_THROW(config.Validate(), std::invalid_argument);
  EXPECT_EQ(ConfigFor(JacobianLoss::kReducedH1Subsampled).ToJson()["name"], "reduced_h1_ms");
  EXPECT_EQ(ConfigFor(JacobianLoss::kReducedH1Subsampled).ToJson()["subsample_size"], 2);
}

}  // namespace
}  // namespace dino::training
