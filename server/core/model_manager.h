// Owns the loaded model versions and hands out reference-counted handles to them (TF
// Serving's manager and ServableHandle): a request holds its handle until it finishes, so a
// version can be replaced or unloaded while requests on it are still running.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "server/core/model_config.h"
#include "server/core/surrogate_model.h"

namespace dino::serving {

struct ServableHandle {
  std::string name;
  int64_t version = 0;
  std::shared_ptr<const SurrogateModel> model;
  // The model's config.json as of this call (never null): batching knobs for the scheduler.
  std::shared_ptr<const ModelConfig> config;
};

struct ModelListing {
  std::string name;
  std::vector<int64_t> versions;  // Ascending.
  int64_t default_version = 0;
};

// What one pass over the repository changed.
struct LoadReport {
  std::vector<std::string> loaded;    // "name/version"
  std::vector<std::string> failed;    // "name/version: why"
  std::vector<std::string> unloaded;  // "name/version": its file is gone
  bool changed() const { return !loaded.empty() || !unloaded.empty(); }
};

class ModelManager {
 public:
  struct Options {
    std::string repository;
    ComputeLimits limits;
    // A model's configuration where its config.json says nothing (the server's flags).
    ModelConfig default_config;
  };

  explicit ModelManager(Options options);
  ~ModelManager();
  ModelManager(const ModelManager&) = delete;
  ModelManager& operator=(const ModelManager&) = delete;

  // Brings the servable set in line with the repository: loads versions not loaded yet,
  // unloads versions whose model file is gone (requests holding their handles finish on
  // them). A version that fails to load is reported once and retried only when its file
  // changes; the others serve. NOT_FOUND if the repository cannot be read.
  absl::StatusOr<LoadReport> SyncRepository();

  // Calls SyncRepository every `interval` on a background thread until StopPolling or
  // destruction; `on_change` (may be empty) sees every report that changed something or
  // failed. Versions added to the repository by other means are picked up this way.
  void StartPolling(double interval_seconds, std::function<void(const LoadReport&)> on_change);
  void StopPolling();

  // Makes an already loaded model servable under name/version (replacing that version).
  void Add(const std::string& name, int64_t version, std::shared_ptr<const SurrogateModel> model);

  // Requests without a version get `version` from now on (0: the highest, the default
  // policy). NOT_FOUND unless that version is loaded.
  absl::Status SetDefaultVersion(const std::string& name, int64_t version);

  // Stops serving name/version; requests already holding it finish on it. It stays unloaded
  // (SyncRepository does not bring it back) until its file changes. NOT_FOUND if not loaded.
  absl::Status Unload(const std::string& name, int64_t version);

  // version 0 selects the default version. NOT_FOUND naming what is missing.
  absl::StatusOr<ServableHandle> Get(const std::string& name, int64_t version) const;

  std::vector<ModelListing> List() const;  // Sorted by name.
  size_t loaded_versions() const;

 private:
  struct Model {
    std::map<int64_t, std::shared_ptr<const SurrogateModel>> versions;
    int64_t pinned_default = 0;  // 0: the highest version.
    std::shared_ptr<const ModelConfig> config;
  };
  // The repository file a version came from, identified by its modification time and size,
  // so that a changed file is noticed.
  struct FileStamp {
    int64_t mtime_ns = 0;
    uintmax_t size = 0;
    bool operator==(const FileStamp& o) const { return mtime_ns == o.mtime_ns && size == o.size; }
  };
  using VersionKey = std::pair<std::string, int64_t>;

  int64_t DefaultVersion(const Model& model) const;

  const Options options_;
  mutable std::shared_mutex mutex_;
  std::map<std::string, Model> models_;

  std::mutex sync_mutex_;                       // One SyncRepository at a time.
  std::map<VersionKey, FileStamp> from_files_;  // Versions loaded from the repository.
  std::map<VersionKey, FileStamp> failed_;      // Not loadable, as of this file.
  std::map<VersionKey, FileStamp> unloaded_;    // Unloaded on request, as of this file.

  std::mutex poll_mutex_;
  std::condition_variable poll_wake_;
  bool poll_stop_ = false;
  std::thread poller_;
};

}  // namespace dino::serving
