// The model file of the repository: a TorchScript archive whose extra file "metadata.json"
// carries the model's metadata (architecture, provenance, training metrics) as JSON.
#pragma once

#include <torch/script.h>

#include <nlohmann/json.hpp>
#include <string>

namespace dino::models {

inline constexpr char kMetadataFile[] = "metadata.json";

// Writes the module and its metadata to `path` atomically: into a temporary file in the same
// folder, fsync, rename over `path`, fsync the folder. A reader sees the old file or the new
// one, never a half-written one. Throws std::runtime_error naming the path on failure.
void SaveModelFile(const torch::jit::Module& module, const nlohmann::json& metadata,
                   const std::string& path);

struct LoadedModelFile {
  torch::jit::Module module;
  nlohmann::json metadata;  // An empty object when the file has no metadata.
};

// Loads a model file on the CPU. Throws std::runtime_error naming the path on failure
// (unreadable archive, metadata that is not a JSON object).
LoadedModelFile LoadModelFile(const std::string& path);

}  // namespace dino::models
