// A small, exact stand-in for the dino.v1.Surrogate service, used to test the client library,
// the CLI, dino-bench and the Python client without torch or trained models.
//
// Every model is affine, f_v(m) = v·A·m + b (v = the model version), so each RPC has a closed
// form the tests can check: J = v·A, reduced Jacobians Uᵀ·J·V with U, V identity columns.
//   linear     versions 1 and 2 (default 2); d_M = 3, d_Q = 2; FP64; reduced bases r_M = 2,
//              r_Q = 1; A[i][j] = 1 + i + 0.5·j, b[i] = 0.1·i.
//   malformed  like linear, but Evaluate answers with a Tensor whose byte count is wrong.
//   plain      version 1; d_M = 4, d_Q = 3; FP32; no reduced bases.
//   slow       like plain, but every computing call first waits 2 s (or until cancelled).
// Requests are validated as the protocol specifies, with the same status codes.
// With refuse_every_evaluate = N > 0, the N-th, 2N-th, ... Evaluate call (counted over all
// models in arrival order) is refused with RESOURCE_EXHAUSTED as by a full queue, so that a
// load generator's accounting of refusals can be tested exactly.
#ifndef DINO_TESTS_CLIENT_FAKE_SURROGATE_H_
#define DINO_TESTS_CLIENT_FAKE_SURROGATE_H_

#include <grpcpp/server.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dino/v1/surrogate.grpc.pb.h"
#include "tests/client/fake_training.h"

namespace dino::testing {

class FakeSurrogateService final : public v1::Surrogate::Service {
 public:
  explicit FakeSurrogateService(int64_t refuse_every_evaluate = 0)
      : refuse_every_evaluate_(refuse_every_evaluate) {}

  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::GetModelInfoResponse* response) override;
  grpc::Status GetBases(grpc::ServerContext* context, const v1::GetBasesRequest* request,
                        v1::GetBasesResponse* response) override;
  grpc::Status Evaluate(grpc::ServerContext* context, const v1::EvaluateRequest* request,
                        v1::EvaluateResponse* response) override;
  grpc::Status Jvp(grpc::ServerContext* context, const v1::JvpRequest* request,
                   v1::JvpResponse* response) override;
  grpc::Status Vjp(grpc::ServerContext* context, const v1::VjpRequest* request,
                   v1::VjpResponse* response) override;
  grpc::Status ReducedJacobian(grpc::ServerContext* context,
                               const v1::ReducedJacobianRequest* request,
                               v1::ReducedJacobianResponse* response) override;
  grpc::Status Jacobian(grpc::ServerContext* context, const v1::JacobianRequest* request,
                        v1::JacobianResponse* response) override;

 private:
  const int64_t refuse_every_evaluate_;
  std::atomic<int64_t> evaluate_calls_{0};
};

// The fake model's Jacobian v·A for version `version` of "linear" (d_Q x d_M, row-major).
std::vector<double> LinearJacobian(int64_t version);
// The "linear" model's output shift b.
std::vector<double> LinearShift();

// A running server with the fake services (Surrogate, and Training and ModelAdmin from
// fake_training.h) and gRPC's default health service.
struct FakeServer {
  std::unique_ptr<FakeSurrogateService> service;
  std::unique_ptr<FakeTrainingService> training;
  std::unique_ptr<FakeModelAdminService> admin;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::string target() const { return "127.0.0.1:" + std::to_string(port); }
};

// Starts a server on 127.0.0.1:`port` (0 picks a free port). A non-empty `admin_token` is
// required (as "authorization: Bearer <token>") by the Training and ModelAdmin RPCs. Returns a
// FakeServer with a null server on failure. See FakeSurrogateService for
// `refuse_every_evaluate`.
FakeServer StartFakeServer(int port = 0, const std::string& admin_token = "",
                           int64_t refuse_every_evaluate = 0);

}  // namespace dino::testing

#endif  // DINO_TESTS_CLIENT_FAKE_SURROGATE_H_
