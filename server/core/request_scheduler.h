// The one request path of the serving core, shared by every frontend (gRPC today; HTTP or
// other protocols call the same Submit): model resolution, validation, admission against
// the model's bounded queue, deadline and cancellation checks before compute, the dynamic
// batcher, the response-size limit, and the metrics of all of it. Frontends only translate
// their wire format to a Query and an Answer back.
//
// Each model name has a queue and its own compute threads (config.json "executors"), so
// one busy model cannot starve another. A compute thread takes the oldest request and every
// other queued request for the same model version, up to batching.max_batch_size points,
// and answers them with one SurrogateModel::Compute: concurrent requests from many clients
// (MCMC chains, design candidates) become one matrix computation. With the default
// max_queue_delay_us = 0 a thread never waits for company — a lone request runs at once, and
// requests that arrive while the threads are busy are batched; a positive delay trades
// latency for larger batches (Triton's dynamic batcher; preferred_batch_size ends the wait
// early).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "server/core/model_manager.h"
#include "server/core/request_observer.h"
#include "server/core/surrogate_model.h"

namespace dino::serving {

// Which model a request is for (surrogate.proto's ModelRef).
struct ModelTarget {
  std::string name;
  int64_t version = 0;  // 0: the default version.
  std::string label;    // Or a version label.
};

// What the core needs to know of the caller's call.
struct CallControl {
  std::chrono::system_clock::time_point deadline = std::chrono::system_clock::time_point::max();
  std::function<bool()> is_cancelled;  // May be empty.
};

class RequestScheduler {
 public:
  struct Options {
    int default_executors = 1;  // Compute threads of a model whose config says 0.
    int64_t max_response_bytes = 64 << 20;
    RequestObserver* observer = nullptr;  // May be null.
    // A request for a model with nothing queued or computing runs on the caller's thread
    // (the transport's), saving the hand-off to a compute thread and back. Only then: one
    // such computation at a time, so that a loaded server keeps its transport threads free
    // and batches on its compute threads. Off: always hand off.
    bool run_inline_when_idle = false;
  };
  // Called exactly once per Submit, with the version that answered (0 if none) and, when
  // ok, the answer. It runs on the caller's thread for refusals, else on a compute thread,
  // and must not block.
  using Done = std::function<void(const absl::Status& status, int64_t version, Answer answer)>;

  RequestScheduler(const ModelManager& models, Options options);
  ~RequestScheduler();  // Shutdown().
  RequestScheduler(const RequestScheduler&) = delete;
  RequestScheduler& operator=(const RequestScheduler&) = delete;

  // `query` (of `method`) may carry the frontend's decoding error, which is then answered (and
  // counted) like any other refusal. Refusals: NOT_FOUND (model), INVALID_ARGUMENT /
  // FAILED_PRECONDITION / RESOURCE_EXHAUSTED (the query), RESOURCE_EXHAUSTED (queue full),
  // DEADLINE_EXCEEDED, UNAVAILABLE (shutting down).
  void Submit(Method method, const ModelTarget& target, absl::StatusOr<Query> query,
              CallControl control, Done done);

  // A reduced-basis model's bases (no computation, so no queue), in `output_dtype` (default:
  // the model's), under the same response-size limit and metrics as Submit.
  struct VersionBases {
    int64_t version = 0;
    SurrogateModel::Bases bases;
  };
  absl::StatusOr<VersionBases> GetBases(const ModelTarget& target,
                                        std::optional<torch::Dtype> output_dtype);

  // A request for a model's prior (model_prior.h; dino.v1.Prior).
  struct PriorQuery {
    enum class Kind { kDescribe, kSample, kApply } kind = Kind::kDescribe;
    int64_t count = 0;  // kSample
    uint64_t seed = 0;
    uint64_t first_index = 0;
    PriorOperator op = PriorOperator::kCovariance;  // kApply
    torch::Tensor vectors;
    bool with_mean = false;
    std::optional<torch::Dtype> output_dtype;  // Default float64.
  };
  struct PriorAnswer {
    int64_t version = 0;
    std::shared_ptr<const ModelPrior> prior;
    std::string source;    // Where the model names its prior (PriorLookup::source).
    torch::Tensor values;  // kDescribe: the mean; kSample: the samples; kApply: the result.
  };
  // Answers a prior query on the caller's thread: a few sparse solves per vector (well under
  // a millisecond each on the paper's mesh), nothing to batch with other requests, so no
  // queue; but the same model resolution, row limit (--max_batch_size), response-size limit
  // and metrics ("GetPrior", "SamplePrior", "ApplyPrior") as Submit. `query` may carry the
  // frontend's decoding error, answered and counted like any other refusal.
  absl::StatusOr<PriorAnswer> Prior(const ModelTarget& target, absl::StatusOr<PriorQuery> query);

  // Refuses new requests, answers every request already admitted, stops the compute
  // threads. Idempotent.
  void Shutdown();

  // A count that grows with every request received and every answer given (of Submit, Prior
  // and GetBases): unchanged between two looks means the request path was quiet in between
  // (IdleMemoryTrimmer).
  uint64_t activity() const { return activity_.load(std::memory_order_relaxed); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Pending {
    ServableHandle servable;
    PreparedQuery query;
    CallControl control;
    Done done;
    Clock::time_point arrived;
  };
  class ModelQueue;

  // The model's queue, created on first use; null once shutting down.
  std::shared_ptr<ModelQueue> QueueFor(const ServableHandle& servable);
  void Finish(const char* method, const std::string& model, Clock::time_point arrived,
              const absl::Status& status, int64_t version, Answer answer, const Done& done);
  void RunBatch(ModelQueue& queue, std::vector<std::unique_ptr<Pending>> batch);

  const ModelManager& models_;
  const Options options_;
  std::mutex queues_mutex_;
  std::map<std::string, std::shared_ptr<ModelQueue>> queues_;
  bool stopping_ = false;
  std::atomic<uint64_t> activity_{0};
};

}  // namespace dino::serving
