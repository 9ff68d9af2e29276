// Milliseconds per call of an exact PDE model: the numerics alone (pde::LogDiffusionModel),
// the servable in-process (PdeSolverModel, one query at a time and batches over the intra-op
// threads), and, with a server address, served over gRPC (loopback). Not a test; built on
// request: cmake --build <dir> --target dino_pde_serving_benchmark, then
//   build/bin/dino_pde_serving_benchmark [--problem poisson] [--mesh 64] [--repeats 20]
//       [--target 127.0.0.1:50051 --model poisson_pde]
#include <ATen/Parallel.h>
#include <grpcpp/grpcpp.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "dino/v1/prior.grpc.pb.h"
#include "dino/v1/surrogate.grpc.pb.h"
#include "server/core/pde_solver_model.h"
#include "server/frontend/tensor_codec.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace serving = dino::serving;

// Median milliseconds of `repeats` calls (after one warm-up call).
double MedianMs(int repeats, const std::function<void()>& call) {
  call();
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    const Clock::time_point start = Clock::now();
    call();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

dino::v1::Tensor Wire(const torch::Tensor& t) {
  dino::v1::Tensor message;
  dino::frontend::EncodeTensor(t, dino::v1::FP64, &message);
  return message;
}

}  // namespace

int main(int argc, char** argv) {
  std::string problem_name = "poisson", target, model_name = "poisson_pde";
  int mesh = 64, repeats = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--problem") problem_name = value;
    if (flag == "--mesh") mesh = std::stoi(value);
    if (flag == "--repeats") repeats = std::stoi(value);
    if (flag == "--target") target = value;
    if (flag == "--model") model_name = value;
  }
  serving::PdeServableConfig config;
  config.problem = *dino::pipeline::ParseProblem(problem_name);
  config.mesh_cells = mesh;
  auto model = *serving::PdeSolverModel::FromConfig(config, "benchmark", serving::ComputeLimits{});
  const serving::ModelPrior& prior = **model->prior();
  const int64_t d_m = model->info().input_dim, d_q = model->info().output_dim;
  const torch::Tensor m = *prior.Sample(16, 1, 0, 1024);
  const torch::Tensor m0 = m[0];
  torch::manual_seed(1);
  const torch::Tensor v = torch::randn({d_m}, torch::kFloat64);
  const torch::Tensor w = torch::randn({d_q}, torch::kFloat64);
  std::printf("%s, %d x %d mesh: d_M = %lld, d_Q = %lld; median of %d calls, ms\n",
              problem_name.c_str(), mesh, mesh, static_cast<long long>(d_m),
              static_cast<long long>(d_q), repeats);

  // The numerics alone, on one thread.
  dino::pde::LogDiffusionModel direct(
      static_cast<const serving::PdeSolverModel&>(*model).problem_config());
  const Eigen::VectorXd m_direct = Eigen::Map<const Eigen::VectorXd>(m0.data_ptr<double>(), d_m);
  const Eigen::MatrixXd v_direct = Eigen::Map<const Eigen::VectorXd>(v.data_ptr<double>(), d_m);
  const Eigen::MatrixXd w_direct = Eigen::Map<const Eigen::VectorXd>(w.data_ptr<double>(), d_q);
  std::printf("%-34s %9s %9s %9s %9s\n", "", "Evaluate", "Jvp", "Vjp", "Jacobian");
  std::printf(
      "%-34s %9.2f %9.2f %9.2f %9.2f\n", "direct (models/pde, 1 thread)",
      MedianMs(repeats, [&] { direct.Evaluate(m_direct); }),
      MedianMs(repeats, [&] { direct.Evaluate(m_direct).ApplyJacobian(v_direct); }),
      MedianMs(repeats, [&] { direct.Evaluate(m_direct).ApplyJacobianTranspose(w_direct); }),
      MedianMs(repeats, [&] { direct.Evaluate(m_direct).Jacobian(); }));
  at::set_num_threads(1);
  std::printf("%-34s %9.2f %9.2f %9.2f %9.2f\n", "servable in-process (1 point)",
              MedianMs(repeats, [&] { (void)*model->Evaluate(m0); }),
              MedianMs(repeats, [&] { (void)*model->Jvp(m0, v, false); }),
              MedianMs(repeats, [&] { (void)*model->Vjp(m0, w, false); }),
              MedianMs(repeats, [&] { (void)*model->Jacobian(m0, false); }));
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    const double ms = MedianMs(repeats / 4 + 1, [&] { (void)*model->Evaluate(m); });
    std::printf(
        "servable in-process, 16 points, %d intra-op thread(s): Evaluate %.2f ms "
        "(%.2f per point)\n",
        threads, ms, ms / 16);
  }
  torch::Tensor xi = torch::randn({16, d_m}, torch::kFloat64);
  at::set_num_threads(1);
  for (auto op :
       {serving::PriorOperator::kCovariance, serving::PriorOperator::kPrecision,
        serving::PriorOperator::kCovarianceSqrt, serving::PriorOperator::kCovarianceSqrtInverse}) {
    std::printf("prior %-26s 16 vectors: %.3f ms\n", serving::PriorOperatorName(op),
                MedianMs(repeats, [&] { (void)*prior.Apply(op, xi, false, 1024); }));
  }
  std::printf("prior samples, 16: %.3f ms\n",
              MedianMs(repeats, [&] { (void)*prior.Sample(16, 1, 0, 1024); }));
  if (target.empty()) return 0;

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  auto stub = dino::v1::Surrogate::NewStub(channel);
  dino::v1::ModelRef ref;
  ref.set_name(model_name);
  // Median ms of one RPC made by `call` on a fresh context.
  auto served = [&](const char* what,
                    const std::function<grpc::Status(grpc::ClientContext*)>& call) {
    return MedianMs(repeats, [&] {
      grpc::ClientContext context;
      const grpc::Status status = call(&context);
      if (!status.ok()) {
        std::fprintf(stderr, "%s failed: %s\n", what, status.error_message().c_str());
        std::exit(1);
      }
    });
  };
  dino::v1::EvaluateRequest evaluate;
  *evaluate.mutable_model() = ref;
  *evaluate.mutable_m() = Wire(m0);
  dino::v1::JvpRequest jvp;
  *jvp.mutable_model() = ref;
  *jvp.mutable_m() = Wire(m0);
  *jvp.mutable_directions() = Wire(v);
  dino::v1::VjpRequest vjp;
  *vjp.mutable_model() = ref;
  *vjp.mutable_m() = Wire(m0);
  *vjp.mutable_cotangents() = Wire(w);
  dino::v1::JacobianRequest jacobian;
  *jacobian.mutable_model() = ref;
  *jacobian.mutable_m() = Wire(m0);
  dino::v1::EvaluateResponse evaluated;
  dino::v1::JvpResponse jvp_out;
  dino::v1::VjpResponse vjp_out;
  dino::v1::JacobianResponse jacobian_out;
  std::printf(
      "%-34s %9.2f %9.2f %9.2f %9.2f\n", "served (gRPC, loopback, 1 point)",
      served("Evaluate", [&](auto* c) { return stub->Evaluate(c, evaluate, &evaluated); }),
      served("Jvp", [&](auto* c) { return stub->Jvp(c, jvp, &jvp_out); }),
      served("Vjp", [&](auto* c) { return stub->Vjp(c, vjp, &vjp_out); }),
      served("Jacobian", [&](auto* c) { return stub->Jacobian(c, jacobian, &jacobian_out); }));
  dino::v1::EvaluateRequest batch = evaluate;
  *batch.mutable_m() = Wire(m);
  std::printf("served Evaluate, 16 points: %.2f ms\n",
              served("Evaluate", [&](auto* c) { return stub->Evaluate(c, batch, &evaluated); }));
  auto prior_stub = dino::v1::Prior::NewStub(channel);
  dino::v1::ApplyPriorRequest apply;
  *apply.mutable_model() = ref;
  apply.set_prior_operator(dino::v1::COVARIANCE_SQRT);
  apply.set_with_mean(true);
  *apply.mutable_vectors() = Wire(xi);
  dino::v1::ApplyPriorResponse applied;
  std::printf(
      "served ApplyPrior(COVARIANCE_SQRT, with_mean), 16 vectors: %.2f ms\n",
      served("ApplyPrior", [&](auto* c) { return prior_stub->ApplyPrior(c, apply, &applied); }));
  return 0;
}
