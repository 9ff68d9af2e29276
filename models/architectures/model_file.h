// The model file of the repository: a TorchScript archive whose extra file "metadata.json"
// carries the model's metadata (architecture, provenance, training metrics) as JSON, and
// whose optional extra file "training_inputs.json" carries the summary of a reduced-basis
// model's training inputs that its trust score needs (training_inputs.h). The summary is a
// file of its own because it is ~10⁴ numbers that GetModelInfo's metadata should not carry.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace dino::models {

inline constexpr char kMetadataFile[] = "metadata.json";
inline constexpr char kTrainingInputsFile[] = "training_inputs.json";

// Writes the module and its metadata to `path` atomically: into a temporary file in the same
// folder, fsync, rename over `path`, fsync the folder. A reader sees the old file or the new
// one, never a half-written one. Throws std::runtime_error naming the path on failure.
// `before_rename`, when set, runs after the temporary file is written and synced and before
// it is renamed into place (crash tests stop the process there). A `training_inputs` that is
// not null is written as training_inputs.json.
void SaveModelFile(const torch::jit::Module& module, const nlohmann::json& metadata,
                   const std::string& path, const std::function<void()>& before_rename = {},
                   const nlohmann::json& training_inputs = nullptr);

// The model repository layout shared by dino-train and dino-server:
//   <root>/<model name>/<version>/model.pt, version a positive decimal integer.
inline constexpr char kRepositoryModelFile[] = "model.pt";
// <root>/<model name>/trusted_validation/: the model's trusted validation set, a data
// directory in the layout of `dino-train generate` (mq_data.npz and J_data.npz or
// Jsvd_data.npz). Written only by `dino-train trusted-set` (operators), never through the
// server's RPCs; every fine-tune gate also judges new weights on it (README, threat model).
inline constexpr char kTrustedValidationDir[] = "trusted_validation";

// Writes `module` with `metadata` as a new version of model `name` in the repository `root`
// and returns the version: one above every numbered folder of the model, whose folder is
// created exclusively (two publishers, even in different processes, never share a number);
// model.pt is written with SaveModelFile (atomic). A crash at any moment leaves either a
// version folder without model.pt, which loaders ignore, or a complete file.
// `before_rename` is passed to SaveModelFile. Throws std::runtime_error naming the path on
// failure (the new version folder is removed again).
int64_t PublishModelVersion(const std::string& root, const std::string& name,
                            const torch::jit::Module& module, const nlohmann::json& metadata,
                            const std::function<void()>& before_rename = {},
                            const nlohmann::json& training_inputs = nullptr);

struct LoadedModelFile {
  torch::jit::Module module;
  nlohmann::json metadata;         // An empty object when the file has no metadata.
  nlohmann::json training_inputs;  // Null when the file has no training_inputs.json.
};

// Loads a model file on the CPU. Throws std::runtime_error naming the path on failure
// (unreadable archive, metadata or training inputs that are not a JSON object).
LoadedModelFile LoadModelFile(const std::string& path);

}  // namespace dino::models
