#include "models/pipeline/training_state_file.h"

#include <torch/torch.h>

#include <cstring>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "models/pipeline/files.h"

namespace dino::pipeline {
namespace {

// Bumped when the layout changes; a file of another format is refused, not misread.
constexpr char kFormat[] = "dino-train-state/1";

torch::Tensor BytesTensor(const std::string& bytes) {
  torch::Tensor tensor = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  if (!bytes.empty()) std::memcpy(tensor.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  return tensor;
}

std::string TensorBytes(const torch::Tensor& tensor) {
  const torch::Tensor bytes = tensor.contiguous();
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                     static_cast<size_t>(bytes.numel()));
}

}  // namespace

std::string TrainingStatePath(const std::string& checkpoint) { return checkpoint + ".state"; }

absl::Status SaveTrainingStateFile(const TrainingStateFile& file, const std::string& path) {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormat)));
  archive.write("run", c10::IValue(file.run.dump()));
  archive.write("model_metadata", c10::IValue(file.model_metadata.dump()));
  archive.write("epochs_done", c10::IValue(file.state.epochs_done));
  archive.write("whitening", c10::IValue(file.state.whitening));
  archive.write("shuffle_generator", file.state.shuffle_generator_state, /*is_buffer=*/true);
  archive.write("draw_generator", file.state.draw_generator_state, /*is_buffer=*/true);
  archive.write("optimizer", BytesTensor(file.state.optimizer_state), /*is_buffer=*/true);
  std::ostringstream bytes;
  archive.save_to(bytes);
  return WriteFileAtomically(path, bytes.str());
}

absl::StatusOr<TrainingStateFile> LoadTrainingStateFile(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  if (!bytes.ok()) return bytes.status();
  TrainingStateFile file;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(bytes->data(), bytes->size());
    c10::IValue value;
    archive.read("format", value);
    if (!value.isString() || value.toStringRef() != kFormat) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not a training state of format ", kFormat));
    }
    archive.read("run", value);
    file.run = nlohmann::json::parse(value.toStringRef());
    archive.read("model_metadata", value);
    file.model_metadata = nlohmann::json::parse(value.toStringRef());
    archive.read("epochs_done", value);
    file.state.epochs_done = value.toInt();
    archive.read("whitening", value);
    file.state.whitening = value.toStringRef();
    archive.read("shuffle_generator", file.state.shuffle_generator_state, /*is_buffer=*/true);
    archive.read("draw_generator", file.state.draw_generator_state, /*is_buffer=*/true);
    torch::Tensor optimizer;
    archive.read("optimizer", optimizer, /*is_buffer=*/true);
    file.state.optimizer_state = TensorBytes(optimizer);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a readable training state: ", e.what_without_backtrace()));
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": damaged run description: ", e.what()));
  }
  return file;
}

}  // namespace dino::pipeline
