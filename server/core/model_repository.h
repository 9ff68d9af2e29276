// The model repository on disk (the "source" in TF Serving's terms):
//   <root>/<model name>/<version>/model.pt    a TorchScript model (docs/model-contract.md)
//   <root>/<model name>/<version>/pde.json    an exact PDE model (server/core/pde_solver_model.h)
// where <version> is a positive decimal integer. Other entries are ignored, so that
// temporary files and notes can live beside the models.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/architectures/model_file.h"
#include "server/core/surrogate_model.h"

namespace dino::serving {

inline constexpr const char* kModelFileName = models::kRepositoryModelFile;

struct ModelVersionPath {
  std::string name;
  int64_t version = 0;
  std::string path;  // <root>/<name>/<version>/model.pt, or …/pde.json when it has no model.pt
};

// Loads the model of one version file: a TorchScript model.pt or a PDE model's pde.json. A
// version folder that holds both is refused (INVALID_ARGUMENT naming both files): which of the
// two it serves must not depend on a precedence rule nobody remembers.
absl::StatusOr<std::shared_ptr<const SurrogateModel>> LoadModelVersion(const std::string& path,
                                                                       ComputeLimits limits);

// Lists every model version in the repository, sorted by name then version.
// NOT_FOUND if the root is not a readable folder.
absl::StatusOr<std::vector<ModelVersionPath>> ScanModelRepository(const std::string& root);

// The versions of one model, sorted; empty when the folder is missing or the name invalid.
std::vector<ModelVersionPath> ScanModelVersions(const std::string& root, const std::string& name);

// models::PublishModelVersion for the server: a valid model name, failpoints for the crash
// tests (server/core/failpoint.h), errors as INTERNAL naming the path.
absl::StatusOr<int64_t> PublishModelVersion(const std::string& root, const std::string& name,
                                            const torch::jit::Module& module,
                                            const nlohmann::json& metadata);

// True for names a model folder may have: letters, digits, '_', '-', '.', not starting with
// '.', at most 128 characters. Keeps request names from reaching outside the repository.
bool IsValidModelName(const std::string& name);

}  // namespace dino::serving
