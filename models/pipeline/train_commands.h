// The training subcommands of dino-train, `fit`, `evaluate` and `trusted-set` (LibTorch),
// registered like the data subcommands in commands.h.
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}  // namespace CLI

namespace dino::pipeline {

// `fit`: trains a DIPNet or generic network on a data directory and writes a model file
// (optionally straight into a model repository) with its training metrics in its metadata,
// and `command_line` (the program's argv) with the working directory as its "command".
CLI::App* AddFitCommand(CLI::App& app, int* exit_code, std::vector<std::string> command_line);
// `evaluate`: the paper's accuracies (3.6a–c) of a model file on a data directory.
CLI::App* AddEvaluateCommand(CLI::App& app, int* exit_code);
// `training-inputs`: adds the training-input summary (the trust score's reference,
// models/architectures/training_inputs.h) to an existing model file.
CLI::App* AddTrainingInputsCommand(CLI::App& app, int* exit_code);
// `trusted-set`: copies samples of a data directory into a model's trusted validation set
// in a model repository (models/architectures/model_file.h, kTrustedValidationDir).
CLI::App* AddTrustedSetCommand(CLI::App& app, int* exit_code);

}  // namespace dino::pipeline
