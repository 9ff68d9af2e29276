// Owns the loaded model versions and hands out reference-counted handles to them (TF
// Serving's manager and ServableHandle): a request holds its handle until it finishes, so a
// version can be replaced or unloaded while requests on it are still running.
//
// Which versions are loaded is decided by each model's config.json (server/core/model_config.h):
// after every repository sync and every admin change, exactly the versions the version policy
// keeps are loaded (default "latest 1"), plus the pinned default version and every labelled
// version. New versions are loaded before the versions they replace are unloaded, so a model
// never goes without a version during a publish.
//
// Locking (why Get never waits for a load): models are loaded with no lock held; the serving
// map (mutex_) is only locked to read it or to swap versions in and out. Admin calls
// (SetDefaultVersion, SetVersionLabel, Unload) serialize their config.json writes on
// config_mutex_, which is never held during a load either; they load the version they need
// themselves and do not wait for SyncRepository (sync_mutex_).
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "server/core/model_config.h"
#include "server/core/periodic_task.h"
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
  std::map<std::string, int64_t> labels;  // label → version, from config.json.
  std::string config_error;  // Why config.json was refused (the last good one applies); or "".
};

// What one pass over the repository changed.
struct LoadReport {
  std::vector<std::string> loaded;         // "name/version"
  std::vector<std::string> failed;         // "name/version: why"
  std::vector<std::string> unloaded;       // "name/version" (file gone, or out of the policy)
  std::vector<std::string> config_errors;  // "<path>: field ...", reported once per file change
  bool changed() const { return !loaded.empty() || !unloaded.empty(); }
};

// The life of one servable version (TF Serving's ServableState).
enum class ServableState {
  kLoading,     // Its file is being loaded (no lock held; requests are not affected).
  kAvailable,   // Get returns it.
  kLoadFailed,  // The file did not load; retried only when the file changes.
  kUnloading,   // Get no longer returns it; requests holding a handle finish on it.
  // The manager released the model: no request held it any more (noticed at the next sync
  // or admin call, on that thread, never on a request's), or a load finished after the
  // config stopped keeping the version.
  kUnloaded,
};
const char* ServableStateName(ServableState state);

struct ServableEvent {
  std::string name;
  int64_t version = 0;
  ServableState state = ServableState::kLoading;
  // kLoading: the file; kAvailable: what was loaded (architecture, dims, dtype);
  // kLoadFailed: why; kUnloading: why (file gone, version policy, unloaded on request).
  std::string message;
  // Versions servable (the sum over List()) when the event is delivered. Events are delivered
  // one at a time, after the change they report, so the last one delivered always carries
  // the current count.
  size_t loaded_versions = 0;
};

// Sees every servable transition. Called on the thread that made the change (a sync, an admin
// call), never with the serving lock held, one event at a time; it should return quickly and
// must not call the manager's sync or admin methods.
using ServableObserver = std::function<void(const ServableEvent&)>;

// Why a version is or is not served (GetVersionStatus).
struct VersionStatus {
  enum class State {
    kAvailable,        // Loaded and servable.
    kNotInRepository,  // No <name>/<version>/model.pt (or pde.json).
    kNotKept,          // On disk, but the version policy (or an unload) does not keep it.
    kLoadFailed,       // Kept, but its file did not load.
    kPending,          // Kept and not loaded yet (the next sync loads it).
  };
  State state = State::kNotInRepository;
  std::string message;  // Says which, naming the policy or the load error.
};

class ModelManager {
 public:
  struct Options {
    std::string repository;
    // A model's batching knobs and executors where its config.json does not set them (the
    // server's flags).
    ModelConfig default_config;
    ComputeLimits limits;
    ServableObserver observer;  // May be empty.
  };

  explicit ModelManager(Options options);
  ~ModelManager();
  ModelManager(const ModelManager&) = delete;
  ModelManager& operator=(const ModelManager&) = delete;

  // Brings the servable set in line with the repository and each model's config.json:
  // re-reads changed config files (a broken one is logged and reported once; the last good
  // config stays in force, the defaults at start-up), loads the versions the policies keep
  // and are not loaded yet, then unloads the versions they no longer keep (requests holding
  // their handles finish on them). A version that fails to load is reported once and retried
  // only when its file changes; under "latest N" the next older version takes its place.
  // Blocks its caller for the loads; Get and the admin calls do not wait for it. NOT_FOUND
  // if the repository cannot be read.
  absl::StatusOr<LoadReport> SyncRepository();

  // Calls SyncRepository every `interval` on a background thread until StopPolling or
  // destruction; `on_change` (may be empty) sees every report that changed something or
  // failed. Versions and config changes made by other means (another replica, an operator)
  // are picked up this way.
  void StartPolling(double interval_seconds, std::function<void(const LoadReport&)> on_change);
  void StopPolling();

  // Pins the version requests without a version or label get (0: the highest loaded
  // version). Written to config.json ("default_version"), so it survives restarts and is
  // seen by every replica; takes effect before the call returns, loading the version first
  // if the policy had not kept it. Errors: NOT_FOUND (no such model or version in the
  // repository), FAILED_PRECONDITION (the version does not load, or config.json is broken:
  // the message says which), or the error of writing the file.
  absl::Status SetDefaultVersion(const std::string& name, int64_t version);

  // Points `label` at `version` (0 removes the label), persisted in config.json ("labels");
  // a labelled version is always kept loaded. Errors as SetDefaultVersion, plus
  // INVALID_ARGUMENT for a malformed label and NOT_FOUND for removing an unknown label.
  absl::Status SetVersionLabel(const std::string& name, const std::string& label, int64_t version);

  // Takes name/version out of service: it is recorded in config.json ("unloaded_versions"),
  // so it stays unloaded across syncs and restarts until SetDefaultVersion or SetVersionLabel
  // names it again (or an operator edits the file). Under "latest N" it no longer counts, so
  // the next older version is loaded in its place before it is unloaded. Requests already
  // holding it finish on it. FAILED_PRECONDITION for the pinned default or a labelled version
  // (move the pin or label first); NOT_FOUND if it is not loaded.
  absl::Status Unload(const std::string& name, int64_t version);

  // The servable for a request: `label` (non-empty) selects the version a label names,
  // `version` 0 the default version. INVALID_ARGUMENT when both are given; NOT_FOUND naming
  // what is missing (an unknown label lists the known ones).
  absl::StatusOr<ServableHandle> Get(const std::string& name, int64_t version,
                                     const std::string& label) const;
  absl::StatusOr<ServableHandle> Get(const std::string& name, int64_t version) const {
    return Get(name, version, std::string());
  }

  // Whether name/version serves and, if not, why (for the fine-tune publisher's report).
  VersionStatus GetVersionStatus(const std::string& name, int64_t version) const;

  std::vector<ModelListing> List() const;  // Sorted by name; models with a loaded version.
  size_t loaded_versions() const;

 private:
  // A file (a version's model.pt, a config.json) as of one look: a file replaced by rename
  // has a new inode, one rewritten in place a new time or size, so a change is noticed.
  struct FileStamp {
    int64_t mtime_ns = 0;
    uintmax_t size = 0;
    uint64_t inode = 0;
    bool operator==(const FileStamp& o) const {
      return mtime_ns == o.mtime_ns && size == o.size && inode == o.inode;
    }
    bool operator!=(const FileStamp& o) const { return !(*this == o); }
  };
  struct VersionFile {
    std::string path;
    FileStamp stamp;
  };
  struct FailedLoad {
    FileStamp stamp;  // The file as it was when it failed.
    std::string why;
  };
  struct Model {
    std::map<int64_t, std::shared_ptr<const SurrogateModel>> versions;  // Servable.
    std::shared_ptr<const ModelConfig> config;  // Never null: see EntryLocked.
    std::string config_error;                   // Why the file on disk is not `config`; or "".
    std::optional<FileStamp> config_stamp;      // config.json as last read; nullopt: missing.
    bool config_read = false;                   // config_stamp is meaningful.
    std::map<int64_t, VersionFile> on_disk;     // As of the last scan.
    std::map<int64_t, FailedLoad> failed;       // Did not load, as of this file.
  };
  using VersionKey = std::pair<std::string, int64_t>;
  using LoadResult = absl::StatusOr<std::shared_ptr<const SurrogateModel>>;
  struct Retired {
    std::string name;
    int64_t version;
    std::shared_ptr<const SurrogateModel> model;
  };

  static std::optional<FileStamp> StampOf(const std::string& path);
  static int64_t DefaultVersion(const Model& model);
  // The entry of `name`, created with the default config; call with mutex_ held exclusively.
  Model& EntryLocked(const std::string& name);
  // A config.json-less model's config: the server's batching knobs and executors.
  ModelConfig DefaultConfig() const;
  // The versions the model's config keeps, among those on disk.
  static std::set<int64_t> KeptVersions(const Model& model);
  static std::string WhyNotKept(const Model& model, int64_t version);

  // Loads name/version from `path` with no lock held; concurrent callers for the same
  // version share one load, or, without `join_other_load`, get nullopt at once. Emits
  // kLoading and, on failure, kLoadFailed.
  std::optional<LoadResult> LoadVersion(const std::string& name, int64_t version,
                                        const std::string& path, bool join_other_load);
  // Loads what the model's config keeps and is not loaded, then unloads what it no longer
  // keeps; adds what happened to `report` (may be null). Without `wait_for_other_loads`,
  // versions another caller is loading are left to it.
  void Reconcile(const std::string& name, LoadReport* report, bool wait_for_other_loads);
  // Rescans the model's folder into on_disk; false if it has no version on disk.
  bool RefreshVersionsOnDisk(const std::string& name);
  // Re-reads config.json of `name` if its file changed; call with config_mutex_ held.
  void RefreshConfigLocked(const std::string& name, LoadReport* report);
  // Ensures name/version is loadable for a pin or label: returns the loaded model (loading it
  // if needed). NOT_FOUND / FAILED_PRECONDITION naming the version otherwise.
  LoadResult EnsureLoadable(const std::string& name, int64_t version);
  // For a pin or label of `version`: the loaded version to keep (EnsureLoadable), or for 0
  // (clearing it) null once the model is known to exist; NOT_FOUND otherwise.
  LoadResult VersionToKeep(const std::string& name, int64_t version);
  // Reads config.json, applies `change`, writes it back and installs it (and `keep`, the
  // model of `keep_version`, if non-null) in one step; then reconciles the model.
  absl::Status ChangeConfig(const std::string& name, int64_t keep_version,
                            std::shared_ptr<const SurrogateModel> keep,
                            const std::function<absl::Status(ModelConfig&)>& change);
  // Makes `model` servable as name/version (creating the model's executor); mutex_ held.
  std::vector<ServableEvent> InstallLocked(const std::string& name, int64_t version,
                                           std::shared_ptr<const SurrogateModel> model);
  // Drops retired models no request holds any more and reports them kUnloaded.
  void ReapRetired();
  void Notify(std::vector<ServableEvent> events);

  const Options options_;
  mutable std::shared_mutex mutex_;  // Guards models_.
  std::map<std::string, Model> models_;

  std::mutex sync_mutex_;    // One SyncRepository at a time.
  std::mutex config_mutex_;  // Read-modify-write of config.json files and their install.

  std::mutex load_mutex_;  // Guards loading_.
  std::map<VersionKey, std::shared_future<LoadResult>> loading_;

  std::mutex retired_mutex_;  // Guards retired_.
  std::vector<Retired> retired_;

  std::mutex notify_mutex_;  // Delivers observer events one at a time.

  PeriodicTask poller_;
};

}  // namespace dino::serving
