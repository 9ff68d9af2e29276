// What the request path reports for monitoring. The serving core calls it; the metrics layer
// implements it (server/metrics), so the core knows nothing of Prometheus and every frontend
// gets the same numbers. Implementations must be thread-safe and cheap: they run on the
// request path.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace dino::serving {

class RequestObserver {
 public:
  virtual ~RequestObserver() = default;

  // A request answered or refused. `model` is empty unless it names a loaded model, so that
  // clients cannot mint label values.
  virtual void RequestFinished(const char* method, const std::string& model, absl::StatusCode code,
                               double seconds) = 0;
  // Requests admitted and not yet answered (queued or computing) changed by `delta`.
  virtual void InFlightChanged(const std::string& model, int64_t delta) = 0;
  // Requests waiting in the model's queue changed by `delta`.
  virtual void QueueDepthChanged(const std::string& model, int64_t delta) = 0;
  // A batch started computing: its requests, their rows (points) and how long each waited.
  virtual void BatchStarted(const std::string& model, int64_t requests, int64_t rows) = 0;
  virtual void QueueWait(const std::string& model, double seconds) = 0;
  // An answer carried the trust signal (Query::want_trust) for `rows` points, `flagged` of
  // them out of distribution.
  virtual void TrustScored(const std::string& model, int64_t rows, int64_t flagged) = 0;
};

}  // namespace dino::serving
