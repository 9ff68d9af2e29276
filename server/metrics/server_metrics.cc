#include "server/metrics/server_metrics.h"

namespace dino::metrics {
namespace {

// 50 µs … ~26 s in factors of 2: spans a reduced Jacobian of one point to a large batch.
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = 50e-6; b < 30.0; b *= 2.0) bounds.push_back(b);
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

void ServerMetrics::SetModelsLoaded(size_t versions) {
  models_loaded_.Set(static_cast<double>(versions));
}

}  // namespace dino::metrics
