#include "models/architectures/model_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>

namespace dino::models {
namespace {

void FsyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) {
    throw std::runtime_error("cannot open " + path + " to fsync: " + std::strerror(errno));
  }
  const int rc = ::fsync(fd);
  const int saved_errno = errno;
  ::close(fd);
  if (rc != 0) {
    throw std::runtime_error("fsync of " + path + " failed: " + std::strerror(saved_errno));
  }
}

}  // namespace

void SaveModelFile(const torch::jit::Module& module, const nlohmann::json& metadata,
                   const std::string& path, const std::function<void()>& before_rename,
                   const nlohmann::json& training_inputs) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path folder = target.has_parent_path() ? target.parent_path() : fs::path(".");
  fs::create_directories(folder);
  // A name no loader picks up (the repository only loads "model.pt"), unique per process.
  const fs::path temporary =
      folder / ("." + target.filename().string() + ".tmp." + std::to_string(::getpid()));
  torch::jit::ExtraFilesMap extra_files{{kMetadataFile, metadata.dump(2)}};
  if (!training_inputs.is_null()) extra_files[kTrainingInputsFile] = training_inputs.dump();
  try {
    module.save(temporary.string(), extra_files);
    FsyncPath(temporary.string(), false);
    if (before_rename) before_rename();
    fs::rename(temporary, target);
    FsyncPath(folder.string(), true);
  } catch (const std::exception& e) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw std::runtime_error("cannot write model file " + path + ": " + e.what());
  }
}

int64_t PublishModelVersion(const std::string& root, const std::string& name,
                            const torch::jit::Module& module, const nlohmann::json& metadata,
                            const std::function<void()>& before_rename,
                            const nlohmann::json& training_inputs) {
  namespace fs = std::filesystem;
  const fs::path model_dir = fs::path(root) / name;
  std::error_code error;
  fs::create_directories(model_dir, error);
  if (error)
    throw std::runtime_error("cannot create " + model_dir.string() + ": " + error.message());
  int64_t version = 1;
  for (const auto& entry : fs::directory_iterator(model_dir, error)) {
    const std::string text = entry.path().filename().string();
    if (!text.empty() && text.size() < 18 &&
        text.find_first_not_of("0123456789") == std::string::npos) {
      version = std::max<int64_t>(version, std::stoll(text) + 1);
    }
  }
  if (error) throw std::runtime_error("cannot read " + model_dir.string() + ": " + error.message());
  // create_directory is exclusive: a number taken meanwhile is skipped.
  while (!fs::create_directory(model_dir / std::to_string(version), error)) {
    if (error) {
      throw std::runtime_error("cannot create a version folder in " + model_dir.string() + ": " +
                               error.message());
    }
    ++version;
  }
  const fs::path version_dir = model_dir / std::to_string(version);
  try {
    SaveModelFile(module, metadata, (version_dir / kRepositoryModelFile).string(), before_rename,
                  training_inputs);
  } catch (...) {
    fs::remove_all(version_dir, error);
    throw;
  }
  return version;
}

LoadedModelFile LoadModelFile(const std::string& path) {
  torch::jit::ExtraFilesMap extra_files{{kMetadataFile, ""}, {kTrainingInputsFile, ""}};
  LoadedModelFile loaded;
  try {
    loaded.module = torch::jit::load(path, torch::kCPU, extra_files);
  } catch (const std::exception& e) {
    std::string what = e.what();
    // TorchScript errors carry a C++ stack trace after the first line; keep the message.
    what = what.substr(0, what.find('\n'));
    throw std::runtime_error("cannot load model file " + path + ": " + what);
  }
  const std::string& text = extra_files[kMetadataFile];
  loaded.metadata = nlohmann::json::object();
  if (!text.empty()) {
    try {
      loaded.metadata = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      throw std::runtime_error("model file " + path +
                               ": metadata.json is not valid JSON: " + e.what());
    }
    if (!loaded.metadata.is_object()) {
      throw std::runtime_error("model file " + path + ": metadata.json is not a JSON object");
    }
  }
  if (const std::string& summary = extra_files[kTrainingInputsFile]; !summary.empty()) {
    loaded.training_inputs = nlohmann::json::parse(summary, nullptr, /*allow_exceptions=*/false);
    if (!loaded.training_inputs.is_object()) {
      throw std::runtime_error("model file " + path + ": " + kTrainingInputsFile +
                               " is not a JSON object");
    }
  }
  return loaded;
}

}  // namespace dino::models
