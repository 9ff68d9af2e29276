#include "client/training_client.h"

#include <grpcpp/client_context.h>
#include <grpcpp/support/sync_stream.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "client/tensor_codec.h"

namespace dino::client {
namespace {

struct LossEntry {
  const char* name;
  v1::Loss loss;
};
constexpr LossEntry kLosses[] = {{"l2", v1::L2},
                                 {"h1", v1::H1},
                                 {"reduced_h1", v1::REDUCED_H1},
                                 {"reduced_h1_ms", v1::REDUCED_H1_MS},
                                 {"sketched_h1", v1::SKETCHED_H1}};

struct MetricEntry {
  const char* name;
  v1::GateMetric metric;
};
constexpr MetricEntry kMetrics[] = {
    {"l2", v1::L2_ACCURACY}, {"h1", v1::H1_ACCURACY}, {"reduced_h1", v1::REDUCED_H1_ACCURACY}};

// Lower case, '-' -> '_', surrounding whitespace removed.
std::string NormalizeName(absl::string_view name) {
  return absl::StrReplaceAll(absl::AsciiStrToLower(absl::StripAsciiWhitespace(name)), {{"-", "_"}});
}

// The leading dimension of `array` must be `rows`.
absl::Status CheckRows(const NpyArray& array, int64_t rows, absl::string_view field) {
  if (array.rank() == 0 || array.shape[0] != rows) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": expected ", rows, " samples (shape [",
                                                   rows, ", ...]), got shape ",
                                                   ShapeToString(array.shape)));
  }
  return absl::OkStatus();
}

// Encodes `array` into `tensor` after checking its sample count.
absl::Status EncodeRows(const NpyArray& array, int64_t rows, v1::Tensor* tensor,
                        absl::string_view field) {
  if (absl::Status s = CheckRows(array, rows, field); !s.ok()) return s;
  return EncodeTensor(array, tensor, field);
}

}  // namespace

absl::StatusOr<v1::Loss> ParseLoss(absl::string_view name) {
  const std::string key = NormalizeName(name);
  for (const LossEntry& e : kLosses) {
    if (key == e.name) return e.loss;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown loss '", name, "'; expected l2, h1, reduced_h1, reduced_h1_ms or ", "sketched_h1"));
}

absl::string_view LossName(v1::Loss loss) {
  for (const LossEntry& e : kLosses) {
    if (loss == e.loss) return e.name;
  }
  return "unspecified";
}

absl::StatusOr<v1::GateMetric> ParseGateMetric(absl::string_view name) {
  std::string key = NormalizeName(name);
  if (absl::EndsWith(key, "_accuracy")) key.resize(key.size() - sizeof("_accuracy") + 1);
  for (const MetricEntry& e : kMetrics) {
    if (key == e.name) return e.metric;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown gate metric '", name, "'; expected l2, h1 or reduced_h1"));
}

absl::string_view GateMetricName(v1::GateMetric metric) {
  for (const MetricEntry& e : kMetrics) {
    if (metric == e.metric) return e.name;
  }
  return "unspecified";
}

std::string JobStateName(v1::JobState state) {
  const std::string& name = v1::JobState_Name(state);
  return name.empty() ? absl::StrCat("JOB_STATE_", static_cast<int>(state)) : name;
}

bool IsTerminal(v1::JobState state) {
  return state == v1::SUCCEEDED || state == v1::REJECTED || state == v1::FAILED ||
         state == v1::CANCELLED;
}

absl::Status EncodeSampleBatch(const SampleArrays& arrays, v1::SampleBatch* batch) {
  batch->Clear();
  if (arrays.m.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("m: expected shape [samples, d_M], got ", ShapeToString(arrays.m.shape)));
  }
  const int64_t rows = arrays.m.shape[0];
  if (arrays.q.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("q: expected shape [samples, d_Q], got ", ShapeToString(arrays.q.shape)));
  }
  if (absl::Status s = EncodeRows(arrays.m, rows, batch->mutable_m(), "m"); !s.ok()) return s;
  if (absl::Status s = EncodeRows(arrays.q, rows, batch->mutable_q(), "q"); !s.ok()) return s;
  using Form = SampleArrays::JacobianForm;
  switch (arrays.form) {
    case Form::kNone:
      break;
    case Form::kFull:
      if (absl::Status s = EncodeRows(arrays.jacobian, rows, batch->mutable_full(), "full");
          !s.ok()) {
        return s;
      }
      break;
    case Form::kSvd: {
      v1::TruncatedSvd* svd = batch->mutable_svd();
      if (absl::Status s = EncodeRows(arrays.u, rows, svd->mutable_u(), "svd.u"); !s.ok()) return s;
      if (absl::Status s = EncodeRows(arrays.sigma, rows, svd->mutable_sigma(), "svd.sigma");
          !s.ok()) {
        return s;
      }
      if (absl::Status s = EncodeRows(arrays.v, rows, svd->mutable_v(), "svd.v"); !s.ok()) return s;
      break;
    }
    case Form::kReduced: {
      v1::ReducedJacobian* reduced = batch->mutable_reduced();
      if (absl::Status s = EncodeRows(arrays.jacobian, rows, reduced->mutable_reduced_jacobian(),
                                      "reduced.reduced_jacobian");
          !s.ok()) {
        return s;
      }
      if (arrays.jacobian_norm_sq.has_value()) {
        if (absl::Status s =
                EncodeRows(*arrays.jacobian_norm_sq, rows, reduced->mutable_jacobian_norm_sq(),
                           "reduced.jacobian_norm_sq");
            !s.ok()) {
          return s;
        }
      }
      break;
    }
  }
  batch->set_validation(arrays.validation);
  return absl::OkStatus();
}

int64_t SampleCount(const v1::SampleBatch& batch) {
  return batch.m().shape_size() > 0 ? batch.m().shape(0) : 0;
}

absl::StatusOr<TrainingClient> TrainingClient::Connect(const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CreateClientChannel(options);
  if (!channel.ok()) return channel.status();
  return TrainingClient(*std::move(channel), options);
}

TrainingClient::TrainingClient(std::shared_ptr<grpc::ChannelInterface> channel,
                               const ClientOptions& options)
    : options_(options),
      channel_(std::move(channel)),
      training_stub_(v1::Training::NewStub(channel_)),
      admin_stub_(v1::ModelAdmin::NewStub(channel_)) {}

TrainingClient::TrainingClient(const DinoClient& client)
    : TrainingClient(client.channel(), client.options()) {}

absl::StatusOr<v1::StartFineTuneResponse> TrainingClient::StartFineTune(
    const v1::FineTuneConfig& config, const NextBatchFn& next_batch,
    const UploadProgressFn& progress, const CallOptions& call) const {
  const absl::Time start = absl::Now();
  grpc::ClientContext context;
  // Streams get no default deadline: the upload takes as long as the data does.
  ConfigureContext(options_, call.timeout, &context);
  v1::StartFineTuneResponse response;
  std::unique_ptr<grpc::ClientWriterInterface<v1::FineTuneUpload>> writer =
      training_stub_->StartFineTune(&context, &response);

  v1::FineTuneUpload upload;
  *upload.mutable_config() = config;
  // A failed Write means the stream is over (the server answered early, or the connection
  // broke); Finish then tells why.
  bool open = writer->Write(upload);
  UploadProgress sent;
  while (open) {
    v1::SampleBatch* batch = upload.mutable_samples();
    batch->Clear();
    absl::StatusOr<bool> more = next_batch(batch);
    if (!more.ok()) {
      // Cancelling before WritesDone tells the server the upload is incomplete: it aborts the
      // job instead of training on part of the data.
      context.TryCancel();
      (void)writer->Finish();
      return more.status();
    }
    if (!*more) break;
    const int64_t samples = SampleCount(*batch);
    const int64_t bytes = static_cast<int64_t>(batch->ByteSizeLong());
    const bool validation = batch->validation();
    open = writer->Write(upload);
    if (!open) break;
    ++sent.batches;
    sent.samples += samples;
    if (validation) sent.validation_samples += samples;
    sent.bytes += bytes;
    sent.elapsed = absl::Now() - start;
    if (progress) progress(sent);
  }
  if (open) writer->WritesDone();
  if (grpc::Status s = writer->Finish(); !s.ok()) return FromGrpcStatus(s);
  return response;
}

absl::StatusOr<v1::JobStatus> TrainingClient::WatchJob(absl::string_view job_id,
                                                       const JobStatusFn& on_status,
                                                       const CallOptions& call) const {
  grpc::ClientContext context;
  ConfigureContext(options_, call.timeout, &context);
  v1::WatchJobRequest request;
  request.set_job_id(std::string(job_id));
  std::unique_ptr<grpc::ClientReaderInterface<v1::JobStatus>> reader =
      training_stub_->WatchJob(&context, request);
  v1::JobStatus status;
  std::optional<v1::JobStatus> last;
  while (reader->Read(&status)) {
    last = status;
    if (on_status && !on_status(status)) {
      context.TryCancel();
      (void)reader->Finish();
      return *std::move(last);
    }
  }
  if (grpc::Status s = reader->Finish(); !s.ok()) return FromGrpcStatus(s);
  if (!last.has_value()) {
    return absl::InternalError("malformed WatchJob response: the stream ended without a status");
  }
  return *std::move(last);
}

template <typename Stub, typename Request, typename Response>
absl::Status TrainingClient::Unary(
    Stub& stub, grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Request&, Response*),
    const Request& request, Response* response, const CallOptions& call) const {
  grpc::ClientContext context;
  ConfigureContext(options_, call.timeout.value_or(options_.timeout), &context);
  return FromGrpcStatus((stub.*rpc)(&context, request, response));
}

absl::StatusOr<v1::JobStatus> TrainingClient::GetJob(absl::string_view job_id,
                                                     const CallOptions& call) const {
  v1::GetJobRequest request;
  request.set_job_id(std::string(job_id));
  v1::JobStatus response;
  absl::Status s =
      Unary(*training_stub_, &v1::Training::StubInterface::GetJob, request, &response, call);
  if (!s.ok()) return s;
  return response;
}

absl::StatusOr<std::vector<v1::JobStatus>> TrainingClient::ListJobs(const CallOptions& call) const {
  v1::ListJobsResponse response;
  absl::Status s = Unary(*training_stub_, &v1::Training::StubInterface::ListJobs,
                         v1::ListJobsRequest(), &response, call);
  if (!s.ok()) return s;
  return std::vector<v1::JobStatus>(response.jobs().begin(), response.jobs().end());
}

absl::StatusOr<v1::JobStatus> TrainingClient::CancelJob(absl::string_view job_id,
                                                        const CallOptions& call) const {
  v1::CancelJobRequest request;
  request.set_job_id(std::string(job_id));
  v1::JobStatus response;
  absl::Status s =
      Unary(*training_stub_, &v1::Training::StubInterface::CancelJob, request, &response, call);
  if (!s.ok()) return s;
  return response;
}

absl::Status TrainingClient::SetDefaultVersion(absl::string_view model, int64_t version,
                                               const CallOptions& call) const {
  v1::SetDefaultVersionRequest request;
  request.set_name(std::string(model));
  request.set_version(version);
  v1::SetDefaultVersionResponse response;
  return Unary(*admin_stub_, &v1::ModelAdmin::StubInterface::SetDefaultVersion, request, &response,
               call);
}

absl::Status TrainingClient::UnloadVersion(absl::string_view model, int64_t version,
                                           const CallOptions& call) const {
  v1::UnloadVersionRequest request;
  request.set_name(std::string(model));
  request.set_version(version);
  v1::UnloadVersionResponse response;
  return Unary(*admin_stub_, &v1::ModelAdmin::StubInterface::UnloadVersion, request, &response,
               call);
}

}  // namespace dino::client
