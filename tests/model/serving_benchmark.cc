// The model layer's cost per point, without a transport: Evaluate and ReducedJacobian of a
// served model for batches of B points, computed as the scheduler does (one
// SurrogateModel::Compute per batch), against the TorchScript module's own forward. This is
// where the per-point cost of a batched reduced Jacobian is checked (it must not grow with B)
// and where the direct DIPNet path is compared with the TorchScript interpreter.
//
//   dino_serving_benchmark [model.pt=models/repository/poisson_dipnet/3/model.pt] [threads=1]
//                          [batches=1,4,16,64,256,1000]
// (threads: LibTorch intra-op threads, over which large batches are split; one batch size is
// handy under `perf record`).
// Prints, per B, the median time of one call and the cost per point, in microseconds.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "models/architectures/compute_threads.h"
#include "models/architectures/model_file.h"
#include "server/core/surrogate_model.h"

namespace {

using dino::serving::Method;
using dino::serving::Query;
using dino::serving::SurrogateModel;

// Median seconds of `fn` over enough repetitions to fill about half a second.
template <typename Fn>
double MedianSeconds(Fn fn) {
  fn();  // Warm-up.
  std::vector<double> times;
  const auto begin = std::chrono::steady_clock::now();
  while (times.size() < 5 ||
         (std::chrono::steady_clock::now() - begin < std::chrono::milliseconds(500) &&
          times.size() < 2000)) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  dino::models::UseNativeBlasKernels(argv);
  dino::models::TuneAllocatorForServing();  // As dino-server does.
  dino::models::ConfigureComputeThreads(argc > 2 ? std::atoi(argv[2]) : 1, 1);
  const std::string path = argc > 1 ? argv[1] : "models/repository/poisson_dipnet/3/model.pt";
  auto model = SurrogateModel::Load(path, {});
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const auto& info = (*model)->info();
  torch::jit::Module module = dino::models::LoadModelFile(path).module;
  std::printf("model %s: d_M=%ld d_Q=%ld r_M=%ld r_Q=%ld, OpenBLAS kernels: %s\n", path.c_str(),
              info.input_dim, info.output_dim, info.input_rank, info.output_rank,
              dino::models::BlasCoreName().c_str());
  std::printf("%6s %14s %14s %14s %14s %14s\n", "B", "eval_us", "eval_us/pt", "torchscript/pt",
              "redjac_us", "redjac_us/pt");
  std::vector<int64_t> batches = {1, 4, 16, 64, 256, 1000};
  if (argc > 3) {
    batches.clear();
    for (const char* p = argv[3]; *p != '\0';) {
      char* end = nullptr;
      batches.push_back(std::strtoll(p, &end, 10));
      if (end == p || batches.back() < 1) {
        std::fprintf(stderr, "batches: expected positive integers separated by commas: %s\n",
                     argv[3]);
        return 2;
      }
      p = *end == ',' ? end + 1 : end;
    }
  }
  for (int64_t b : batches) {
    torch::manual_seed(b);
    Query evaluate;
    evaluate.m = torch::randn({b, info.input_dim}, torch::dtype(info.dtype));
    Query reduced = evaluate;
    reduced.method = Method::kReducedJacobian;
    const double eval = MedianSeconds([&] { (void)(*model)->Run(evaluate); });
    double script = 0;
    {
      torch::NoGradGuard no_grad;
      script = MedianSeconds([&] { (void)module.forward({evaluate.m}); });
    }
    const double redjac =
        info.has_reduced_bases ? MedianSeconds([&] { (void)(*model)->Run(reduced); }) : 0.0;
    std::printf("%6ld %14.1f %14.2f %14.2f %14.1f %14.2f\n", b, eval * 1e6, eval * 1e6 / b,
                script * 1e6 / b, redjac * 1e6, redjac * 1e6 / b);
  }
  return 0;
}
