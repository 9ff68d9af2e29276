// TrainingClient (and the bearer token of ClientOptions) against the scripted fake Training and
// ModelAdmin services (tests/client/fake_training.h) over a real localhost TCP channel.
#include "client/training_client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/client/fake_surrogate.h"

namespace dino::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kToken[] = "s3cret-token_0123";

NpyArray F64(std::vector<int64_t> shape, std::vector<double> values) {
  return *NpyArray::FromValues<double>(std::move(shape), values);
}

// b samples of the fake "linear" model (d_M = 3, d_Q = 2) with full Jacobians; m[i] = first + i.
SampleArrays LinearSamples(int64_t b, double first, bool validation = false) {
  SampleArrays s;
  std::vector<double> m(b * 3), q(b * 2, 0.5), j(b * 2 * 3, 1.0);
  for (int64_t i = 0; i < b * 3; ++i) m[i] = first + static_cast<double>(i / 3);
  s.m = F64({b, 3}, m);
  s.q = F64({b, 2}, q);
  s.form = SampleArrays::JacobianForm::kFull;
  s.jacobian = F64({b, 2, 3}, j);
  s.validation = validation;
  return s;
}

v1::FineTuneConfig LinearConfig(int64_t epochs = 2, const std::string& description = "") {
  v1::FineTuneConfig config;
  config.mutable_base()->set_name("linear");
  config.set_loss(v1::H1);
  config.set_epochs(epochs);
  config.set_description(description);
  return config;
}

// Produces `batches` batches of `per_batch` samples, then the end of the upload.
NextBatchFn Batches(int batches, int64_t per_batch, int* produced) {
  return [=](v1::SampleBatch* batch) -> absl::StatusOr<bool> {
    if (*produced == batches) return false;
    const double first = static_cast<double>(*produced * per_batch);
    if (absl::Status s = EncodeSampleBatch(LinearSamples(per_batch, first), batch); !s.ok()) {
      return s;
    }
    ++*produced;
    return true;
  };
}

class TrainingClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fake_ = new testing::FakeServer(testing::StartFakeServer(0, kToken));
    ASSERT_NE(fake_->server, nullptr);
  }
  static void TearDownTestSuite() {
    fake_->server->Shutdown();
    delete fake_;
    fake_ = nullptr;
  }

  static TrainingClient Client(const std::string& token = kToken) {
    ClientOptions options;
    options.target = fake_->target();
    options.timeout = absl::Seconds(10);
    options.bearer_token = token;
    absl::StatusOr<TrainingClient> client = TrainingClient::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return *std::move(client);
  }

  static testing::FakeServer* fake_;
};

testing::FakeServer* TrainingClientTest::fake_ = nullptr;

TEST_F(TrainingClientTest, UploadsInBatchesReportsProgressAndWatchesToSuccess) {
  const TrainingClient client = Client();
  int produced = 0;
  std::vector<UploadProgress> progress;
  absl::StatusOr<v1::StartFineTuneResponse> started =
      client.StartFineTune(LinearConfig(2), Batches(3, 4, &produced),
                           [&](const UploadProgress& p) { progress.push_back(p); });
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_FALSE(started->job_id().empty());
  EXPECT_EQ(started->status().state(), v1::QUEUED);
  EXPECT_EQ(started->status().samples_received(), 12);
  ASSERT_EQ(progress.size(), 3u);
  EXPECT_EQ(progress[0].batches, 1);
  EXPECT_EQ(progress[2].samples, 12);
  EXPECT_EQ(progress[2].validation_samples, 0);
  EXPECT_GT(progress[2].bytes, 12 * (3 + 2 + 6) * 8);
  EXPECT_EQ(progress[2].bytes, started->status().bytes_received());

  const testing::FakeUpload upload = fake_->training->last_upload();
  EXPECT_TRUE(upload.complete);
  EXPECT_EQ(upload.batches, 3);
  EXPECT_EQ(upload.jacobian_form, "full");
  EXPECT_EQ(upload.config.base().name(), "linear");
  ASSERT_EQ(upload.m.size(), 36u);
  EXPECT_EQ(upload.m[0], 0);
  EXPECT_EQ(upload.m[35], 11);  // The batches arrive in order.

  std::vector<v1::JobState> states;
  absl::StatusOr<v1::JobStatus> last =
      client.WatchJob(started->job_id(), [&](const v1::JobStatus& s) {
        states.push_back(s.state());
        return true;
      });
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_THAT(states, ElementsAre(v1::QUEUED, v1::TRAINING, v1::TRAINING, v1::VALIDATING,
                                  v1::PUBLISHING, v1::SUCCEEDED));
  EXPECT_EQ(last->state(), v1::SUCCEEDED);
  EXPECT_EQ(last->new_version(), 3);
  EXPECT_EQ(last->epoch(), 2);
  EXPECT_TRUE(last->validation().has_h1());

  absl::StatusOr<v1::JobStatus> got = client.GetJob(started->job_id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->revision(), last->revision());
  absl::StatusOr<std::vector<v1::JobStatus>> jobs = client.ListJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  bool listed = false;
  for (const v1::JobStatus& j : *jobs) listed = listed || j.job_id() == started->job_id();
  EXPECT_TRUE(listed);
}

TEST_F(TrainingClientTest, WatchStopsWhenTheCallbackSaysSo) {
  const TrainingClient client = Client();
  int produced = 0;
  absl::StatusOr<v1::StartFineTuneResponse> started =
      client.StartFineTune(LinearConfig(5), Batches(1, 2, &produced));
  ASSERT_TRUE(started.ok()) << started.status();
  int seen = 0;
  absl::StatusOr<v1::JobStatus> last =
      client.WatchJob(started->job_id(), [&](const v1::JobStatus&) { return ++seen < 2; });
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(seen, 2);
  EXPECT_EQ(last->state(), v1::TRAINING);
  EXPECT_EQ(last->epoch(), 1);
}

TEST_F(TrainingClientTest, ABatchErrorCancelsTheUploadAndTheServerAbortsTheJob) {
  const TrainingClient client = Client();
  int produced = 0;
  const NextBatchFn two_then_fail = [&](v1::SampleBatch* batch) -> absl::StatusOr<bool> {
    if (produced == 2) {
      // Fail only once the server is reading the stream: a call cancelled before the server
      // has seen it never reaches the service at all.
      for (int i = 0; i < 500; ++i) {
        const testing::FakeUpload seen = fake_->training->last_upload();
        if (seen.config.description() == "aborted" && seen.batches == 2) break;
        absl::SleepFor(absl::Milliseconds(10));
      }
      return absl::CancelledError("interrupted");
    }
    ++produced;
    return EncodeSampleBatch(LinearSamples(1, produced), batch).ok();
  };
  absl::StatusOr<v1::StartFineTuneResponse> started =
      client.StartFineTune(LinearConfig(2, "aborted"), two_then_fail);
  EXPECT_EQ(started.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(started.status().message(), "interrupted");
  // The fake records the aborted upload as a CANCELLED job once it sees the cancellation.
  absl::StatusOr<std::vector<v1::JobStatus>> jobs;
  for (int i = 0; i < 200; ++i) {
    jobs = client.ListJobs();
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    if (!jobs->empty() && jobs->back().state() == v1::CANCELLED) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_FALSE(jobs->empty());
  EXPECT_EQ(jobs->back().state(), v1::CANCELLED);
  EXPECT_FALSE(fake_->training->last_upload().complete);
}

TEST_F(TrainingClientTest, ServerErrorsComeBackUnchanged) {
  const TrainingClient client = Client();
  int produced = 0;
  v1::FineTuneConfig unknown = LinearConfig();
  unknown.mutable_base()->set_name("nope");
  absl::StatusOr<v1::StartFineTuneResponse> r =
      client.StartFineTune(unknown, Batches(2, 1, &produced));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("unknown model 'nope'"));

  // A batch of the wrong width: the server ends the stream with INVALID_ARGUMENT.
  const NextBatchFn wrong = [n = 0](v1::SampleBatch* batch) mutable -> absl::StatusOr<bool> {
    if (n++ == 3) return false;
    SampleArrays s;
    s.m = F64({1, 4}, {1, 2, 3, 4});
    s.q = F64({1, 2}, {1, 2});
    if (absl::Status st = EncodeSampleBatch(s, batch); !st.ok()) return st;
    return true;
  };
  r = client.StartFineTune(LinearConfig(), wrong);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("m: expected shape"));

  // A NaN is refused with the index of its sample.
  const NextBatchFn nan = [n = 0](v1::SampleBatch* batch) mutable -> absl::StatusOr<bool> {
    if (n++ == 2) return false;
    SampleArrays s = LinearSamples(2, 0);
    if (n == 2) s.q.MutableView<double>()[3] = std::nan("");
    if (absl::Status st = EncodeSampleBatch(s, batch); !st.ok()) return st;
    return true;
  };
  r = client.StartFineTune(LinearConfig(), nan);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("sample 3 is not finite"));

  EXPECT_EQ(client.GetJob("job-999").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client.WatchJob("job-999", nullptr).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client.CancelJob("job-999").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(TrainingClientTest, CancelJobStopsARunningJob) {
  const TrainingClient client = Client();
  int produced = 0;
  absl::StatusOr<v1::StartFineTuneResponse> started =
      client.StartFineTune(LinearConfig(10, "hang"), Batches(1, 3, &produced));
  ASSERT_TRUE(started.ok()) << started.status();
  absl::StatusOr<v1::JobStatus> now = client.GetJob(started->job_id());
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->state(), v1::TRAINING);
  absl::StatusOr<v1::JobStatus> cancelled = client.CancelJob(started->job_id());
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::CANCELLED);
  // Cancelling again returns the ended job unchanged.
  absl::StatusOr<v1::JobStatus> again = client.CancelJob(started->job_id());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->revision(), cancelled->revision());
  absl::StatusOr<v1::JobStatus> last = client.WatchJob(started->job_id(), nullptr);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->state(), v1::CANCELLED);
}

TEST_F(TrainingClientTest, AdminRpcs) {
  const TrainingClient client = Client();
  EXPECT_TRUE(client.SetDefaultVersion("linear", 1).ok());
  EXPECT_TRUE(client.SetDefaultVersion("linear", 0).ok());
  EXPECT_TRUE(client.UnloadVersion("linear", 2).ok());
  EXPECT_EQ(client.SetDefaultVersion("linear", 7).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client.UnloadVersion("linear", 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.UnloadVersion("nope", 1).code(), absl::StatusCode::kNotFound);
  const std::vector<std::string> calls = fake_->admin->calls();
  ASSERT_GE(calls.size(), 3u);
  EXPECT_THAT(std::vector<std::string>(calls.end() - 3, calls.end()),
              ElementsAre("SetDefaultVersion linear 1", "SetDefaultVersion linear 0",
                          "UnloadVersion linear 2"));
}

TEST_F(TrainingClientTest, TheBearerTokenIsRequiredAndSentOnEveryCall) {
  const TrainingClient none = Client("");
  EXPECT_EQ(none.ListJobs().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(none.SetDefaultVersion("linear", 1).code(), absl::StatusCode::kUnauthenticated);
  int produced = 0;
  EXPECT_EQ(none.StartFineTune(LinearConfig(), Batches(1, 1, &produced)).status().code(),
            absl::StatusCode::kUnauthenticated);
  const TrainingClient wrong = Client("other");
  EXPECT_EQ(wrong.GetJob("job-1").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong.WatchJob("job-1", nullptr).status().code(), absl::StatusCode::kUnauthenticated);

  // A TrainingClient made from a DinoClient shares its options, token included.
  ClientOptions options;
  options.target = fake_->target();
  options.bearer_token = kToken;
  absl::StatusOr<DinoClient> dino = DinoClient::Connect(options);
  ASSERT_TRUE(dino.ok());
  EXPECT_TRUE(TrainingClient(*dino).ListJobs().ok());
  // Inference calls still work with a token (the fake Surrogate ignores it).
  EXPECT_TRUE(dino->ListModels().ok());
}

TEST(BearerTokenTest, InvalidTokensAreRefusedWithoutEchoingThem) {
  EXPECT_TRUE(ValidateBearerToken("abc.DEF-123_~+/=").ok());
  EXPECT_FALSE(ValidateBearerToken("").ok());
  absl::Status s = ValidateBearerToken("top secret");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("character 4 of 10"));
  EXPECT_THAT(std::string(s.message()), ::testing::Not(HasSubstr("secret")));
  EXPECT_FALSE(ValidateBearerToken("tab\there").ok());
  EXPECT_FALSE(ValidateBearerToken("caf\xc3\xa9").ok());
  ClientOptions options;
  options.bearer_token = "new\nline";
  EXPECT_EQ(DinoClient::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TrainingClient::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TrainingNamesTest, LossesMetricsAndStates) {
  EXPECT_EQ(*ParseLoss("l2"), v1::L2);
  EXPECT_EQ(*ParseLoss("H1"), v1::H1);
  EXPECT_EQ(*ParseLoss("reduced_h1"), v1::REDUCED_H1);
  EXPECT_EQ(*ParseLoss("reduced-h1-ms"), v1::REDUCED_H1_MS);
  EXPECT_EQ(*ParseLoss("sketched_h1"), v1::SKETCHED_H1);
  EXPECT_THAT(ParseLoss("h2").status().message(), HasSubstr("unknown loss 'h2'"));
  for (v1::Loss loss : {v1::L2, v1::H1, v1::REDUCED_H1, v1::REDUCED_H1_MS, v1::SKETCHED_H1}) {
    EXPECT_EQ(*ParseLoss(LossName(loss)), loss);
  }
  EXPECT_EQ(LossName(v1::LOSS_UNSPECIFIED), "unspecified");

  EXPECT_EQ(*ParseGateMetric("l2"), v1::L2_ACCURACY);
  EXPECT_EQ(*ParseGateMetric("h1_accuracy"), v1::H1_ACCURACY);
  EXPECT_EQ(*ParseGateMetric("REDUCED_H1"), v1::REDUCED_H1_ACCURACY);
  EXPECT_FALSE(ParseGateMetric("reduced_h1_ms").ok());
  EXPECT_EQ(GateMetricName(v1::H1_ACCURACY), "h1");
  EXPECT_EQ(GateMetricName(v1::GATE_METRIC_UNSPECIFIED), "unspecified");

  EXPECT_EQ(JobStateName(v1::SUCCEEDED), "SUCCEEDED");
  EXPECT_EQ(JobStateName(static_cast<v1::JobState>(42)), "JOB_STATE_42");
  for (v1::JobState s : {v1::SUCCEEDED, v1::REJECTED, v1::FAILED, v1::CANCELLED}) {
    EXPECT_TRUE(IsTerminal(s));
  }
  for (v1::JobState s : {v1::JOB_STATE_UNSPECIFIED, v1::RECEIVING, v1::QUEUED, v1::TRAINING,
                         v1::VALIDATING, v1::PUBLISHING}) {
    EXPECT_FALSE(IsTerminal(s));
  }
}

TEST(EncodeSampleBatchTest, EncodesEachJacobianForm) {
  v1::SampleBatch batch;
  SampleArrays s = LinearSamples(2, 0, /*validation=*/true);
  ASSERT_TRUE(EncodeSampleBatch(s, &batch).ok());
  EXPECT_EQ(SampleCount(batch), 2);
  EXPECT_TRUE(batch.validation());
  EXPECT_EQ(batch.jacobian_case(), v1::SampleBatch::kFull);
  EXPECT_THAT(batch.full().shape(), ElementsAre(2, 2, 3));
  EXPECT_EQ(batch.m().dtype(), v1::FP64);

  s.form = SampleArrays::JacobianForm::kSvd;
  s.u = F64({2, 2, 1}, {1, 0, 1, 0});
  s.sigma = F64({2, 1}, {3, 4});
  s.v = F64({2, 3, 1}, {1, 0, 0, 0, 1, 0});
  ASSERT_TRUE(EncodeSampleBatch(s, &batch).ok());
  EXPECT_EQ(batch.jacobian_case(), v1::SampleBatch::kSvd);
  EXPECT_THAT(batch.svd().sigma().shape(), ElementsAre(2, 1));

  s.form = SampleArrays::JacobianForm::kReduced;
  s.jacobian = F64({2, 1, 2}, {1, 2, 3, 4});
  s.jacobian_norm_sq = F64({2}, {5, 6});
  ASSERT_TRUE(EncodeSampleBatch(s, &batch).ok());
  EXPECT_EQ(batch.jacobian_case(), v1::SampleBatch::kReduced);
  EXPECT_THAT(batch.reduced().jacobian_norm_sq().shape(), ElementsAre(2));

  s.form = SampleArrays::JacobianForm::kNone;
  s.validation = false;
  ASSERT_TRUE(EncodeSampleBatch(s, &batch).ok());
  EXPECT_EQ(batch.jacobian_case(), v1::SampleBatch::JACOBIAN_NOT_SET);
  EXPECT_FALSE(batch.validation());
}

TEST(EncodeSampleBatchTest, RejectsInconsistentArrays) {
  v1::SampleBatch batch;
  SampleArrays s = LinearSamples(2, 0);
  s.jacobian = F64({3, 2, 3}, std::vector<double>(18, 0.0));
  absl::Status st = EncodeSampleBatch(s, &batch);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("full: expected 2 samples"));

  s = LinearSamples(2, 0);
  s.m = F64({6}, std::vector<double>(6, 0.0));
  EXPECT_THAT(EncodeSampleBatch(s, &batch).message(),
              HasSubstr("m: expected shape [samples, d_M]"));

  s = LinearSamples(2, 0);
  s.q = *NpyArray::FromValues<int64_t>({2, 2}, std::vector<int64_t>{1, 2, 3, 4});
  EXPECT_EQ(EncodeSampleBatch(s, &batch).code(), absl::StatusCode::kInvalidArgument);

  s = LinearSamples(2, 0);
  s.form = SampleArrays::JacobianForm::kSvd;
  s.u = F64({2, 2, 1}, {1, 0, 1, 0});
  s.sigma = F64({1, 1}, {3});
  s.v = F64({2, 3, 1}, {1, 0, 0, 0, 1, 0});
  EXPECT_THAT(EncodeSampleBatch(s, &batch).message(), HasSubstr("svd.sigma"));
}

}  // namespace
}  // namespace dino::client
