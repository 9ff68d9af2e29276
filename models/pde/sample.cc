#include "models/pde/sample.h"

#include <stdexcept>
#include <string>

namespace dino::pde {

Sample GenerateSample(LogDiffusionModel& model, const BiLaplacianPrior& prior, std::uint64_t seed,
                      std::uint64_t index, const JacobianOptions& options) {
  if (prior.mesh().n() != model.mesh().n()) {
    throw std::invalid_argument("GenerateSample: the prior is on a " +
                                std::to_string(prior.mesh().n()) + "² mesh, the model on a " +
                                std::to_string(model.mesh().n()) + "² mesh");
  }
  Sample sample;
  sample.index = index;
  NormalRng noise_rng(seed, 2 * index);
  sample.parameter = prior.Sample(noise_rng);
  const Evaluation evaluation = model.Evaluate(sample.parameter);
  sample.observables = evaluation.observables();
  sample.report = evaluation.report();
  switch (options.mode) {
    case JacobianMode::kNone:
      break;
    case JacobianMode::kFull:
      sample.jacobian = evaluation.Jacobian();
      break;
    case JacobianMode::kRandomizedSvd: {
      NormalRng sketch_rng(seed, 2 * index + 1);
      sample.jacobian_svd = evaluation.JacobianSvd(options.svd, sketch_rng);
      break;
    }
    case JacobianMode::kExactSvd:
      sample.jacobian_svd = ExactTruncatedSvd(evaluation.Jacobian(), options.svd.rank);
      break;
  }
  return sample;
}

}  // namespace dino::pde
