// The trainer and the metrics of models/training: training on a synthetic smooth map with
// exact Jacobians raises L² and H¹ accuracy far above the untrained model; determinism,
// callbacks, early stop, learning-rate schedules, whitening and metadata; the metrics
// (3.6a–c) against hand-computed values and against direct computations; dataset checks.
#include "models/training/trainer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "models/architectures/architectures.h"
#include "models/training/metrics.h"
#include "tests/training/synthetic.h"

namespace dino::training {
namespace {

using ::testing::HasSubstr;
using ::testing::ThrowsMessage;
using namespace dino::training::testing;  // NOLINT: the test's own helpers.

// ---- Training --------------------------------------------------------------------------------

constexpr int64_t kDm = 12, kDq = 6, kH = 3, kRank = 3;

struct TrainingProblem {
  Dataset data;
  torch::Tensor u, v, b;
};

// 320 samples of q = A tanh(Bm) + c; DIPNet bases from the Jacobians (active subspace and
// derivative outer product basis, paper (2.24)–(2.25)), output shift the mean of q.
const TrainingProblem& TheTrainingProblem() {
  static const TrainingProblem* problem = [] {
    auto* p = new TrainingProblem;
    SmoothMap map = MakeSmoothMap(kDm, kDq, kH, 41);
    p->data = MakeFullDataset(map, 320, 42);
    p->v = ActiveSubspace(p->data.jacobian, kRank);
    p->u = OutputSubspace(p->data.jacobian, kRank);
    p->b = p->data.q.mean(0);
    return p;
  }();
  return *problem;
}

torch::jit::Module TrainingDipnet(uint64_t seed = 5) {
  const TrainingProblem& p = TheTrainingProblem();
  return SmallDipnet(p.v, p.u, p.b, {16, 16}, seed, /*rough=*/false);
}

TrainerConfig QuickConfig(JacobianLoss loss, int64_t epochs) {
  TrainerConfig config;
  config.loss.jacobian_loss = loss;
  config.epochs = epochs;
  config.learning_rate = 1e-2;
  config.validation_size = 64;
  config.seed = 9;
  return config;
}

// A copy of the module's parameters, to compare runs.
std::vector<torch::Tensor> Weights(const torch::jit::Module& module) {
  std::vector<torch::Tensor> weights;
  for (const auto& p : module.parameters()) weights.push_back(p.detach().clone());
  return weights;
}

void ExpectTrainedWell(const TrainingResult& result, double min_l2, double min_h1) {
  ASSERT_TRUE(result.initial_validation_accuracy.has_value());
  ASSERT_TRUE(result.validation_accuracy.has_value());
  const Accuracies& before = *result.initial_validation_accuracy;
  const Accuracies& after = *result.validation_accuracy;
  ASSERT_TRUE(before.h1 && after.h1 && after.reduced_h1);
  EXPECT_GE(after.l2, min_l2) << "untrained " << before.l2;
  EXPECT_GE(*after.h1, min_h1) << "untrained " << *before.h1;
  EXPECT_GE(after.l2 - before.l2, 0.3);
  EXPECT_GE(*after.h1 - *before.h1, 0.3);
  EXPECT_GE(result.history.front().train.total, 3 * result.history.back().train.total);
}

TEST(Training, DipnetFullH1RaisesL2AndH1Accuracy) {
  torch::jit::Module module = TrainingDipnet();
  TrainingResult result =
      Train(module, TheTrainingProblem().data, QuickConfig(JacobianLoss::kFullH1, 80));
  ExpectTrainedWell(result, 0.9, 0.8);
  EXPECT_EQ(result.whitening, "applied");
  EXPECT_EQ(result.network_jacobian, "layer_propagation");
  EXPECT_EQ(result.metadata["training"]["network_jacobian"], "layer_propagation");
}

TEST(Training, DipnetOnReducedJacobiansTrainsLikeOnFullOnes) {
  const TrainingProblem& p = TheTrainingProblem();
  torch::jit::Module module = TrainingDipnet();
  TrainingResult result = Train(module, WithReducedJacobian(p.data, p.u, p.v, /*with_norms=*/true),
                                QuickConfig(JacobianLoss::kFullH1, 80));
  // The reduced data carry no SVD: no reduced H¹ metric, but the exact H¹ one (with norms).
  ASSERT_TRUE(result.validation_accuracy && result.validation_accuracy->h1);
  EXPECT_FALSE(result.validation_accuracy->reduced_h1.has_value());
  EXPECT_GE(result.validation_accuracy->l2, 0.9);
  EXPECT_GE(*result.validation_accuracy->h1, 0.8);
  // And the model evaluates the same on the full data.
  Accuracies full = EvaluateAccuracies(module, p.data);
  EXPECT_GE(*full.h1, 0.8);
}

TEST(Training, GenericFullH1RaisesL2AndH1Accuracy) {
  torch::jit::Module module = SmallGeneric(kDm, kDq, {16, 16}, 6, /*rough=*/false);
  TrainingResult result =
      Train(module, TheTrainingProblem().data, QuickConfig(JacobianLoss::kFullH1, 80));
  ExpectTrainedWell(result, 0.9, 0.8);
  EXPECT_EQ(result.whitening, "unavailable");
}

TEST(Training, Float32ModelsTrainOnFloat64Data) {
  const TrainingProblem& p = TheTrainingProblem();
  dino::models::DipnetSpec spec;
  spec.input_basis = p.v;
  spec.output_basis = p.u;
  spec.output_shift = p.b;
  spec.hidden_widths = {16, 16};
  spec.dtype = torch::kFloat32;
  spec.seed = 5;
  torch::jit::Module module = dino::models::BuildDipnet(spec);
  TrainingResult result = Train(module, p.data, QuickConfig(JacobianLoss::kFullH1, 20));
  EXPECT_EQ(result.network_jacobian, "layer_propagation");
  EXPECT_GE(result.validation_accuracy->l2 - result.initial_validation_accuracy->l2, 0.3);
  for (const auto& parameter : module.parameters()) {
    EXPECT_EQ(parameter.scalar_type(), torch::kFloat32);
  }
}

TEST(Training, EveryLossTrains) {
  for (JacobianLoss loss : {JacobianLoss::kNone, JacobianLoss::kReducedH1,
                            JacobianLoss::kReducedH1Subsampled, JacobianLoss::kSketchedH1}) {
    torch::jit::Module module = TrainingDipnet();
    TrainerConfig config = QuickConfig(loss, 25);
    config.loss.subsample_size = 2;
    config.loss.sketch_rank = 4;
    TrainingResult result = Train(module, TheTrainingProblem().data, config);
    EXPECT_GE(result.validation_accuracy->l2 - result.initial_validation_accuracy->l2, 0.2)
        << JacobianLossName(loss);
    EXPECT_EQ(result.metadata["training"]["loss"]["name"], JacobianLossName(loss));
  }
}

TEST(Training, IsDeterministicForASeed) {
  auto run = [](uint64_t seed) {
    torch::jit::Module module = TrainingDipnet();
    TrainerConfig config = QuickConfig(JacobianLoss::kReducedH1Subsampled, 2);
    config.loss.subsample_size = 2;
    config.seed = seed;
    config.evaluation_interval = 0;
    Train(module, TheTrainingProblem().data, config);
    return Weights(module);
  };
  const auto first = run(3), second = run(3), other = run(4);
  bool differs = false;
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_TRUE(torch::equal(first[i], second[i])) << "parameter " << i;
    differs = differs || !torch::equal(first[i], other[i]);
  }
  EXPECT_TRUE(differs);
}

// A run stopped after epoch 2 and resumed from its checkpoint and TrainingState ends with the
// weights of the uninterrupted run: same shuffles, random loss draws, Adam moments and
// learning rates. Resuming from the weights alone (a fresh Adam, fresh streams) does not.
TEST(Training, ResumedRunEndsWithTheUninterruptedRunsWeights) {
  TrainerConfig config = QuickConfig(JacobianLoss::kReducedH1Subsampled, 4);
  config.loss.subsample_size = 2;  // Random draws per epoch.
  config.schedule = LearningRateSchedule::kCosine;
  config.final_learning_rate = 1e-4;
  config.evaluation_interval = 0;
  torch::jit::Module uninterrupted = TrainingDipnet();
  Train(uninterrupted, TheTrainingProblem().data, config);

  torch::jit::Module resumed = TrainingDipnet();
  std::optional<TrainingState> saved;
  TrainerCallbacks stop_after_two;
  stop_after_two.on_training_state = [&](const TrainingState& state) { saved = state; };
  stop_after_two.on_epoch = [](const EpochReport& r) { return r.epoch < 2; };
  Train(resumed, TheTrainingProblem().data, config, stop_after_two);
  ASSERT_TRUE(saved.has_value());
  EXPECT_EQ(saved->epochs_done, 2);
  EXPECT_EQ(saved->whitening, "applied");
  // The same first two epochs again (the run is deterministic), to restart from the weights.
  torch::jit::Module weights_only = TrainingDipnet();
  Train(weights_only, TheTrainingProblem().data, config, stop_after_two);
  const TrainingResult rest = Train(resumed, TheTrainingProblem().data, config, {}, &*saved);
  ASSERT_EQ(rest.history.size(), 2u);
  EXPECT_EQ(rest.history.front().epoch, 3);
  EXPECT_EQ(rest.resumed_after_epoch, 2);
  EXPECT_EQ(rest.whitening, "applied");
  EXPECT_EQ(rest.metadata["training"]["epochs"], 4);
  EXPECT_EQ(rest.metadata["training"]["resumed_after_epoch"], 2);
  EXPECT_FALSE(rest.initial_validation_accuracy.has_value());

  TrainerConfig two_more = config;
  two_more.epochs = 2;
  Train(weights_only, TheTrainingProblem().data, two_more);

  const auto expected = Weights(uninterrupted), got = Weights(resumed),
             restarted = Weights(weights_only);
  ASSERT_EQ(expected.size(), got.size());
  bool restart_differs = false;
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_TRUE(torch::equal(expected[i], got[i])) << "parameter " << i;
    restart_differs = restart_differs || !torch::equal(expected[i], restarted[i]);
  }
  EXPECT_TRUE(restart_differs);

  // A state from outside the run's epochs, or from another model, is refused.
  TrainingState late = *saved;
  late.epochs_done = 5;
  torch::jit::Module other = TrainingDipnet();
  EXPECT_THAT([&] { Train(other, TheTrainingProblem().data, config, {}, &late); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("after epoch 5")));
  torch::jit::Module wider = SmallDipnet(TheTrainingProblem().v, TheTrainingProblem().u,
                                         TheTrainingProblem().b, {8}, 5, /*rough=*/false);
  EXPECT_THAT([&] { Train(wider, TheTrainingProblem().data, config, {}, &*saved); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("does not fit this model")));
}

TEST(Training, CallbacksCheckpointsAndEarlyStop) {
  torch::jit::Module module = TrainingDipnet();
  TrainerConfig config = QuickConfig(JacobianLoss::kFullH1, 5);
  config.batch_size = 100;  // 256 training samples: batches of 100, 100, 56.
  config.evaluation_interval = 2;
  std::vector<BatchProgress> batches;
  std::vector<EpochReport> epochs;
  std::vector<nlohmann::json> checkpoints;
  TrainerCallbacks callbacks;
  callbacks.on_batch = [&](const BatchProgress& p) { batches.push_back(p); };
  callbacks.on_epoch = [&](const EpochReport& r) {
    epochs.push_back(r);
    return r.epoch < 3;  // Stop after the third epoch.
  };
  callbacks.on_checkpoint = [&](const torch::jit::Module& m, const EpochReport& r,
                                const nlohmann::json& metadata) {
    EXPECT_EQ(dino::models::CountParameters(m), dino::models::CountParameters(module));
    EXPECT_EQ(metadata["training"]["epochs"], r.epoch);
    checkpoints.push_back(metadata);
  };
  TrainingResult result = Train(module, TheTrainingProblem().data, config, callbacks);
  EXPECT_TRUE(result.stopped_early);
  ASSERT_EQ(result.history.size(), 3u);
  ASSERT_EQ(epochs.size(), 3u);
  ASSERT_EQ(checkpoints.size(), 3u);
  ASSERT_EQ(batches.size(), 9u);
  EXPECT_EQ(batches[2].samples_done, 256);
  EXPECT_EQ(batches[2].samples, 256);
  EXPECT_EQ(batches[2].batches, 3);
  EXPECT_GT(batches[2].samples_per_second, 0.0);
  EXPECT_GT(batches[0].eta_seconds, batches[8].eta_seconds);
  // Accuracies every second epoch, validation losses every epoch.
  EXPECT_FALSE(epochs[0].validation_accuracy.has_value());
  EXPECT_TRUE(epochs[1].validation_accuracy.has_value());
  EXPECT_TRUE(epochs[0].validation.has_value());
  EXPECT_GT(epochs[2].eta_seconds, 0.0);
  EXPECT_EQ(epochs[2].epochs, 5);

  const nlohmann::json& metadata = result.metadata;
  EXPECT_EQ(metadata["trained"], true);
  EXPECT_EQ(metadata["training"]["epochs"], 3);
  EXPECT_EQ(metadata["training"]["epochs_requested"], 5);
  EXPECT_EQ(metadata["training"]["stopped_early"], true);
  EXPECT_EQ(metadata["training"]["batch_size"], 100);
  EXPECT_EQ(metadata["training"]["optimizer"]["name"], "adam");
  EXPECT_EQ(metadata["training"]["loss"]["name"], "h1");
  EXPECT_EQ(metadata["training"]["history"].size(), 3u);
  EXPECT_EQ(metadata["data"]["train"]["samples"], 256);
  EXPECT_EQ(metadata["data"]["validation"]["samples"], 64);
  EXPECT_EQ(metadata["data"]["train"]["jacobian_form"], "full");
  EXPECT_TRUE(metadata["metrics"]["train"].contains("h1_accuracy"));
  EXPECT_TRUE(metadata["metrics"]["validation"].contains("reduced_h1_accuracy"));
  EXPECT_TRUE(metadata["metrics"]["validation_initial"].contains("l2_accuracy"));
  EXPECT_GT(metadata["training"]["samples_per_second"].get<double>(), 0.0);
}

TEST(Training, LbfgsFinishLowersTheLossAdamLeaves) {
  TrainerConfig config = QuickConfig(JacobianLoss::kFullH1, 10);
  config.evaluation_interval = 0;
  torch::jit::Module adam_only = TrainingDipnet();
  const TrainingResult adam = Train(adam_only, TheTrainingProblem().data, config);

  config.lbfgs_iterations = 50;
  config.lbfgs_report_interval = 20;  // Rounds of 20, 20 and 10 iterations.
  config.lbfgs_chunk = 100;           // 256 training samples: chunks of 100, 100, 56.
  std::vector<nlohmann::json> checkpoints;
  TrainerCallbacks callbacks;
  callbacks.on_checkpoint = [&](const torch::jit::Module&, const EpochReport&,
                                const nlohmann::json& metadata) {
    checkpoints.push_back(metadata);
  };
  torch::jit::Module finished = TrainingDipnet();
  const TrainingResult result = Train(finished, TheTrainingProblem().data, config, callbacks);
  ASSERT_EQ(result.history.size(), 13u);
  ASSERT_EQ(checkpoints.size(), 13u);
  // The Adam epochs are those of the run without the finish.
  EXPECT_EQ(result.history[9].train.total, adam.history[9].train.total);
  EXPECT_EQ(result.history[9].optimizer, "adam");
  EXPECT_EQ(result.history[9].epochs, 13);
  const EpochReport& last = result.history.back();
  EXPECT_EQ(last.optimizer, "lbfgs");
  EXPECT_EQ(last.epoch, 13);
  EXPECT_EQ(result.history[10].lbfgs_iterations, 20);
  EXPECT_EQ(last.lbfgs_iterations, 50);
  EXPECT_GE(last.function_evaluations, 50);
  EXPECT_EQ(last.learning_rate, 0.0);
  // The reported loss is the full-batch loss at the final weights.
  const Dataset train =
      SplitDataset(TheTrainingProblem().data, config.validation_size, config.seed).train;
  const double finished_loss =
      Loss(models::Network(finished), train, config.loss).EvaluateAll().total;
  const double adam_loss = Loss(models::Network(adam_only), train, config.loss).EvaluateAll().total;
  EXPECT_NEAR(finished_loss, last.train.total, 1e-12);
  // Full-batch second-order steps go far below where Adam's last epoch left the loss.
  EXPECT_LT(finished_loss, adam_loss / 3);
  ASSERT_TRUE(result.validation_accuracy && adam.validation_accuracy);
  EXPECT_GT(*result.validation_accuracy->h1, *adam.validation_accuracy->h1);
  // Metadata: Adam epochs and steps counted apart from the L-BFGS iterations.
  const nlohmann::json& training = result.metadata["training"];
  EXPECT_EQ(training["epochs"], 10);
  EXPECT_EQ(training["adam_steps"], 10 * 8);
  EXPECT_EQ(training["lbfgs_iterations"], 50);
  EXPECT_EQ(training["lbfgs_finish"]["iterations_requested"], 50);
  EXPECT_EQ(training["history"].back()["optimizer"], "lbfgs");
  EXPECT_EQ(checkpoints[11]["training"]["lbfgs_iterations"], 40);

  // L-BFGS alone (epochs 0), e.g. on a trained model: it continues from its weights.
  TrainerConfig alone = config;
  alone.epochs = 0;
  alone.lbfgs_iterations = 10;
  const TrainingResult more = Train(finished, TheTrainingProblem().data, alone);
  EXPECT_EQ(more.whitening, "kept");
  ASSERT_EQ(more.history.size(), 1u);
  EXPECT_LE(more.history.back().train.total, last.train.total);
  EXPECT_EQ(more.metadata["training"]["epochs"], 0);
}

TEST(Training, LearningRateSchedules) {
  auto rates = [](LearningRateSchedule schedule) {
    torch::jit::Module module = TrainingDipnet();
    TrainerConfig config = QuickConfig(JacobianLoss::kNone, 3);
    config.schedule = schedule;
    config.learning_rate = 1e-2;
    config.decay_rate = 0.5;
    config.final_learning_rate = 1e-3;
    config.evaluation_interval = 0;
    std::vector<double> values;
    for (const auto& r : Train(module, TheTrainingProblem().data, config).history) {
      values.push_back(r.learning_rate);
    }
    return values;
  };
  EXPECT_THAT(rates(LearningRateSchedule::kConstant), ::testing::ElementsAre(1e-2, 1e-2, 1e-2));
  EXPECT_THAT(rates(LearningRateSchedule::kExponential),
              ::testing::ElementsAre(1e-2, 5e-3, 2.5e-3));
  EXPECT_THAT(rates(LearningRateSchedule::kCosine),
              ::testing::ElementsAre(::testing::DoubleNear(1e-2, 1e-15),
                                     ::testing::DoubleNear(5.5e-3, 1e-15),
                                     ::testing::DoubleNear(1e-3, 1e-15)));
}

TEST(Training, WhiteningUsesTheTrainingSplitAndSparesTrainedNetworks) {
  const TrainingProblem& p = TheTrainingProblem();
  torch::jit::Module module = TrainingDipnet();
  TrainerConfig config = QuickConfig(JacobianLoss::kNone, 1);
  config.evaluation_interval = 0;
  TrainingResult first = Train(module, p.data, config);
  EXPECT_EQ(first.whitening, "applied");
  EXPECT_EQ(first.metadata["training"]["whitening"], "applied");
  const DatasetSplit split = SplitDataset(p.data, config.validation_size, config.seed);
  torch::Tensor z = torch::mm(split.train.m, p.v);
  torch::Tensor shift = module.attr("reduced_input_shift").toTensor();
  torch::Tensor scale = module.attr("reduced_input_scale").toTensor();
  EXPECT_TRUE(torch::allclose(shift, z.mean(0), 0, 1e-12));
  EXPECT_TRUE(torch::allclose(scale, 1.0 / (z - z.mean(0)).square().mean(0).sqrt(), 1e-12));
  // A second run fine-tunes: the buffers stay as they are.
  torch::Tensor kept = shift.clone();
  EXPECT_EQ(Train(module, p.data, config).whitening, "kept");
  EXPECT_TRUE(torch::equal(module.attr("reduced_input_shift").toTensor(), kept));
  config.whitening = Whitening::kNever;
  torch::jit::Module fresh = TrainingDipnet();
  EXPECT_EQ(Train(fresh, p.data, config).whitening, "disabled");
  EXPECT_TRUE(torch::equal(fresh.attr("reduced_input_scale").toTensor(),
                           torch::ones({kRank}, torch::kFloat64)));
}

TEST(Training, RejectsBadSettingsBeforeTouchingTheModel) {
  const TrainingProblem& p = TheTrainingProblem();
  torch::jit::Module module = TrainingDipnet();
  TrainerConfig config = QuickConfig(JacobianLoss::kReducedH1, 1);
  Dataset reduced = WithReducedJacobian(p.data, p.u, p.v, true);
  EXPECT_THAT([&] { Train(module, reduced, config); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("determines neither")));
  EXPECT_TRUE(torch::equal(module.attr("reduced_input_shift").toTensor(),
                           torch::zeros({kRank}, torch::kFloat64)));
  config.validation_size = 320;
  EXPECT_THAT([&] { Train(module, p.data, config); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("validation_size")));
  config = QuickConfig(JacobianLoss::kFullH1, 0);
  EXPECT_THAT([&] { Train(module, p.data, config); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("epochs must be >= 1")));
  config.lbfgs_iterations = 5;
  config.lbfgs_history = 0;
  EXPECT_THAT([&] { Train(module, p.data, config); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("lbfgs_history")));
  config.lbfgs_iterations = -1;
  EXPECT_THAT([&] { Train(module, p.data, config); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("lbfgs_iterations")));
  Dataset zero = p.data;
  zero.q = p.data.q.clone();
  zero.q[17].zero_();
  EXPECT_THAT([&] { Train(module, zero, QuickConfig(JacobianLoss::kNone, 1)); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("q of sample 17 is zero")));
}

// ---- Metrics against hand-computed values ------------------------------------------------------

// Two samples in R² → R² and the identity model f(m) = m:
//   m₁ = (1, 0), q₁ = (2, 0), J₁ = diag(3, 1):  ‖q−f‖/‖q‖ = 1/2, ‖J−I‖/‖J‖ = 2/√10,
//                                               rank 1: |3 − 1|/3 = 2/3;
//   m₂ = (0, 1), q₂ = (0, 1), J₂ = [[0, 2], [0, 0]]:  0, ‖[[−1, 2], [0, −1]]‖/2 = √6/2,
//                                               rank 1 (σ = 2, u = e₁, v = e₂): |2 − 0|/2 = 1.
Dataset HandDataset() {
  Dataset data;
  data.m = torch::tensor({1.0, 0.0, 0.0, 1.0}, torch::kFloat64).view({2, 2});
  data.q = torch::tensor({2.0, 0.0, 0.0, 1.0}, torch::kFloat64).view({2, 2});
  data.jacobian =
      torch::tensor({3.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0}, torch::kFloat64).view({2, 2, 2});
  return data;
}

void ExpectHandValues(const Accuracies& a, bool with_reduced) {
  EXPECT_EQ(a.samples, 2);
  EXPECT_NEAR(a.l2, 1.0 - 0.25, 1e-14);
  EXPECT_NEAR(a.l2_rms, 1.0 - std::sqrt(0.125), 1e-14);
  ASSERT_TRUE(a.h1.has_value());
  EXPECT_NEAR(*a.h1, 1.0 - (2.0 / std::sqrt(10.0) + std::sqrt(6.0) / 2.0) / 2.0, 1e-14);
  EXPECT_NEAR(*a.h1_rms, 1.0 - std::sqrt((0.4 + 1.5) / 2.0), 1e-14);
  ASSERT_EQ(a.reduced_h1.has_value(), with_reduced);
  if (with_reduced) {
    EXPECT_NEAR(*a.reduced_h1, 1.0 - (2.0 / 3.0 + 1.0) / 2.0, 1e-14);
    EXPECT_EQ(a.reduced_rank, 1);
  }
}

TEST(Metrics, HandComputedForBothArchitecturesAndDataForms) {
  torch::jit::Module generic = SmallGeneric(2, 2, {}, 0, false);
  torch::jit::Module dipnet =
      SmallDipnet(torch::eye(2, torch::kFloat64), torch::eye(2, torch::kFloat64),
                  torch::zeros({2}, torch::kFloat64), {}, 0, false);
  for (torch::jit::Module* module : {&generic, &dipnet}) {
    torch::NoGradGuard no_grad;
    module->attr("W0").toTensor().copy_(torch::eye(2, torch::kFloat64));
    module->attr("b0").toTensor().zero_();
  }
  MetricsOptions rank_one;
  rank_one.reduced_rank = 1;
  const Dataset full = HandDataset();
  for (const torch::jit::Module* module : {&generic, &dipnet}) {
    ExpectHandValues(EvaluateAccuracies(*module, full, rank_one), true);
    ExpectHandValues(EvaluateAccuracies(*module, WithTruncatedSvd(full, 2), rank_one), true);
  }
  // In the DIPNet's (identity) bases the reduced data with norms give the exact H¹ metric,
  // but no SVD for the reduced one; without norms no H¹ metric either.
  const torch::Tensor eye = torch::eye(2, torch::kFloat64);
  ExpectHandValues(EvaluateAccuracies(dipnet, WithReducedJacobian(full, eye, eye, true)), false);
  Accuracies without = EvaluateAccuracies(dipnet, WithReducedJacobian(full, eye, eye, false));
  EXPECT_FALSE(without.h1.has_value());
  EXPECT_NEAR(without.l2, 0.75, 1e-14);
  // A generic model has no bases for reduced data: L² only.
  Accuracies generic_reduced =
      EvaluateAccuracies(generic, WithReducedJacobian(full, eye, eye, true));
  EXPECT_FALSE(generic_reduced.h1.has_value());
  EXPECT_NEAR(generic_reduced.l2, 0.75, 1e-14);

  nlohmann::json json = EvaluateAccuracies(dipnet, full, rank_one).ToJson();
  EXPECT_NEAR(json["l2_accuracy"].get<double>(), 0.75, 1e-14);
  EXPECT_EQ(json["reduced_rank"], 1);
  EXPECT_EQ(json["samples"], 2);
}

TEST(Metrics, MatchDirectComputationsOnRandomModels) {
  SmoothMap map = MakeSmoothMap(7, 4, 3, 51);
  Dataset data = MakeFullDataset(map, 10, 52);
  torch::Tensor v = dino::models::RandomOrthonormalColumns(7, 3, 53);
  torch::Tensor u = dino::models::RandomOrthonormalColumns(4, 2, 54);
  torch::jit::Module dipnet = SmallDipnet(v, u, torch::zeros({4}, torch::kFloat64), {5}, 55, true);
  torch::jit::Module generic = SmallGeneric(7, 4, {5}, 56, true);
  auto [svd_u, svd_s, svd_vh] = torch::linalg_svd(data.jacobian, false);
  for (const torch::jit::Module* module : {&dipnet, &generic}) {
    torch::Tensor f = DirectForward(*module, data.m);
    torch::Tensor jacobian = DirectJacobian(*module, data.m);
    const double l2 = 1.0 - ((data.q - f).norm(2, {1}) / data.q.norm(2, {1})).mean().item<double>();
    const double h1 = 1.0 - ((data.jacobian - jacobian).flatten(1).norm(2, {1}) /
                             data.jacobian.flatten(1).norm(2, {1}))
                                .mean()
                                .item<double>();
    torch::Tensor u_r = svd_u.narrow(2, 0, 2), s_r = svd_s.narrow(1, 0, 2);
    torch::Tensor v_r = svd_vh.narrow(1, 0, 2).transpose(1, 2);
    torch::Tensor e =
        torch::diag_embed(s_r) - torch::matmul(torch::matmul(u_r.transpose(1, 2), jacobian), v_r);
    const double reduced =
        1.0 - (e.flatten(1).norm(2, {1}) / s_r.norm(2, {1})).mean().item<double>();
    MetricsOptions options;
    options.reduced_rank = 2;
    options.chunk = 3;  // Several chunks, the last one partial.
    Accuracies a = EvaluateAccuracies(*module, data, options);
    EXPECT_NEAR(a.l2, l2, 1e-12);
    EXPECT_NEAR(*a.h1, h1, 1e-12);
    EXPECT_NEAR(*a.reduced_h1, reduced, 1e-12);
    // The DIPNet's error is mostly outside its bases: a real test of Prop. 2.4 in the metric.
    EXPECT_LT(*a.h1, 0.9);
    if (module == &generic) {
      EXPECT_FALSE(a.basis_h1.has_value());
      EXPECT_FALSE(a.basis_l2.has_value());
      continue;
    }
    // The ceilings of the bases: the best approximations UUᵀq and UUᵀJVVᵀ (shift 0 here).
    const torch::Tensor uut = torch::mm(u, u.t()), vvt = torch::mm(v, v.t());
    const double basis_l2 =
        1.0 - ((data.q - torch::mm(data.q, uut)).norm(2, {1}) / data.q.norm(2, {1}))
                  .mean()
                  .item<double>();
    const double basis_h1 =
        1.0 - ((data.jacobian - torch::matmul(torch::matmul(uut, data.jacobian), vvt))
                   .flatten(1)
                   .norm(2, {1}) /
               data.jacobian.flatten(1).norm(2, {1}))
                  .mean()
                  .item<double>();
    ASSERT_TRUE(a.basis_l2 && a.basis_h1);
    EXPECT_NEAR(*a.basis_l2, basis_l2, 1e-12);
    EXPECT_NEAR(*a.basis_h1, basis_h1, 1e-12);
    EXPECT_GT(*a.basis_h1, *a.h1);  // A random φ is far below what its bases allow.
    EXPECT_LT(*a.basis_h1, 0.99);   // and rank-2/3 bases lose part of J.
    EXPECT_NEAR(a.ToJson()["basis_h1_accuracy"].get<double>(), basis_h1, 1e-12);
  }
}

TEST(Metrics, Errors) {
  torch::jit::Module generic = SmallGeneric(2, 2, {}, 0, false);
  Dataset data = HandDataset();
  MetricsOptions options;
  options.reduced_rank = 3;
  EXPECT_THAT([&] { EvaluateAccuracies(generic, data, options); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("SVD rank 3 is outside [1, 2]")));
  data.jacobian = data.jacobian.clone();
  data.jacobian[1].zero_();
  EXPECT_THAT([&] { EvaluateAccuracies(generic, data); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("Jacobian of sample 1 is zero")));
}

// ---- Datasets ----------------------------------------------------------------------------------

TEST(DatasetTest, ValidationNamesTheProblem) {
  const Dataset good = HandDataset();
  EXPECT_NO_THROW(good.Validate());
  EXPECT_EQ(good.jacobian_form(), JacobianForm::kFull);

  Dataset both = WithTruncatedSvd(good, 2);
  both.jacobian = good.jacobian;
  EXPECT_THAT([&] { both.Validate(); }, ThrowsMessage<std::invalid_argument>(HasSubstr("several")));

  Dataset shape = good;
  shape.jacobian = good.jacobian.transpose(1, 2).contiguous().view({2, 2, 2}).narrow(2, 0, 1);
  EXPECT_THAT([&] { shape.Validate(); }, ThrowsMessage<std::invalid_argument>(
                                             HasSubstr("jacobian must have shape [n, d_Q, d_M]")));

  Dataset nan = good;
  nan.q = good.q.clone();
  nan.q[1][0] = std::nan("");
  EXPECT_THAT([&] { nan.Validate(); },
              ThrowsMessage<std::invalid_argument>(
                  HasSubstr("q contains a non-finite value (NaN or Inf) in sample 1")));

  Dataset partial = WithTruncatedSvd(good, 2);
  partial.svd_v = torch::Tensor();
  EXPECT_THAT([&] { partial.Validate(); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("needs all of svd_u")));

  Dataset skew = WithTruncatedSvd(good, 2);
  skew.svd_u = skew.svd_u * 1.1;
  EXPECT_THAT([&] { skew.Validate(); },
              ThrowsMessage<std::invalid_argument>(
                  HasSubstr("svd_u of sample 0 does not have orthonormal columns")));

  Dataset dtype = good;
  dtype.q = good.q.to(torch::kFloat32);
  EXPECT_THAT([&] { dtype.Validate(); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("q must have the dtype of m")));

  const torch::Tensor eye = torch::eye(2, torch::kFloat64);
  Dataset small_norm = WithReducedJacobian(good, eye, eye, true);
  small_norm.jacobian_norm_sq = small_norm.jacobian_norm_sq * 0.5;
  EXPECT_THAT([&] { small_norm.Validate(); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("jacobian_norm_sq of sample 0")));
}

// UᵀJV from the truncated SVD, chunk by chunk (several chunks, the last one partial), equals
// the projection of the full Jacobians.
TEST(DatasetTest, ProjectJacobianFromSvdInChunksEqualsTheFullProjection) {
  SmoothMap map = MakeSmoothMap(7, 4, 3, 61);
  Dataset full = MakeFullDataset(map, 10, 62);
  torch::Tensor v = dino::models::RandomOrthonormalColumns(7, 3, 63);
  torch::Tensor u = dino::models::RandomOrthonormalColumns(4, 2, 64);
  const torch::Tensor direct = torch::matmul(torch::matmul(u.t(), full.jacobian), v);
  for (int64_t chunk : {1, 3, 64}) {
    EXPECT_TRUE(torch::allclose(ProjectJacobian(WithTruncatedSvd(full, 4), u, v, chunk), direct,
                                1e-12, 1e-12))
        << "chunk " << chunk;
  }
}

TEST(DatasetTest, SplitSelectAndSummary) {
  SmoothMap map = MakeSmoothMap(4, 3, 2, 61);
  Dataset data = WithTruncatedSvd(MakeFullDataset(map, 10, 62), 2);
  DatasetSplit split = SplitDataset(data, 3, 7);
  EXPECT_EQ(split.train.size(), 7);
  EXPECT_EQ(split.validation.size(), 3);
  // A partition of the samples, reproducible from the seed.
  torch::Tensor all = torch::cat({split.train.m, split.validation.m});
  EXPECT_TRUE(torch::allclose(std::get<0>(all.sum(1).sort()), std::get<0>(data.m.sum(1).sort())));
  EXPECT_TRUE(torch::equal(SplitDataset(data, 3, 7).validation.m, split.validation.m));
  EXPECT_FALSE(torch::equal(SplitDataset(data, 3, 8).validation.m, split.validation.m));
  EXPECT_EQ(split.validation.svd_u.size(0), 3);

  nlohmann::json summary = data.Summary();
  EXPECT_EQ(summary["samples"], 10);
  EXPECT_EQ(summary["input_dim"], 4);
  EXPECT_EQ(summary["output_dim"], 3);
  EXPECT_EQ(summary["jacobian_form"], "truncated_svd");
  EXPECT_EQ(summary["svd_rank"], 2);
  EXPECT_THROW(SplitDataset(data, 10, 0), std::invalid_argument);

  // The truncated SVD keeps the largest singular values whatever their order in the data.
  Dataset reversed = data;
  reversed.svd_u = data.svd_u.flip({2});
  reversed.svd_sigma = data.svd_sigma.flip({1});
  reversed.svd_v = data.svd_v.flip({2});
  SampleSvd top = TruncatedSampleSvd(reversed, 1);
  EXPECT_TRUE(torch::equal(top.sigma, data.svd_sigma.narrow(1, 0, 1)));
  EXPECT_TRUE(torch::equal(top.u, data.svd_u.narrow(2, 0, 1)));
  // The per-sample SVD of full Jacobians, wide (d_Q < d_M) and tall (d_Q > d_M).
  for (auto [d_q, d_m] : {std::pair<int64_t, int64_t>{3, 7}, {7, 3}}) {
    Dataset jacobians;
    jacobians.m = Gaussian({5, d_m}, 63);
    jacobians.q = Gaussian({5, d_q}, 64);
    jacobians.jacobian = Gaussian({5, d_q, d_m}, 65);
    SampleSvd all = TruncatedSampleSvd(jacobians, 0);
    ASSERT_EQ(all.sigma.size(1), 3);
    EXPECT_TRUE(
        torch::allclose(torch::matmul(all.u * all.sigma.unsqueeze(1), all.v.transpose(1, 2)),
                        jacobians.jacobian, 1e-12, 1e-12));
    EXPECT_TRUE(
        torch::allclose(all.sigma, torch::linalg_svdvals(jacobians.jacobian), 1e-12, 1e-12));
    EXPECT_TRUE(torch::allclose(torch::matmul(all.v.transpose(1, 2), all.v),
                                torch::eye(3, torch::kFloat64).expand({5, 3, 3}), 1e-12, 1e-12));
    SampleSvd two = TruncatedSampleSvd(jacobians, 2);
    EXPECT_TRUE(torch::equal(two.sigma, all.sigma.narrow(1, 0, 2)));
    EXPECT_TRUE(torch::allclose(two.u, all.u.narrow(2, 0, 2)));
  }
  // Full Jacobians rebuilt from the SVD.
  Dataset full = MakeFullDataset(map, 10, 62);
  EXPECT_TRUE(
      torch::allclose(FullJacobianRows(data, torch::arange(10)), full.jacobian, 1e-12, 1e-12));
}

}  // namespace
}  // namespace dino::training
