// KServe's Open Inference Protocol v2: a real dino-server process driven through stubs
// generated from proto/inference/grpc_predict_v2.proto (every RPC; ModelInfer with typed and
// raw contents equal to dino.v1's answers; derivative outputs; errors naming the input), and
// the REST functions (OipRestHandler) called directly on an in-process scheduler.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "dino/v1/surrogate.grpc.pb.h"
#include "inference/grpc_predict_v2.grpc.pb.h"
#include "server/core/model_manager.h"
#include "server/core/request_scheduler.h"
#include "server/frontend/oip_rest.h"
#include "server/frontend/tensor_codec.h"
#include "tests/common/server_process.h"
#include "tests/common/test_models.h"

namespace dino {
namespace {

using dino::testing::SmallDims;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr SmallDims kDims{};

// dipnet (versions 1 and 2, label "stable" → 1), dipnet32 (float32), generic (no bases).
std::string MakeRepository() {
  const std::string root = dino::testing::MakeTempDir("dino-oip-");
  using dino::testing::SmallMetadata;
  using dino::testing::WriteModel;
  WriteModel(dino::testing::SmallDipnet(kDims, torch::kFloat64, 1), SmallMetadata("dipnet", 40),
             root, "dipnet", 1);
  WriteModel(dino::testing::SmallDipnet(kDims, torch::kFloat64, 2), SmallMetadata("dipnet", 40),
             root, "dipnet", 2);
  std::ofstream(root + "/dipnet/config.json")
      << R"({"version_policy": {"all": {}}, "labels": {"stable": 1}})";
  WriteModel(dino::testing::SmallDipnet(kDims, torch::kFloat32, 1), SmallMetadata("dipnet", 40),
             root, "dipnet32", 1);
  WriteModel(dino::testing::SmallGeneric(kDims, torch::kFloat64, 3), SmallMetadata("generic", 40),
             root, "generic", 1);
  return root;
}

torch::Tensor Gaussian(std::vector<int64_t> shape, uint64_t seed,
                       torch::Dtype dtype = torch::kFloat64) {
  torch::manual_seed(seed);
  return torch::randn(shape, torch::kFloat64).to(dtype);
}

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e300;
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// Adds input `name` holding `t`, as raw_input_contents when `raw`, else typed contents.
void AddInput(ModelInferRequest* request, const std::string& name, const torch::Tensor& t,
              bool raw) {
  const torch::Tensor c = t.contiguous();
  auto* input = request->add_inputs();
  input->set_name(name);
  input->set_datatype(c.scalar_type() == torch::kFloat64 ? "FP64" : "FP32");
  for (int64_t extent : c.sizes()) input->add_shape(extent);
  if (raw) {
    request->add_raw_input_contents()->assign(static_cast<const char*>(c.data_ptr()),
                                              c.numel() * c.element_size());
  } else if (c.scalar_type() == torch::kFloat64) {
    const double* values = c.data_ptr<double>();
    for (int64_t i = 0; i < c.numel(); ++i) input->mutable_contents()->add_fp64_contents(values[i]);
  } else {
    const float* values = c.data_ptr<float>();
    for (int64_t i = 0; i < c.numel(); ++i) input->mutable_contents()->add_fp32_contents(values[i]);
  }
}

ModelInferRequest InferRequest(const std::string& model, const torch::Tensor& m, bool raw,
                               std::vector<std::string> outputs = {}) {
  ModelInferRequest request;
  request.set_model_name(model);
  AddInput(&request, "m", m, raw);
  for (const auto& name : outputs) request.add_outputs()->set_name(name);
  return request;
}

// Output `name` of a response, from its raw or typed contents.
torch::Tensor Output(const ModelInferResponse& response, const std::string& name) {
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& output = response.outputs(i);
    if (output.name() != name) continue;
    std::vector<int64_t> shape(output.shape().begin(), output.shape().end());
    const bool fp64 = output.datatype() == "FP64";
    const auto dtype = fp64 ? torch::kFloat64 : torch::kFloat32;
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    const size_t bytes = t.numel() * t.element_size();
    if (i < response.raw_output_contents_size()) {
      EXPECT_EQ(response.raw_output_contents(i).size(), bytes) << name;
      std::memcpy(t.data_ptr(), response.raw_output_contents(i).data(), bytes);
    } else if (fp64) {
      EXPECT_EQ(static_cast<size_t>(output.contents().fp64_contents_size()), t.numel()) << name;
      std::memcpy(t.data_ptr(), output.contents().fp64_contents().data(), bytes);
    } else {
      EXPECT_EQ(static_cast<size_t>(output.contents().fp32_contents_size()), t.numel()) << name;
      std::memcpy(t.data_ptr(), output.contents().fp32_contents().data(), bytes);
    }
    return t;
  }
  ADD_FAILURE() << "no output " << name;
  return torch::Tensor();
}

std::vector<std::string> OutputNames(const ModelInferResponse& response) {
  std::vector<std::string> names;
  for (const auto& output : response.outputs()) names.push_back(output.name());
  return names;
}

v1::Tensor Wire(const torch::Tensor& t) {
  v1::Tensor message;
  frontend::EncodeTensor(t, v1::DTYPE_UNSPECIFIED, &message);
  return message;
}

torch::Tensor FromWire(const v1::Tensor& message) {
  auto decoded = frontend::DecodeTensor(message, true, "response");
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  return decoded->clone();
}

class OipTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repository_ = new std::string(MakeRepository());
    server_ = new dino::testing::ServerProcess(
        DINO_SERVER_BINARY, {"--model_repository=" + *repository_, "--threads=2",
                             "--max_batch_size=64", "--max_jacobian_elements=500"});
    serving::ModelManager::Options options;
    options.repository = *repository_;
    options.limits.max_batch_size = 64;
    options.limits.max_jacobian_elements = 500;
    manager_ = new serving::ModelManager(options);
    ASSERT_TRUE(manager_->SyncRepository().ok());
    scheduler_ = new serving::RequestScheduler(*manager_, {});
    rest_ = new frontend::OipRestHandler(*manager_, *scheduler_, nullptr);
  }
  static void TearDownTestSuite() {
    delete rest_;
    delete scheduler_;
    delete manager_;
    server_->Signal(SIGTERM);
    EXPECT_EQ(server_->Wait(), 0);
    delete server_;
    std::filesystem::remove_all(*repository_);
    delete repository_;
  }

  void SetUp() override {
    channel_ = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
    oip_ = inference::GRPCInferenceService::NewStub(channel_);
    dino_ = v1::Surrogate::NewStub(channel_);
  }

  static std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return context;
  }

  ModelInferResponse Infer(const ModelInferRequest& request) {
    ModelInferResponse response;
    grpc::Status status = oip_->ModelInfer(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  grpc::Status InferError(const ModelInferRequest& request) {
    ModelInferResponse response;
    return oip_->ModelInfer(Context().get(), request, &response);
  }

  torch::Tensor Evaluate(const std::string& model, const torch::Tensor& m, int64_t version = 0) {
    v1::EvaluateRequest request;
    request.mutable_model()->set_name(model);
    request.mutable_model()->set_version(version);
    *request.mutable_m() = Wire(m);
    v1::EvaluateResponse response;
    grpc::Status status = dino_->Evaluate(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return FromWire(response.q());
  }

  frontend::RestResponse Rest(const std::string& method, const std::string& path,
                              const std::string& body = "") {
    return rest_->Handle(method, path, body, {});
  }

  static std::string* repository_;
  static dino::testing::ServerProcess* server_;
  static serving::ModelManager* manager_;
  static serving::RequestScheduler* scheduler_;
  static frontend::OipRestHandler* rest_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> oip_;
  std::unique_ptr<v1::Surrogate::Stub> dino_;
};

std::string* OipTest::repository_ = nullptr;
dino::testing::ServerProcess* OipTest::server_ = nullptr;
serving::ModelManager* OipTest::manager_ = nullptr;
serving::RequestScheduler* OipTest::scheduler_ = nullptr;
frontend::OipRestHandler* OipTest::rest_ = nullptr;

TEST_F(OipTest, ServerLiveReadyAndMetadata) {
  inference::ServerLiveResponse live;
  ASSERT_TRUE(oip_->ServerLive(Context().get(), {}, &live).ok());
  EXPECT_TRUE(live.live());
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(oip_->ServerReady(Context().get(), {}, &ready).ok());
  EXPECT_TRUE(ready.ready());
  inference::ServerMetadataResponse metadata;
  ASSERT_TRUE(oip_->ServerMetadata(Context().get(), {}, &metadata).ok());
  EXPECT_EQ(metadata.name(), "dino-serve");
  EXPECT_FALSE(metadata.version().empty());
  EXPECT_THAT(metadata.extensions(), ElementsAre("parameters"));
}

TEST_F(OipTest, ModelReadyForVersionsLabelsAndUnknownModels) {
  const auto ready = [this](const std::string& name, const std::string& version) {
    inference::ModelReadyRequest request;
    request.set_name(name);
    request.set_version(version);
    inference::ModelReadyResponse response;
    EXPECT_TRUE(oip_->ModelReady(Context().get(), request, &response).ok());
    return response.ready();
  };
  EXPECT_TRUE(ready("dipnet", ""));
  EXPECT_TRUE(ready("dipnet", "1"));
  EXPECT_TRUE(ready("dipnet", "2"));
  EXPECT_TRUE(ready("dipnet", "stable"));
  EXPECT_FALSE(ready("dipnet", "7"));
  EXPECT_FALSE(ready("dipnet", "nightly"));
  EXPECT_FALSE(ready("no_such_model", ""));
}

TEST_F(OipTest, ModelMetadataListsTensorsWithBatchDimensions) {
  inference::ModelMetadataRequest request;
  request.set_name("dipnet");
  inference::ModelMetadataResponse metadata;
  ASSERT_TRUE(oip_->ModelMetadata(Context().get(), request, &metadata).ok());
  EXPECT_EQ(metadata.name(), "dipnet");
  EXPECT_THAT(metadata.versions(), ElementsAre("1", "2"));
  EXPECT_EQ(metadata.platform(), "pytorch_libtorch");
  std::map<std::string, std::pair<std::string, std::vector<int64_t>>> inputs, outputs;
  for (const auto& t : metadata.inputs()) {
    inputs[t.name()] = {t.datatype(), std::vector<int64_t>(t.shape().begin(), t.shape().end())};
  }
  for (const auto& t : metadata.outputs()) {
    outputs[t.name()] = {t.datatype(), std::vector<int64_t>(t.shape().begin(), t.shape().end())};
  }
  using Meta = std::pair<std::string, std::vector<int64_t>>;
  EXPECT_EQ(inputs["m"], (Meta{"FP64", {-1, 40}}));
  EXPECT_EQ(inputs["directions"], (Meta{"FP64", {-1, 40}}));
  EXPECT_EQ(inputs["cotangents"], (Meta{"FP64", {-1, 12}}));
  EXPECT_EQ(inputs["output_basis"], (Meta{"FP64", {12, -1}}));
  EXPECT_EQ(inputs["input_basis"], (Meta{"FP64", {40, -1}}));
  EXPECT_EQ(outputs["q"], (Meta{"FP64", {-1, 12}}));
  EXPECT_EQ(outputs["jvp"], (Meta{"FP64", {-1, 12}}));
  EXPECT_EQ(outputs["vjp"], (Meta{"FP64", {-1, 40}}));
  EXPECT_EQ(outputs["reduced_jacobian"], (Meta{"FP64", {-1, 6, 8}}));
  EXPECT_EQ(outputs["jacobian"], (Meta{"FP64", {12, 40}}));

  request.set_name("dipnet32");
  ASSERT_TRUE(oip_->ModelMetadata(Context().get(), request, &metadata).ok());
  EXPECT_EQ(metadata.inputs(0).datatype(), "FP32");
  request.set_name("generic");
  inference::ModelMetadataResponse generic;
  ASSERT_TRUE(oip_->ModelMetadata(Context().get(), request, &generic).ok());
  for (const auto& t : generic.outputs()) {
    if (t.name() == "reduced_jacobian") {
      EXPECT_THAT(t.shape(), ElementsAre(-1, -1, -1));
    }
  }

  request.set_name("no_such_model");
  grpc::Status status = oip_->ModelMetadata(Context().get(), request, &metadata);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("model_name"));
  request.set_name("dipnet");
  request.set_version("9");
  EXPECT_EQ(oip_->ModelMetadata(Context().get(), request, &metadata).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(OipTest, ModelInferTypedAndRawContentsEqualEvaluate) {
  for (torch::Dtype dtype : {torch::kFloat64, torch::kFloat32}) {
    const torch::Tensor m = Gaussian({5, kDims.d_m}, 11, dtype);
    const torch::Tensor expected = Evaluate("dipnet", m);
    for (bool raw : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "dtype " << dtype << " raw " << raw);
      ModelInferRequest request = InferRequest("dipnet", m, raw);
      request.set_id("request-7");
      const ModelInferResponse response = Infer(request);
      EXPECT_EQ(response.model_name(), "dipnet");
      EXPECT_EQ(response.model_version(), "2");
      EXPECT_EQ(response.id(), "request-7");
      EXPECT_THAT(OutputNames(response), ElementsAre("q"));
      // Raw in, raw out (as Triton answers); typed in, typed out.
      EXPECT_EQ(response.raw_output_contents_size(), raw ? 1 : 0);
      EXPECT_EQ(response.outputs(0).has_contents(), !raw);
      EXPECT_EQ(response.outputs(0).datatype(), "FP64");
      EXPECT_THAT(response.outputs(0).shape(), ElementsAre(5, kDims.d_q));
      EXPECT_LE(MaxDiff(Output(response, "q"), expected), 1e-12);
    }
  }
  // One point [d_M] gives q [d_Q]; a float32 model answers FP32.
  const torch::Tensor point = Gaussian({kDims.d_m}, 12, torch::kFloat32);
  const ModelInferResponse single = Infer(InferRequest("dipnet32", point, true, {"q"}));
  EXPECT_EQ(single.outputs(0).datatype(), "FP32");
  EXPECT_EQ(MaxDiff(Output(single, "q"), Evaluate("dipnet32", point)), 0.0);
}

TEST_F(OipTest, ModelVersionSelectsVersionsAndLabels) {
  const torch::Tensor m = Gaussian({3, kDims.d_m}, 13);
  for (const auto& [version, number] :
       std::vector<std::pair<std::string, int64_t>>{{"1", 1}, {"2", 2}, {"stable", 1}}) {
    ModelInferRequest request = InferRequest("dipnet", m, true);
    request.set_model_version(version);
    const ModelInferResponse response = Infer(request);
    EXPECT_EQ(response.model_version(), std::to_string(number)) << version;
    EXPECT_LE(MaxDiff(Output(response, "q"), Evaluate("dipnet", m, number)), 1e-12) << version;
  }
  EXPECT_GT(MaxDiff(Evaluate("dipnet", m, 1), Evaluate("dipnet", m, 2)), 1e-6);
}

TEST_F(OipTest, OutputDatatypeParameterConverts) {
  const torch::Tensor m = Gaussian({2, kDims.d_m}, 14);
  ModelInferRequest request = InferRequest("dipnet", m, false);
  (*request.mutable_parameters())["output_datatype"].set_string_param("FP32");
  const ModelInferResponse response = Infer(request);
  EXPECT_EQ(response.outputs(0).datatype(), "FP32");
  EXPECT_LE(MaxDiff(Output(response, "q"), Evaluate("dipnet", m)), 1e-5);
  (*request.mutable_parameters())["output_datatype"].set_string_param("INT8");
  grpc::Status status = InferError(request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("output_datatype"));
}

TEST_F(OipTest, JvpAndVjpOutputsEqualSurrogateRpcs) {
  const torch::Tensor m = Gaussian({4, kDims.d_m}, 15);
  const torch::Tensor directions = Gaussian({4, 3, kDims.d_m}, 16);
  const torch::Tensor cotangents = Gaussian({4, kDims.d_q}, 17);
  for (const std::string model : {"dipnet", "generic"}) {
    SCOPED_TRACE(model);
    v1::JvpRequest jvp_request;
    jvp_request.mutable_model()->set_name(model);
    *jvp_request.mutable_m() = Wire(m);
    *jvp_request.mutable_directions() = Wire(directions);
    jvp_request.set_return_q(true);
    v1::JvpResponse jvp_expected;
    ASSERT_TRUE(dino_->Jvp(Context().get(), jvp_request, &jvp_expected).ok());
    for (bool raw : {false, true}) {
      ModelInferRequest request = InferRequest(model, m, raw, {"jvp", "q"});
      AddInput(&request, "directions", directions, raw);
      const ModelInferResponse response = Infer(request);
      EXPECT_THAT(OutputNames(response), ElementsAre("jvp", "q"));
      EXPECT_LE(MaxDiff(Output(response, "jvp"), FromWire(jvp_expected.jvp())), 1e-12);
      EXPECT_LE(MaxDiff(Output(response, "q"), FromWire(jvp_expected.q())), 1e-12);
    }

    v1::VjpRequest vjp_request;
    vjp_request.mutable_model()->set_name(model);
    *vjp_request.mutable_m() = Wire(m);
    *vjp_request.mutable_cotangents() = Wire(cotangents);
    v1::VjpResponse vjp_expected;
    ASSERT_TRUE(dino_->Vjp(Context().get(), vjp_request, &vjp_expected).ok());
    ModelInferRequest request = InferRequest(model, m, true, {"vjp"});
    AddInput(&request, "cotangents", cotangents, true);
    const ModelInferResponse response = Infer(request);
    EXPECT_THAT(OutputNames(response), ElementsAre("vjp"));
    EXPECT_THAT(response.outputs(0).shape(), ElementsAre(4, kDims.d_m));
    EXPECT_LE(MaxDiff(Output(response, "vjp"), FromWire(vjp_expected.vjp())), 1e-12);
  }
}

TEST_F(OipTest, WithoutRequestedOutputsTheInputsChooseTheDerivative) {
  const torch::Tensor m = Gaussian({2, kDims.d_m}, 18);
  const torch::Tensor directions = Gaussian({2, kDims.d_m}, 19);
  ModelInferRequest request = InferRequest("dipnet", m, false);
  AddInput(&request, "directions", directions, false);
  const ModelInferResponse response = Infer(request);
  EXPECT_THAT(OutputNames(response), ElementsAre("q", "jvp"));
  EXPECT_LE(MaxDiff(Output(response, "q"), Evaluate("dipnet", m)), 1e-12);
  EXPECT_THAT(response.outputs(1).shape(), ElementsAre(2, kDims.d_q));
}

TEST_F(OipTest, ReducedJacobianAndJacobianOutputsEqualSurrogateRpcs) {
  const torch::Tensor m = Gaussian({3, kDims.d_m}, 20);
  v1::ReducedJacobianRequest reduced_request;
  reduced_request.mutable_model()->set_name("dipnet");
  *reduced_request.mutable_m() = Wire(m);
  v1::ReducedJacobianResponse reduced_expected;
  ASSERT_TRUE(dino_->ReducedJacobian(Context().get(), reduced_request, &reduced_expected).ok());
  ModelInferResponse reduced = Infer(InferRequest("dipnet", m, true, {"q", "reduced_jacobian"}));
  EXPECT_THAT(reduced.outputs(1).shape(), ElementsAre(3, kDims.r_q, kDims.r_m));
  EXPECT_LE(
      MaxDiff(Output(reduced, "reduced_jacobian"), FromWire(reduced_expected.reduced_jacobian())),
      1e-12);
  EXPECT_LE(MaxDiff(Output(reduced, "q"), FromWire(reduced_expected.q())), 1e-12);

  // Client bases (orthonormal columns), here on the model without bases of its own.
  const torch::Tensor output_basis = std::get<0>(torch::linalg_qr(Gaussian({kDims.d_q, 4}, 21)));
  const torch::Tensor input_basis = std::get<0>(torch::linalg_qr(Gaussian({kDims.d_m, 5}, 22)));
  reduced_request.mutable_model()->set_name("generic");
  *reduced_request.mutable_output_basis() = Wire(output_basis);
  *reduced_request.mutable_input_basis() = Wire(input_basis);
  ASSERT_TRUE(dino_->ReducedJacobian(Context().get(), reduced_request, &reduced_expected).ok());
  ModelInferRequest request = InferRequest("generic", m, false, {"reduced_jacobian"});
  AddInput(&request, "output_basis", output_basis, false);
  AddInput(&request, "input_basis", input_basis, false);
  reduced = Infer(request);
  EXPECT_THAT(OutputNames(reduced), ElementsAre("reduced_jacobian"));
  EXPECT_LE(
      MaxDiff(Output(reduced, "reduced_jacobian"), FromWire(reduced_expected.reduced_jacobian())),
      1e-12);

  const torch::Tensor point = Gaussian({kDims.d_m}, 23);
  v1::JacobianRequest jacobian_request;
  jacobian_request.mutable_model()->set_name("dipnet");
  *jacobian_request.mutable_m() = Wire(point);
  v1::JacobianResponse jacobian_expected;
  ASSERT_TRUE(dino_->Jacobian(Context().get(), jacobian_request, &jacobian_expected).ok());
  const ModelInferResponse jacobian = Infer(InferRequest("dipnet", point, true, {"jacobian"}));
  EXPECT_THAT(jacobian.outputs(0).shape(), ElementsAre(kDims.d_q, kDims.d_m));
  EXPECT_LE(MaxDiff(Output(jacobian, "jacobian"), FromWire(jacobian_expected.jacobian())), 1e-12);
}

TEST_F(OipTest, ModelInferErrorsNameTheInput) {
  const torch::Tensor m = Gaussian({2, kDims.d_m}, 24);
  const auto expect_error = [this](const ModelInferRequest& request, grpc::StatusCode code,
                                   const std::string& fragment) {
    grpc::Status status = InferError(request);
    EXPECT_EQ(status.error_code(), code) << fragment << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(fragment));
  };
  using grpc::StatusCode;
  expect_error(InferRequest("no_such_model", m, true), StatusCode::NOT_FOUND, "no_such_model");
  {
    ModelInferRequest request = InferRequest("dipnet", m, true);
    request.set_model_version("9");
    expect_error(request, StatusCode::NOT_FOUND, "9");
  }
  expect_error(InferRequest("dipnet", Gaussian({2, 7}, 25), true), StatusCode::INVALID_ARGUMENT,
               "m must have shape");
  {
    ModelInferRequest request = InferRequest("dipnet", m, true);
    request.mutable_inputs(0)->set_datatype("INT32");
    expect_error(request, StatusCode::INVALID_ARGUMENT, "input 'm': datatype must be FP32 or FP64");
  }
  {
    ModelInferRequest request = InferRequest("dipnet", m, true);
    request.mutable_raw_input_contents(0)->resize(10);
    expect_error(request, StatusCode::INVALID_ARGUMENT, "input 'm': raw_input_contents holds 10");
  }
  {
    ModelInferRequest request = InferRequest("dipnet", m, false);
    request.mutable_inputs(0)->mutable_contents()->add_fp64_contents(1.0);
    expect_error(request, StatusCode::INVALID_ARGUMENT, "input 'm': fp64_contents holds 81");
  }
  {
    ModelInferRequest request = InferRequest("dipnet", m, false);
    request.mutable_inputs(0)->set_datatype("FP32");
    expect_error(request, StatusCode::INVALID_ARGUMENT, "input 'm': datatype FP32 takes");
  }
  {
    ModelInferRequest request = InferRequest("dipnet", m, true);
    AddInput(&request, "cotangents", Gaussian({2, kDims.d_q}, 26), false);
    expect_error(request, StatusCode::INVALID_ARGUMENT, "raw_input_contents has 1 entries");
  }
  {
    ModelInferRequest request = InferRequest("dipnet", m, true, {"jvp"});
    expect_error(request, StatusCode::INVALID_ARGUMENT,
                 "input 'directions' is required for output 'jvp'");
  }
  {
    ModelInferRequest request;
    request.set_model_name("dipnet");
    AddInput(&request, "directions", m, false);
    expect_error(request, StatusCode::INVALID_ARGUMENT, "input 'm' is required");
  }
  {
    ModelInferRequest request = InferRequest("dipnet", m, true, {"q"});
    AddInput(&request, "cotangents", Gaussian({2, kDims.d_q}, 27), true);
    expect_error(request, StatusCode::INVALID_ARGUMENT, "input 'cotangents' is only used with");
  }
  {
    ModelInferRequest request = InferRequest("dipnet", m, true);
    AddInput(&request, "x", m, true);
    expect_error(request, StatusCode::INVALID_ARGUMENT, "input 'x' is not an input");
  }
  {
    ModelInferRequest request = InferRequest("dipnet", m, true);
    AddInput(&request, "m", m, true);
    expect_error(request, StatusCode::INVALID_ARGUMENT, "input 'm' is given twice");
  }
  expect_error(InferRequest("dipnet", m, true, {"hessian"}), StatusCode::INVALID_ARGUMENT,
               "output 'hessian' is not an output");
  expect_error(InferRequest("dipnet", m, true, {"jvp", "vjp"}), StatusCode::INVALID_ARGUMENT,
               "one derivative output per request");
  {
    ModelInferRequest request = InferRequest("dipnet", m, true, {"jvp"});
    AddInput(&request, "directions", Gaussian({2, 5}, 28), true);
    expect_error(request, StatusCode::INVALID_ARGUMENT, "directions");
  }
  // The server is still serving.
  EXPECT_LE(MaxDiff(Output(Infer(InferRequest("dipnet", m, true)), "q"), Evaluate("dipnet", m)),
            1e-12);
}

TEST_F(OipTest, GrpcNeedsTheInferenceTokenWhenRequiredButProbesDoNot) {
  const std::string token_file = *repository_ + "/token";
  std::ofstream(token_file) << "s3cret\n";
  dino::testing::ServerProcess guarded(
      DINO_SERVER_BINARY, {"--model_repository=" + *repository_, "--admin_token_file=" + token_file,
                           "--require_token_for_inference"});
  auto stub = inference::GRPCInferenceService::NewStub(
      grpc::CreateChannel(guarded.target(), grpc::InsecureChannelCredentials()));
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(stub->ServerReady(Context().get(), {}, &ready).ok());
  EXPECT_TRUE(ready.ready());
  const ModelInferRequest request = InferRequest("dipnet", Gaussian({1, kDims.d_m}, 31), true);
  ModelInferResponse response;
  grpc::Status status = stub->ModelInfer(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  inference::ModelMetadataRequest metadata_request;
  metadata_request.set_name("dipnet");
  inference::ModelMetadataResponse metadata;
  EXPECT_EQ(stub->ModelMetadata(Context().get(), metadata_request, &metadata).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto context = Context();
  context->AddMetadata("authorization", "Bearer s3cret");
  ASSERT_TRUE(stub->ModelInfer(context.get(), request, &response).ok());
  EXPECT_LE(MaxDiff(Output(response, "q"), Evaluate("dipnet", Gaussian({1, kDims.d_m}, 31))),
            1e-12);
  guarded.Signal(SIGTERM);
  EXPECT_EQ(guarded.Wait(), 0);
}

// ---- REST: the transport-independent functions -------------------------------------------

TEST_F(OipTest, RestHealthAndMetadataRoutes) {
  frontend::RestResponse response = Rest("GET", "/v2/health/live");
  EXPECT_EQ(response.status_code, 200);
  EXPECT_EQ(response.content_type, "application/json");
  EXPECT_EQ(json::parse(response.body), (json{{"live", true}}));
  response = Rest("GET", "/v2/health/ready");
  EXPECT_EQ(response.status_code, 200);
  EXPECT_EQ(json::parse(response.body), (json{{"ready", true}}));

  response = Rest("GET", "/v2");
  EXPECT_EQ(response.status_code, 200);
  json server = json::parse(response.body);
  EXPECT_EQ(server["name"], "dino-serve");
  EXPECT_EQ(server["extensions"], json::array({"parameters"}));

  for (const std::string path : {"/v2/models/dipnet", "/v2/models/dipnet/versions/1"}) {
    response = Rest("GET", path);
    ASSERT_EQ(response.status_code, 200) << path << response.body;
    json model = json::parse(response.body);
    EXPECT_EQ(model["name"], "dipnet");
    EXPECT_EQ(model["versions"], json::array({"1", "2"}));
    EXPECT_EQ(model["inputs"][0], (json{{"name", "m"}, {"datatype", "FP64"}, {"shape", {-1, 40}}}));
    EXPECT_EQ(model["outputs"][0],
              (json{{"name", "q"}, {"datatype", "FP64"}, {"shape", {-1, 12}}}));
  }
  response = Rest("GET", "/v2/models/dipnet/versions/2/ready");
  EXPECT_EQ(response.status_code, 200);
  EXPECT_EQ(json::parse(response.body), (json{{"name", "dipnet"}, {"ready", true}}));
  EXPECT_EQ(Rest("GET", "/v2/models/dipnet/ready").status_code, 200);
  response = Rest("GET", "/v2/models/dipnet/versions/9/ready");
  EXPECT_EQ(response.status_code, 400);
  EXPECT_THAT(json::parse(response.body)["error"].get<std::string>(), HasSubstr("not ready"));

  response = Rest("GET", "/v2/models/no_such_model");
  EXPECT_EQ(response.status_code, 404);
  EXPECT_THAT(json::parse(response.body)["error"].get<std::string>(), HasSubstr("no_such_model"));
  EXPECT_EQ(Rest("GET", "/v1/models").status_code, 404);
  EXPECT_EQ(Rest("GET", "/v2/models/dipnet/explain").status_code, 404);
  EXPECT_EQ(Rest("POST", "/v2/health/live").status_code, 405);
  EXPECT_EQ(Rest("GET", "/v2/models/dipnet/infer").status_code, 405);
}

TEST_F(OipTest, RestInferEqualsGrpcModelInfer) {
  const torch::Tensor m = Gaussian({3, kDims.d_m}, 29);
  const torch::Tensor directions = Gaussian({3, kDims.d_m}, 30);
  // Nested rows for m (allowed by the protocol), flat data for directions.
  json m_rows = json::array();
  for (int64_t b = 0; b < 3; ++b) {
    json row = json::array();
    for (int64_t i = 0; i < kDims.d_m; ++i) row.push_back(m[b][i].item<double>());
    m_rows.push_back(row);
  }
  json flat = json::array();
  for (int64_t i = 0; i < directions.numel(); ++i) {
    flat.push_back(directions.view({-1})[i].item<double>());
  }
  const json body{
      {"id", "rest-1"},
      {"inputs",
       {{{"name", "m"}, {"shape", {3, kDims.d_m}}, {"datatype", "FP64"}, {"data", m_rows}},
        {{"name", "directions"}, {"shape", {3, kDims.d_m}}, {"datatype", "FP64"}, {"data", flat}}}},
      {"outputs", {{{"name", "q"}}, {{"name", "jvp"}}}}};
  frontend::RestResponse response = Rest("POST", "/v2/models/dipnet/versions/1/infer", body.dump());
  ASSERT_EQ(response.status_code, 200) << response.body;
  const json answer = json::parse(response.body);
  EXPECT_EQ(answer["model_name"], "dipnet");
  EXPECT_EQ(answer["model_version"], "1");
  EXPECT_EQ(answer["id"], "rest-1");
  ASSERT_EQ(answer["outputs"].size(), 2u);

  ModelInferRequest request = InferRequest("dipnet", m, true, {"q", "jvp"});
  request.set_model_version("1");
  AddInput(&request, "directions", directions, true);
  const ModelInferResponse grpc_answer = Infer(request);
  for (int i = 0; i < 2; ++i) {
    const json& output = answer["outputs"][i];
    const std::string name = output["name"];
    EXPECT_EQ(output["datatype"], "FP64");
    EXPECT_EQ(output["shape"], json::array({3, kDims.d_q}));
    const auto values = output["data"].get<std::vector<double>>();
    const torch::Tensor rest_tensor = torch::tensor(values, torch::kFloat64).view({3, kDims.d_q});
    EXPECT_LE(MaxDiff(rest_tensor, Output(grpc_answer, name)), 1e-12) << name;
  }
  EXPECT_LE(MaxDiff(Output(grpc_answer, "q"), Evaluate("dipnet", m, 1)), 1e-12);
}

TEST_F(OipTest, RestInferErrors) {
  const auto error = [this](const std::string& path, const std::string& body, int code,
                            const std::string& fragment) {
    frontend::RestResponse response = Rest("POST", path, body);
    EXPECT_EQ(response.status_code, code) << body << ": " << response.body;
    const json parsed = json::parse(response.body, nullptr, false);
    ASSERT_TRUE(parsed.is_object() && parsed.contains("error")) << response.body;
    EXPECT_THAT(parsed["error"].get<std::string>(), HasSubstr(fragment));
  };
  const std::string path = "/v2/models/dipnet/infer";
  error(path, "{not json", 400, "not valid JSON");
  error(path, "[]", 400, "JSON object");
  error(path, R"({"outputs": []})", 400, "inputs must be an array");
  error(path, R"({"inputs": [{"name": "m", "shape": [2], "datatype": "FP64"}]})", 400,
        "inputs['m'].data is required");
  error(path, R"({"inputs": [{"name": "m", "shape": [2], "datatype": "FP64", "data": ["a", 1]}]})",
        400, "inputs['m'].data must hold numbers");
  error(path, R"({"inputs": [{"name": "m", "shape": [2], "datatype": "BYTES", "data": ["a"]}]})",
        400, "input 'm': datatype must be FP32 or FP64, got 'BYTES'");
  error(path, R"({"inputs": [{"name": "m", "shape": [3], "datatype": "FP64", "data": [1, 2]}]})",
        400, "input 'm': fp64_contents holds 2 values");
  error(path, R"({"inputs": [{"name": "m", "shape": [2], "datatype": "FP64", "data": [1, 2]}]})",
        400, "m must have shape");
  error("/v2/models/no_such_model/infer",
        R"({"inputs": [{"name": "m", "shape": [1], "datatype": "FP64", "data": [1]}]})", 404,
        "no_such_model");
  error(path,
        R"({"inputs": [{"name": "m", "shape": [1], "datatype": "FP64", "data": [1]}],
            "outputs": [{"name": "q", "parameters": {"binary_data": true}}]})",
        400, "binary_data");
  error(path, R"({"inputs": [{"name": "m", "shape": [1], "datatype": "FP64", "data": [1]}],
                  "outputs": [{"name": "jvp"}]})",
        400, "input 'directions' is required for output 'jvp'");
}

TEST_F(OipTest, RestRoutesNeedTheTokenWhenConfigured) {
  const frontend::BearerTokenAuth auth("s3cret");
  frontend::OipRestHandler guarded(*manager_, *scheduler_, nullptr, &auth);
  EXPECT_EQ(guarded.Handle("GET", "/v2/health/ready", "", {}).status_code, 200);
  frontend::RestResponse refused = guarded.Handle("GET", "/v2/models/dipnet", "", {});
  EXPECT_EQ(refused.status_code, 401);
  EXPECT_THAT(refused.body, HasSubstr("authorization"));
  EXPECT_EQ(guarded.Handle("GET", "/v2/models/dipnet", "", {{"Authorization", "Bearer nope"}})
                .status_code,
            401);
  EXPECT_EQ(guarded.Handle("GET", "/v2/models/dipnet", "", {{"Authorization", "Bearer s3cret"}})
                .status_code,
            200);
  guarded.SetAccepting(false);
  EXPECT_EQ(guarded.Handle("GET", "/v2/health/ready", "", {}).status_code, 503);
  EXPECT_EQ(guarded.Handle("GET", "/v2/health/live", "", {}).status_code, 200);
}

}  // namespace
}  // namespace dino
