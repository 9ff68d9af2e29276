// DinoClient against the in-process fake surrogate service (tests/client/fake_surrogate.h)
// over a real localhost TCP channel.
#include "client/dino_client.h"

#include <gmock/gmock.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>

#include <thread>

#include "tests/client/fake_surrogate.h"

namespace dino::client {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::Pointwise;

NpyArray F64(std::vector<int64_t> shape, std::vector<double> values) {
  return *NpyArray::FromValues<double>(std::move(shape), values);
}

class DinoClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fake_ = new testing::FakeServer(testing::StartFakeServer());
    ASSERT_NE(fake_->server, nullptr);
  }
  static void TearDownTestSuite() {
    fake_->server->Shutdown();
    delete fake_;
    fake_ = nullptr;
  }
  void SetUp() override {
    ClientOptions options;
    options.target = fake_->target();
    options.timeout = absl::Seconds(10);
    absl::StatusOr<DinoClient> client = DinoClient::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::make_unique<DinoClient>(*std::move(client));
  }

  // q = v·A·m + b for the fake "linear" model.
  static std::vector<double> LinearQ(int64_t version, const std::vector<double>& m) {
    const std::vector<double> j = testing::LinearJacobian(version);
    std::vector<double> q = testing::LinearShift();
    for (int i = 0; i < 2; ++i) {
      for (int k = 0; k < 3; ++k) q[i] += j[i * 3 + k] * m[k];
    }
    return q;
  }

  static testing::FakeServer* fake_;
  std::unique_ptr<DinoClient> client_;
};

testing::FakeServer* DinoClientTest::fake_ = nullptr;

TEST_F(DinoClientTest, ListModelsAndInfo) {
  absl::StatusOr<std::vector<ModelSummary>> models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 4u);
  EXPECT_EQ((*models)[0].name, "linear");
  EXPECT_THAT((*models)[0].versions, ElementsAre(1, 2));
  EXPECT_EQ((*models)[0].default_version, 2);

  absl::StatusOr<ModelInfo> info = client_->GetModelInfo({"linear"});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->version, 2);
  EXPECT_THAT(info->versions, ElementsAre(1, 2));
  EXPECT_EQ(info->input_dim, 3);
  EXPECT_EQ(info->output_dim, 2);
  EXPECT_TRUE(info->has_reduced_bases);
  EXPECT_EQ(info->input_rank, 2);
  EXPECT_EQ(info->output_rank, 1);
  EXPECT_EQ(info->architecture, "dipnet");
  EXPECT_EQ(info->dtype, NpyDType::kFloat64);
  EXPECT_THAT(info->metadata_json, HasSubstr("fake linear"));
  EXPECT_EQ(client_->GetModelInfo({"linear", 1})->version, 1);
  EXPECT_EQ(client_->GetModelInfo({"plain"})->dtype, NpyDType::kFloat32);
}

TEST_F(DinoClientTest, ServerErrorsKeepCodeAndMessage) {
  absl::StatusOr<ModelInfo> unknown = client_->GetModelInfo({"nope"});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unknown.status().message(), "unknown model 'nope'");
  EXPECT_EQ(client_->GetModelInfo({"linear", 7}).status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<EvaluateResult> bad = client_->Evaluate({"linear"}, F64({4}, {1, 2, 3, 4}));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("m: expected shape [3]"));

  EXPECT_EQ(client_->GetBases({"plain"}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client_->ReducedJacobian({"plain"}, F64({4}, {1, 2, 3, 4})).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(DinoClientTest, ClientSideValidation) {
  absl::StatusOr<EvaluateResult> ints = client_->Evaluate(
      {"linear"}, *NpyArray::FromValues<int64_t>({3}, std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(ints.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ints.status().message(), HasSubstr("m: dtype int64 cannot be sent"));
  CallOptions call;
  call.output_dtype = NpyDType::kInt32;
  absl::StatusOr<EvaluateResult> out = client_->Evaluate({"linear"}, F64({3}, {1, 2, 3}), call);
  EXPECT_THAT(out.status().message(), HasSubstr("output_dtype: dtype int32 cannot be sent"));
}

TEST_F(DinoClientTest, MalformedResponseIsInternal) {
  absl::StatusOr<EvaluateResult> r = client_->Evaluate({"malformed"}, F64({3}, {1, 2, 3}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(r.status().message(), HasSubstr("malformed Evaluate response: q: data holds 15"));
}

TEST_F(DinoClientTest, Evaluate) {
  absl::StatusOr<EvaluateResult> r =
      client_->Evaluate({"linear"}, F64({2, 3}, {1, 2, 3, -1, 0.5, 0}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 2);
  EXPECT_THAT(r->q.shape, ElementsAre(2, 2));
  EXPECT_EQ(r->q.dtype, NpyDType::kFloat64);
  std::vector<double> expected = LinearQ(2, {1, 2, 3});
  const std::vector<double> second = LinearQ(2, {-1, 0.5, 0});
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_THAT(r->q.ToDoubles(), Pointwise(DoubleNear(1e-12), expected));

  // A single point [d_M] is a batch of one; version 1 and an FP32 answer on request.
  CallOptions fp32;
  fp32.output_dtype = NpyDType::kFloat32;
  absl::StatusOr<EvaluateResult> one = client_->Evaluate({"linear", 1}, F64({3}, {1, 2, 3}), fp32);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->version, 1);
  EXPECT_THAT(one->q.shape, ElementsAre(1, 2));
  EXPECT_EQ(one->q.dtype, NpyDType::kFloat32);
  EXPECT_THAT(one->q.ToDoubles(), Pointwise(DoubleNear(1e-5), LinearQ(1, {1, 2, 3})));

  // No deadline at all.
  CallOptions unbounded;
  unbounded.timeout = absl::InfiniteDuration();
  EXPECT_TRUE(client_->Evaluate({"linear"}, F64({3}, {1, 2, 3}), unbounded).ok());

  // FP32 inputs are accepted as they are.
  NpyArray m32 = *F64({1, 3}, {1, 2, 3}).AsType(NpyDType::kFloat32);
  absl::StatusOr<EvaluateResult> from32 = client_->Evaluate({"linear"}, m32);
  ASSERT_TRUE(from32.ok()) << from32.status();
  EXPECT_THAT(from32->q.ToDoubles(), Pointwise(DoubleNear(1e-12), LinearQ(2, {1, 2, 3})));
}

TEST_F(DinoClientTest, JvpAndVjp) {
  const std::vector<double> j = testing::LinearJacobian(2);  // [2, 3]
  absl::StatusOr<JvpResult> jvp =
      client_->Jvp({"linear"}, F64({3}, {1, 2, 3}), F64({2, 3}, {1, 0, 0, 0, 1, 1}));
  ASSERT_TRUE(jvp.ok()) << jvp.status();
  EXPECT_THAT(jvp->jvp.shape, ElementsAre(2, 2));
  EXPECT_THAT(jvp->jvp.ToDoubles(), ElementsAre(j[0], j[3], j[1] + j[2], j[4] + j[5]));
  EXPECT_FALSE(jvp->q.has_value());

  absl::StatusOr<JvpResult> with_q =
      client_->Jvp({"linear"}, F64({1, 3}, {1, 2, 3}), F64({3}, {1, 0, 0}), /*return_q=*/true);
  ASSERT_TRUE(with_q.ok()) << with_q.status();
  ASSERT_TRUE(with_q->q.has_value());
  EXPECT_THAT(with_q->q->ToDoubles(), Pointwise(DoubleNear(1e-12), LinearQ(2, {1, 2, 3})));

  absl::StatusOr<VjpResult> vjp =
      client_->Vjp({"linear"}, F64({3}, {1, 2, 3}), F64({2}, {1, -1}), /*return_q=*/true);
  ASSERT_TRUE(vjp.ok()) << vjp.status();
  EXPECT_THAT(vjp->vjp.shape, ElementsAre(1, 3));
  EXPECT_THAT(vjp->vjp.ToDoubles(), ElementsAre(j[0] - j[3], j[1] - j[4], j[2] - j[5]));
  ASSERT_TRUE(vjp->q.has_value());

  EXPECT_THAT(client_->Vjp({"linear"}, F64({3}, {1, 2, 3}), F64({3}, {1, 2, 3})).status().message(),
              HasSubstr("cotangents: expected shape [2]"));
}

// The per-point Jvp/Vjp forms of the proto (m [B, d_M] with directions [B, d_M] or
// [B, k, d_M]) are the server's to accept or refuse: the client sends them unchanged. The fake
// service predates them and refuses m with B >= 2, so what comes back is its message, naming
// the field; a client-side refusal would say something else.
TEST_F(DinoClientTest, PerPointJvpAndVjpShapesAreSentUnchanged) {
  const NpyArray points = F64({2, 3}, {1, 2, 3, 4, 5, 6});
  absl::StatusOr<JvpResult> jvp = client_->Jvp({"linear"}, points, F64({2, 3}, {1, 0, 0, 0, 1, 0}));
  EXPECT_EQ(jvp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(jvp.status().message(), HasSubstr("m: expected shape [3] or [1, 3], got [2, 3]"));
  absl::StatusOr<VjpResult> vjp =
      client_->Vjp({"linear"}, points, F64({2, 2, 2}, {1, 0, 0, 1, 1, 1, 0, 1}));
  EXPECT_EQ(vjp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(vjp.status().message(), HasSubstr("m: expected shape [3] or [1, 3], got [2, 3]"));
}

TEST_F(DinoClientTest, ReducedJacobianWithModelAndClientBases) {
  const std::vector<double> j = testing::LinearJacobian(2);
  absl::StatusOr<ReducedJacobianResult> model_bases =
      client_->ReducedJacobian({"linear"}, F64({2, 3}, {1, 2, 3, 4, 5, 6}));
  ASSERT_TRUE(model_bases.ok()) << model_bases.status();
  EXPECT_THAT(model_bases->reduced_jacobian.shape, ElementsAre(2, 1, 2));
  EXPECT_THAT(model_bases->reduced_jacobian.ToDoubles(), ElementsAre(j[0], j[1], j[0], j[1]));
  EXPECT_THAT(model_bases->q.shape, ElementsAre(2, 2));

  // U_c = e_2 (the second output), V_c = [e_3, e_1].
  const NpyArray u = F64({2, 1}, {0, 1});
  const NpyArray v = F64({3, 2}, {0, 1, 0, 0, 1, 0});
  absl::StatusOr<ReducedJacobianResult> client_bases =
      client_->ReducedJacobian({"linear"}, F64({3}, {1, 2, 3}), u, v);
  ASSERT_TRUE(client_bases.ok()) << client_bases.status();
  EXPECT_THAT(client_bases->reduced_jacobian.shape, ElementsAre(1, 1, 2));
  EXPECT_THAT(client_bases->reduced_jacobian.ToDoubles(), ElementsAre(j[5], j[3]));

  absl::StatusOr<ReducedJacobianResult> not_orthonormal =
      client_->ReducedJacobian({"linear"}, F64({3}, {1, 2, 3}), F64({2, 1}, {1, 1}), v);
  EXPECT_EQ(not_orthonormal.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(not_orthonormal.status().message(), HasSubstr("output_basis"));
}

TEST_F(DinoClientTest, JacobianAndBases) {
  absl::StatusOr<JacobianResult> jac =
      client_->Jacobian({"linear"}, F64({3}, {1, 2, 3}), /*return_q=*/true);
  ASSERT_TRUE(jac.ok()) << jac.status();
  EXPECT_THAT(jac->jacobian.shape, ElementsAre(2, 3));
  EXPECT_THAT(jac->jacobian.ToDoubles(), ElementsAreArray(testing::LinearJacobian(2)));
  ASSERT_TRUE(jac->q.has_value());
  EXPECT_FALSE(client_->Jacobian({"linear"}, F64({3}, {1, 2, 3}))->q.has_value());

  CallOptions fp32;
  fp32.output_dtype = NpyDType::kFloat32;
  absl::StatusOr<Bases> bases = client_->GetBases({"linear"}, fp32);
  ASSERT_TRUE(bases.ok()) << bases.status();
  EXPECT_EQ(bases->version, 2);
  EXPECT_THAT(bases->input_basis.shape, ElementsAre(3, 2));
  EXPECT_THAT(bases->output_basis.shape, ElementsAre(2, 1));
  EXPECT_THAT(bases->output_shift.shape, ElementsAre(2));
  EXPECT_EQ(bases->input_basis.dtype, NpyDType::kFloat32);
}

TEST_F(DinoClientTest, DeadlineExceeded) {
  CallOptions call;
  call.timeout = absl::Milliseconds(100);
  const auto start = absl::Now();
  absl::StatusOr<EvaluateResult> r = client_->Evaluate({"slow"}, F64({4}, {1, 2, 3, 4}), call);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(1.5));
}

TEST_F(DinoClientTest, Health) {
  absl::StatusOr<HealthStatus> status = client_->CheckHealth();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, HealthStatus::kServing);
  EXPECT_EQ(HealthStatusName(*status), "SERVING");
  fake_->server->GetHealthCheckService()->SetServingStatus(false);
  EXPECT_EQ(*client_->CheckHealth(), HealthStatus::kNotServing);
  fake_->server->GetHealthCheckService()->SetServingStatus(true);
  EXPECT_EQ(client_->CheckHealth("no.such.Service").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(DinoClientTest, ConcurrentCallsShareOneClient) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        absl::StatusOr<EvaluateResult> r =
            client_->Evaluate({"linear"}, F64({3}, {double(t), double(i), 1}));
        if (!r.ok() || r->q.ToDoubles() != LinearQ(2, {double(t), double(i), 1})) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(DinoClientConnectTest, ValidatesOptionsAndReportsUnreachableServers) {
  ClientOptions options;
  options.target = "";
  EXPECT_EQ(DinoClient::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.target = "127.0.0.1:1";
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(DinoClient::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.timeout = absl::Seconds(5);
  options.max_message_bytes = 0;
  EXPECT_EQ(DinoClient::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.max_message_bytes = 1 << 20;
  absl::StatusOr<DinoClient> client = DinoClient::Connect(options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ(client->ListModels().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->WaitForReady(absl::Milliseconds(50)).code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(DinoClientConnectTest, MessageSizeLimitApplies) {
  testing::FakeServer fake = testing::StartFakeServer();
  ASSERT_NE(fake.server, nullptr);
  ClientOptions options;
  options.target = fake.target();
  options.max_message_bytes = 1024;
  absl::StatusOr<DinoClient> client = DinoClient::Connect(options);
  ASSERT_TRUE(client.ok());
  // 200 points x 3 doubles = 4800 bytes > 1024.
  absl::StatusOr<EvaluateResult> r =
      client->Evaluate({"linear"}, *NpyArray::Zeros({200, 3}, NpyDType::kFloat64));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  fake.server->Shutdown();
}

}  // namespace
}  // namespace dino::client
