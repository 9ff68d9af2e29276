// Owns the loaded model versions and hands out reference-counted handles to them (TF
// Serving's manager and ServableHandle): a request holds its handle until it finishes, so a
// version can be replaced or unloaded while requests on it are still running.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/core/executor.h"
#include "server/core/surrogate_model.h"

namespace dino::serving {

struct ServableHandle {
  std::string name;
  int64_t version = 0;
  std::shared_ptr<const SurrogateModel> model;
  std::shared_ptr<Executor> executor;  // Where this model's work runs.
};

struct ModelListing {
  std::string name;
  std::vector<int64_t> versions;  // Ascending.
  int64_t default_version = 0;
};

struct LoadReport {
  std::vector<std::string> loaded;  // "name/version"
  std::vector<std::string> failed;  // "name/version: why"
};

class ModelManager {
 public:
  struct Options {
    std::string repository;
    int executor_threads = 1;  // Worker threads per model name.
    ComputeLimits limits;
  };

  explicit ModelManager(Options options);
  ~ModelManager();
  ModelManager(const ModelManager&) = delete;
  ModelManager& operator=(const ModelManager&) = delete;

  // Loads every version in the repository. A version that fails to load is reported and
  // skipped; the others serve. NOT_FOUND if the repository cannot be read.
  absl::StatusOr<LoadReport> LoadRepository();

  // Makes an already loaded model servable under name/version (replacing that version).
  void Add(const std::string& name, int64_t version,
           std::shared_ptr<const SurrogateModel> model);

  // version 0 selects the default version. NOT_FOUND naming what is missing.
  absl::StatusOr<ServableHandle> Get(const std::string& name, int64_t version) const;

  std::vector<ModelListing> List() const;  // Sorted by name.
  size_t loaded_versions() const;

  // Runs the work already queued on every executor, then stops them. Idempotent.
  void Shutdown();

 private:
  struct Model {
    std::map<int64_t, std::shared_ptr<const SurrogateModel>> versions;
    std::shared_ptr<Executor> executor;
  };

  const Options options_;
  mutable std::shared_mutex mutex_;
  std::map<std::string, Model> models_;
};

}  // namespace dino::serving
