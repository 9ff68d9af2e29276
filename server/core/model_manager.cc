#include "server/core/model_manager.h"

#include <sys/stat.h>

#include <chrono>
#include <exception>
#include <filesystem>
#include <optional>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/core/log.h"
#include "server/core/model_repository.h"

namespace dino::serving {
namespace {

std::string VersionId(const std::string& name, int64_t version) {
  return absl::StrCat(name, "/", version);
}

std::string JoinLabels(const std::map<std::string, int64_t>& labels) {
  std::string text;
  for (const auto& [label, version] : labels) {
    absl::StrAppend(&text, text.empty() ? "" : ", ", label, " → ", version);
  }
  return text;
}

// One line on what was loaded, for the kAvailable event.
std::string Describe(const SurrogateModel& model) {
  const ModelInfo& info = model.info();
  return absl::StrCat(info.architecture, ", d_M=", info.input_dim, ", d_Q=", info.output_dim,
                      info.has_reduced_bases
                          ? absl::StrCat(", r_M=", info.input_rank, ", r_Q=", info.output_rank)
                          : std::string(),
                      ", ", info.dtype == torch::kFloat64 ? "fp64" : "fp32");
}

}  // namespace

const char* ServableStateName(ServableState state) {
  switch (state) {
    case ServableState::kLoading:
      return "loading";
    case ServableState::kAvailable:
      return "available";
    case ServableState::kLoadFailed:
      return "load failed";
    case ServableState::kUnloading:
      return "unloading";
    case ServableState::kUnloaded:
      return "unloaded";
  }
  return "unknown";
}

ModelManager::ModelManager(Options options) : options_(std::move(options)) {}

std::optional<ModelManager::FileStamp> ModelManager::StampOf(const std::string& path) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) return std::nullopt;
  return FileStamp{static_cast<int64_t>(info.st_mtim.tv_sec) * 1000000000 + info.st_mtim.tv_nsec,
                   static_cast<uintmax_t>(info.st_size), static_cast<uint64_t>(info.st_ino)};
}

ModelManager::~ModelManager() { StopPolling(); }

ModelManager::Model& ModelManager::EntryLocked(const std::string& name) {
  Model& model = models_[name];
  if (!model.config) model.config = std::make_shared<const ModelConfig>(DefaultConfig());
  return model;
}

ModelConfig ModelManager::DefaultConfig() const {
  ModelConfig config;
  config.batching = options_.default_config.batching;
  config.executors = options_.default_config.executors;
  return config;
}

// ---- Policy ---------------------------------------------------------------------------------

std::set<int64_t> ModelManager::KeptVersions(const Model& model) {
  const ModelConfig& config = *model.config;
  std::set<int64_t> kept;
  const auto taken_out = [&](int64_t version) {
    return config.unloaded_versions.count(version) != 0;
  };
  switch (config.version_policy.kind) {
    case VersionPolicy::Kind::kLatest: {
      // A version whose file does not load does not count: the one before it serves instead.
      int64_t count = 0;
      for (auto it = model.on_disk.rbegin();
           it != model.on_disk.rend() && count < config.version_policy.latest; ++it) {
        const auto failed = model.failed.find(it->first);
        if (taken_out(it->first) ||
            (failed != model.failed.end() && failed->second.stamp == it->second.stamp)) {
          continue;
        }
        kept.insert(it->first);
        ++count;
      }
      break;
    }
    case VersionPolicy::Kind::kAll:
      for (const auto& [version, unused] : model.on_disk) {
        if (!taken_out(version)) kept.insert(version);
      }
      break;
    case VersionPolicy::Kind::kSpecific:
      for (int64_t version : config.version_policy.specific) {
        if (model.on_disk.count(version) != 0 && !taken_out(version)) kept.insert(version);
      }
      break;
  }
  // Pins and labels are always kept (the config refuses them on unloaded versions).
  if (config.default_version != 0 && model.on_disk.count(config.default_version) != 0) {
    kept.insert(config.default_version);
  }
  for (const auto& [label, version] : config.labels) {
    if (model.on_disk.count(version) != 0) kept.insert(version);
  }
  return kept;
}

std::string ModelManager::WhyNotKept(const Model& model, int64_t version) {
  if (model.on_disk.count(version) == 0) return "its file is gone";
  if (model.config->unloaded_versions.count(version) != 0) {
    return "unloaded on request (config.json unloaded_versions)";
  }
  return absl::StrCat("the version policy (", DescribeVersionPolicy(model.config->version_policy),
                      ") does not keep it");
}

int64_t ModelManager::DefaultVersion(const Model& model) {
  const int64_t pinned = model.config->default_version;
  if (pinned != 0 && model.versions.count(pinned) != 0) return pinned;
  return model.versions.empty() ? 0 : model.versions.rbegin()->first;
}

// ---- Loading and unloading ------------------------------------------------------------------

std::optional<ModelManager::LoadResult> ModelManager::LoadVersion(const std::string& name,
                                                                  int64_t version,
                                                                  const std::string& path,
                                                                  bool join_other_load) {
  const VersionKey key{name, version};
  std::promise<LoadResult> promise;
  {
    std::unique_lock<std::mutex> lock(load_mutex_);
    if (auto it = loading_.find(key); it != loading_.end()) {
      if (!join_other_load) return std::nullopt;
      std::shared_future<LoadResult> pending = it->second;
      lock.unlock();
      return pending.get();
    }
    loading_.emplace(key, promise.get_future().share());
  }
  Notify({ServableEvent{name, version, ServableState::kLoading, path}});
  LoadResult result = absl::InternalError("not loaded");
  try {
    result = LoadModelVersion(path, options_.limits);
  } catch (const std::exception& e) {
    result = absl::InternalError(absl::StrCat("cannot load ", path, ": ", e.what()));
  }
  if (!result.ok()) {
    Notify({ServableEvent{name, version, ServableState::kLoadFailed,
                          std::string(result.status().message())}});
  }
  promise.set_value(result);
  {
    std::lock_guard<std::mutex> lock(load_mutex_);
    loading_.erase(key);
  }
  return result;
}

std::vector<ServableEvent> ModelManager::InstallLocked(
    const std::string& name, int64_t version, std::shared_ptr<const SurrogateModel> model) {
  Model& entry = EntryLocked(name);
  std::string description = Describe(*model);
  entry.versions[version] = std::move(model);
  return {ServableEvent{name, version, ServableState::kAvailable, std::move(description)}};
}

void ModelManager::Reconcile(const std::string& name, LoadReport* report,
                             bool wait_for_other_loads) {
  // Load first, newest first, so that a model never goes without its replacement version.
  std::set<int64_t> attempted;  // Each version is tried once per pass.
  for (;;) {
    struct Planned {
      int64_t version;
      VersionFile file;
    };
    std::vector<Planned> to_load;
    {
      std::shared_lock<std::shared_mutex> lock(mutex_);
      auto it = models_.find(name);
      if (it == models_.end()) return;
      const Model& model = it->second;
      const std::set<int64_t> kept = KeptVersions(model);
      for (auto v = kept.rbegin(); v != kept.rend(); ++v) {
        if (model.versions.count(*v) != 0 || attempted.count(*v) != 0) continue;
        const VersionFile& file = model.on_disk.at(*v);
        if (auto failed = model.failed.find(*v);
            failed != model.failed.end() && failed->second.stamp == file.stamp) {
          continue;
        }
        to_load.push_back({*v, file});
      }
    }
    if (to_load.empty()) break;
    for (const Planned& planned : to_load) {
      attempted.insert(planned.version);
      std::optional<LoadResult> loaded =
          LoadVersion(name, planned.version, planned.file.path, wait_for_other_loads);
      // Whoever is loading it installs it if the config then still keeps it.
      if (!loaded) continue;
      std::vector<ServableEvent> events;
      {
        std::unique_lock<std::shared_mutex> lock(mutex_);
        Model& model = EntryLocked(name);
        const std::string id = VersionId(name, planned.version);
        if (!loaded->ok()) {
          const std::string why(loaded->status().message());
          model.failed[planned.version] = {planned.file.stamp, why};
          if (report) report->failed.push_back(absl::StrCat(id, ": ", why));
        } else if (model.versions.count(planned.version) != 0) {
          // An admin call installed the same load meanwhile.
        } else if (KeptVersions(model).count(planned.version) == 0) {
          // The config changed while it loaded: it is not wanted any more.
          events.push_back(ServableEvent{name, planned.version, ServableState::kUnloaded,
                                         WhyNotKept(model, planned.version)});
        } else {
          events = InstallLocked(name, planned.version, **std::move(loaded));
          if (report) report->loaded.push_back(id);
        }
      }
      Notify(std::move(events));
    }
  }
  std::vector<ServableEvent> events;
  {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    auto it = models_.find(name);
    if (it == models_.end()) return;
    Model& model = it->second;
    const std::set<int64_t> kept = KeptVersions(model);
    for (auto v = model.versions.begin(); v != model.versions.end();) {
      if (kept.count(v->first) != 0) {
        ++v;
        continue;
      }
      events.push_back(
          ServableEvent{name, v->first, ServableState::kUnloading, WhyNotKept(model, v->first)});
      if (report) report->unloaded.push_back(VersionId(name, v->first));
      {
        // Freed by ReapRetired once no request holds it, off the request path.
        std::lock_guard<std::mutex> retired(retired_mutex_);
        retired_.push_back({name, v->first, std::move(v->second)});
      }
      v = model.versions.erase(v);
    }
  }
  Notify(std::move(events));
}

void ModelManager::ReapRetired() {
  std::vector<Retired> released;
  {
    std::lock_guard<std::mutex> lock(retired_mutex_);
    for (auto it = retired_.begin(); it != retired_.end();) {
      // Only handles copied from the serving map can share it, and the map no longer has it:
      // a count of one cannot grow again.
      if (it->model.use_count() == 1) {
        released.push_back(std::move(*it));
        it = retired_.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::vector<ServableEvent> events;
  for (Retired& retired : released) {
    retired.model.reset();
    events.push_back(
        ServableEvent{retired.name, retired.version, ServableState::kUnloaded, std::string()});
  }
  Notify(std::move(events));
}

void ModelManager::Notify(std::vector<ServableEvent> events) {
  if (!options_.observer || events.empty()) return;
  std::lock_guard<std::mutex> lock(notify_mutex_);
  for (ServableEvent& event : events) {
    event.loaded_versions = loaded_versions();
    options_.observer(event);
  }
}

// ---- The repository -------------------------------------------------------------------------

bool ModelManager::RefreshVersionsOnDisk(const std::string& name) {
  if (!IsValidModelName(name)) return false;
  std::map<int64_t, VersionFile> on_disk;
  for (const ModelVersionPath& entry : ScanModelVersions(options_.repository, name)) {
    if (const auto stamp = StampOf(entry.path)) on_disk[entry.version] = {entry.path, *stamp};
  }
  const bool any = !on_disk.empty();
  std::unique_lock<std::shared_mutex> lock(mutex_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    if (!any) return false;
    it = models_.emplace(name, Model()).first;
  }
  it->second.on_disk = std::move(on_disk);
  return any;
}

void ModelManager::RefreshConfigLocked(const std::string& name, LoadReport* report) {
  const std::string path = ModelConfigPath(options_.repository, name);
  const std::optional<FileStamp> stamp = StampOf(path);
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    auto it = models_.find(name);
    if (it != models_.end() && it->second.config_read && it->second.config_stamp == stamp) return;
  }
  absl::StatusOr<ModelConfig> config = ReadModelConfig(path, options_.default_config);
  std::unique_lock<std::shared_mutex> lock(mutex_);
  Model& model = EntryLocked(name);
  model.config_read = true;
  model.config_stamp = stamp;
  if (!config.ok()) {
    model.config_error = std::string(config.status().message());
    LogError("model ", name,
             ": config.json refused, the last good config stays in force: ", model.config_error);
    if (report) report->config_errors.push_back(model.config_error);
    return;
  }
  model.config_error.clear();
  if (*config != *model.config) {
    model.config = std::make_shared<const ModelConfig>(*std::move(config));
    LogInfo("model ", name, ": config.json in force: version policy ",
            DescribeVersionPolicy(model.config->version_policy), ", default version ",
            model.config->default_version == 0 ? std::string("highest")
                                               : std::to_string(model.config->default_version),
            model.config->labels.empty() ? "" : ", labels ", JoinLabels(model.config->labels));
  }
}

absl::StatusOr<LoadReport> ModelManager::SyncRepository() {
  std::lock_guard<std::mutex> sync(sync_mutex_);
  auto entries = ScanModelRepository(options_.repository);
  if (!entries.ok()) return entries.status();
  std::map<std::string, std::map<int64_t, VersionFile>> scanned;
  for (const ModelVersionPath& entry : *entries) {
    const auto stamp = StampOf(entry.path);
    if (!stamp) continue;  // Vanished between the scan and now.
    scanned[entry.name][entry.version] = {entry.path, *stamp};
  }
  LoadReport report;
  std::vector<std::string> names;
  {
    std::lock_guard<std::mutex> config_lock(config_mutex_);
    {
      std::unique_lock<std::shared_mutex> lock(mutex_);
      for (auto& [name, model] : models_) {
        if (scanned.count(name) == 0) model.on_disk.clear();  // The model folder is gone.
      }
      for (auto& [name, files] : scanned) EntryLocked(name).on_disk = std::move(files);
      for (auto& [name, model] : models_) {
        // A file that changed since it failed gets another try.
        for (auto it = model.failed.begin(); it != model.failed.end();) {
          auto file = model.on_disk.find(it->first);
          if (file == model.on_disk.end() || file->second.stamp != it->second.stamp) {
            it = model.failed.erase(it);
          } else {
            ++it;
          }
        }
        names.push_back(name);
      }
    }
    // Under config_mutex_, so that a config an admin call is writing is never replaced by
    // the file as it was a moment earlier.
    for (const std::string& name : names) RefreshConfigLocked(name, &report);
  }
  for (const std::string& name : names) Reconcile(name, &report, /*wait_for_other_loads=*/true);
  ReapRetired();
  return report;
}

void ModelManager::StartPolling(double interval_seconds,
                                std::function<void(const LoadReport&)> on_change) {
  poller_.Start(std::chrono::duration<double>(interval_seconds),
                [this, on_change = std::move(on_change)] {
                  auto report = SyncRepository();
                  if (!report.ok()) {
                    LogError("repository poll: ", report.status().message());
                  } else if (on_change && (report->changed() || !report->failed.empty() ||
                                           !report->config_errors.empty())) {
                    on_change(*report);
                  }
                });
}

void ModelManager::StopPolling() { poller_.Stop(); }

// ---- Admin ----------------------------------------------------------------------------------

ModelManager::LoadResult ModelManager::EnsureLoadable(const std::string& name, int64_t version) {
  if (!RefreshVersionsOnDisk(name)) {
    return absl::NotFoundError(
        absl::StrCat("model.name: no model named '", name, "' in the repository"));
  }
  VersionFile file;
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    const Model& model = models_.at(name);
    if (auto loaded = model.versions.find(version); loaded != model.versions.end()) {
      return loaded->second;
    }
    auto found = model.on_disk.find(version);
    if (found == model.on_disk.end()) {
      std::string versions;
      for (const auto& [v, unused] : model.on_disk) {
        absl::StrAppend(&versions, versions.empty() ? "" : ", ", v);
      }
      return absl::NotFoundError(absl::StrCat("model.version: model '", name, "' has no version ",
                                              version, " in the repository (versions: ", versions,
                                              ")"));
    }
    file = found->second;
    if (auto failed = model.failed.find(version);
        failed != model.failed.end() && failed->second.stamp == file.stamp) {
      return absl::FailedPreconditionError(absl::StrCat("model.version: ", VersionId(name, version),
                                                        " does not load: ", failed->second.why));
    }
  }
  LoadResult loaded = *LoadVersion(name, version, file.path, /*join_other_load=*/true);
  if (!loaded.ok()) {
    {
      std::unique_lock<std::shared_mutex> lock(mutex_);
      EntryLocked(name).failed[version] = {file.stamp, std::string(loaded.status().message())};
    }
    return absl::FailedPreconditionError(
        absl::StrCat("model.version: ", VersionId(name, version),
                     " does not load: ", loaded.status().message()));
  }
  return loaded;
}

absl::Status ModelManager::ChangeConfig(const std::string& name, int64_t keep_version,
                                        std::shared_ptr<const SurrogateModel> keep,
                                        const std::function<absl::Status(ModelConfig&)>& change) {
  RefreshVersionsOnDisk(name);
  // A version loaded for this change that does not get installed ends its life here.
  const auto refuse = [&](absl::Status status) {
    bool fresh = false;
    if (keep) {
      std::shared_lock<std::shared_mutex> lock(mutex_);
      auto it = models_.find(name);
      fresh = it == models_.end() || it->second.versions.count(keep_version) == 0;
    }
    keep.reset();
    if (fresh) {
      Notify({ServableEvent{name, keep_version, ServableState::kUnloaded,
                            absl::StrCat("not installed: ", status.message())}});
    }
    return status;
  };
  std::vector<ServableEvent> events;
  {
    std::lock_guard<std::mutex> config_lock(config_mutex_);
    const std::string path = ModelConfigPath(options_.repository, name);
    // The file, not the copy in memory, is what is changed: an edit by an operator or another
    // replica that no poll has seen yet is kept.
    absl::StatusOr<ModelConfig> config = ReadModelConfig(path, options_.default_config);
    if (!config.ok()) {
      return refuse(absl::FailedPreconditionError(absl::StrCat(
          config.status().message(), " (fix or remove the file; nothing was changed)")));
    }
    if (absl::Status s = change(*config); !s.ok()) return refuse(s);
    {
      // Forget unloads of versions whose folder is gone: a number published again later
      // (after the highest version was deleted) is a new model and must not stay excluded.
      std::shared_lock<std::shared_mutex> lock(mutex_);
      const auto& on_disk = models_.at(name).on_disk;
      for (auto it = config->unloaded_versions.begin(); it != config->unloaded_versions.end();) {
        it = on_disk.count(*it) == 0 ? config->unloaded_versions.erase(it) : std::next(it);
      }
    }
    if (absl::Status s = WriteModelConfig(path, *config); !s.ok()) return refuse(s);
    const std::optional<FileStamp> stamp = StampOf(path);
    std::unique_lock<std::shared_mutex> lock(mutex_);
    Model& model = EntryLocked(name);
    model.config = std::make_shared<const ModelConfig>(*std::move(config));
    model.config_error.clear();
    model.config_stamp = stamp;
    model.config_read = true;
    // The pinned or labelled version serves in the same step as the config that names it.
    if (keep && model.versions.count(keep_version) == 0 && model.on_disk.count(keep_version) != 0) {
      events = InstallLocked(name, keep_version, std::move(keep));
    }
  }
  Notify(std::move(events));
  // Loads what the change makes the policy keep (e.g. the version before an unloaded one),
  // but never waits for a load a sync has in progress: that sync installs its version.
  Reconcile(name, nullptr, /*wait_for_other_loads=*/false);
  ReapRetired();
  return absl::OkStatus();
}

ModelManager::LoadResult ModelManager::VersionToKeep(const std::string& name, int64_t version) {
  if (version != 0) return EnsureLoadable(name, version);
  if (!RefreshVersionsOnDisk(name)) {
    return absl::NotFoundError(
        absl::StrCat("model.name: no model named '", name, "' in the repository"));
  }
  return std::shared_ptr<const SurrogateModel>();  // Nothing to keep: the name exists.
}

absl::Status ModelManager::SetDefaultVersion(const std::string& name, int64_t version) {
  if (name.empty()) return absl::InvalidArgumentError("name is required");
  if (version < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("version must be >= 0 (0: the highest), got ", version));
  }
  LoadResult keep = VersionToKeep(name, version);
  if (!keep.ok()) return keep.status();
  absl::Status status = ChangeConfig(name, version, *std::move(keep), [version](ModelConfig& c) {
    c.default_version = version;
    if (version != 0) c.unloaded_versions.erase(version);  // Pinning brings it back.
    return absl::OkStatus();
  });
  if (status.ok()) {
    LogInfo("model ", name, ": default version ",
            version == 0 ? std::string("is the highest") : absl::StrCat("pinned to ", version));
  }
  return status;
}

absl::Status ModelManager::SetVersionLabel(const std::string& name, const std::string& label,
                                           int64_t version) {
  if (name.empty()) return absl::InvalidArgumentError("name is required");
  if (!IsValidVersionLabel(label)) {
    return absl::InvalidArgumentError(
        absl::StrCat("label: '", label,
                     "' is not a valid label (a letter, then letters, digits, '_', '-', '.'; at "
                     "most 64 characters)"));
  }
  if (version < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("version must be >= 0 (0 removes the label), got ", version));
  }
  LoadResult keep = VersionToKeep(name, version);
  if (!keep.ok()) return keep.status();
  absl::Status status =
      ChangeConfig(name, version, *std::move(keep), [&](ModelConfig& c) -> absl::Status {
        if (version == 0) {
          if (c.labels.erase(label) == 0) {
            return absl::NotFoundError(absl::StrCat(
                "label: model '", name, "' has no label '", label,
                "' (labels: ", c.labels.empty() ? std::string("none") : JoinLabels(c.labels), ")"));
          }
          return absl::OkStatus();
        }
        c.labels[label] = version;
        c.unloaded_versions.erase(version);  // Labelling brings it back.
        return absl::OkStatus();
      });
  if (status.ok()) {
    LogInfo("model ", name, ": label '", label, "' ",
            version == 0 ? std::string("removed") : absl::StrCat("→ version ", version));
  }
  return status;
}

absl::Status ModelManager::Unload(const std::string& name, int64_t version) {
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    auto it = models_.find(name);
    if (it == models_.end() || it->second.versions.count(version) == 0) {
      return absl::NotFoundError(
          absl::StrCat("model '", name, "' has no version ", version, " loaded"));
    }
  }
  return ChangeConfig(name, 0, nullptr, [&](ModelConfig& c) -> absl::Status {
    if (c.default_version == version) {
      return absl::FailedPreconditionError(
          absl::StrCat("version ", version, " is the pinned default version of model '", name,
                       "'; pin another version or clear the pin (SetDefaultVersion 0) first"));
    }
    std::vector<std::string> labels;
    for (const auto& [label, v] : c.labels) {
      if (v == version) labels.push_back(label);
    }
    if (!labels.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "version ", version, " of model '", name, "' carries the label(s) ",
          absl::StrJoin(labels, ", "), "; move or remove them (SetVersionLabel) first"));
    }
    c.unloaded_versions.insert(version);
    return absl::OkStatus();
  });
}

// ---- Serving --------------------------------------------------------------------------------

absl::StatusOr<ServableHandle> ModelManager::Get(const std::string& name, int64_t version,
                                                 const std::string& label) const {
  if (name.empty()) return absl::InvalidArgumentError("model.name is required");
  if (version < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.version must be positive (or 0 for the default), got ", version));
  }
  if (!label.empty() && version != 0) {
    return absl::InvalidArgumentError("model.label and model.version are exclusive");
  }
  std::shared_lock<std::shared_mutex> lock(mutex_);
  auto it = models_.find(name);
  if (it == models_.end() || it->second.versions.empty()) {
    return absl::NotFoundError(absl::StrCat("model.name: no model named '", name, "' is loaded"));
  }
  const Model& model = it->second;
  const auto loaded_list = [&model] {
    std::string loaded;
    for (const auto& [v, unused] : model.versions) {
      absl::StrAppend(&loaded, loaded.empty() ? "" : ", ", v);
    }
    return loaded;
  };
  int64_t wanted = version == 0 ? DefaultVersion(model) : version;
  if (!label.empty()) {
    auto labelled = model.config->labels.find(label);
    if (labelled == model.config->labels.end()) {
      std::string known;
      for (const auto& [l, unused] : model.config->labels) {
        absl::StrAppend(&known, known.empty() ? "" : ", ", l);
      }
      return absl::NotFoundError(absl::StrCat("model.label: model '", name, "' has no label '",
                                              label, "' (labels: ", known.empty() ? "none" : known,
                                              ")"));
    }
    wanted = labelled->second;
    if (model.versions.count(wanted) == 0) {
      return absl::NotFoundError(
          absl::StrCat("model.label: label '", label, "' of model '", name, "' names version ",
                       wanted, ", which is not loaded (loaded: ", loaded_list(), ")"));
    }
  }
  auto version_it = model.versions.find(wanted);
  if (version_it == model.versions.end()) {
    return absl::NotFoundError(absl::StrCat("model.version: model '", name, "' has no version ",
                                            version, " (loaded: ", loaded_list(), ")"));
  }
  return ServableHandle{name, version_it->first, version_it->second, model.config};
}

VersionStatus ModelManager::GetVersionStatus(const std::string& name, int64_t version) const {
  using State = VersionStatus::State;
  const std::string id = VersionId(name, version);
  std::shared_lock<std::shared_mutex> lock(mutex_);
  auto it = models_.find(name);
  if (it == models_.end() || it->second.on_disk.count(version) == 0) {
    return {State::kNotInRepository, absl::StrCat(id, " is not in the repository")};
  }
  const Model& model = it->second;
  if (model.versions.count(version) != 0) return {State::kAvailable, absl::StrCat(id, " serves")};
  if (auto failed = model.failed.find(version);
      failed != model.failed.end() && failed->second.stamp == model.on_disk.at(version).stamp) {
    return {State::kLoadFailed, absl::StrCat(id, " does not load: ", failed->second.why)};
  }
  if (KeptVersions(model).count(version) != 0) {
    return {State::kPending, absl::StrCat(id, " is kept and not loaded yet")};
  }
  return {State::kNotKept, absl::StrCat(id, " is not loaded: ", WhyNotKept(model, version))};
}

std::vector<ModelListing> ModelManager::List() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  std::vector<ModelListing> listings;
  for (const auto& [name, model] : models_) {
    if (model.versions.empty()) continue;
    ModelListing listing{name, {}, DefaultVersion(model), model.config->labels, model.config_error};
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

}  // namespace dino::serving
