// Per-model configuration kept in the model repository beside the versions:
//   <root>/<model name>/config.json
// It holds what an operator decides about a model (Triton's config.pbtxt, TF Serving's model
// config): which versions stay loaded, the pinned default version, version labels, and the
// scheduler's batching knobs. Because it lives in the repository, it survives restarts and is
// shared by every replica that mounts the same repository.
//
// Example (every field optional; the defaults are shown):
//   {
//     "version_policy": {"latest": 1},          // or {"all": {}} or {"specific": [3, 5]}
//     "default_version": 0,                     // 0: the highest loaded version
//     "labels": {},                             // e.g. {"stable": 3, "canary": 5}
//     "batching": {
//       "max_batch_size": 1024,                 // rows stacked into one computation
//       "preferred_batch_size": 0,              // wait (up to the delay) for this many rows
//       "max_queue_delay_us": 0,                // 0: batch only what is already queued
//       "max_queue_size": 256                   // queued requests; more: RESOURCE_EXHAUSTED
//     },
//     "executors": 0,                           // compute threads; 0: the server's --threads
//     "unloaded_versions": []                   // taken out of service (ModelAdmin.UnloadVersion)
//   }
// Unknown fields are errors (a misspelt knob must not silently fall back to its default).
// server/core/model_config.cc parses, validates, serializes and atomically writes it.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dino::serving {

// Which versions of a model are kept loaded (TF Serving's ServableVersionPolicy). Versions
// that are the pinned default or carry a label are always kept as well.
struct VersionPolicy {
  enum class Kind { kLatest, kAll, kSpecific };
  Kind kind = Kind::kLatest;
  int64_t latest = 1;          // kLatest: how many of the highest versions.
  std::set<int64_t> specific;  // kSpecific: exactly these.

  bool operator==(const VersionPolicy& o) const {
    return kind == o.kind && latest == o.latest && specific == o.specific;
  }
  bool operator!=(const VersionPolicy& o) const { return !(*this == o); }
};

// The dynamic batcher's knobs (Triton's dynamic_batching).
struct BatchingConfig {
  int64_t max_batch_size = 1024;     // Most rows (points) stacked into one computation.
  int64_t preferred_batch_size = 0;  // 0: none; else wait up to the delay for this many rows.
  int64_t max_queue_delay_us = 0;    // How long a request may wait for others to join it.
  int64_t max_queue_size = 256;      // Requests waiting; beyond it RESOURCE_EXHAUSTED.

  bool operator==(const BatchingConfig& o) const {
    return max_batch_size == o.max_batch_size && preferred_batch_size == o.preferred_batch_size &&
           max_queue_delay_us == o.max_queue_delay_us && max_queue_size == o.max_queue_size;
  }
  bool operator!=(const BatchingConfig& o) const { return !(*this == o); }
};

struct ModelConfig {
  VersionPolicy version_policy;
  int64_t default_version = 0;            // 0: the highest loaded version.
  std::map<std::string, int64_t> labels;  // label → version.
  BatchingConfig batching;
  int executors = 0;  // Compute threads for this model; 0: the server's default.
  // Versions an operator took out of service: never loaded, and not counted by "latest N"
  // (so unloading the newest of "latest 1" brings the one before it back). A version can
  // not be both unloaded and pinned or labelled.
  std::set<int64_t> unloaded_versions;
  // The batching and executors keys the file itself sets ("batching.max_queue_size",
  // "executors", …). The others take the server's defaults (its flags), and only these are
  // written back, so that a pin written by an admin call does not freeze today's flags into
  // the file.
  std::set<std::string> explicit_knobs;

  bool operator==(const ModelConfig& o) const {
    return version_policy == o.version_policy && default_version == o.default_version &&
           labels == o.labels && batching == o.batching && executors == o.executors &&
           unloaded_versions == o.unloaded_versions && explicit_knobs == o.explicit_knobs;
  }
  bool operator!=(const ModelConfig& o) const { return !(*this == o); }
};

inline constexpr const char* kModelConfigFileName = "config.json";

// <root>/<name>/config.json
std::string ModelConfigPath(const std::string& root, const std::string& name);

// True for label names: a letter, then letters, digits, '_', '-', '.'; at most 64 characters.
bool IsValidVersionLabel(const std::string& label);

// "latest 2", "all", "specific [3, 5]": the policy as log and error messages show it.
std::string DescribeVersionPolicy(const VersionPolicy& policy);

// Parses and validates the text of a config.json. INVALID_ARGUMENT naming `path` and the
// field, e.g. "<path>: batching.max_queue_size must be >= 1, got 0".
// Batching knobs and executors the file does not set come from `defaults`.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& text, const std::string& path,
                                             const ModelConfig& defaults = ModelConfig());

// Reads and parses the file at `path`; a missing file is `defaults`.
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& path,
                                            const ModelConfig& defaults = ModelConfig());

// The same checks as ParseModelConfig on a config built in code ("<path>: field ...").
absl::Status ValidateModelConfig(const ModelConfig& config, const std::string& path);

// The config as JSON text that ParseModelConfig reads back to an equal config (with the
// same defaults). Lifecycle fields are always written; batching knobs and executors only
// where the file set them (explicit_knobs).
std::string SerializeModelConfig(const ModelConfig& config);

// Writes the config to `path` atomically: a temporary file in the same folder, fsync, rename
// over `path`, fsync of the folder. A reader (another replica's poll) sees the old file or the
// new one, never a part; after a crash the old file is still there. Validates first.
absl::Status WriteModelConfig(const std::string& path, const ModelConfig& config);

}  // namespace dino::serving
