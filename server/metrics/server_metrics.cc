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
      trust_scored_rows_(prometheus::BuildCounter()
                             .Name("dino_trust_scored_rows_total")
                             .Help("Points whose trust score a request asked for, by model.")
                             .Register(*registry_)),
      out_of_distribution_rows_(
          prometheus::BuildCounter()
              .Name("dino_out_of_distribution_rows_total")
              .Help("Points the trust score flagged out of distribution (above the training "
                    "inputs' 99.9 % quantile), by model.")
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

// Looks `key` up under the shared lock; creates it with `make` under the exclusive one.
template <typename Map, typename Key, typename Make>
auto& FindOrMake(std::shared_mutex& mutex, Map& map, const Key& key, Make make) {
  {
    std::shared_lock<std::shared_mutex> lock(mutex);
    auto it = map.find(key);
    if (it != map.end()) return *it->second;
  }
  std::unique_lock<std::shared_mutex> lock(mutex);
  auto& slot = map[key];
  if (!slot) slot = make();
  return *slot;
}

ServerMetrics::ModelSeries& ServerMetrics::SeriesOf(const std::string& model) {
  return FindOrMake(series_mutex_, series_, model, [&] {
    static const auto queue_buckets = QueueBuckets();
    static const auto batch_buckets = BatchBuckets();
    const prometheus::Labels labels{{"model", model}};
    return std::make_unique<ModelSeries>(ModelSeries{
        &in_flight_.Add(labels), &queue_depth_.Add(labels),
        &queue_seconds_.Add(labels, queue_buckets), &batch_rows_.Add(labels, batch_buckets),
        &batch_requests_.Add(labels, batch_buckets), &trust_scored_rows_.Add(labels),
        &out_of_distribution_rows_.Add(labels)});
  });
}

prometheus::Counter& ServerMetrics::RequestCounter(const std::string& method,
                                                   const std::string& model,
                                                   absl::StatusCode code) {
  return FindOrMake(
      series_mutex_, request_counters_, std::make_tuple(method, model, static_cast<int>(code)),
      [&] {
        return &requests_.Add(
            {{"method", method}, {"model", model}, {"code", absl::StatusCodeToString(code)}});
      });
}

prometheus::Histogram& ServerMetrics::LatencyOf(const std::string& method) {
  return FindOrMake(series_mutex_, latencies_, method, [&] {
    static const auto buckets = LatencyBuckets();
    return &latency_.Add({{"method", method}}, buckets);
  });
}

void ServerMetrics::RecordRequest(const std::string& method, const std::string& model,
                                  absl::StatusCode code, double seconds) {
  RequestCounter(method, model, code).Increment();
  LatencyOf(method).Observe(seconds);
}

void ServerMetrics::AddInFlight(const std::string& model, double delta) {
  SeriesOf(model).in_flight->Increment(delta);
}

void ServerMetrics::QueueDepthChanged(const std::string& model, int64_t delta) {
  SeriesOf(model).queue_depth->Increment(static_cast<double>(delta));
}

void ServerMetrics::BatchStarted(const std::string& model, int64_t requests, int64_t rows) {
  ModelSeries& series = SeriesOf(model);
  series.batch_rows->Observe(static_cast<double>(rows));
  series.batch_requests->Observe(static_cast<double>(requests));
}

void ServerMetrics::TrustScored(const std::string& model, int64_t rows, int64_t flagged) {
  ModelSeries& series = SeriesOf(model);
  series.trust_scored_rows->Increment(static_cast<double>(rows));
  series.out_of_distribution_rows->Increment(static_cast<double>(flagged));
}

void ServerMetrics::QueueWait(const std::string& model, double seconds) {
  SeriesOf(model).queue_seconds->Observe(seconds);
}

void ServerMetrics::SetModelsLoaded(size_t versions) {
  models_loaded_.Set(static_cast<double>(versions));
}

void ServerMetrics::JobStateChanged(const std::string* from, const std::string& to) {
  if (from != nullptr) jobs_.Add({{"state", *from}}).Decrement();
  jobs_.Add({{"state", to}}).Increment();
}

void ServerMetrics::DeclareJobState(const std::string& state) { jobs_.Add({{"state", state}}); }

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
