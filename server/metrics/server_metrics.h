// Prometheus metrics of the serving core: requests by method, model and status code, latency
// by method, and the number of loaded model versions; and of the fine-tune jobs: jobs by
// state, samples received, epoch durations and the latest validation accuracies.
// Transport-agnostic: codes are canonical (absl) status codes, which gRPC shares.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace dino::metrics {

class ServerMetrics {
 public:
  ServerMetrics();

  // `model` must be a name the server knows (or empty): label values come only from loaded
  // models, so clients cannot grow the label set without bound.
  void RecordRequest(const std::string& method, const std::string& model, absl::StatusCode code,
                     double seconds);
  void SetModelsLoaded(size_t versions);
  // Calls accepted for a model and not yet answered (queued or running): the saturation
  // signal of its executor.
  void AddInFlight(const std::string& model, double delta);

  // Fine-tune jobs. `from` empty: a new job. States are the jobs' state names.
  void JobStateChanged(const std::string* from, const std::string& to);
  void AddSamplesReceived(const std::string& model, int64_t samples, int64_t bytes);
  void ObserveEpoch(double seconds);
  // metric: "l2", "h1" or "reduced_h1".
  void SetValidationAccuracy(const std::string& model, const std::string& metric, double value);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Gauge& models_loaded_;
  prometheus::Family<prometheus::Gauge>& in_flight_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Counter>& samples_received_;
  prometheus::Family<prometheus::Counter>& sample_bytes_received_;
  prometheus::Histogram& epoch_seconds_;
  prometheus::Family<prometheus::Gauge>& validation_accuracy_;
};

}  // namespace dino::metrics
