// Prometheus metrics of the serving core: requests by method, model and status code, latency
// by method, in-flight requests, queue depth, queue wait and batch sizes by model, and the
// number of loaded model versions, points scored by the trust signal and those flagged out of
// distribution, by model; and of the fine-tune jobs: jobs by
// state, samples received, epoch durations and the latest validation accuracies.
// Transport-agnostic: codes are canonical (absl) status codes, which gRPC shares.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <tuple>

#include "absl/status/status.h"
#include "server/core/request_observer.h"

namespace dino::metrics {

class ServerMetrics final : public serving::RequestObserver {
 public:
  ServerMetrics();

  // The serving core's request path (serving::RequestObserver).
  void RequestFinished(const char* method, const std::string& model, absl::StatusCode code,
                       double seconds) override {
    RecordRequest(method, model, code, seconds);
  }
  void InFlightChanged(const std::string& model, int64_t delta) override {
    AddInFlight(model, static_cast<double>(delta));
  }
  void QueueDepthChanged(const std::string& model, int64_t delta) override;
  void BatchStarted(const std::string& model, int64_t requests, int64_t rows) override;
  void QueueWait(const std::string& model, double seconds) override;
  void TrustScored(const std::string& model, int64_t rows, int64_t flagged) override;

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
  // Exports dino_training_jobs{state} at 0 before any job reaches `state`. increase() and
  // rate() take a series' first sample as its starting point, so a series born at 1 (the
  // first failed job since a restart) would never register as an increase in an alert.
  void DeclareJobState(const std::string& state);
  void AddSamplesReceived(const std::string& model, int64_t samples, int64_t bytes);
  void ObserveEpoch(double seconds);
  // metric: "l2", "h1" or "reduced_h1".
  void SetValidationAccuracy(const std::string& model, const std::string& metric, double value);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  // The series of one model, looked up once: Family::Add builds and hashes a label map on
  // every call, which the request path would otherwise pay several times per request.
  struct ModelSeries {
    prometheus::Gauge* in_flight;
    prometheus::Gauge* queue_depth;
    prometheus::Histogram* queue_seconds;
    prometheus::Histogram* batch_rows;
    prometheus::Histogram* batch_requests;
    prometheus::Counter* trust_scored_rows;
    prometheus::Counter* out_of_distribution_rows;
  };
  ModelSeries& SeriesOf(const std::string& model);
  prometheus::Counter& RequestCounter(const std::string& method, const std::string& model,
                                      absl::StatusCode code);
  prometheus::Histogram& LatencyOf(const std::string& method);

  std::shared_mutex series_mutex_;
  std::map<std::string, std::unique_ptr<ModelSeries>> series_;
  std::map<std::tuple<std::string, std::string, int>, prometheus::Counter*> request_counters_;
  std::map<std::string, prometheus::Histogram*> latencies_;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Gauge& models_loaded_;
  prometheus::Family<prometheus::Gauge>& in_flight_;
  prometheus::Family<prometheus::Gauge>& queue_depth_;
  prometheus::Family<prometheus::Histogram>& queue_seconds_;
  prometheus::Family<prometheus::Histogram>& batch_rows_;
  prometheus::Family<prometheus::Histogram>& batch_requests_;
  prometheus::Family<prometheus::Counter>& trust_scored_rows_;
  prometheus::Family<prometheus::Counter>& out_of_distribution_rows_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Counter>& samples_received_;
  prometheus::Family<prometheus::Counter>& sample_bytes_received_;
  prometheus::Histogram& epoch_seconds_;
  prometheus::Family<prometheus::Gauge>& validation_accuracy_;
};

}  // namespace dino::metrics
