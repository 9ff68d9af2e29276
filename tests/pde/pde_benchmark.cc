// Seconds per training sample of the data generator at paper size, on the calling thread.
//
//   dino_pde_benchmark [samples = 20] [n = 64]
//
// For each problem and Jacobian mode it generates `samples` consecutive samples (after one
// warm-up sample) with GenerateSample and prints the mean and fastest wall time per sample.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "models/pde/model.h"
#include "models/pde/prior.h"
#include "models/pde/sample.h"

namespace {

using dino::pde::JacobianMode;
using dino::pde::JacobianOptions;

int ParsePositive(const char* text, const char* name) {
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < 1 || value > 100000) {
    std::fprintf(stderr, "dino_pde_benchmark: %s must be a positive integer, got '%s'\n", name,
                 text);
    std::exit(2);
  }
  return static_cast<int>(value);
}

void Run(const char* label, dino::pde::LogDiffusionModel& model,
         const dino::pde::BiLaplacianPrior& prior, const JacobianOptions& options, int samples) {
  dino::pde::GenerateSample(model, prior, 1, 0, options);  // Warm-up (caches, symbolic LLT).
  double total = 0.0;
  double fastest = 1e300;
  int iterations = 0;
  for (int s = 1; s <= samples; ++s) {
    const auto start = std::chrono::steady_clock::now();
    const dino::pde::Sample sample = dino::pde::GenerateSample(model, prior, 1, s, options);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    total += seconds;
    fastest = std::min(fastest, seconds);
    iterations += sample.report.iterations;
  }
  std::printf("%-44s %8.4f s/sample (fastest %.4f s, %.1f Newton iterations)\n", label,
              total / samples, fastest, static_cast<double>(iterations) / samples);
  // Each row as soon as it is measured, also through a pipe: a caller that needs one row
  // (scripts/bench_serving.py) stops the program once it has read it.
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 3) {
    std::fprintf(stderr, "usage: %s [samples = 20] [n = 64]\n", argv[0]);
    return 2;
  }
  const int samples = argc > 1 ? ParsePositive(argv[1], "samples") : 20;
  const int n = argc > 2 ? ParsePositive(argv[2], "n") : 64;
  std::printf("mesh %d x %d, %d samples per row\n", n, n, samples);

  JacobianOptions none;
  none.mode = JacobianMode::kNone;
  JacobianOptions full;
  full.mode = JacobianMode::kFull;
  JacobianOptions svd;
  svd.mode = JacobianMode::kRandomizedSvd;
  svd.svd.rank = 20;
  svd.svd.oversampling = 10;
  svd.svd.power_iterations = 1;
  JacobianOptions exact_svd;
  exact_svd.mode = JacobianMode::kExactSvd;
  exact_svd.svd.rank = 20;

  for (bool reaction : {false, true}) {
    dino::pde::LogDiffusionModel model(reaction ? dino::pde::ReactionDiffusionProblem(n)
                                                : dino::pde::PoissonProblem(n));
    const dino::pde::BiLaplacianPrior prior(
        model.mesh(), reaction ? dino::pde::ReactionDiffusionPrior() : dino::pde::PoissonPrior());
    const std::string name = reaction ? "reaction-diffusion" : "Poisson";
    Run((name + ": q only").c_str(), model, prior, none, samples);
    Run((name + ": q + full Jacobian").c_str(), model, prior, full, samples);
    Run((name + ": q + randomized SVD (r=20,p=10,q=1)").c_str(), model, prior, svd, samples);
    Run((name + ": q + exact truncated SVD (r=20)").c_str(), model, prior, exact_svd, samples);
  }
  return 0;
}
