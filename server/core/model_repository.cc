#include "server/core/model_repository.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "models/architectures/model_file.h"
#include "server/core/failpoint.h"
#include "server/core/pde_solver_model.h"

namespace dino::serving {

bool IsValidModelName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name.front() == '.') return false;
  return std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-' || c == '.';
  });
}

namespace {

// Appends the versions of one model folder (unsorted); unreadable entries are skipped.
void AppendModelVersions(const std::filesystem::path& model_dir, const std::string& name,
                         std::vector<ModelVersionPath>* found) {
  namespace fs = std::filesystem;
  std::error_code error;
  for (const auto& version_dir : fs::directory_iterator(model_dir, error)) {
    int64_t version = 0;
    const std::string text = version_dir.path().filename().string();
    if (!version_dir.is_directory() || text.empty() ||
        !std::all_of(text.begin(), text.end(), ::isdigit) || !absl::SimpleAtoi(text, &version) ||
        version <= 0) {
      continue;
    }
    // model.pt, else pde.json (LoadModelVersion refuses a folder with both).
    for (const char* file_name : {kModelFileName, kPdeConfigFileName}) {
      const fs::path file = version_dir.path() / file_name;
      std::error_code inner;
      if (fs::is_regular_file(file, inner)) {
        found->push_back({name, version, file.string()});
        break;
      }
    }
  }
}

bool ByNameAndVersion(const ModelVersionPath& a, const ModelVersionPath& b) {
  return std::tie(a.name, a.version) < std::tie(b.name, b.version);
}

}  // namespace

absl::StatusOr<std::vector<ModelVersionPath>> ScanModelRepository(const std::string& root) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(root, error)) {
    return absl::NotFoundError(absl::StrCat("model repository ", root, " is not a folder"));
  }
  std::vector<ModelVersionPath> found;
  for (const auto& model_dir : fs::directory_iterator(root, error)) {
    const std::string name = model_dir.path().filename().string();
    if (!model_dir.is_directory() || !IsValidModelName(name)) continue;
    AppendModelVersions(model_dir.path(), name, &found);
  }
  if (error) {
    return absl::NotFoundError(
        absl::StrCat("cannot read model repository ", root, ": ", error.message()));
  }
  std::sort(found.begin(), found.end(), ByNameAndVersion);
  return found;
}

std::vector<ModelVersionPath> ScanModelVersions(const std::string& root, const std::string& name) {
  std::vector<ModelVersionPath> found;
  if (!IsValidModelName(name)) return found;
  AppendModelVersions(std::filesystem::path(root) / name, name, &found);
  std::sort(found.begin(), found.end(), ByNameAndVersion);
  return found;
}

absl::StatusOr<std::shared_ptr<const SurrogateModel>> LoadModelVersion(const std::string& path,
                                                                       ComputeLimits limits) {
  namespace fs = std::filesystem;
  const fs::path file(path);
  if (file.filename() == kPdeConfigFileName) return PdeSolverModel::Load(path, limits);
  std::error_code error;
  const fs::path pde_config = file.parent_path() / kPdeConfigFileName;
  if (fs::exists(pde_config, error)) {
    return absl::InvalidArgumentError(absl::StrCat(file.parent_path().string(), ": holds both ",
                                                   kModelFileName, " and ", kPdeConfigFileName,
                                                   "; a version is one model, keep one of them"));
  }
  return SurrogateModel::Load(path, limits);
}

absl::StatusOr<int64_t> PublishModelVersion(const std::string& root, const std::string& name,
                                            const torch::jit::Module& module,
                                            const nlohmann::json& metadata) {
  if (!IsValidModelName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid model name '", name, "'"));
  }
  try {
    const int64_t version = models::PublishModelVersion(root, name, module, metadata,
                                                        [] { Failpoint("publish.before_rename"); });
    Failpoint("publish.after_rename");
    return version;
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

}  // namespace dino::serving
