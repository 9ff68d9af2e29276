#include "server/core/model_manager.h"

#include <chrono>
#include <filesystem>
#include <optional>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/core/log.h"
#include "server/core/model_repository.h"

namespace dino::serving {

ModelManager::ModelManager(Options options) : options_(std::move(options)) {}

ModelManager::~ModelManager() { StopPolling(); }

namespace {

// The stamp of a model file; nullopt when it cannot be read.
std::optional<std::pair<int64_t, uintmax_t>> StampOf(const std::string& path) {
  std::error_code error;
  const auto time = std::filesystem::last_write_time(path, error);
  if (error) return std::nullopt;
  const uintmax_t size = std::filesystem::file_size(path, error);
  if (error) return std::nullopt;
  return std::make_pair(
      static_cast<int64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch()).count()),
      size);
}

}  // namespace

absl::StatusOr<LoadReport> ModelManager::SyncRepository() {
  std::lock_guard<std::mutex> sync(sync_mutex_);
  auto entries = ScanModelRepository(options_.repository);
  if (!entries.ok()) return entries.status();
  LoadReport report;
  std::set<VersionKey> present;
  for (const ModelVersionPath& entry : *entries) {
    const VersionKey key{entry.name, entry.version};
    const std::string id = absl::StrCat(entry.name, "/", entry.version);
    const auto raw_stamp = StampOf(entry.path);
    if (!raw_stamp) continue;  // Vanished between the scan and now.
    const FileStamp stamp{raw_stamp->first, raw_stamp->second};
    present.insert(key);
    if (from_files_.count(key) != 0) continue;  // Loaded; versions are immutable.
    if (auto it = failed_.find(key); it != failed_.end() && it->second == stamp) continue;
    if (auto it = unloaded_.find(key); it != unloaded_.end() && it->second == stamp) continue;
    auto model = SurrogateModel::Load(entry.path, options_.limits);
    if (!model.ok()) {
      LogError("model ", id, " not loaded: ", model.status().message());
      report.failed.push_back(absl::StrCat(id, ": ", model.status().message()));
      failed_[key] = stamp;
      continue;
    }
    failed_.erase(key);
    unloaded_.erase(key);
    const ModelInfo& info = (*model)->info();
    LogInfo("loaded model ", id, " (", info.architecture, ", d_M=", info.input_dim,
            ", d_Q=", info.output_dim,
            info.has_reduced_bases
                ? absl::StrCat(", r_M=", info.input_rank, ", r_Q=", info.output_rank)
                : std::string(),
            ", ", info.dtype == torch::kFloat64 ? "fp64" : "fp32", ")");
    Add(entry.name, entry.version, *std::move(model));
    from_files_[key] = stamp;
    report.loaded.push_back(id);
  }
  // Versions whose file is gone stop being served; their in-flight requests hold handles.
  for (auto it = from_files_.begin(); it != from_files_.end();) {
    if (present.count(it->first) != 0) {
      ++it;
      continue;
    }
    const auto& [name, version] = it->first;
    {
      std::unique_lock<std::shared_mutex> lock(mutex_);
      auto model = models_.find(name);
      if (model != models_.end()) {
        model->second.versions.erase(version);
        if (model->second.pinned_default == version) model->second.pinned_default = 0;
      }
    }
    LogInfo("unloaded model ", name, "/", version, ": its file is gone");
    report.unloaded.push_back(absl::StrCat(name, "/", version));
    it = from_files_.erase(it);
  }
  return report;
}

void ModelManager::StartPolling(double interval_seconds,
                                std::function<void(const LoadReport&)> on_change) {
  StopPolling();
  {
    std::lock_guard<std::mutex> lock(poll_mutex_);
    poll_stop_ = false;
  }
  const auto interval = std::chrono::duration<double>(interval_seconds);
  poller_ = std::thread([this, interval, on_change = std::move(on_change)] {
    std::unique_lock<std::mutex> lock(poll_mutex_);
    while (!poll_wake_.wait_for(lock, interval, [this] { return poll_stop_; })) {
      lock.unlock();
      auto report = SyncRepository();
      if (!report.ok()) {
        LogError("repository poll: ", report.status().message());
      } else if (on_change && (report->changed() || !report->failed.empty())) {
        on_change(*report);
      }
      lock.lock();
    }
  });
}

void ModelManager::StopPolling() {
  {
    std::lock_guard<std::mutex> lock(poll_mutex_);
    poll_stop_ = true;
  }
  poll_wake_.notify_all();
  if (poller_.joinable()) poller_.join();
}

void ModelManager::Add(const std::string& name, int64_t version,
                       std::shared_ptr<const SurrogateModel> model) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  Model& entry = models_[name];
  if (!entry.config) entry.config = std::make_shared<const ModelConfig>(options_.default_config);
  entry.versions[version] = std::move(model);
}

absl::StatusOr<ServableHandle> ModelManager::Get(const std::string& name, int64_t version) const {
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
  auto version_it = model.versions.find(version == 0 ? DefaultVersion(model) : version);
  if (version_it == model.versions.end()) {
    std::string loaded;
    for (const auto& [v, unused] : model.versions)
      absl::StrAppend(&loaded, loaded.empty() ? "" : ", ", v);
    return absl::NotFoundError(absl::StrCat("model.version: model '", name, "' has no version ",
                                            version, " (loaded: ", loaded, ")"));
  }
  return ServableHandle{name, version_it->first, version_it->second, model.config};
}

std::vector<ModelListing> ModelManager::List() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  std::vector<ModelListing> listings;
  for (const auto& [name, model] : models_) {
    if (model.versions.empty()) continue;
    ModelListing listing{name, {}, DefaultVersion(model)};
    for (const auto& [version, unused] : model.versions) listing.versions.push_back(version);
    listings.push_back(std::move(listing));
  }
  return listings;
}

int64_t ModelManager::DefaultVersion(const Model& model) const {
  if (model.pinned_default != 0 && model.versions.count(model.pinned_default) != 0) {
    return model.pinned_default;
  }
  return model.versions.empty() ? 0 : model.versions.rbegin()->first;
}

absl::Status ModelManager::SetDefaultVersion(const std::string& name, int64_t version) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  auto it = models_.find(name);
  if (it == models_.end() || it->second.versions.empty()) {
    return absl::NotFoundError(absl::StrCat("model.name: no model named '", name, "' is loaded"));
  }
  if (version != 0 && it->second.versions.count(version) == 0) {
    return absl::NotFoundError(
        absl::StrCat("model.version: model '", name, "' has no version ", version, " loaded"));
  }
  it->second.pinned_default = version;
  return absl::OkStatus();
}

absl::Status ModelManager::Unload(const std::string& name, int64_t version) {
  std::lock_guard<std::mutex> sync(sync_mutex_);
  {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    auto it = models_.find(name);
    if (it == models_.end() || it->second.versions.erase(version) == 0) {
      return absl::NotFoundError(
          absl::StrCat("model '", name, "' has no version ", version, " loaded"));
    }
    if (it->second.pinned_default == version) it->second.pinned_default = 0;
  }
  const VersionKey key{name, version};
  if (auto it = from_files_.find(key); it != from_files_.end()) {
    unloaded_[key] = it->second;
    from_files_.erase(it);
  }
  LogInfo("unloaded model ", name, "/", version, " on request");
  return absl::OkStatus();
}

size_t ModelManager::loaded_versions() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  size_t count = 0;
  for (const auto& [name, model] : models_) count += model.versions.size();
  return count;
}

}  // namespace dino::serving
