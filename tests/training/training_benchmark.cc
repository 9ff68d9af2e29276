// Epoch timings of the training losses at the paper's scale (§3): DIPNet 100-50 and the
// generic dense network with 6 softplus layers of width 50, d_M = 4225, d_Q = 50, on a
// synthetic map q = A tanh(Bm) + c with exact Jacobians. Prints, per loss, the one-off
// preparation of the data (projections onto the bases, per-sample SVDs) and the time of one
// training epoch (batch 32, Adam): the fastest of epochs 2–4 (the first one warms up
// TorchScript's profiling executor; the minimum filters out the noise of a shared machine).
//
//   dino_training_benchmark [samples=1024] [generic_samples=256]
#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <limits>
#include <string>

#include "models/architectures/architectures.h"
#include "models/architectures/network.h"
#include "models/training/losses.h"
#include "models/training/trainer.h"
#include "tests/training/synthetic.h"

namespace {

using namespace dino::training;           // NOLINT: a benchmark program.
using namespace dino::training::testing;  // NOLINT

constexpr int64_t kDm = 4225, kDq = 50, kH = 60, kRm = 100, kRq = 50;

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Full Jacobians are generated in chunks: [n, 50, 4225] doubles is 1.7 GB for n = 1024.
Dataset MakeData(const SmoothMap& map, int64_t n) {
  Dataset data;
  data.m = Gaussian({n, kDm}, 7);
  data.q = map.Evaluate(data.m);
  data.jacobian = torch::empty({n, kDq, kDm}, torch::kFloat64);
  for (int64_t start = 0; start < n; start += 64) {
    const int64_t count = std::min<int64_t>(64, n - start);
    data.jacobian.narrow(0, start, count).copy_(map.Jacobian(data.m.narrow(0, start, count)));
  }
  return data;
}

// Seconds of the preparation (the Loss constructor) and of one epoch of training.
std::pair<double, double> TimeLoss(const torch::jit::Module& initial, const Dataset& data,
                                   const LossConfig& loss, bool layer_propagation = true) {
  torch::jit::Module module = initial.deepcopy();
  const auto prepare_start = std::chrono::steady_clock::now();
  { Loss prepared(dino::models::Network(module, layer_propagation), data, loss); }
  const double prepare = Seconds(prepare_start);
  TrainerConfig config;
  config.loss = loss;
  config.allow_layer_propagation = layer_propagation;
  config.epochs = 4;
  config.evaluation_interval = 0;
  TrainerCallbacks callbacks;
  double epoch = std::numeric_limits<double>::infinity();
  callbacks.on_epoch = [&](const EpochReport& report) {
    if (report.epoch > 1) {
      epoch = std::min(epoch, static_cast<double>(data.size()) / report.samples_per_second);
    }
    return true;
  };
  Train(module, data, config, callbacks);
  return {prepare, epoch};
}

void Report(const std::string& model, const std::string& name, std::pair<double, double> t,
            double baseline) {
  std::cout << std::left << std::setw(14) << model << std::setw(28) << name << std::right
            << std::fixed << std::setprecision(3) << std::setw(10) << t.first << " s"
            << std::setw(10) << t.second << " s" << std::setw(9) << std::setprecision(2)
            << t.second / baseline << "x\n";
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 1024;
  const int64_t generic_n = argc > 2 ? std::atoll(argv[2]) : 256;
  std::cout << "threads " << torch::get_num_threads() << ", d_M " << kDm << ", d_Q " << kDq
            << ", float64\n";
  SmoothMap map = MakeSmoothMap(kDm, kDq, kH, 1);
  const Dataset full = MakeData(map, n);
  const Dataset svd = WithTruncatedSvd(full, 20);
  torch::Tensor v = ActiveSubspace(full.jacobian, kRm);
  torch::Tensor u = OutputSubspace(full.jacobian, kRq);
  const Dataset reduced = WithReducedJacobian(full, u, v, /*with_norms=*/true);
  torch::jit::Module dipnet =
      SmallDipnet(v, u, full.q.mean(0), dino::models::kPaperHiddenWidths, 3, /*rough=*/false);

  std::cout << std::left << std::setw(14) << "model" << std::setw(28) << "loss (data)" << std::right
            << std::setw(12) << "prepare" << std::setw(12) << "epoch" << std::setw(10) << "vs L2"
            << "\n";
  auto config = [](JacobianLoss loss) {
    LossConfig c;
    c.jacobian_loss = loss;
    c.subsample_size = 10;
    c.sketch_rank = 50;
    return c;
  };
  const std::string dipnet_name = "DIPNet " + std::to_string(kRm) + "-" + std::to_string(kRq);
  const auto l2 = TimeLoss(dipnet, full, config(JacobianLoss::kNone));
  Report(dipnet_name, "l2", l2, l2.second);
  Report(dipnet_name, "h1 (full J)", TimeLoss(dipnet, full, config(JacobianLoss::kFullH1)),
         l2.second);
  Report(dipnet_name, "h1 (reduced UᵀJV)", TimeLoss(dipnet, reduced, config(JacobianLoss::kFullH1)),
         l2.second);
  Report(dipnet_name, "h1 (reduced), autograd J_φ",
         TimeLoss(dipnet, reduced, config(JacobianLoss::kFullH1), /*layer_propagation=*/false),
         l2.second);
  Report(dipnet_name, "reduced_h1 (SVD r=20)",
         TimeLoss(dipnet, svd, config(JacobianLoss::kReducedH1)), l2.second);
  Report(dipnet_name, "reduced_h1_ms k=10 (SVD)",
         TimeLoss(dipnet, svd, config(JacobianLoss::kReducedH1Subsampled)), l2.second);
  Report(dipnet_name, "sketched_h1 s=50 (SVD)",
         TimeLoss(dipnet, svd, config(JacobianLoss::kSketchedH1)), l2.second);

  if (generic_n > 0) {
    dino::models::GenericDenseSpec spec;
    spec.input_dim = kDm;
    spec.output_dim = kDq;
    torch::jit::Module generic = dino::models::BuildGenericDense(spec);
    const Dataset small = full.Select(torch::arange(generic_n));
    const Dataset small_svd = svd.Select(torch::arange(generic_n));
    const auto generic_l2 = TimeLoss(generic, small, config(JacobianLoss::kNone));
    Report("Generic", "l2", generic_l2, generic_l2.second);
    Report("Generic", "h1 (full J)", TimeLoss(generic, small, config(JacobianLoss::kFullH1)),
           generic_l2.second);
    Report("Generic", "reduced_h1 (SVD r=20)",
           TimeLoss(generic, small_svd, config(JacobianLoss::kReducedH1)), generic_l2.second);
    Report("Generic", "reduced_h1_ms k=10 (SVD)",
           TimeLoss(generic, small_svd, config(JacobianLoss::kReducedH1Subsampled)),
           generic_l2.second);
    std::cout << "(generic: " << generic_n << " samples)\n";
  }
  return 0;
}
