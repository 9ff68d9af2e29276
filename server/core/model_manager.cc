#include "server/core/model_manager.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/core/log.h"
#include "server/core/model_repository.h"

namespace dino::serving {

ModelManager::ModelManager(Options options) : options_(std::move(options)) {}

ModelManager::~ModelManager() { Shutdown(); }

absl::StatusOr<LoadReport> ModelManager::LoadRepository() {
  auto entries = ScanModelRepository(options_.repository);
  if (!entries.ok()) return entries.status();
  LoadReport report;
  for (const ModelVersionPath& entry : *entries) {
    const std::string id = absl::StrCat(entry.name, "/", entry.version);
    auto model = SurrogateModel::Load(entry.path, options_.limits);
    if (!model.ok()) {
      LogError("model ", id, " not loaded: ", model.status().message());
      report.failed.push_back(absl::StrCat(id, ": ", model.status().message()));
      continue;
    }
    const ModelInfo& info = (*model)->info();
    LogInfo("loaded model ", id, " (", info.architecture, ", d_M=", info.input_dim,
            ", d_Q=", info.output_dim,
            info.has_reduced_bases
                ? absl::StrCat(", r_M=", info.input_rank, ", r_Q=", info.output_rank)
                : std::string(),
            ", ", info.dtype == torch::kFloat64 ? "fp64" : "fp32", ")");
    Add(entry.name, entry.version, *std::move(model));
    report.loaded.push_back(id);
  }
  return report;
}

void ModelManager::Add(const std::string& name, int64_t version,
                       std::shared_ptr<const SurrogateModel> model) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  Model& entry = models_[name];
  if (!entry.executor) {
    entry.executor = std::make_shared<Executor>(name, options_.executor_threads);
  }
  entry.versions[version] = std::move(model);
}

absl::StatusOr<ServableHandle> ModelManager::Get(const std::string& name,
                                                 int64_t version) const {
  if (name.empty()) return absl::InvalidArgumentError("model.name is required");
  if (version < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.version must be positive (or 0 for the default), got ", version));
  }
  std::shared_lock<std::shared_mutex> lock(mutex_);
  auto it = models_.find(name);
  if (it == models_.end() || it->second.versions.empty()) {
    return absl::NotFoundError(absl::StrCat("model.name: no model named '", name, "' is loaded"));
  }
  const Model& model = it->second;
  auto version_it =
      version == 0 ? std::prev(model.versions.end()) : model.versions.find(version);
  if (version_it == model.versions.end()) {
    std::string loaded;
    for (const auto& [v, unused] : model.versions) absl::StrAppend(&loaded, loaded.empty() ? "" : ", ", v);
    return absl::NotFoundError(absl::StrCat("model.version: model '", name,
                                            "' has no version ", version, " (loaded: ", loaded,
                                            ")"));
  }
  return ServableHandle{name, version_it->first, version_it->second, model.executor};
}

std::vector<ModelListing> ModelManager::List() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  std::vector<ModelListing> listings;
  for (const auto& [name, model] : models_) {
    if (model.versions.empty()) continue;
    ModelListing listing{name, {}, model.versions.rbegin()->first};
    for (const auto& [version, unused] : model.versions) listing.versions.push_back(version);
    listings.push_back(std::move(listing));
  }
  return listings;
}

size_t ModelManager::loaded_versions() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  size_t count = 0;
  for (const auto& [name, model] : models_) count += model.versions.size();
  return count;
}

void ModelManager::Shutdown() {
  std::vector<std::shared_ptr<Executor>> executors;
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    for (const auto& [name, model] : models_) executors.push_back(model.executor);
  }
  for (auto& executor : executors) executor->Shutdown();
}

}  // namespace dino::serving
