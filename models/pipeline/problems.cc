#include "models/pipeline/problems.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dino::pipeline {

const char* ProblemName(Problem problem) {
  switch (problem) {
    case Problem::kPoisson:
      return "poisson";
    case Problem::kReactionDiffusion:
      return "reaction_diffusion";
  }
  return "unknown";
}

absl::StatusOr<Problem> ParseProblem(absl::string_view name) {
  if (name == "poisson") return Problem::kPoisson;
  if (name == "reaction_diffusion") return Problem::kReactionDiffusion;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown problem '", name, "' (known: poisson, reaction_diffusion)"));
}

pde::ProblemConfig ProblemConfigFor(Problem problem, int mesh) {
  return problem == Problem::kPoisson ? pde::PoissonProblem(mesh)
                                      : pde::ReactionDiffusionProblem(mesh);
}

pde::PriorConfig PriorConfigFor(Problem problem) {
  return problem == Problem::kPoisson ? pde::PoissonPrior() : pde::ReactionDiffusionPrior();
}

}  // namespace dino::pipeline
