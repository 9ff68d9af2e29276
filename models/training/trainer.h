// The trainer of dino-serve (paper §3.2): Adam on mini-batches of one of the losses of
// losses.h, operating in place on a TorchScript module built by models/architectures (or any
// model that follows the contract). Numerics only: the caller provides the data as tensors,
// writes checkpoints from the callback, draws progress, and owns the thread settings.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "models/training/dataset.h"
#include "models/training/losses.h"
#include "models/training/metrics.h"

namespace dino::training {

// Whitening of the reduced inputs z = Vᵀm of a DIPNet: reduced_input_shift = mean(z),
// reduced_input_scale = 1/std(z) over the training split. It changes the function the
// network computes, so it is meant for freshly initialised networks.
enum class Whitening {
  kNever,
  kIfIdentity,  // Only while the buffers are still the identity (shift 0, scale 1): whitens a
                // new network, leaves a trained one that is being fine-tuned alone.
  kAlways,
};

enum class LearningRateSchedule {
  kConstant,     // learning_rate throughout.
  kExponential,  // learning_rate · decay_rate^e in epoch e = 0, 1, ….
  kCosine,       // From learning_rate down to final_learning_rate along half a cosine.
};

struct TrainerConfig {
  LossConfig loss;
  // Adam with the paper's (TensorFlow's default) hyperparameters.
  int64_t epochs = 100;
  int64_t batch_size = 32;
  double learning_rate = 1e-3;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-7;  // Keras's default, which the reference code trained with.
  LearningRateSchedule schedule = LearningRateSchedule::kConstant;
  double decay_rate = 0.97;          // kExponential.
  double final_learning_rate = 0.0;  // kCosine.
  // Samples of the data held out for validation by a split seeded with `seed`.
  int64_t validation_size = 0;
  // Seeds the split, the shuffling and the random subsets/sketches of the losses. The
  // weights' initialisation is the architecture builder's (its own seed).
  uint64_t seed = 0;
  Whitening whitening = Whitening::kIfIdentity;
  // Lets DIPNets use ReducedJacobianMethod::kLayerPropagation (network.h); false forces the
  // generic autograd path (for comparisons; the results agree to rounding).
  bool allow_layer_propagation = true;
  // Validation accuracies every this many epochs (0: only after training); they cost a
  // Jacobian evaluation of the validation set.
  int64_t evaluation_interval = 1;
  MetricsOptions metrics;

  // A second-order finish after the Adam epochs: full-batch L-BFGS (strong Wolfe line
  // search) on the same training loss, `lbfgs_iterations` iterations in all (0: none). Adam's
  // mini-batch noise leaves the loss of a smooth small network well above what its weights
  // can reach; L-BFGS converges on the whole training set instead. Reported every
  // `lbfgs_report_interval` iterations like an epoch (validation, checkpoint, on_epoch). The
  // gradient is accumulated over chunks of `lbfgs_chunk` samples to bound memory. With
  // lbfgs_iterations > 0, epochs may be 0 (L-BFGS only, e.g. on a trained model).
  int64_t lbfgs_iterations = 0;
  int64_t lbfgs_history = 50;
  int64_t lbfgs_report_interval = 25;
  int64_t lbfgs_chunk = 1024;

  // Throws std::invalid_argument on out-of-range settings.
  void Validate() const;
  nlohmann::json ToJson() const;
};

// Progress within an epoch, after each batch: enough for a progress bar.
struct BatchProgress {
  int64_t epoch = 0;  // 1-based.
  int64_t epochs = 0;
  int64_t batch = 0;  // 1-based.
  int64_t batches = 0;
  int64_t samples_done = 0;         // In this epoch.
  int64_t samples = 0;              // Per epoch.
  double loss = 0.0;                // Running mean of the batch losses of this epoch.
  double samples_per_second = 0.0;  // Over this epoch so far.
  double eta_seconds = 0.0;         // Until the end of training, from the speed so far.
};

struct EpochReport {
  int64_t epoch = 0;  // 1-based, over the Adam epochs and then the L-BFGS rounds.
  int64_t epochs = 0;
  // "adam" for an epoch of mini-batches; "lbfgs" for a round of lbfgs_report_interval
  // full-batch L-BFGS iterations (learning_rate and samples_per_second are then 0).
  std::string optimizer = "adam";
  int64_t lbfgs_iterations = 0;      // L-BFGS: iterations done so far, all rounds together.
  int64_t function_evaluations = 0;  // L-BFGS: full-batch loss evaluations so far.
  double learning_rate = 0.0;
  // Adam: means over the epoch's batches, as the weights moved (Keras style). L-BFGS: the
  // full-batch loss at the end of the round.
  LossValues train;
  std::optional<LossValues> validation;           // After the epoch.
  std::optional<Accuracies> validation_accuracy;  // Every evaluation_interval epochs.
  double epoch_seconds = 0.0;                     // Training and validation of this epoch.
  double samples_per_second = 0.0;  // Training samples per second of this epoch's training.
  double elapsed_seconds = 0.0;
  double eta_seconds = 0.0;

  nlohmann::json ToJson() const;
};

// Where an Adam run stands after an epoch, beyond the weights: what a resumed run needs to
// continue exactly as the uninterrupted one would (same shuffles, same random loss draws, same
// Adam moments and step counts, same learning rate from the schedule). The L-BFGS finish
// keeps no state here: a run resumes within its Adam epochs.
struct TrainingState {
  int64_t epochs_done = 0;                // Adam epochs finished.
  std::string whitening;                  // What the run's start did (TrainingResult::whitening).
  torch::Tensor shuffle_generator_state;  // at::Generator::get_state() of the two streams.
  torch::Tensor draw_generator_state;
  // torch::optim::Adam's state, serialized (a torch::serialize archive).
  std::string optimizer_state;
};

struct TrainerCallbacks {
  std::function<void(const BatchProgress&)> on_batch;
  // After each epoch; return false to stop training (e.g. on an interrupt).
  std::function<bool(const EpochReport&)> on_epoch;
  // After each epoch, with the module and the metadata as they are then: where the caller
  // writes a checkpoint (e.g. with models::SaveModelFile).
  std::function<void(const torch::jit::Module&, const EpochReport&, const nlohmann::json&)>
      on_checkpoint;
  // After each Adam epoch, before on_checkpoint: the state to resume from after this epoch
  // (write it with the checkpoint; Train's `resume_from`).
  std::function<void(const TrainingState&)> on_training_state;
};

struct TrainingResult {
  std::vector<EpochReport> history;
  bool stopped_early = false;
  std::string whitening;            // "applied", "kept", "disabled" or "unavailable".
  int64_t resumed_after_epoch = 0;  // The resume_from's epochs_done; 0 for a fresh run.
  // How the network's Jacobians were computed: a ReducedJacobianMethodName for DIPNets,
  // "autograd" for generic models.
  std::string network_jacobian;
  Accuracies train_accuracy;
  std::optional<Accuracies> validation_accuracy;
  std::optional<Accuracies> initial_validation_accuracy;  // Before training.
  double seconds = 0.0;
  // {"trained", "training": {loss, optimizer, epochs, …, timing}, "data": {train,
  // validation}, "metrics": {train, validation, validation_initial}}: for the model file.
  nlohmann::json metadata;
};

// Trains `module` in place: its parameters get requires_grad and are updated by Adam; a
// DIPNet's whitening buffers may be set (see Whitening). Deterministic for a given seed,
// module and data (up to the floating-point reductions of the caller's thread settings).
// Throws std::invalid_argument for invalid settings, data or models (before changing the
// module).
//
// With `resume_from` (a TrainingState from on_training_state, and `module` the checkpoint of
// the same epoch) the run continues after its epochs_done with the same config and data:
// the weights it ends with are those of the uninterrupted run. Its history holds the new
// epochs only.
TrainingResult Train(torch::jit::Module& module, const Dataset& data, const TrainerConfig& config,
                     const TrainerCallbacks& callbacks = {},
                     const TrainingState* resume_from = nullptr);

// The same on a split made by the caller (e.g. validation samples chosen by a client);
// config.validation_size is ignored.
TrainingResult Train(torch::jit::Module& module, const DatasetSplit& split,
                     const TrainerConfig& config, const TrainerCallbacks& callbacks = {},
                     const TrainingState* resume_from = nullptr);

// The whitening a trainer applies, alone: sets the buffers of a DIPNet `module` from the
// reduced inputs Vᵀm of `m` [n, d_M] according to `mode`, and says what it did.
std::string ApplyWhitening(torch::jit::Module& module, const torch::Tensor& m, Whitening mode);

}  // namespace dino::training
