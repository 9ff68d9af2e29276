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
//     "executors": 0                            // compute threads; 0: the server's --threads
//   }
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "absl/status/statusor.h"

namespace dino::serving {

// Which versions of a model are kept loaded (TF Serving's ServableVersionPolicy). Versions
// that are the pinned default or carry a label are always kept as well.
struct VersionPolicy {
  enum class Kind { kLatest, kAll, kSpecific };
  Kind kind = Kind::kLatest;
  int64_t latest = 1;          // kLatest: how many of the highest versions.
  std::set<int64_t> specific;  // kSpecific: exactly these.
};

// The dynamic batcher's knobs (Triton's dynamic_batching).
struct BatchingConfig {
  int64_t max_batch_size = 1024;     // Most rows (points) stacked into one computation.
  int64_t preferred_batch_size = 0;  // 0: none; else wait up to the delay for this many rows.
  int64_t max_queue_delay_us = 0;    // How long a request may wait for others to join it.
  int64_t max_queue_size = 256;      // Requests waiting; beyond it RESOURCE_EXHAUSTED.
};

struct ModelConfig {
  VersionPolicy version_policy;
  int64_t default_version = 0;            // 0: the highest loaded version.
  std::map<std::string, int64_t> labels;  // label → version.
  BatchingConfig batching;
  int executors = 0;  // Compute threads for this model; 0: the server's default.
};

}  // namespace dino::serving
