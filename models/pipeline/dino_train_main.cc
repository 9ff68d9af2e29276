// dino-train: the offline half of dino-serve. Generates DINO training data for the paper's
// problems, computes the reduced bases of DIPNets, trains DINOs and evaluates them (see
// models/pipeline/README.md).
//   dino-train generate --problem poisson --samples 1000 --out data/poisson
//   dino-train bases --data data/poisson
//   dino-train fit --data data/poisson --loss h1 --repository models/repository --name poisson
//   dino-train evaluate --data data/poisson_test --model models/repository/poisson/1/model.pt
#include <CLI/CLI.hpp>

#include "models/architectures/compute_threads.h"
#include "models/pipeline/commands.h"
#include "models/pipeline/train_commands.h"

int main(int argc, char** argv) {
  dino::models::UseNativeBlasKernels(argv);
  CLI::App app{
      "dino-train: training data and reduced bases for derivative-informed neural "
      "operators (DINOs)"};
  app.require_subcommand(1);
  int exit_code = dino::pipeline::kExitSuccess;
  dino::pipeline::AddGenerateCommand(app, &exit_code);
  dino::pipeline::AddBasesCommand(app, &exit_code);
  dino::pipeline::AddFitCommand(app, &exit_code, {argv, argv + argc});
  dino::pipeline::AddEvaluateCommand(app, &exit_code);
  dino::pipeline::AddTrainingInputsCommand(app, &exit_code);
  dino::pipeline::AddTrustedSetCommand(app, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
