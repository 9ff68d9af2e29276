// training_client: a synchronous C++ client for the dino.v1.Training and dino.v1.ModelAdmin
// services (proto/dino/v1/training.proto): fine-tuning a served model from streamed samples,
// following the job, and managing the served versions.
//
//   dino::client::ClientOptions options;
//   options.target = "localhost:50051";
//   options.bearer_token = "...";  // When the server runs with --admin_token_file.
//   absl::StatusOr<dino::client::TrainingClient> client =
//       dino::client::TrainingClient::Connect(options);
//   dino::v1::FineTuneConfig config;
//   config.mutable_base()->set_name("poisson");
//   config.set_loss(dino::v1::H1);
//   int64_t next = 0;
//   auto r = client->StartFineTune(config, [&](dino::v1::SampleBatch* batch)
//                                      -> absl::StatusOr<bool> {
//     if (next == n) return false;  // The end of the upload.
//     ... fill *batch (e.g. with EncodeSampleBatch) ...
//     return true;
//   });
//   absl::StatusOr<dino::v1::JobStatus> last = client->WatchJob(r->job_id(), print_status);
//
// The configuration and job status are the protocol's own messages (v1::FineTuneConfig,
// v1::JobStatus): they are plain data with many optional fields, and training.proto
// documents each one. Samples go in as NpyArray values through SampleArrays /
// EncodeSampleBatch. Like DinoClient, every method is const and thread-safe, and a failed RPC
// returns the server's gRPC code and message unchanged.
#ifndef DINO_CLIENT_TRAINING_CLIENT_H_
#define DINO_CLIENT_TRAINING_CLIENT_H_

#include <grpcpp/channel.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/dino_client.h"
#include "dino/v1/training.grpc.pb.h"
#include "models/io/npy.h"

namespace dino::client {

// Loss names as the CLI and the Python client spell them: "l2", "h1", "reduced_h1",
// "reduced_h1_ms", "sketched_h1" (case-insensitive; '-' may stand for '_').
// InvalidArgument listing the choices for anything else.
absl::StatusOr<v1::Loss> ParseLoss(absl::string_view name);
// "l2", ... ; "unspecified" for LOSS_UNSPECIFIED (the server's default, H1).
absl::string_view LossName(v1::Loss loss);
// Gate metric names: "l2", "h1", "reduced_h1" (also with the "_accuracy" suffix).
absl::StatusOr<v1::GateMetric> ParseGateMetric(absl::string_view name);
// "l2", "h1", "reduced_h1"; "unspecified" for GATE_METRIC_UNSPECIFIED.
absl::string_view GateMetricName(v1::GateMetric metric);
// "RECEIVING", "SUCCEEDED", ...: the protocol's spelling; "JOB_STATE_UNSPECIFIED" for 0.
std::string JobStateName(v1::JobState state);
// SUCCEEDED, REJECTED, FAILED or CANCELLED: the job will not change any more.
bool IsTerminal(v1::JobState state);

// The derivative data of b samples, in one of the protocol's Jacobian forms.
struct SampleArrays {
  enum class JacobianForm { kNone, kFull, kSvd, kReduced };

  NpyArray m;  // [b, d_M]
  NpyArray q;  // [b, d_Q]
  JacobianForm form = JacobianForm::kNone;
  NpyArray jacobian;  // kFull: [b, d_Q, d_M]. kReduced: Uᵀ J V in the model's bases [b, r_Q, r_M].
  NpyArray u;         // kSvd: [b, d_Q, r]
  NpyArray sigma;     // kSvd: [b, r]
  NpyArray v;         // kSvd: [b, d_M, r]
  std::optional<NpyArray> jacobian_norm_sq;  // kReduced, optional: ‖J‖²_F [b]
  // These samples form the validation set (SampleBatch.validation).
  bool validation = false;
};

// Fills `batch` from `arrays` (replacing its contents). InvalidArgument, naming the field
// ("m", "svd.u", ...), for a dtype the wire does not carry (only FP32/FP64), an array that is
// not [b, ...] with the same b as m, or m / q not of rank 2. Dimensions against the model and
// finiteness are the server's to check.
absl::Status EncodeSampleBatch(const SampleArrays& arrays, v1::SampleBatch* batch);

// The number of samples in `batch` (the first dimension of m; 0 when m has none).
int64_t SampleCount(const v1::SampleBatch& batch);

// Where an upload stands; passed to the progress callback after each batch is sent.
struct UploadProgress {
  int64_t batches = 0;             // Sample batches sent (the config is not counted).
  int64_t samples = 0;             // Samples sent, validation samples included.
  int64_t validation_samples = 0;  // Of which marked validation.
  int64_t bytes = 0;               // Serialized bytes of the batches sent.
  absl::Duration elapsed;          // Since the call started.
};

// Produces the next batch of an upload: fills *batch and returns true, or returns false at
// the end of the upload (batch ignored). An error aborts the upload: the call is cancelled (so
// the server aborts the job) and StartFineTune returns that error.
using NextBatchFn = std::function<absl::StatusOr<bool>(v1::SampleBatch* batch)>;
using UploadProgressFn = std::function<void(const UploadProgress& progress)>;
// Receives each JobStatus WatchJob reads; returns false to stop watching (the job goes on).
using JobStatusFn = std::function<bool(const v1::JobStatus& status)>;

class TrainingClient {
 public:
  // As DinoClient::Connect: validates `options` and creates a lazily connecting channel.
  static absl::StatusOr<TrainingClient> Connect(const ClientOptions& options);
  // Uses an existing channel; target and credentials in `options` are ignored.
  TrainingClient(std::shared_ptr<grpc::ChannelInterface> channel, const ClientOptions& options);
  // Shares `client`'s channel and options (bearer token included).
  explicit TrainingClient(const DinoClient& client);

  TrainingClient(TrainingClient&&) = default;
  TrainingClient& operator=(TrainingClient&&) = default;

  const ClientOptions& options() const { return options_; }
  v1::Training::StubInterface& training_stub() const { return *training_stub_; }
  v1::ModelAdmin::StubInterface& admin_stub() const { return *admin_stub_; }

  // Training/StartFineTune: sends `config`, then the batches `next_batch` produces, one
  // message each, then closes the upload and returns the job id and its first status. Calls
  // `progress` (may be null) after each batch. When the server ends the stream early (e.g.
  // INVALID_ARGUMENT for a NaN, RESOURCE_EXHAUSTED past its caps) the server's status is
  // returned. The call has no deadline unless `call.timeout` sets one: an upload lasts as
  // long as the data takes to send.
  absl::StatusOr<v1::StartFineTuneResponse> StartFineTune(const v1::FineTuneConfig& config,
                                                          const NextBatchFn& next_batch,
                                                          const UploadProgressFn& progress = {},
                                                          const CallOptions& call = {}) const;

  // Training/WatchJob: calls `on_status` (may be null) for the job's current status and for
  // every change until the job ends, and returns the last status received. When `on_status`
  // returns false the watch stops there (the job itself goes on) and that status is returned.
  // No deadline unless `call.timeout` sets one.
  absl::StatusOr<v1::JobStatus> WatchJob(absl::string_view job_id, const JobStatusFn& on_status,
                                         const CallOptions& call = {}) const;

  absl::StatusOr<v1::JobStatus> GetJob(absl::string_view job_id,
                                       const CallOptions& call = {}) const;
  // Oldest first.
  absl::StatusOr<std::vector<v1::JobStatus>> ListJobs(const CallOptions& call = {}) const;
  // The job's status after the cancellation (unchanged when it had already ended).
  absl::StatusOr<v1::JobStatus> CancelJob(absl::string_view job_id,
                                          const CallOptions& call = {}) const;

  // ModelAdmin/SetDefaultVersion: version 0 restores the default policy (highest loaded).
  absl::Status SetDefaultVersion(absl::string_view model, int64_t version,
                                 const CallOptions& call = {}) const;
  // ModelAdmin/UnloadVersion: version is required (> 0).
  absl::Status UnloadVersion(absl::string_view model, int64_t version,
                             const CallOptions& call = {}) const;

 private:
  ClientOptions options_;
  std::shared_ptr<grpc::ChannelInterface> channel_;
  // One unary call of `stub` with this client's metadata and the call's deadline.
  template <typename Stub, typename Request, typename Response>
  absl::Status Unary(Stub& stub,
                     grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Request&, Response*),
                     const Request& request, Response* response, const CallOptions& call) const;

  std::unique_ptr<v1::Training::StubInterface> training_stub_;
  std::unique_ptr<v1::ModelAdmin::StubInterface> admin_stub_;
};

}  // namespace dino::client

#endif  // DINO_CLIENT_TRAINING_CLIENT_H_
