// End to end: a real dino-server serving an exact PDE model (pde.json), a DINO whose metadata
// names its problem, a model without a prior and a broken pde.json; every Surrogate RPC on the
// PDE model and every Prior RPC, with bad input, through the generated stubs.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dino/v1/prior.grpc.pb.h"
#include "dino/v1/surrogate.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/core/pde_solver_model.h"
#include "server/frontend/tensor_codec.h"
#include "tests/common/server_process.h"
#include "tests/common/test_models.h"

namespace dino {
namespace {

using ::testing::HasSubstr;

constexpr int kMesh = 8;  // d_M = 81, d_Q = 50.
constexpr int64_t kDm = 81, kDq = 50;
constexpr int64_t kMaxBatch = 64;

std::string MakeRepository() {
  const std::string root = testing::MakeTempDir("dino-pde-e2e-");
  std::filesystem::create_directories(root + "/poisson_pde/1");
  std::ofstream(root + "/poisson_pde/1/pde.json")
      << R"({"problem": "poisson", "mesh_cells": )" << kMesh << "}";
  std::filesystem::create_directories(root + "/broken_pde/1");
  std::ofstream(root + "/broken_pde/1/pde.json") << R"({"problem": "poisson", "mesh": 8})";
  // A DINO of the same problem, whose metadata names it, and one that names none.
  testing::SmallDims dims;
  dims.d_m = kDm;
  dims.d_q = kDq;
  nlohmann::json named = nlohmann::json::parse(testing::SmallMetadata("dipnet", kDm));
  named["problem"] = {{"name", "poisson"}, {"mesh_cells", kMesh}};
  testing::WriteModel(testing::SmallDipnet(dims, torch::kFloat64, 1), named.dump(), root,
                      "poisson_dino", 1);
  testing::WriteModel(testing::SmallGeneric(dims, torch::kFloat64, 2),
                      testing::SmallMetadata("generic", kDm), root, "anonymous", 1);
  return root;
}

v1::Tensor Wire(const torch::Tensor& t, v1::DType dtype = v1::FP64) {
  v1::Tensor message;
  frontend::EncodeTensor(t, dtype, &message);
  return message;
}

torch::Tensor FromWire(const v1::Tensor& message) {
  auto decoded = frontend::DecodeTensor(message, true, "response");
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  return decoded.ok() ? decoded->clone() : torch::Tensor();
}

double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected) {
  return ((actual.to(torch::kFloat64) - expected).norm() / expected.norm()).item<double>();
}

class PdePriorServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repository_ = new std::string(MakeRepository());
    server_ = new testing::ServerProcess(DINO_SERVER_BINARY,
                                         {"--model_repository=" + *repository_, "--threads=2",
                                          "--max_batch_size=" + std::to_string(kMaxBatch)});
    serving::PdeServableConfig config;
    config.mesh_cells = kMesh;
    local_ = new std::shared_ptr<const serving::SurrogateModel>(
        *serving::PdeSolverModel::FromConfig(config, "local", serving::ComputeLimits{}));
  }
  static void TearDownTestSuite() {
    server_->Signal(SIGTERM);
    EXPECT_EQ(server_->Wait(), 0);
    delete server_;
    delete local_;
    std::filesystem::remove_all(*repository_);
    delete repository_;
  }

  void SetUp() override {
    channel_ = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
    surrogate_ = v1::Surrogate::NewStub(channel_);
    prior_ = v1::Prior::NewStub(channel_);
  }

  static std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return context;
  }
  // The same PDE model in this process: the reference.
  static const serving::SurrogateModel& Local() { return **local_; }
  static torch::Tensor Samples(int64_t count, uint64_t seed) {
    return *(*Local().prior())->Sample(count, seed, 0, 1024);
  }

  static inline std::string* repository_ = nullptr;
  static inline testing::ServerProcess* server_ = nullptr;
  static inline std::shared_ptr<const serving::SurrogateModel>* local_ = nullptr;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Surrogate::Stub> surrogate_;
  std::unique_ptr<v1::Prior::Stub> prior_;
};

TEST_F(PdePriorServerTest, ServesThePdeModelAndSkipsTheBrokenOne) {
  v1::ListModelsResponse list;
  ASSERT_TRUE(surrogate_->ListModels(Context().get(), {}, &list).ok());
  std::vector<std::string> names;
  for (const auto& model : list.models()) names.push_back(model.name());
  EXPECT_THAT(names, ::testing::ElementsAre("anonymous", "poisson_dino", "poisson_pde"));

  v1::GetModelInfoRequest request;
  request.mutable_model()->set_name("poisson_pde");
  v1::GetModelInfoResponse info;
  ASSERT_TRUE(surrogate_->GetModelInfo(Context().get(), request, &info).ok());
  EXPECT_EQ(info.architecture(), "pde");
  EXPECT_EQ(info.input_dim(), kDm);
  EXPECT_EQ(info.output_dim(), kDq);
  EXPECT_EQ(info.dtype(), v1::FP64);
  EXPECT_TRUE(info.has_prior());
  EXPECT_FALSE(info.has_reduced_bases());
  EXPECT_THAT(info.metadata_json(), HasSubstr("\"exact\":true"));
  request.mutable_model()->set_name("poisson_dino");
  ASSERT_TRUE(surrogate_->GetModelInfo(Context().get(), request, &info).ok());
  EXPECT_TRUE(info.has_prior());
  request.mutable_model()->set_name("anonymous");
  ASSERT_TRUE(surrogate_->GetModelInfo(Context().get(), request, &info).ok());
  EXPECT_FALSE(info.has_prior());

  // Health of the new service.
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::health::v1::HealthCheckRequest check;
  check.set_service("dino.v1.Prior");
  grpc::health::v1::HealthCheckResponse status;
  ASSERT_TRUE(health->Check(Context().get(), check, &status).ok());
  EXPECT_EQ(status.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(PdePriorServerTest, SurrogateRpcsAnswerWithTheExactMap) {
  const torch::Tensor m = Samples(3, 1);
  {
    v1::EvaluateRequest request;
    request.mutable_model()->set_name("poisson_pde");
    *request.mutable_m() = Wire(m);
    v1::EvaluateResponse response;
    ASSERT_TRUE(surrogate_->Evaluate(Context().get(), request, &response).ok());
    EXPECT_LT(RelativeError(FromWire(response.q()), *Local().Evaluate(m)), 1e-14);
    // FP32 in and out, by conversion.
    *request.mutable_m() = Wire(m, v1::FP32);
    request.set_output_dtype(v1::FP32);
    ASSERT_TRUE(surrogate_->Evaluate(Context().get(), request, &response).ok());
    EXPECT_EQ(response.q().dtype(), v1::FP32);
    EXPECT_LT(RelativeError(FromWire(response.q()), *Local().Evaluate(m)), 1e-5);
  }
  torch::manual_seed(2);
  const torch::Tensor directions = torch::randn({3, kDm}, torch::kFloat64);
  const torch::Tensor cotangents = torch::randn({3, kDq}, torch::kFloat64);
  {
    v1::JvpRequest request;
    request.mutable_model()->set_name("poisson_pde");
    *request.mutable_m() = Wire(m);
    *request.mutable_directions() = Wire(directions);
    request.set_return_q(true);
    v1::JvpResponse response;
    ASSERT_TRUE(surrogate_->Jvp(Context().get(), request, &response).ok());
    auto expected = Local().Jvp(m, directions, true);
    EXPECT_LT(RelativeError(FromWire(response.jvp()), expected->values), 1e-14);
    EXPECT_LT(RelativeError(FromWire(response.q()), expected->q), 1e-14);
  }
  {
    v1::VjpRequest request;
    request.mutable_model()->set_name("poisson_pde");
    *request.mutable_m() = Wire(m);
    *request.mutable_cotangents() = Wire(cotangents);
    v1::VjpResponse response;
    ASSERT_TRUE(surrogate_->Vjp(Context().get(), request, &response).ok());
    EXPECT_LT(RelativeError(FromWire(response.vjp()), Local().Vjp(m, cotangents, false)->values),
              1e-14);
  }
  {
    v1::JacobianRequest request;
    request.mutable_model()->set_name("poisson_pde");
    *request.mutable_m() = Wire(m[0]);
    v1::JacobianResponse response;
    ASSERT_TRUE(surrogate_->Jacobian(Context().get(), request, &response).ok());
    EXPECT_LT(RelativeError(FromWire(response.jacobian()), Local().Jacobian(m[0], false)->values),
              1e-14);
  }
  {
    // In a served surrogate's bases: GetBases of the DINO, then ReducedJacobian of the PDE.
    v1::GetBasesRequest bases_request;
    bases_request.mutable_model()->set_name("poisson_dino");
    v1::GetBasesResponse bases;
    ASSERT_TRUE(surrogate_->GetBases(Context().get(), bases_request, &bases).ok());
    v1::ReducedJacobianRequest request;
    request.mutable_model()->set_name("poisson_pde");
    *request.mutable_m() = Wire(m);
    *request.mutable_output_basis() = bases.output_basis();
    *request.mutable_input_basis() = bases.input_basis();
    v1::ReducedJacobianResponse response;
    ASSERT_TRUE(surrogate_->ReducedJacobian(Context().get(), request, &response).ok());
    auto expected =
        Local().ReducedJacobian(m, FromWire(bases.output_basis()), FromWire(bases.input_basis()));
    EXPECT_LT(RelativeError(FromWire(response.reduced_jacobian()), expected->reduced_jacobian),
              1e-14);
    // Without bases: the PDE model has none.
    request.clear_output_basis();
    request.clear_input_basis();
    grpc::Status status = surrogate_->ReducedJacobian(Context().get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(status.error_message(), HasSubstr("no reduced bases"));
  }
  {
    v1::EvaluateRequest request;
    request.mutable_model()->set_name("poisson_pde");
    torch::Tensor bad = m.clone();
    bad[2][7] = 1000.0;
    *request.mutable_m() = Wire(bad);
    v1::EvaluateResponse response;
    grpc::Status status = surrogate_->Evaluate(Context().get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("m[2, 7] = 1000"));
  }
}

TEST_F(PdePriorServerTest, GetPriorDescribesIt) {
  v1::GetPriorRequest request;
  request.mutable_model()->set_name("poisson_pde");
  v1::GetPriorResponse response;
  ASSERT_TRUE(prior_->GetPrior(Context().get(), request, &response).ok());
  EXPECT_EQ(response.version(), 1);
  EXPECT_EQ(response.input_dim(), kDm);
  EXPECT_EQ(response.problem(), "poisson");
  EXPECT_EQ(response.mesh_cells(), kMesh);
  EXPECT_EQ(response.source(), "pde.json");
  EXPECT_TRUE(torch::equal(FromWire(response.mean()), torch::zeros({kDm}, torch::kFloat64)));
  const nlohmann::json description = nlohmann::json::parse(response.description_json());
  EXPECT_EQ(description["delta"], 0.5);
  EXPECT_EQ(description["gamma"], 0.1);

  request.mutable_model()->set_name("poisson_dino");
  ASSERT_TRUE(prior_->GetPrior(Context().get(), request, &response).ok());
  EXPECT_EQ(response.source(), "metadata \"problem\"");
  EXPECT_EQ(response.problem(), "poisson");

  request.mutable_model()->set_name("anonymous");
  grpc::Status status = prior_->GetPrior(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("names no problem"));
  request.mutable_model()->set_name("no_such_model");
  EXPECT_EQ(prior_->GetPrior(Context().get(), request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  request.mutable_model()->set_name("poisson_pde");
  request.set_output_dtype(static_cast<v1::DType>(7));
  status = prior_->GetPrior(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("output_dtype"));
}

TEST_F(PdePriorServerTest, SamplePriorIsReproducible) {
  v1::SamplePriorRequest request;
  request.mutable_model()->set_name("poisson_dino");  // The DINO's prior is the problem's.
  request.set_count(4);
  request.set_seed(7);
  request.set_first_index(2);
  v1::SamplePriorResponse response;
  ASSERT_TRUE(prior_->SamplePrior(Context().get(), request, &response).ok());
  const torch::Tensor expected = *(*Local().prior())->Sample(4, 7, 2, 1024);
  EXPECT_TRUE(torch::equal(FromWire(response.samples()), expected));
  request.set_output_dtype(v1::FP32);
  ASSERT_TRUE(prior_->SamplePrior(Context().get(), request, &response).ok());
  EXPECT_EQ(response.samples().dtype(), v1::FP32);

  request.set_count(0);
  grpc::Status status = prior_->SamplePrior(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("count must be at least 1"));
  request.set_count(kMaxBatch + 1);
  status = prior_->SamplePrior(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("count is 65 samples"));
}

TEST_F(PdePriorServerTest, ApplyPriorAppliesEachOperator) {
  const serving::ModelPrior& local = **Local().prior();
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({3, kDm}, torch::kFloat64);
  const std::pair<v1::PriorOperator, serving::PriorOperator> operators[] = {
      {v1::COVARIANCE, serving::PriorOperator::kCovariance},
      {v1::PRECISION, serving::PriorOperator::kPrecision},
      {v1::COVARIANCE_SQRT, serving::PriorOperator::kCovarianceSqrt},
      {v1::COVARIANCE_SQRT_TRANSPOSE, serving::PriorOperator::kCovarianceSqrtTranspose},
      {v1::COVARIANCE_SQRT_INVERSE, serving::PriorOperator::kCovarianceSqrtInverse},
  };
  for (const auto& [wire, core] : operators) {
    SCOPED_TRACE(serving::PriorOperatorName(core));
    v1::ApplyPriorRequest request;
    request.mutable_model()->set_name("poisson_pde");
    request.set_prior_operator(wire);
    *request.mutable_vectors() = Wire(x);
    v1::ApplyPriorResponse response;
    grpc::Status status = prior_->ApplyPrior(Context().get(), request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(torch::equal(FromWire(response.result()), *local.Apply(core, x, false, 1024)));
  }
  // m = m̄ + Gξ for a batch of ξ in one call.
  v1::ApplyPriorRequest request;
  request.mutable_model()->set_name("poisson_pde");
  request.set_prior_operator(v1::COVARIANCE_SQRT);
  request.set_with_mean(true);
  *request.mutable_vectors() = Wire(x[0]);
  v1::ApplyPriorResponse response;
  ASSERT_TRUE(prior_->ApplyPrior(Context().get(), request, &response).ok());
  EXPECT_EQ(FromWire(response.result()).sizes(), (std::vector<int64_t>{kDm}));

  // Bad input names the field.
  auto refused = [&](v1::ApplyPriorRequest bad, grpc::StatusCode code, const std::string& text) {
    grpc::Status status = prior_->ApplyPrior(Context().get(), bad, &response);
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(text));
  };
  v1::ApplyPriorRequest bad = request;
  bad.set_prior_operator(v1::PRIOR_OPERATOR_UNSPECIFIED);
  refused(bad, grpc::StatusCode::INVALID_ARGUMENT, "prior_operator is required");
  bad = request;
  bad.clear_vectors();
  refused(bad, grpc::StatusCode::INVALID_ARGUMENT, "vectors is required");
  bad = request;
  *bad.mutable_vectors() = Wire(torch::zeros({2, kDm - 1}, torch::kFloat64));
  refused(bad, grpc::StatusCode::INVALID_ARGUMENT, "vectors must have shape [k, 81]");
  bad = request;
  bad.mutable_vectors()->mutable_data()->resize(8);
  refused(bad, grpc::StatusCode::INVALID_ARGUMENT, "vectors");
  bad = request;
  bad.set_prior_operator(v1::COVARIANCE);
  refused(bad, grpc::StatusCode::INVALID_ARGUMENT, "with_mean applies to");
  bad = request;
  *bad.mutable_vectors() = Wire(torch::zeros({kMaxBatch + 1, kDm}, torch::kFloat64));
  refused(bad, grpc::StatusCode::RESOURCE_EXHAUSTED, "vectors has 65 rows");
  bad = request;
  bad.mutable_model()->set_name("anonymous");
  refused(bad, grpc::StatusCode::FAILED_PRECONDITION, "this model has no prior");
}

}  // namespace
}  // namespace dino
