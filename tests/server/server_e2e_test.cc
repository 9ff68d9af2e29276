// End to end: a real dino-server process on loopback, driven through the generated stubs.
// Every RPC, every error path, health, reflection, concurrent clients, deadlines,
// cancellation and shutdown with calls in flight.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/torch.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "dino/v1/surrogate.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "models/architectures/architectures.h"
#include "server/core/surrogate_model.h"
#include "server/frontend/tensor_codec.h"
#include "tests/common/server_process.h"
#include "tests/common/test_models.h"

namespace dino {
namespace {

using dino::testing::SmallDims;
using serving::SurrogateModel;
using ::testing::HasSubstr;

constexpr SmallDims kDims{};
// About a second per call on one core of the machine these tests were written on (0.25 s on
// a faster one): long enough that the test's short deadlines and cancellations certainly
// happen while a call waits in the queue.
constexpr int64_t kSlowIterations = 200000;

std::string ServerBinary() { return DINO_SERVER_BINARY; }

// A repository with both architectures, two versions (both kept by its config.json), float32, a
// slow model, a model too wide for the full-Jacobian limit, and a corrupt file that must be
// skipped.
std::string MakeRepository() {
  const std::string root = dino::testing::MakeTempDir("dino-e2e-");
  using dino::testing::SmallMetadata;
  using dino::testing::WriteModel;
  WriteModel(dino::testing::SmallDipnet(kDims, torch::kFloat64, 1), SmallMetadata("dipnet", 40),
             root, "dipnet", 1);
  WriteModel(dino::testing::SmallDipnet(kDims, torch::kFloat64, 2), SmallMetadata("dipnet", 40),
             root, "dipnet", 2);
  // Both versions serve (the default policy keeps only the latest).
  std::ofstream(root + "/dipnet/config.json") << R"({"version_policy": {"all": {}}})";
  WriteModel(dino::testing::SmallDipnet(kDims, torch::kFloat32, 1), SmallMetadata("dipnet", 40),
             root, "dipnet32", 1);
  WriteModel(dino::testing::SmallGeneric(kDims, torch::kFloat64, 3), SmallMetadata("generic", 40),
             root, "generic", 1);
  SmallDims wide = kDims;
  wide.d_m = 100;
  WriteModel(dino::testing::SmallGeneric(wide, torch::kFloat64, 4), SmallMetadata("generic", 100),
             root, "wide", 1);
  WriteModel(dino::testing::SlowModel(64, 4, kSlowIterations), SmallMetadata("slow", 64), root,
             "slow", 1);
  std::filesystem::create_directories(root + "/corrupt/1");
  std::ofstream(root + "/corrupt/1/model.pt") << "not a TorchScript archive";
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
  return decoded->clone();
}

torch::Tensor Gaussian(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn(shape, torch::kFloat64);
}

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repository_ = new std::string(MakeRepository());
    server_ = new dino::testing::ServerProcess(
        ServerBinary(), {"--model_repository=" + *repository_, "--threads=2", "--max_batch_size=64",
                         "--max_jacobian_elements=500", "--max_message_bytes=1000000"});
  }
  static void TearDownTestSuite() {
    server_->Signal(SIGTERM);
    EXPECT_EQ(server_->Wait(), 0);
    delete server_;
    std::filesystem::remove_all(*repository_);
    delete repository_;
  }

  void SetUp() override {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(8 << 20);
    args.SetMaxSendMessageSize(8 << 20);
    channel_ =
        grpc::CreateCustomChannel(server_->target(), grpc::InsecureChannelCredentials(), args);
    stub_ = v1::Surrogate::NewStub(channel_);
  }

  // The same model file, loaded in this process: the reference for exact results.
  static std::shared_ptr<const SurrogateModel> Local(const std::string& name, int version) {
    auto model = SurrogateModel::Load(
        *repository_ + "/" + name + "/" + std::to_string(version) + "/model.pt", {});
    EXPECT_TRUE(model.ok()) << model.status();
    return *model;
  }

  static std::unique_ptr<grpc::ClientContext> Context(int seconds = 30) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    return context;
  }

  static inline std::string* repository_ = nullptr;
  static inline dino::testing::ServerProcess* server_ = nullptr;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Surrogate::Stub> stub_;
};

void SetModel(v1::ModelRef* ref, const std::string& name, int64_t version = 0) {
  ref->set_name(name);
  ref->set_version(version);
}

TEST_F(ServerTest, ListModelsSkipsTheCorruptFile) {
  v1::ListModelsRequest request;
  v1::ListModelsResponse response;
  ASSERT_TRUE(stub_->ListModels(Context().get(), request, &response).ok());
  std::vector<std::string> names;
  for (const auto& model : response.models()) names.push_back(model.name());
  EXPECT_THAT(names, ::testing::ElementsAre("dipnet", "dipnet32", "generic", "slow", "wide"));
  ASSERT_EQ(response.models(0).versions_size(), 2);
  EXPECT_FALSE(response.models(0).versions(0).is_default());
  EXPECT_TRUE(response.models(0).versions(1).is_default());
}

TEST_F(ServerTest, GetModelInfoDescribesTheModel) {
  v1::GetModelInfoRequest request;
  SetModel(request.mutable_model(), "dipnet");
  v1::GetModelInfoResponse info;
  ASSERT_TRUE(stub_->GetModelInfo(Context().get(), request, &info).ok());
  EXPECT_EQ(info.version(), 2);
  EXPECT_THAT(info.versions(), ::testing::ElementsAre(1, 2));
  EXPECT_EQ(info.input_dim(), kDims.d_m);
  EXPECT_EQ(info.output_dim(), kDims.d_q);
  EXPECT_TRUE(info.has_reduced_bases());
  EXPECT_EQ(info.input_rank(), kDims.r_m);
  EXPECT_EQ(info.output_rank(), kDims.r_q);
  EXPECT_EQ(info.architecture(), "dipnet");
  EXPECT_EQ(info.dtype(), v1::FP64);
  EXPECT_THAT(info.metadata_json(), HasSubstr("\"trained\":false"));

  SetModel(request.mutable_model(), "dipnet32");
  ASSERT_TRUE(stub_->GetModelInfo(Context().get(), request, &info).ok());
  EXPECT_EQ(info.dtype(), v1::FP32);
  SetModel(request.mutable_model(), "generic");
  ASSERT_TRUE(stub_->GetModelInfo(Context().get(), request, &info).ok());
  EXPECT_FALSE(info.has_reduced_bases());
}

TEST_F(ServerTest, GetBasesReturnsTheModelsBases) {
  v1::GetBasesRequest request;
  SetModel(request.mutable_model(), "dipnet", 1);
  v1::GetBasesResponse response;
  ASSERT_TRUE(stub_->GetBases(Context().get(), request, &response).ok());
  auto local = Local("dipnet", 1)->GetBases();
  EXPECT_EQ(MaxDiff(FromWire(response.input_basis()), local->input_basis), 0.0);
  EXPECT_EQ(MaxDiff(FromWire(response.output_basis()), local->output_basis), 0.0);
  EXPECT_EQ(MaxDiff(FromWire(response.output_shift()), local->output_shift), 0.0);
  SetModel(request.mutable_model(), "generic");
  EXPECT_EQ(stub_->GetBases(Context().get(), request, &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServerTest, EvaluateMatchesTheModelInEveryDtype) {
  const torch::Tensor m = Gaussian({5, kDims.d_m}, 1);
  for (const std::string name : {"dipnet", "generic", "dipnet32"}) {
    const torch::Tensor expected = *Local(name, 1)->Evaluate(m);
    for (v1::DType in : {v1::FP32, v1::FP64}) {
      for (v1::DType out : {v1::DTYPE_UNSPECIFIED, v1::FP32, v1::FP64}) {
        v1::EvaluateRequest request;
        SetModel(request.mutable_model(), name, 1);
        *request.mutable_m() = Wire(m, in);
        request.set_output_dtype(out);
        v1::EvaluateResponse response;
        grpc::Status status = stub_->Evaluate(Context().get(), request, &response);
        ASSERT_TRUE(status.ok()) << status.error_message();
        EXPECT_EQ(response.version(), 1);
        const v1::DType expected_dtype =
            out != v1::DTYPE_UNSPECIFIED ? out : (name == "dipnet32" ? v1::FP32 : v1::FP64);
        EXPECT_EQ(response.q().dtype(), expected_dtype);
        EXPECT_THAT(response.q().shape(), ::testing::ElementsAre(5, kDims.d_q));
        const bool exact = in == v1::FP64 && out != v1::FP32 && name != "dipnet32";
        EXPECT_LE(MaxDiff(FromWire(response.q()), expected), exact ? 1e-13 : 1e-4)
            << name << " in " << in << " out " << out;
      }
    }
  }
}

TEST_F(ServerTest, DerivativeRpcsMatchTheModel) {
  const torch::Tensor m = Gaussian({kDims.d_m}, 2);
  for (const std::string name : {"dipnet", "generic"}) {
    auto local = Local(name, 1);
    const torch::Tensor v = Gaussian({3, kDims.d_m}, 3), w = Gaussian({2, kDims.d_q}, 4);

    v1::JvpRequest jvp;
    SetModel(jvp.mutable_model(), name, 1);
    *jvp.mutable_m() = Wire(m);
    *jvp.mutable_directions() = Wire(v);
    jvp.set_return_q(true);
    v1::JvpResponse jvp_response;
    ASSERT_TRUE(stub_->Jvp(Context().get(), jvp, &jvp_response).ok());
    EXPECT_LE(MaxDiff(FromWire(jvp_response.jvp()), local->Jvp(m, v, false)->values), 1e-12);
    EXPECT_LE(MaxDiff(FromWire(jvp_response.q()), (*local->Evaluate(m))[0]), 1e-12);

    v1::VjpRequest vjp;
    SetModel(vjp.mutable_model(), name, 1);
    *vjp.mutable_m() = Wire(m);
    *vjp.mutable_cotangents() = Wire(w);
    v1::VjpResponse vjp_response;
    ASSERT_TRUE(stub_->Vjp(Context().get(), vjp, &vjp_response).ok());
    EXPECT_LE(MaxDiff(FromWire(vjp_response.vjp()), local->Vjp(m, w, false)->values), 1e-12);
    EXPECT_FALSE(vjp_response.has_q());

    // Per point: three points, one cotangent each ([B, d_Q] → [B, d_M]); two directions
    // each ([B, k, d_M] → [B, k, d_Q]).
    const torch::Tensor points = Gaussian({3, kDims.d_m}, 7);
    const torch::Tensor per_point_w = Gaussian({3, kDims.d_q}, 8);
    const torch::Tensor per_point_v = Gaussian({3, 2, kDims.d_m}, 9);
    *vjp.mutable_m() = Wire(points);
    *vjp.mutable_cotangents() = Wire(per_point_w);
    vjp.set_return_q(true);
    ASSERT_TRUE(stub_->Vjp(Context().get(), vjp, &vjp_response).ok());
    *jvp.mutable_m() = Wire(points);
    *jvp.mutable_directions() = Wire(per_point_v);
    ASSERT_TRUE(stub_->Jvp(Context().get(), jvp, &jvp_response).ok());
    ASSERT_EQ(FromWire(vjp_response.vjp()).sizes(), (std::vector<int64_t>{3, kDims.d_m}));
    ASSERT_EQ(FromWire(jvp_response.jvp()).sizes(), (std::vector<int64_t>{3, 2, kDims.d_q}));
    EXPECT_LE(MaxDiff(FromWire(vjp_response.q()), *local->Evaluate(points)), 1e-12);
    for (int64_t b = 0; b < 3; ++b) {
      EXPECT_LE(MaxDiff(FromWire(vjp_response.vjp())[b],
                        local->Vjp(points[b], per_point_w[b], false)->values[0]),
                1e-12);
      EXPECT_LE(MaxDiff(FromWire(jvp_response.jvp())[b],
                        local->Jvp(points[b], per_point_v[b], false)->values),
                1e-12);
    }

    v1::JacobianRequest jac;
    SetModel(jac.mutable_model(), name, 1);
    *jac.mutable_m() = Wire(m);
    v1::JacobianResponse jac_response;
    ASSERT_TRUE(stub_->Jacobian(Context().get(), jac, &jac_response).ok());
    const torch::Tensor full = FromWire(jac_response.jacobian());
    EXPECT_LE(MaxDiff(full, local->Jacobian(m, false)->values), 1e-12);

    torch::Tensor u_c = models::RandomOrthonormalColumns(kDims.d_q, 4, 5);
    torch::Tensor v_c = models::RandomOrthonormalColumns(kDims.d_m, 6, 6);
    v1::ReducedJacobianRequest reduced;
    SetModel(reduced.mutable_model(), name, 1);
    *reduced.mutable_m() = Wire(m);
    *reduced.mutable_output_basis() = Wire(u_c);
    *reduced.mutable_input_basis() = Wire(v_c);
    v1::ReducedJacobianResponse reduced_response;
    ASSERT_TRUE(stub_->ReducedJacobian(Context().get(), reduced, &reduced_response).ok());
    EXPECT_LE(MaxDiff(FromWire(reduced_response.reduced_jacobian())[0],
                      torch::mm(torch::mm(u_c.t(), full), v_c)),
              1e-12);
  }
  // The model's own bases.
  v1::ReducedJacobianRequest reduced;
  SetModel(reduced.mutable_model(), "dipnet");
  *reduced.mutable_m() = Wire(Gaussian({3, kDims.d_m}, 7));
  v1::ReducedJacobianResponse response;
  ASSERT_TRUE(stub_->ReducedJacobian(Context().get(), reduced, &response).ok());
  EXPECT_EQ(response.version(), 2);
  EXPECT_THAT(response.reduced_jacobian().shape(), ::testing::ElementsAre(3, kDims.r_q, kDims.r_m));
}

// Sends an Evaluate request and expects the given code and a message mentioning `field`.
void ExpectError(v1::Surrogate::Stub& stub, const v1::EvaluateRequest& request,
                 grpc::StatusCode code, const std::string& mention) {
  v1::EvaluateResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub.Evaluate(&context, request, &response);
  EXPECT_EQ(status.error_code(), code) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr(mention));
}

TEST_F(ServerTest, BadRequestsGetPreciseErrorsAndTheServerKeepsServing) {
  v1::EvaluateRequest good;
  SetModel(good.mutable_model(), "dipnet");
  *good.mutable_m() = Wire(Gaussian({2, kDims.d_m}, 1));

  v1::EvaluateRequest r = good;
  SetModel(r.mutable_model(), "nope");
  ExpectError(*stub_, r, grpc::StatusCode::NOT_FOUND, "no model named 'nope'");
  r = good;
  SetModel(r.mutable_model(), "dipnet", 7);
  ExpectError(*stub_, r, grpc::StatusCode::NOT_FOUND, "has no version 7");
  r = good;
  r.mutable_model()->clear_name();
  ExpectError(*stub_, r, grpc::StatusCode::INVALID_ARGUMENT, "model.name is required");
  r = good;
  r.clear_m();
  ExpectError(*stub_, r, grpc::StatusCode::INVALID_ARGUMENT, "m is required");
  r = good;
  r.mutable_m()->set_dtype(v1::DTYPE_UNSPECIFIED);
  ExpectError(*stub_, r, grpc::StatusCode::INVALID_ARGUMENT, "m.dtype must be FP32 or FP64");
  r = good;
  r.mutable_m()->mutable_data()->pop_back();
  ExpectError(*stub_, r, grpc::StatusCode::INVALID_ARGUMENT, "m.data has");
  r = good;
  *r.mutable_m() = Wire(Gaussian({2, kDims.d_m + 1}, 1));
  ExpectError(*stub_, r, grpc::StatusCode::INVALID_ARGUMENT, "m must have shape");
  r = good;
  torch::Tensor bad = Gaussian({2, kDims.d_m}, 1);
  bad[0][3] = std::numeric_limits<double>::infinity();
  *r.mutable_m() = Wire(bad);
  ExpectError(*stub_, r, grpc::StatusCode::INVALID_ARGUMENT,
              "non-finite value (NaN or Inf) at index [0, 3]");
  r = good;
  r.set_output_dtype(static_cast<v1::DType>(9));
  ExpectError(*stub_, r, grpc::StatusCode::INVALID_ARGUMENT, "output_dtype");
  r = good;
  *r.mutable_m() = Wire(Gaussian({65, kDims.d_m}, 1));
  ExpectError(*stub_, r, grpc::StatusCode::RESOURCE_EXHAUSTED, "above the server's limit of 64");
  r = good;
  *r.mutable_m() = Wire(Gaussian({4000, kDims.d_m}, 1));  // 1.28 MB > --max_message_bytes
  ExpectError(*stub_, r, grpc::StatusCode::RESOURCE_EXHAUSTED, "");

  v1::JacobianRequest too_wide;
  SetModel(too_wide.mutable_model(), "wide");
  *too_wide.mutable_m() = Wire(Gaussian({100}, 1));
  v1::JacobianResponse jacobian;
  grpc::Status status = stub_->Jacobian(Context().get(), too_wide, &jacobian);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("full Jacobian"));

  v1::ReducedJacobianRequest skewed;
  SetModel(skewed.mutable_model(), "dipnet");
  *skewed.mutable_m() = Wire(Gaussian({kDims.d_m}, 1));
  *skewed.mutable_output_basis() = Wire(models::RandomOrthonormalColumns(kDims.d_q, 3, 1));
  *skewed.mutable_input_basis() = Wire(2.0 * models::RandomOrthonormalColumns(kDims.d_m, 3, 2));
  v1::ReducedJacobianResponse reduced;
  status = stub_->ReducedJacobian(Context().get(), skewed, &reduced);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("input_basis must have orthonormal columns"));

  v1::VjpRequest vjp;
  SetModel(vjp.mutable_model(), "generic");
  *vjp.mutable_m() = Wire(Gaussian({kDims.d_m}, 1));
  *vjp.mutable_cotangents() = Wire(Gaussian({1, kDims.d_m}, 1));
  v1::VjpResponse vjp_response;
  status = stub_->Vjp(Context().get(), vjp, &vjp_response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("cotangents must have shape"));

  v1::EvaluateResponse response;
  EXPECT_TRUE(stub_->Evaluate(Context().get(), good, &response).ok());
}

TEST_F(ServerTest, HealthAndReflectionAreOn) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const std::string service : {"", "dino.v1.Surrogate"}) {
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(Context().get(), request, &response).ok());
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }

  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel_);
  grpc::ClientContext context;
  auto stream = reflection->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> services;
  for (const auto& s : response.list_services_response().service()) services.push_back(s.name());
  EXPECT_THAT(services, ::testing::IsSupersetOf({"dino.v1.Surrogate", "grpc.health.v1.Health"}));
  request.set_file_containing_symbol("dino.v1.Surrogate");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_GT(response.file_descriptor_response().file_descriptor_proto_size(), 0);
  EXPECT_THAT(response.file_descriptor_response().file_descriptor_proto(0),
              HasSubstr("dino/v1/surrogate.proto"));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServerTest, EightConcurrentClientsGetExactAnswers) {
  auto local = Local("dipnet", 2);
  std::atomic<int> failures{0}, calls{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      // Each client has its own channel, as separate processes would.
      auto stub = v1::Surrogate::NewStub(
          grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials()));
      for (int i = 0; i < 40; ++i) {
        torch::Tensor m = torch::randn({kDims.d_m}, torch::kFloat64) + c;
        grpc::ClientContext context;
        if (i % 2 == 0) {
          v1::EvaluateRequest request;
          SetModel(request.mutable_model(), "dipnet");
          *request.mutable_m() = Wire(m);
          v1::EvaluateResponse response;
          const bool ok = stub->Evaluate(&context, request, &response).ok() &&
                          MaxDiff(FromWire(response.q())[0], (*local->Evaluate(m))[0]) < 1e-12;
          failures += ok ? 0 : 1;
        } else {
          torch::Tensor w = torch::randn({1, kDims.d_q}, torch::kFloat64);
          v1::VjpRequest request;
          SetModel(request.mutable_model(), "dipnet");
          *request.mutable_m() = Wire(m);
          *request.mutable_cotangents() = Wire(w);
          v1::VjpResponse response;
          const bool ok =
              stub->Vjp(&context, request, &response).ok() &&
              MaxDiff(FromWire(response.vjp()), local->Vjp(m, w, false)->values) < 1e-12;
          failures += ok ? 0 : 1;
        }
        ++calls;
      }
    });
  }
  for (auto& client : clients) client.join();
  EXPECT_EQ(calls.load(), 320);
  EXPECT_EQ(failures.load(), 0);
}

v1::EvaluateRequest SlowRequest() {
  v1::EvaluateRequest request;
  SetModel(request.mutable_model(), "slow");
  *request.mutable_m() = Wire(torch::full({1, 64}, 0.5, torch::kFloat64));
  return request;
}

int MetricValue(int port, const std::string& series) {
  const std::string text = dino::testing::HttpGet(port, "/metrics");
  const size_t at = text.find(series);
  return at == std::string::npos ? 0 : std::stoi(text.substr(at + series.size() + 1));
}

// Starts `calls` slow calls and returns once the server has accepted them all. Each call
// starts once the previous one has left the queue, so that with --threads=2 the first two
// occupy the slow model's two compute threads (rather than sharing one batch) for a second
// or more, and further calls wait in its queue.
std::vector<std::thread> OccupySlowModel(const dino::testing::ServerProcess& server, int calls) {
  const std::string target = server.target();
  std::vector<std::thread> busy;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (int i = 0; i < calls; ++i) {
    busy.emplace_back([target] {
      auto stub =
          v1::Surrogate::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
      grpc::ClientContext context;
      v1::EvaluateResponse response;
      EXPECT_TRUE(stub->Evaluate(&context, SlowRequest(), &response).ok());
    });
    while (
        (MetricValue(server.metrics_port(), "dino_requests_in_flight{model=\"slow\"}") < i + 1 ||
         (i < 2 && MetricValue(server.metrics_port(), "dino_queue_depth{model=\"slow\"}") > 0)) &&
        std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  return busy;
}

TEST_F(ServerTest, ExpiredAndCancelledCallsAreNotComputed) {
  const std::string expired =
      "dino_requests_total{code=\"DEADLINE_EXCEEDED\",method=\"Evaluate\",model=\"slow\"}";
  const std::string cancelled =
      "dino_requests_total{code=\"CANCELLED\",method=\"Evaluate\",model=\"slow\"}";
  const int expired_before = MetricValue(server_->metrics_port(), expired);
  const int cancelled_before = MetricValue(server_->metrics_port(), cancelled);

  auto busy = OccupySlowModel(*server_, 2);
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(50));
    v1::EvaluateResponse response;
    EXPECT_EQ(stub_->Evaluate(&context, SlowRequest(), &response).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  {
    grpc::ClientContext context;
    v1::EvaluateResponse response;
    std::thread canceller([&context] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      context.TryCancel();
    });
    EXPECT_EQ(stub_->Evaluate(&context, SlowRequest(), &response).error_code(),
              grpc::StatusCode::CANCELLED);
    canceller.join();
  }
  for (auto& t : busy) t.join();
  // The server saw both calls expire / be cancelled before running them: it answers such
  // calls without computing, and only then records these codes.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline &&
         (MetricValue(server_->metrics_port(), expired) == expired_before ||
          MetricValue(server_->metrics_port(), cancelled) == cancelled_before)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(MetricValue(server_->metrics_port(), expired), expired_before + 1)
      << dino::testing::HttpGet(server_->metrics_port(), "/metrics").substr(0, 3000);
  EXPECT_EQ(MetricValue(server_->metrics_port(), cancelled), cancelled_before + 1);
}

TEST_F(ServerTest, MetricsCountRequestsByMethodModelAndCode) {
  v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(Context().get(), v1::ListModelsRequest(), &models).ok());
  v1::EvaluateRequest request;
  SetModel(request.mutable_model(), "generic");
  *request.mutable_m() = Wire(Gaussian({1, kDims.d_m}, 1));
  v1::EvaluateResponse response;
  ASSERT_TRUE(stub_->Evaluate(Context().get(), request, &response).ok());
  SetModel(request.mutable_model(), "missing");
  EXPECT_FALSE(stub_->Evaluate(Context().get(), request, &response).ok());
  const std::string text = dino::testing::HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_THAT(text, HasSubstr("dino_models_loaded 6"));
  EXPECT_THAT(text, HasSubstr("dino_request_latency_seconds_bucket{method=\"Evaluate\""));
  EXPECT_THAT(text,
              HasSubstr("dino_requests_total{code=\"OK\",method=\"ListModels\",model=\"\"} 1"));
  EXPECT_THAT(
      text, HasSubstr("dino_requests_total{code=\"OK\",method=\"Evaluate\",model=\"generic\"} 1"));
  // Unknown names do not become label values.
  EXPECT_THAT(
      text, HasSubstr("dino_requests_total{code=\"NOT_FOUND\",method=\"Evaluate\",model=\"\"} 1"));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("missing")));
}

TEST(ShutdownTest, SigtermDrainsInFlightCallsAndExitsZero) {
  const std::string root = dino::testing::MakeTempDir("dino-shutdown-");
  dino::testing::WriteModel(dino::testing::SlowModel(64, 4, kSlowIterations),
                            dino::testing::SmallMetadata("slow", 64), root, "slow", 1);
  dino::testing::ServerProcess server(
      ServerBinary(), {"--model_repository=" + root, "--threads=2", "--drain_seconds=1"});
  auto channel = grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials());
  auto busy = OccupySlowModel(server, 4);  // Two run, two wait in the queue.
  server.Signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(health->Check(&context, request, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  for (auto& t : busy) t.join();  // Each call asserts that it succeeded.
  EXPECT_EQ(server.Wait(), 0);
  std::filesystem::remove_all(root);
}

// The soak (scripts/soak.py) offered 2x the server's throughput open loop: without a bound on
// a connection's open calls they piled up in front of the model queues, in the server's
// memory, for tens of seconds. With --max_concurrent_streams a further call waits on the
// client's side, and other connections are not affected.
TEST(ConcurrentStreamsTest, ACallBeyondTheConnectionsLimitWaitsOnTheClient) {
  const std::string root = dino::testing::MakeTempDir("dino-streams-");
  // The slow call must outlast the 300 ms probe and the second connection's call below with
  // margin: kSlowIterations took about 0.25 s on a faster machine (Haswell, 2026-12-01), and the
  // probe then found the stream free again.
  dino::testing::WriteModel(dino::testing::SlowModel(64, 4, 8 * kSlowIterations),
                            dino::testing::SmallMetadata("slow", 64), root, "slow", 1);
  dino::testing::ServerProcess server(
      ServerBinary(), {"--model_repository=" + root, "--threads=2", "--max_concurrent_streams=1"});
  auto channel = grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials());
  auto stub = v1::Surrogate::NewStub(channel);
  v1::GetModelInfoRequest info_request;
  SetModel(info_request.mutable_model(), "slow");
  v1::GetModelInfoResponse info;
  {  // The connection is up (SETTINGS exchanged) before the slow call takes its one stream.
    grpc::ClientContext context;
    ASSERT_TRUE(stub->GetModelInfo(&context, info_request, &info).ok());
  }
  std::thread slow([&stub] {
    grpc::ClientContext context;
    v1::EvaluateResponse response;
    EXPECT_TRUE(stub->Evaluate(&context, SlowRequest(), &response).ok());
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (MetricValue(server.metrics_port(), "dino_requests_in_flight{model=\"slow\"}") < 1 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  {  // Same connection: no stream until the slow call ends.
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
    EXPECT_EQ(stub->GetModelInfo(&context, info_request, &info).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  {  // Another connection is served meanwhile.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto other = v1::Surrogate::NewStub(
        grpc::CreateCustomChannel(server.target(), grpc::InsecureChannelCredentials(), args));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    EXPECT_TRUE(other->GetModelInfo(&context, info_request, &info).ok());
    EXPECT_EQ(MetricValue(server.metrics_port(), "dino_requests_in_flight{model=\"slow\"}"), 1);
  }
  slow.join();
  grpc::ClientContext context;
  EXPECT_TRUE(stub->GetModelInfo(&context, info_request, &info).ok());
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(), 0);
  std::filesystem::remove_all(root);
}

TEST(VersionSwapTest, NewVersionsServeUnderLoadWithoutFailedRequests) {
  const std::string root = dino::testing::MakeTempDir("dino-swap-");
  auto write = [&root](int64_t version) {
    dino::testing::WriteModel(dino::testing::SmallDipnet(kDims, torch::kFloat64, version),
                              dino::testing::SmallMetadata("dipnet", kDims.d_m), root, "dipnet",
                              version);
  };
  write(1);
  dino::testing::ServerProcess server(
      ServerBinary(), {"--model_repository=" + root, "--repository_poll_seconds=0.1"});
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0}, calls{0};
  std::atomic<int64_t> highest_seen{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      auto stub = v1::Surrogate::NewStub(
          grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()));
      v1::EvaluateRequest request;
      SetModel(request.mutable_model(), "dipnet");
      *request.mutable_m() = Wire(Gaussian({2, kDims.d_m}, 1));
      while (!stop) {
        grpc::ClientContext context;
        v1::EvaluateResponse response;
        if (!stub->Evaluate(&context, request, &response).ok()) {
          ++failures;
        } else {
          int64_t seen = highest_seen;
          while (response.version() > seen &&
                 !highest_seen.compare_exchange_weak(seen, response.version())) {
          }
        }
        ++calls;
      }
    });
  }
  auto wait_for_version = [&](int64_t version) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (highest_seen < version && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return highest_seen >= version;
  };
  EXPECT_TRUE(wait_for_version(1));
  write(2);  // Atomically (temporary file, fsync, rename), as a publisher would.
  EXPECT_TRUE(wait_for_version(2));
  std::filesystem::remove_all(root + "/dipnet/1");  // The old version goes away under load.
  write(3);
  EXPECT_TRUE(wait_for_version(3));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  for (auto& client : clients) client.join();
  EXPECT_GT(calls.load(), 100);
  EXPECT_EQ(failures.load(), 0);

  auto stub = v1::Surrogate::NewStub(
      grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::ListModelsResponse listing;
  ASSERT_TRUE(stub->ListModels(&context, v1::ListModelsRequest(), &listing).ok());
  ASSERT_EQ(listing.models_size(), 1);
  // The default policy (latest 1) keeps only version 3: each new version replaced the one
  // before it, and not one request failed.
  ASSERT_EQ(listing.models(0).versions_size(), 1);
  EXPECT_EQ(listing.models(0).versions(0).version(), 3);
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(), 0);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace dino
