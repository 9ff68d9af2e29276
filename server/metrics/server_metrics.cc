#include "server/metrics/server_metrics.h"

namespace dino::metrics {
namespace {

// 50 µs … ~26 s in factors of 2: spans a reduced Jacobian of one point to a large batch.
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = 50e-6; b < 30.0; b *= 2.0) bounds.push_back(b);
  return bounds;
}

// 10 µs … ~20 s in factors of 2: a queue wait from none to a saturated server.
prometheus::Histogram::BucketBoundaries QueueBuckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = 10e-6; b < 30.0; b *= 2.0) bounds.push_back(b);
  return bounds;
}

// 1 … 4096 in factors of 2: batch sizes up to the largest --max_batch_size default.
prometheus::Histogram::BucketBoundaries BatchBuckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = 1; b <= 4096; b *= 2.0) bounds.push_back(b);
  return bounds;
}

// 10 ms … ~1.5 h in factors of 4.
prometheus::Histogram::BucketBoundaries EpochBuckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = 0.01; b < 6000.0; b *= 4.0) bounds.push_back(b);
  return bounds;
}

}  // namespace

ServerMetrics::ServerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("dino_requests_total")
                    .Help("Requests answered, by method, model and gRPC status code.")
                    .Register(*registry_)),
      latency_(prometheus::BuildHistogram()
                   .Name("dino_request_latency_seconds")
                   .Help("Time from receiving a request to answering it, by method.")
                   .Register(*registry_)),
      models_loaded_(prometheus::BuildGauge()
                         .Name("dino_models_loaded")
                         .Help("Model versions loaded and servable.")
                         .Register(*registry_)
                         .Add({})),
      in_flight_(prometheus::BuildGauge()
                     .Name("dino_requests_in_flight")
                     .Help("Calls accepted and not yet answered (queued or running), by model.")
                     .Register(*registry_)),
      queue_depth_(prometheus::BuildGauge()
                       .Name("dino_queue_depth")
                       .Help("Requests waiting in a model's queue for a compute thread.")
                       .Register(*registry_)),
      queue_seconds_(prometheus::BuildHistogram()
                         .Name("dino_queue_seconds")
                         .Help("Time a request waited in its model's queue before computing.")
                         .Register(*registry_)),
      batch_rows_(prometheus::BuildHistogram()
                      .Name("dino_batch_rows")
                      .Help("Points (rows of m) per batched computation, by model.")
                      .Register(*registry_)),
      batch_requests_(prometheus::BuildHistogram()
                          .Name("dino_batch_requests")
                          .Help("Requests answered by one batched computation, by model.")
                          .Register(*registry_)),
      jobs_(prometheus::BuildGauge()
                .Name("dino_training_jobs")
                .Help("Fine-tune jobs by state (ended ones counted since the server started).")
                .Register(*registry_)),
      samples_received_(prometheus::BuildCounter()
                            .Name("dino_training_samples_received_total")
                            .Help("Training samples accepted from uploads, by base model.")
                            .Register(*registry_)),
      sample_bytes_received_(prometheus::BuildCounter()
                                 .Name("dino_training_sample_bytes_received_total")
                                 .Help("Bytes of training samples accepted, by base model.")
                                 .Register(*registry_)),
      epoch_seconds_(prometheus::BuildHistogram()
                         .Name("dino_training_epoch_seconds")
                         .Help("Duration of fine-tune epochs (training and validation).")
                         .Register(*registry_)
                         .Add({}, EpochBuckets())),
      validation_accuracy_(prometheus::BuildGauge()
                               .Name("dino_training_validation_accuracy")
                               .Help("Validation accuracy (paper 3.6a-c) of the latest "
                                     "fine-tune of a model, by metric.")
                               .Register(*registry_)) {}

void ServerMetrics::RecordRequest(const std::string& method, const std::string& model,
                                  absl::StatusCode code, double seconds) {
  requests_.Add({{"method", method}, {"model", model}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
  static const auto buckets = LatencyBuckets();
  latency_.Add({{"method", method}}, buckets).Observe(seconds);
}

void ServerMetrics::AddInFlight(const std::string& model, double delta) {
  in_flight_.Add({{"model", model}}).Increment(delta);
}

void ServerMetrics::QueueDepthChanged(const std::string& model, int64_t delta) {
  queue_depth_.Add({{"model", model}}).Increment(static_cast<double>(delta));
}

void ServerMetrics::BatchStarted(const std::string& model, int64_t requests, int64_t rows) {
  static const auto buckets = BatchBuckets();
  batch_rows_.Add({{"model", model}}, buckets).Observe(static_cast<double>(rows));
  batch_requests_.Add({{"model", model}}, buckets).Observe(static_cast<double>(requests));
}

void ServerMetrics::QueueWait(const std::string& model, double seconds) {
  static const auto buckets = QueueBuckets();
  queue_seconds_.Add({{"model", model}}, buckets).Observe(seconds);
}

void ServerMetrics::SetModelsLoaded(size_t versions) {
  models_loaded_.Set(static_cast<double>(versions));
}

void ServerMetrics::JobStateChanged(const std::string* from, const std::string& to) {
  if (from != nullptr) jobs_.Add({{"state", *from}}).Decrement();
  jobs_.Add({{"state", to}}).Increment();
}

void ServerMetrics::AddSamplesReceived(const std::string& model, int64_t samples, int64_t bytes) {
  samples_received_.Add({{"model", model}}).Increment(static_cast<double>(samples));
  sample_bytes_received_.Add({{"model", model}}).Increment(static_cast<double>(bytes));
}

void ServerMetrics::ObserveEpoch(double seconds) { epoch_seconds_.Observe(seconds); }

void ServerMetrics::SetValidationAccuracy(const std::string& model, const std::string& metric,
                                          double value) {
  validation_accuracy_.Add({{"model", model}, {"metric", metric}}).Set(value);
}

}  // namespace dino::metrics
