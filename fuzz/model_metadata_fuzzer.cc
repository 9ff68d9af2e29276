// The JSON a model version carries about itself: pde.json (an exact PDE model's problem, mesh
// and observation points: ParsePdeServableConfig) and a model file's metadata.json (the prior
// it names: PriorFromMetadata). Only what decides whether and how a model is served is read
// here; building meshes and solvers from an accepted config is the PDE tests' business.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz/served_models.h"
#include "server/core/model_prior.h"
#include "server/core/pde_solver_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dino::fuzz::Require;
  const nlohmann::json document =
      nlohmann::json::parse(data, data + size, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) return 0;
  auto config = dino::serving::ParsePdeServableConfig(document);
  if (config.ok()) {
    Require(config->mesh_cells >= dino::pipeline::kMinMesh &&
                config->mesh_cells <= dino::pipeline::kMaxMesh,
            "pde.json accepted a mesh_cells outside its range");
    for (const auto& point : config->observation_points) {
      Require(point[0] >= 0 && point[0] <= 1 && point[1] >= 0 && point[1] <= 1,
              "pde.json accepted an observation point outside the unit square");
    }
  }
  // The metadata's prior is looked up against the input dimension a model declares; the
  // prior is only built when the metadata names a problem whose d_M matches, which small
  // dimensions never do, so the lookup stays cheap.
  if (document.is_object()) {
    const auto lookup = dino::serving::PriorFromMetadata(document, dino::fuzz::kInputDim);
    Require(lookup.prior != nullptr || !lookup.why_none.empty(),
            "a model without a prior must say why");
  }
  return 0;
}
