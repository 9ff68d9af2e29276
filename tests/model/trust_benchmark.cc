// What the trust signal adds to a request, at the model layer (no transport, so the added cost
// is the largest share it can be): batch-1 (and batch-16) Evaluate and ReducedJacobian of a
// served model with and without want_trust, interleaved call by call so that the load of a
// shared machine hits both alike. Prints the median time of each and their ratio.
//
//   dino_trust_benchmark [model.pt=models/repository/poisson_dipnet/3/model.pt] [rounds=4000]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "models/architectures/compute_threads.h"
#include "server/core/surrogate_model.h"

namespace {

using dino::serving::Method;
using dino::serving::Query;
using dino::serving::SurrogateModel;

double Median(std::vector<double> times) {
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

double SecondsOf(const SurrogateModel& model, const Query& query) {
  const auto start = std::chrono::steady_clock::now();
  auto answer = model.Run(query);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!answer.ok()) {
    std::fprintf(stderr, "%s\n", std::string(answer.status().message()).c_str());
    std::exit(1);
  }
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  dino::models::UseNativeBlasKernels(argv);
  dino::models::TuneAllocatorForServing();  // As dino-server does.
  dino::models::ConfigureComputeThreads(1, 1);
  const std::string path = argc > 1 ? argv[1] : "models/repository/poisson_dipnet/3/model.pt";
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 4000;
  auto model = SurrogateModel::Load(path, {});
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const auto& info = (*model)->info();
  if (!info.has_trust_score) {
    std::fprintf(stderr, "%s has no training-input summary\n", path.c_str());
    return 1;
  }
  std::printf("model %s, %d interleaved rounds per row\n", path.c_str(), rounds);
  std::printf("%-16s %4s %12s %12s %8s\n", "method", "B", "plain_us", "trust_us", "ratio");
  for (Method method : {Method::kEvaluate, Method::kReducedJacobian}) {
    for (int64_t b : {1, 16}) {
      torch::manual_seed(b);
      Query plain;
      plain.method = method;
      plain.m = torch::randn({b, info.input_dim}, torch::dtype(info.dtype));
      Query trusted = plain;
      trusted.want_trust = true;
      for (int i = 0; i < 50; ++i) (void)(*model)->Run(plain), (void)(*model)->Run(trusted);
      std::vector<double> without, with;
      for (int i = 0; i < rounds; ++i) {
        // Alternate which goes first, so neither always runs on a warmer cache.
        if (i % 2 == 0) {
          without.push_back(SecondsOf(**model, plain));
          with.push_back(SecondsOf(**model, trusted));
        } else {
          with.push_back(SecondsOf(**model, trusted));
          without.push_back(SecondsOf(**model, plain));
        }
      }
      const double a = Median(without), t = Median(with);
      std::printf("%-16s %4ld %12.1f %12.1f %8.3f\n", dino::serving::MethodName(method), b, a * 1e6,
                  t * 1e6, t / a);
    }
  }
  return 0;
}
