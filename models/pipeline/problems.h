// The parametric problems dino-train generates data for (paper §3.1) and their names on the
// command line and in the JSON summaries.
#ifndef DINO_MODELS_PIPELINE_PROBLEMS_H_
#define DINO_MODELS_PIPELINE_PROBLEMS_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "models/pde/model.h"
#include "models/pde/prior.h"

namespace dino::pipeline {

enum class Problem {
  kPoisson,            // §3.1.1, "poisson"
  kReactionDiffusion,  // §3.1.2, "reaction_diffusion"
};

const char* ProblemName(Problem problem);
// InvalidArgument listing the known names for anything else.
absl::StatusOr<Problem> ParseProblem(absl::string_view name);

// The state equation and observations on an n × n mesh, and the prior (paper settings; see
// models/pde/README.md).
pde::ProblemConfig ProblemConfigFor(Problem problem, int mesh);
pde::PriorConfig PriorConfigFor(Problem problem);

// Meshes dino-train accepts: from 2 (the smallest the state equation allows) to 1024 (a
// d_M ≈ 10⁶ parameter; beyond that a single Jacobian no longer fits comfortably in memory).
inline constexpr int kMinMesh = 2;
inline constexpr int kMaxMesh = 1024;

}  // namespace dino::pipeline

#endif  // DINO_MODELS_PIPELINE_PROBLEMS_H_
