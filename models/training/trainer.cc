#include "models/training/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "models/architectures/architectures.h"
#include "models/architectures/network.h"

namespace dino::training {
namespace {

[[noreturn]] void Fail(const std::string& why) { throw std::invalid_argument(why); }

constexpr double kPi = 3.14159265358979323846;

const char* ScheduleName(LearningRateSchedule schedule) {
  switch (schedule) {
    case LearningRateSchedule::kConstant:
      return "constant";
    case LearningRateSchedule::kExponential:
      return "exponential";
    case LearningRateSchedule::kCosine:
      return "cosine";
  }
  return "unknown";
}

const char* WhiteningName(Whitening whitening) {
  switch (whitening) {
    case Whitening::kNever:
      return "never";
    case Whitening::kIfIdentity:
      return "if_identity";
    case Whitening::kAlways:
      return "always";
  }
  return "unknown";
}

// The learning rate of epoch `epoch` (0-based).
double LearningRateAt(const TrainerConfig& config, int64_t epoch) {
  switch (config.schedule) {
    case LearningRateSchedule::kConstant:
      break;
    case LearningRateSchedule::kExponential:
      return config.learning_rate * std::pow(config.decay_rate, static_cast<double>(epoch));
    case LearningRateSchedule::kCosine: {
      const double progress =
          config.epochs > 1 ? static_cast<double>(epoch) / static_cast<double>(config.epochs - 1)
                            : 0.0;
      return config.final_learning_rate + (config.learning_rate - config.final_learning_rate) *
                                              0.5 * (1.0 + std::cos(kPi * progress));
    }
  }
  return config.learning_rate;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

LossValues Combine(const LossConfig& config, double l2, double jacobian) {
  LossValues values;
  values.l2 = l2;
  values.jacobian = jacobian;
  values.total = config.l2_weight * l2;
  if (config.jacobian_loss != JacobianLoss::kNone) values.total += config.h1_weight * jacobian;
  return values;
}

// The metadata of a training run so far (after `history.size()` epochs).
nlohmann::json BuildMetadata(const TrainerConfig& config, const DatasetSplit& split,
                             const TrainingResult& result) {
  nlohmann::json training = config.ToJson();
  int64_t adam_epochs = 0;
  const EpochReport* last_lbfgs = nullptr;
  for (const EpochReport& report : result.history) {
    if (report.optimizer == "lbfgs") {
      last_lbfgs = &report;
    } else {
      ++adam_epochs;
    }
  }
  // A resumed run's epochs count from the start of the run it continues.
  adam_epochs += result.resumed_after_epoch;
  training["epochs"] = adam_epochs;
  training["adam_steps"] =
      adam_epochs * ((split.train.size() + config.batch_size - 1) / config.batch_size);
  if (result.resumed_after_epoch > 0) training["resumed_after_epoch"] = result.resumed_after_epoch;
  if (last_lbfgs != nullptr) {
    training["lbfgs_iterations"] = last_lbfgs->lbfgs_iterations;
    training["lbfgs_function_evaluations"] = last_lbfgs->function_evaluations;
  }
  training["stopped_early"] = result.stopped_early;
  training["whitening"] = result.whitening;
  training["network_jacobian"] = result.network_jacobian;
  training["seconds"] = result.seconds;
  nlohmann::json history = nlohmann::json::array();
  double training_seconds = 0.0;
  int64_t trained_samples = 0;
  for (const EpochReport& report : result.history) {
    history.push_back(report.ToJson());
    if (report.samples_per_second > 0.0) {
      training_seconds += static_cast<double>(split.train.size()) / report.samples_per_second;
      trained_samples += split.train.size();
    }
  }
  if (training_seconds > 0.0) {
    training["samples_per_second"] = static_cast<double>(trained_samples) / training_seconds;
  }
  if (!result.history.empty()) {
    training["final_loss"]["train"] = result.history.back().train.ToJson();
    if (result.history.back().validation) {
      training["final_loss"]["validation"] = result.history.back().validation->ToJson();
    }
  }
  training["history"] = std::move(history);

  nlohmann::json data = {{"train", split.train.Summary()}};
  if (split.validation.size() > 0) data["validation"] = split.validation.Summary();

  nlohmann::json metrics = nlohmann::json::object();
  if (result.train_accuracy.samples > 0) metrics["train"] = result.train_accuracy.ToJson();
  if (result.validation_accuracy) metrics["validation"] = result.validation_accuracy->ToJson();
  if (result.initial_validation_accuracy) {
    metrics["validation_initial"] = result.initial_validation_accuracy->ToJson();
  }
  return {{"trained", !result.history.empty()},
          {"training", std::move(training)},
          {"data", std::move(data)},
          {"metrics", std::move(metrics)}};
}

// The state after `epochs_done` Adam epochs, for on_training_state.
TrainingState CaptureState(int64_t epochs_done, const std::string& whitening,
                           const at::Generator& shuffle_generator,
                           const at::Generator& draw_generator, torch::optim::Adam& optimizer) {
  TrainingState state;
  state.epochs_done = epochs_done;
  state.whitening = whitening;
  state.shuffle_generator_state = shuffle_generator.get_state();
  state.draw_generator_state = draw_generator.get_state();
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  state.optimizer_state = bytes.str();
  return state;
}

// Sets the streams and Adam to `state`; throws std::invalid_argument when it belongs to
// another model (parameter count or shapes).
void RestoreState(const TrainingState& state, const std::vector<torch::Tensor>& parameters,
                  at::Generator& shuffle_generator, at::Generator& draw_generator,
                  torch::optim::Adam& optimizer) {
  const std::string mismatch =
      "the training state to resume from does not fit this model and run: ";
  try {
    shuffle_generator.set_state(state.shuffle_generator_state);
    draw_generator.set_state(state.draw_generator_state);
    torch::serialize::InputArchive archive;
    archive.load_from(state.optimizer_state.data(), state.optimizer_state.size());
    optimizer.load(archive);
  } catch (const c10::Error& e) {
    Fail(mismatch + e.what_without_backtrace());
  }
  // Adam checks the number of parameters only; moments of another shape would fail (or worse)
  // in the first step.
  for (const torch::Tensor& parameter : parameters) {
    const auto found =
        optimizer.state().find(c10::guts::to_string(parameter.unsafeGetTensorImpl()));
    if (found != optimizer.state().end() &&
        static_cast<const torch::optim::AdamParamState&>(*found->second).exp_avg().sizes() !=
            parameter.sizes()) {
      Fail(mismatch + "its Adam moments have other shapes than the parameters");
    }
  }
}

}  // namespace

void TrainerConfig::Validate() const {
  loss.Validate();
  if (lbfgs_iterations < 0) Fail("lbfgs_iterations must be >= 0");
  if (epochs < (lbfgs_iterations > 0 ? 0 : 1)) {
    Fail(lbfgs_iterations > 0 ? "epochs must be >= 0" : "epochs must be >= 1");
  }
  if (lbfgs_iterations > 0) {
    if (lbfgs_history < 1) Fail("lbfgs_history must be >= 1");
    if (lbfgs_report_interval < 1) Fail("lbfgs_report_interval must be >= 1");
    if (lbfgs_chunk < 1) Fail("lbfgs_chunk must be >= 1");
  }
  if (batch_size < 1) Fail("batch_size must be >= 1");
  if (!(learning_rate > 0.0) || !std::isfinite(learning_rate)) {
    Fail("learning_rate must be positive and finite");
  }
  if (!(adam_beta1 >= 0.0 && adam_beta1 < 1.0) || !(adam_beta2 >= 0.0 && adam_beta2 < 1.0)) {
    Fail("adam_beta1 and adam_beta2 must lie in [0, 1)");
  }
  if (!(adam_epsilon > 0.0)) Fail("adam_epsilon must be positive");
  if (schedule == LearningRateSchedule::kExponential && !(decay_rate > 0.0 && decay_rate <= 1.0)) {
    Fail("decay_rate must lie in (0, 1]");
  }
  if (schedule == LearningRateSchedule::kCosine &&
      !(final_learning_rate >= 0.0 && final_learning_rate <= learning_rate)) {
    Fail("final_learning_rate must lie in [0, learning_rate]");
  }
  if (validation_size < 0) Fail("validation_size must be >= 0");
  if (evaluation_interval < 0) Fail("evaluation_interval must be >= 0");
  if (metrics.chunk < 1) Fail("metrics.chunk must be >= 1");
  if (metrics.reduced_rank < 0) Fail("metrics.reduced_rank must be >= 0");
}

nlohmann::json TrainerConfig::ToJson() const {
  nlohmann::json optimizer = {{"name", "adam"},          {"learning_rate", learning_rate},
                              {"beta1", adam_beta1},     {"beta2", adam_beta2},
                              {"epsilon", adam_epsilon}, {"schedule", ScheduleName(schedule)}};
  if (schedule == LearningRateSchedule::kExponential) optimizer["decay_rate"] = decay_rate;
  if (schedule == LearningRateSchedule::kCosine) {
    optimizer["final_learning_rate"] = final_learning_rate;
  }
  nlohmann::json json = {{"loss", loss.ToJson()},
                         {"optimizer", std::move(optimizer)},
                         {"epochs_requested", epochs},
                         {"batch_size", batch_size},
                         {"seed", seed},
                         {"validation_size", validation_size},
                         {"whitening_mode", WhiteningName(whitening)}};
  if (lbfgs_iterations > 0) {
    json["lbfgs_finish"] = {{"iterations_requested", lbfgs_iterations},
                            {"history_size", lbfgs_history},
                            {"line_search", "strong_wolfe"},
                            {"report_interval", lbfgs_report_interval},
                            {"chunk", lbfgs_chunk}};
  }
  return json;
}

nlohmann::json EpochReport::ToJson() const {
  nlohmann::json json = {{"epoch", epoch},
                         {"optimizer", optimizer},
                         {"learning_rate", learning_rate},
                         {"train", train.ToJson()},
                         {"seconds", epoch_seconds},
                         {"samples_per_second", samples_per_second}};
  if (optimizer == "lbfgs") {
    json["lbfgs_iterations"] = lbfgs_iterations;
    json["function_evaluations"] = function_evaluations;
  }
  if (validation) json["validation"] = validation->ToJson();
  if (validation_accuracy) json["validation_accuracy"] = validation_accuracy->ToJson();
  return json;
}

std::string ApplyWhitening(torch::jit::Module& module, const torch::Tensor& m, Whitening mode) {
  if (mode == Whitening::kNever) return "disabled";
  const models::Network network(module,
                                /*allow_layer_propagation=*/false);  // Only the bases needed.
  if (!network.reduced() || !network.has_whitening()) return "unavailable";
  if (m.dim() != 2 || m.size(1) != network.input_basis().size(0) || m.size(0) == 0) {
    Fail("whitening needs samples m [n, d_M] with d_M = " +
         std::to_string(network.input_basis().size(0)));
  }
  torch::Tensor shift = module.attr(models::kWhiteningShift).toTensor();
  torch::Tensor scale = module.attr(models::kWhiteningScale).toTensor();
  torch::NoGradGuard no_grad;
  if (mode == Whitening::kIfIdentity &&
      !(shift.eq(0).all().item<bool>() && scale.eq(1).all().item<bool>())) {
    return "kept";
  }
  torch::Tensor z = torch::mm(m.to(network.device(), network.dtype()), network.input_basis());
  torch::Tensor mean = z.mean(0);
  torch::Tensor deviation = (z - mean).square().mean(0).sqrt();
  // A direction along which the data do not vary (or one sample) keeps scale 1 instead of 1/0.
  const double floor = 1e-12 * std::max(1.0, deviation.max().item<double>());
  torch::Tensor inverse =
      torch::where(deviation > floor, deviation.reciprocal(), torch::ones_like(deviation));
  shift.copy_(mean);
  scale.copy_(inverse);
  return "applied";
}

TrainingResult Train(torch::jit::Module& module, const Dataset& data, const TrainerConfig& config,
                     const TrainerCallbacks& callbacks, const TrainingState* resume_from) {
  config.Validate();
  data.Validate();
  // On the whole dataset, so that an error names the caller's sample index (the metrics
  // need the Jacobian normalisers whatever the loss).
  CheckNormalizers(data, /*jacobian=*/true);
  return Train(module, SplitDataset(data, config.validation_size, config.seed), config, callbacks,
               resume_from);
}

TrainingResult Train(torch::jit::Module& module, const DatasetSplit& split,
                     const TrainerConfig& config, const TrainerCallbacks& callbacks,
                     const TrainingState* resume_from) {
  const auto start = std::chrono::steady_clock::now();
  config.Validate();
  if (resume_from != nullptr &&
      (resume_from->epochs_done < 1 || resume_from->epochs_done > config.epochs)) {
    Fail("the training state to resume from is after epoch " +
         std::to_string(resume_from->epochs_done) + ", outside this run's 1.." +
         std::to_string(config.epochs) + " epochs");
  }
  if (split.train.size() == 0) Fail("there are no training samples");
  split.train.Validate();
  const models::Network network(module, config.allow_layer_propagation);
  network.CheckDimensions(split.train.input_dim(), split.train.output_dim());
  CheckNormalizers(split.train, /*jacobian=*/true);
  if (split.validation.size() > 0) {
    split.validation.Validate();
    network.CheckDimensions(split.validation.input_dim(), split.validation.output_dim());
    CheckNormalizers(split.validation, /*jacobian=*/true);
  }
  if (models::CountParameters(module) == 0) Fail("the model has no trainable parameters");

  const bool validating = split.validation.size() > 0;
  // The losses and the evaluator validate the data against the model before anything about
  // it changes.
  Loss train_loss(network, split.train, config.loss);
  std::optional<Loss> validation_loss;
  std::optional<AccuracyEvaluator> validation_evaluator;
  if (validating) {
    validation_loss.emplace(network, split.validation, config.loss);
    validation_evaluator.emplace(network, split.validation, config.metrics);
  }

  TrainingResult result;
  result.network_jacobian = models::ReducedJacobianMethodName(network.reduced_jacobian_method());
  // A resumed run's module is the checkpoint: whitened (or not) at the run's start already.
  result.whitening = resume_from != nullptr
                         ? resume_from->whitening
                         : ApplyWhitening(module, split.train.m, config.whitening);
  if (validating && config.evaluation_interval > 0 && resume_from == nullptr) {
    result.initial_validation_accuracy = validation_evaluator->Evaluate();
  }

  std::vector<torch::Tensor> parameters = network.TrainableParameters();
  torch::optim::Adam optimizer(parameters,
                               torch::optim::AdamOptions(config.learning_rate)
                                   .betas(std::make_tuple(config.adam_beta1, config.adam_beta2))
                                   .eps(config.adam_epsilon));
  // Independent streams for the shuffling and the losses' random draws (the split used
  // `seed` itself).
  auto shuffle_generator = at::make_generator<at::CPUGeneratorImpl>(config.seed + 1);
  auto draw_generator = at::make_generator<at::CPUGeneratorImpl>(config.seed + 2);
  if (resume_from != nullptr) {
    RestoreState(*resume_from, parameters, shuffle_generator, draw_generator, optimizer);
    result.resumed_after_epoch = resume_from->epochs_done;
  }

  const int64_t n = split.train.size();
  const int64_t batches = (n + config.batch_size - 1) / config.batch_size;
  const int64_t lbfgs_rounds =
      (config.lbfgs_iterations + config.lbfgs_report_interval - 1) / config.lbfgs_report_interval;
  const int64_t reports = config.epochs + lbfgs_rounds;
  // Validation, timing, checkpoint and on_epoch of a finished epoch or L-BFGS round; false
  // when on_epoch asks to stop.
  auto finish_report = [&](EpochReport& report, std::chrono::steady_clock::time_point begun) {
    const bool last = report.epoch == reports;
    if (validation_loss) report.validation = validation_loss->EvaluateAll();
    if (validating && config.evaluation_interval > 0 &&
        (report.epoch % config.evaluation_interval == 0 || last)) {
      report.validation_accuracy = validation_evaluator->Evaluate();
      result.validation_accuracy = report.validation_accuracy;
    }
    report.epoch_seconds = SecondsSince(begun);
    report.elapsed_seconds = SecondsSince(start);
    report.eta_seconds = report.elapsed_seconds /
                         static_cast<double>(report.epoch - result.resumed_after_epoch) *
                         static_cast<double>(reports - report.epoch);
    result.history.push_back(report);
    result.seconds = SecondsSince(start);
    if (callbacks.on_checkpoint) {
      callbacks.on_checkpoint(module, report, BuildMetadata(config, split, result));
    }
    if (callbacks.on_epoch && !callbacks.on_epoch(report)) {
      result.stopped_early = !last;
      return false;
    }
    return true;
  };

  for (int64_t epoch = result.resumed_after_epoch; epoch < config.epochs; ++epoch) {
    const auto epoch_start = std::chrono::steady_clock::now();
    EpochReport report;
    report.epoch = epoch + 1;
    report.epochs = reports;
    report.learning_rate = LearningRateAt(config, epoch);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamOptions&>(group.options()).lr(report.learning_rate);
    }
    train_loss.Resample(draw_generator);
    if (validation_loss) validation_loss->Resample(draw_generator);

    const torch::Tensor order = torch::randperm(n, shuffle_generator, torch::kLong);
    double l2_sum = 0.0, jacobian_sum = 0.0, batch_loss_sum = 0.0;
    for (int64_t batch = 0; batch < batches; ++batch) {
      const int64_t first = batch * config.batch_size;
      const int64_t count = std::min(config.batch_size, n - first);
      LossTerms terms = train_loss.Evaluate(order.narrow(0, first, count));
      const double batch_loss = terms.total.item<double>();
      if (!std::isfinite(batch_loss)) {
        throw std::runtime_error("the loss became non-finite in epoch " +
                                 std::to_string(epoch + 1) + ", batch " +
                                 std::to_string(batch + 1) + "; lower the learning rate");
      }
      optimizer.zero_grad();
      terms.total.backward();
      optimizer.step();
      l2_sum += terms.l2.detach().sum().item<double>();
      if (terms.jacobian.defined()) jacobian_sum += terms.jacobian.detach().sum().item<double>();
      batch_loss_sum += batch_loss;
      if (callbacks.on_batch) {
        BatchProgress progress;
        progress.epoch = epoch + 1;
        progress.epochs = config.epochs;
        progress.batch = batch + 1;
        progress.batches = batches;
        progress.samples_done = first + count;
        progress.samples = n;
        progress.loss = batch_loss_sum / static_cast<double>(batch + 1);
        const double seconds = SecondsSince(epoch_start);
        progress.samples_per_second =
            seconds > 0.0 ? static_cast<double>(first + count) / seconds : 0.0;
        if (progress.samples_per_second > 0.0) {
          const double remaining =
              static_cast<double>((config.epochs - epoch - 1) * n + (n - first - count));
          progress.eta_seconds = remaining / progress.samples_per_second;
        }
        callbacks.on_batch(progress);
      }
    }
    const double training_seconds = SecondsSince(epoch_start);
    report.train = Combine(config.loss, l2_sum / static_cast<double>(n),
                           jacobian_sum / static_cast<double>(n));
    report.samples_per_second =
        training_seconds > 0.0 ? static_cast<double>(n) / training_seconds : 0.0;
    if (callbacks.on_training_state) {
      callbacks.on_training_state(
          CaptureState(epoch + 1, result.whitening, shuffle_generator, draw_generator, optimizer));
    }
    if (!finish_report(report, epoch_start)) break;
  }

  if (config.lbfgs_iterations > 0 && !result.stopped_early) {
    // The random losses keep the draw of the last epoch (or the constructor's): L-BFGS needs
    // one fixed objective.
    torch::optim::LBFGS lbfgs(parameters, torch::optim::LBFGSOptions(1.0)
                                              .max_iter(config.lbfgs_report_interval)
                                              .history_size(config.lbfgs_history)
                                              .tolerance_grad(1e-12)
                                              .tolerance_change(1e-15)
                                              .line_search_fn("strong_wolfe"));
    int64_t evaluations = 0;
    // The full-batch loss, its gradient accumulated chunk by chunk (each chunk's mean weighted
    // by its share of the samples).
    auto closure = [&]() -> torch::Tensor {
      lbfgs.zero_grad();
      double total = 0.0;
      for (int64_t first = 0; first < n; first += config.lbfgs_chunk) {
        const int64_t count = std::min(config.lbfgs_chunk, n - first);
        LossTerms terms = train_loss.Evaluate(torch::arange(first, first + count, torch::kLong));
        const torch::Tensor weighted =
            terms.total * (static_cast<double>(count) / static_cast<double>(n));
        weighted.backward();
        total += weighted.item<double>();
      }
      ++evaluations;
      if (!std::isfinite(total)) {
        throw std::runtime_error("the loss became non-finite in L-BFGS evaluation " +
                                 std::to_string(evaluations));
      }
      return torch::tensor(total, torch::TensorOptions().dtype(torch::kFloat64));
    };
    const std::string state_key = c10::guts::to_string(parameters.front().unsafeGetTensorImpl());
    for (int64_t round = 0; round < lbfgs_rounds; ++round) {
      const auto round_start = std::chrono::steady_clock::now();
      const int64_t done = round * config.lbfgs_report_interval;
      const int64_t iterations =
          std::min(config.lbfgs_report_interval, config.lbfgs_iterations - done);
      static_cast<torch::optim::LBFGSOptions&>(lbfgs.param_groups().front().options())
          .max_iter(iterations)
          .max_eval(iterations * 5 / 4 + 1);
      lbfgs.step(closure);
      EpochReport report;
      report.epoch = config.epochs + round + 1;
      report.epochs = reports;
      report.optimizer = "lbfgs";
      const auto state = lbfgs.state().find(state_key);
      report.lbfgs_iterations =
          state == lbfgs.state().end()
              ? done + iterations
              : static_cast<const torch::optim::LBFGSParamState&>(*state->second).n_iter();
      report.function_evaluations = evaluations;
      // The loss at the weights L-BFGS ended on (its last evaluation may be a line-search
      // trial elsewhere).
      {
        torch::NoGradGuard no_grad;
        double l2_sum = 0.0, jacobian_sum = 0.0;
        for (int64_t first = 0; first < n; first += config.lbfgs_chunk) {
          const int64_t count = std::min(config.lbfgs_chunk, n - first);
          LossTerms terms = train_loss.Evaluate(torch::arange(first, first + count, torch::kLong),
                                                /*create_graph=*/false);
          l2_sum += terms.l2.sum().item<double>();
          if (terms.jacobian.defined()) jacobian_sum += terms.jacobian.sum().item<double>();
        }
        report.train = Combine(config.loss, l2_sum / static_cast<double>(n),
                               jacobian_sum / static_cast<double>(n));
      }
      if (!finish_report(report, round_start)) break;
    }
  }

  result.train_accuracy = AccuracyEvaluator(network, split.train, config.metrics).Evaluate();
  const bool evaluated_last =
      !result.history.empty() && result.history.back().validation_accuracy.has_value();
  if (validating && !evaluated_last) result.validation_accuracy = validation_evaluator->Evaluate();
  result.seconds = SecondsSince(start);
  result.metadata = BuildMetadata(config, split, result);
  return result;
}

}  // namespace dino::training
