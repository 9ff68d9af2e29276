#include "tests/common/test_models.h"

#include <stdlib.h>

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "models/architectures/architectures.h"
#include "models/architectures/model_file.h"

namespace dino::testing {

namespace dm = dino::models;

torch::jit::Module SmallDipnet(const SmallDims& dims, torch::Dtype dtype, uint64_t seed) {
  dm::DipnetSpec spec;
  spec.input_basis = dm::RandomOrthonormalColumns(dims.d_m, dims.r_m, seed + 1);
  spec.output_basis = dm::RandomOrthonormalColumns(dims.d_q, dims.r_q, seed + 2);
  spec.output_shift = torch::linspace(-1.0, 1.0, dims.d_q, torch::kFloat64);
  spec.hidden_widths = {16, 16};
  spec.dtype = dtype;
  spec.seed = seed + 3;
  torch::jit::Module module = dm::BuildDipnet(spec);
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  for (auto p : module.parameters()) p.mul_(2.0);
  for (auto p : module.named_parameters()) {
    // Drawn in float64 so that float32 and float64 models share their weights.
    if (p.name.rfind("b", 0) == 0) {
      p.value.copy_(torch::rand(p.value.sizes(), torch::kFloat64) - 0.5);
    }
  }
  return module;
}

torch::jit::Module SmallGeneric(const SmallDims& dims, torch::Dtype dtype, uint64_t seed) {
  dm::GenericDenseSpec spec;
  spec.input_dim = dims.d_m;
  spec.output_dim = dims.d_q;
  spec.hidden_widths = {16, 16};
  spec.dtype = dtype;
  spec.seed = seed;
  torch::jit::Module module = dm::BuildGenericDense(spec);
  torch::NoGradGuard no_grad;
  for (auto p : module.parameters()) p.mul_(2.0);
  return module;
}

torch::jit::Module SlowModel(int64_t d_m, int64_t d_q, int64_t iterations) {
  torch::jit::Module module("SlowModel");
  module.register_buffer("weight", torch::ones({d_m, d_q}, torch::kFloat64) / d_m);
  module.register_attribute("iterations", c10::IntType::get(), iterations);
  module.define(R"(
def forward(self, m: Tensor) -> Tensor:
    h = m
    for i in range(self.iterations):
        h = torch.sin(h) + m
    return torch.mm(h, self.weight)
)");
  return module;
}

std::string SmallMetadata(const std::string& architecture, int64_t d_m) {
  return nlohmann::json{{"architecture", architecture},
                        {"input_dim", d_m},
                        {"trained", false},
                        {"provenance", {{"created_by", "dino-serve tests"}}}}
      .dump();
}

void WriteModel(const torch::jit::Module& module, const std::string& metadata_json,
                const std::string& root, const std::string& name, int64_t version) {
  dm::SaveModelFile(module, nlohmann::json::parse(metadata_json),
                    root + "/" + name + "/" + std::to_string(version) + "/model.pt");
}

}  // namespace dino::testing
