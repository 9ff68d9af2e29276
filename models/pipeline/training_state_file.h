// The file beside a `dino-train fit --checkpoint` model that lets `fit --resume` continue the
// run exactly: the trainer's TrainingState after an epoch, plus what the resumed run must
// match (the run's settings and data) and the model's metadata from before training.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "models/training/trainer.h"

namespace dino::pipeline {

// CHECKPOINT.state for the model file CHECKPOINT.
std::string TrainingStatePath(const std::string& checkpoint);

struct TrainingStateFile {
  training::TrainingState state;
  // What the run was started with (settings, data); a resumed run must present the same.
  nlohmann::json run;
  // The model file's metadata as the run built it, before any training result.
  nlohmann::json model_metadata;
};

// Writes atomically (temporary file, fsync, rename).
absl::Status SaveTrainingStateFile(const TrainingStateFile& file, const std::string& path);

// Errors name the file and what is wrong with it.
absl::StatusOr<TrainingStateFile> LoadTrainingStateFile(const std::string& path);

}  // namespace dino::pipeline
