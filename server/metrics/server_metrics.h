// Prometheus metrics of the serving core: requests by method, model and status code, latency
// by method, and the number of loaded model versions. Transport-agnostic: codes are
// canonical (absl) status codes, which gRPC shares.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

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

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Gauge& models_loaded_;
  prometheus::Family<prometheus::Gauge>& in_flight_;
};

}  // namespace dino::metrics
