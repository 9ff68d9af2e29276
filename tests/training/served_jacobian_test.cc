// A trained model served by dino-server returns the Jacobians the trainer computes: the
// bundled DIPNet (trained by dino-train fit) is loaded by the serving core and by the
// trainer's network view (its autograd path, independent of the layer propagation that
// serving shares with training), and their reduced Jacobians, Jvp and Vjp agree.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "models/architectures/model_file.h"
#include "models/architectures/network.h"
#include "server/core/surrogate_model.h"

namespace dino {
namespace {

std::string BundledModel() {
  const std::filesystem::path folder = std::filesystem::path(DINO_REPOSITORY) / "poisson_dipnet";
  int64_t version = 0;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    version = std::max<int64_t>(version, std::stoll(entry.path().filename().string()));
  }
  return (folder / std::to_string(version) / "model.pt").string();
}

TEST(ServedJacobianTest, ServerAndTrainerAgreeOnTheBundledModel) {
  const std::string path = BundledModel();
  auto served = serving::SurrogateModel::Load(path, {});
  ASSERT_TRUE(served.ok()) << served.status();
  ASSERT_TRUE((*served)->info().has_reduced_bases);
  models::LoadedModelFile file = models::LoadModelFile(path);
  EXPECT_TRUE(file.metadata.value("trained", false)) << "the bundled model is a trained one";
  // The autograd path: independent of the layer propagation that serving uses.
  models::Network network(file.module, /*allow_layer_propagation=*/false);
  ASSERT_EQ(network.reduced_jacobian_method(), models::ReducedJacobianMethod::kAutograd);

  torch::manual_seed(3);
  const torch::Tensor m = torch::randn({4, (*served)->info().input_dim}, torch::kFloat64);
  auto reduced = (*served)->ReducedJacobian(m, torch::Tensor(), torch::Tensor());
  ASSERT_TRUE(reduced.ok()) << reduced.status();
  torch::NoGradGuard no_grad;
  const torch::Tensor z = torch::mm(m.to(network.dtype()), network.input_basis());
  auto [phi, jacobian] = models::ReducedValueAndJacobian(network, z, /*create_graph=*/false);
  const double scale = jacobian.abs().max().item<double>();
  EXPECT_LE((reduced->reduced_jacobian - jacobian.to(torch::kFloat64)).abs().max().item<double>(),
            1e-10 * scale);
  EXPECT_LE((reduced->q - network.Forward(m)).abs().max().item<double>(), 1e-10);

  // Jvp and Vjp at one point are U J_φ Vᵀ v and V J_φᵀ Uᵀ w with the trainer's J_φ.
  const torch::Tensor v = torch::randn({2, m.size(1)}, torch::kFloat64);
  const torch::Tensor w = torch::randn({2, (*served)->info().output_dim}, torch::kFloat64);
  const torch::Tensor full =
      torch::mm(torch::mm(network.output_basis(), jacobian[0]), network.input_basis().t());
  auto jvp = (*served)->Jvp(m[0], v, false);
  auto vjp = (*served)->Vjp(m[0], w, false);
  ASSERT_TRUE(jvp.ok() && vjp.ok());
  EXPECT_LE((jvp->values - torch::mm(v, full.t())).abs().max().item<double>(),
            1e-10 * full.abs().max().item<double>() * std::sqrt(m.size(1)));
  EXPECT_LE((vjp->values - torch::mm(w, full)).abs().max().item<double>(),
            1e-10 * full.abs().max().item<double>() * std::sqrt(m.size(1)));
}

}  // namespace
}  // namespace dino
