#include "server/core/request_scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/log.h"

namespace dino::serving {

// One model name's queue and compute threads.
class RequestScheduler::ModelQueue {
 public:
  ModelQueue(RequestScheduler& scheduler, std::string name)
      : scheduler_(scheduler), name_(std::move(name)) {}
  ~ModelQueue() { Stop(); }

  const std::string& name() const { return name_; }

  // Takes the request unless the queue is full (then `pending` stays with the caller); the
  // batching knobs and thread count come
  // from the model's config as of this request, so a config change applies at once.
  absl::Status Admit(std::unique_ptr<Pending>& pending) {
    const ModelConfig& config = *pending->servable.config;
    const int executors =
        config.executors > 0 ? config.executors : scheduler_.options_.default_executors;
    bool delay_waits = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return absl::UnavailableError("the server is shutting down");
      batching_ = config.batching;
      if (static_cast<int64_t>(pending_.size()) >= batching_.max_queue_size) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "model '", name_, "' has ", pending_.size(),
            " requests queued, its limit (batching.max_queue_size = ", batching_.max_queue_size,
            "); retry with backoff"));
      }
      pending_.push_back(std::move(pending));
      delay_waits = batching_.max_queue_delay_us > 0;
      UseExecutorsLocked(executors);
    }
    // Without a queue delay one idle thread is enough; with one, a thread waiting for
    // company must see the new request too.
    if (delay_waits) {
      wake_.notify_all();
    } else {
      wake_.notify_one();
    }
    return absl::OkStatus();
  }

  // Claims a compute slot for a request to run on the caller's thread, if the model is idle:
  // nothing queued and nothing computing (with a free slot alone, inline computations
  // blocked the transport's threads under load: 64-client throughput fell from 11,500 to
  // 4,100 requests/s). Release() gives the slot back.
  bool ClaimIfIdle(int executors) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || !pending_.empty()) return false;
    UseExecutorsLocked(executors);
    if (busy_ > 0) return false;
    ++busy_;
    return true;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --busy_;
      if (pending_.empty()) return;
    }
    wake_.notify_one();  // A request queued meanwhile waits for this slot.
  }

  // Runs what is queued, then joins the threads.
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }

 private:
  // Points of queued requests that could join a batch for `model`.
  int64_t CompatibleRows(const SurrogateModel* model) const {
    int64_t rows = 0;
    for (const auto& pending : pending_) {
      if (pending->servable.model.get() == model) rows += pending->query.points_count();
    }
    return rows;
  }

  // Compute threads: more start at once; fewer take effect when the server restarts.
  void UseExecutorsLocked(int executors) {
    executors_ = std::max(executors_, executors);
    while (static_cast<int>(threads_.size()) < executors_) {
      threads_.emplace_back([this] { Work(); });
    }
  }

  void Work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      // Work needs a request and a free slot (requests run inline hold slots too).
      wake_.wait(lock, [&] {
        return (!pending_.empty() && busy_ < executors_) || (stopping_ && pending_.empty());
      });
      if (pending_.empty()) return;  // Stopping, and everything admitted is answered.
      const BatchingConfig batching = batching_;
      const SurrogateModel* model = pending_.front()->servable.model.get();
      if (batching.max_queue_delay_us > 0 && !stopping_) {
        // Wait (from the oldest request's arrival) until enough compatible rows are queued.
        const int64_t wanted = batching.preferred_batch_size > 0 ? batching.preferred_batch_size
                                                                 : batching.max_batch_size;
        const Clock::time_point until =
            pending_.front()->arrived + std::chrono::microseconds(batching.max_queue_delay_us);
        wake_.wait_until(lock, until, [&] {
          return stopping_ || pending_.empty() || CompatibleRows(model) >= wanted;
        });
        if (pending_.empty() || busy_ >= executors_) continue;  // Taken, or no slot now.
        model = pending_.front()->servable.model.get();
      }
      // The oldest request and every queued request for the same version that fits.
      std::vector<std::unique_ptr<Pending>> batch;
      int64_t rows = 0;
      for (auto it = pending_.begin(); it != pending_.end();) {
        const int64_t points = (*it)->query.points_count();
        if ((*it)->servable.model.get() == model &&
            (batch.empty() || rows + points <= batching.max_batch_size)) {
          rows += points;
          batch.push_back(std::move(*it));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      ++busy_;
      lock.unlock();
      if (RequestObserver* observer = scheduler_.options_.observer) {
        observer->QueueDepthChanged(name_, -static_cast<int64_t>(batch.size()));
      }
      scheduler_.RunBatch(*this, std::move(batch));
      lock.lock();
      --busy_;
      if (!pending_.empty()) wake_.notify_one();
    }
  }

  RequestScheduler& scheduler_;
  const std::string name_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Pending>> pending_;
  BatchingConfig batching_;
  int executors_ = 0;  // Computations that may run at once.
  int busy_ = 0;       // Computations running, on compute threads or inline.
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

RequestScheduler::RequestScheduler(const ModelManager& models, Options options)
    : models_(models), options_(options) {}

RequestScheduler::~RequestScheduler() { Shutdown(); }

void RequestScheduler::Shutdown() {
  std::map<std::string, std::shared_ptr<ModelQueue>> queues;
  {
    std::lock_guard<std::mutex> lock(queues_mutex_);
    stopping_ = true;
    queues.swap(queues_);
  }
  for (auto& [name, queue] : queues) queue->Stop();
}

std::shared_ptr<RequestScheduler::ModelQueue> RequestScheduler::QueueFor(
    const ServableHandle& servable) {
  std::lock_guard<std::mutex> lock(queues_mutex_);
  if (stopping_) return nullptr;
  std::shared_ptr<ModelQueue>& queue = queues_[servable.name];
  if (!queue) queue = std::make_shared<ModelQueue>(*this, servable.name);
  return queue;
}

void RequestScheduler::Finish(const char* method, const std::string& model,
                              Clock::time_point arrived, const absl::Status& status,
                              int64_t version, Answer answer, const Done& done) {
  activity_.fetch_add(1, std::memory_order_relaxed);
  if (options_.observer != nullptr) {
    options_.observer->RequestFinished(
        method, model, status.code(),
        std::chrono::duration<double>(Clock::now() - arrived).count());
  }
  done(status, status.ok() ? version : 0, std::move(answer));
}

void RequestScheduler::Submit(Method method_id, const ModelTarget& target,
                              absl::StatusOr<Query> query, CallControl control, Done done) {
  const Clock::time_point arrived = Clock::now();
  activity_.fetch_add(1, std::memory_order_relaxed);
  const char* method = MethodName(method_id);
  auto refuse = [&](const std::string& model, const absl::Status& status) {
    Finish(method, model, arrived, status, 0, Answer(), done);
  };
  // The model first, so that the metrics can name it; then the frontend's decoding result.
  auto servable = models_.Get(target.name, target.version, target.label);
  if (!servable.ok()) return refuse("", servable.status());
  if (!query.ok()) return refuse(servable->name, query.status());
  if (control.deadline <= std::chrono::system_clock::now()) {
    return refuse(servable->name, absl::DeadlineExceededError("the deadline passed on arrival"));
  }
  auto prepared = servable->model->Prepare(*query);
  if (!prepared.ok()) return refuse(servable->name, prepared.status());
  std::shared_ptr<ModelQueue> queue = QueueFor(*servable);
  if (!queue) return refuse(servable->name, absl::UnavailableError("the server is shutting down"));
  const std::string name = servable->name;
  const int executors =
      servable->config->executors > 0 ? servable->config->executors : options_.default_executors;
  auto pending = std::make_unique<Pending>(Pending{*std::move(servable), *std::move(prepared),
                                                   std::move(control), std::move(done), arrived});
  if (options_.run_inline_when_idle && queue->ClaimIfIdle(executors)) {
    // An idle model answers on the caller's thread: no hand-off to a compute thread and back.
    if (options_.observer != nullptr) options_.observer->InFlightChanged(name, 1);
    std::vector<std::unique_ptr<Pending>> alone;
    alone.push_back(std::move(pending));
    RunBatch(*queue, std::move(alone));
    queue->Release();
    return;
  }
  // Counted before admission, so that a compute thread's decrement never comes first.
  if (options_.observer != nullptr) {
    options_.observer->InFlightChanged(name, 1);
    options_.observer->QueueDepthChanged(name, 1);
  }
  absl::Status admitted = queue->Admit(pending);
  if (!admitted.ok()) {
    if (options_.observer != nullptr) {
      options_.observer->InFlightChanged(name, -1);
      options_.observer->QueueDepthChanged(name, -1);
    }
    Finish(method, name, arrived, admitted, 0, Answer(), pending->done);
  }
}

absl::StatusOr<RequestScheduler::VersionBases> RequestScheduler::GetBases(
    const ModelTarget& target, std::optional<torch::Dtype> output_dtype) {
  const Clock::time_point arrived = Clock::now();
  activity_.fetch_add(1, std::memory_order_relaxed);
  std::string model;
  absl::StatusOr<VersionBases> result = [&]() -> absl::StatusOr<VersionBases> {
    auto servable = models_.Get(target.name, target.version, target.label);
    if (!servable.ok()) return servable.status();
    model = servable->name;
    auto bases = servable->model->GetBases();
    if (!bases.ok()) return bases.status();
    const torch::Dtype dtype = output_dtype.value_or(servable->model->info().dtype);
    for (torch::Tensor* t : {&bases->input_basis, &bases->output_basis, &bases->output_shift}) {
      *t = t->to(dtype);
    }
    const int64_t bytes = (Answer{bases->input_basis, bases->output_basis}).bytes() +
                          (Answer{bases->output_shift, {}}).bytes();
    if (bytes > options_.max_response_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the bases are ", bytes, " bytes, above the server's response limit of ",
                       options_.max_response_bytes, " (--max_message_bytes)"));
    }
    return VersionBases{servable->version, *std::move(bases)};
  }();
  if (options_.observer != nullptr) {
    options_.observer->RequestFinished(
        "GetBases", model, result.status().code(),
        std::chrono::duration<double>(Clock::now() - arrived).count());
  }
  return result;
}

absl::StatusOr<RequestScheduler::PriorAnswer> RequestScheduler::Prior(
    const ModelTarget& target, absl::StatusOr<PriorQuery> query) {
  const Clock::time_point arrived = Clock::now();
  activity_.fetch_add(1, std::memory_order_relaxed);
  const char* method = "GetPrior";
  if (query.ok() && query->kind == PriorQuery::Kind::kSample) method = "SamplePrior";
  if (query.ok() && query->kind == PriorQuery::Kind::kApply) method = "ApplyPrior";
  std::string model;
  absl::StatusOr<PriorAnswer> result = [&]() -> absl::StatusOr<PriorAnswer> {
    auto servable = models_.Get(target.name, target.version, target.label);
    if (!servable.ok()) return servable.status();
    model = servable->name;
    if (!query.ok()) return query.status();
    auto prior = servable->model->prior();
    if (!prior.ok()) return prior.status();
    PriorAnswer answer;
    answer.version = servable->version;
    answer.prior = *prior;
    answer.source = servable->model->prior_source();
    const int64_t max_rows = servable->model->limits().max_batch_size;
    absl::StatusOr<torch::Tensor> values = (*prior)->mean();
    switch (query->kind) {
      case PriorQuery::Kind::kDescribe:
        break;
      case PriorQuery::Kind::kSample:
        values = (*prior)->Sample(query->count, query->seed, query->first_index, max_rows);
        break;
      case PriorQuery::Kind::kApply:
        values = (*prior)->Apply(query->op, query->vectors, query->with_mean, max_rows);
        break;
    }
    if (!values.ok()) return values.status();
    answer.values = values->to(query->output_dtype.value_or(torch::kFloat64));
    const int64_t bytes = (Answer{answer.values, {}}).bytes();
    if (bytes > options_.max_response_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the answer is ", bytes, " bytes, above the server's response limit of ",
                       options_.max_response_bytes, " (--max_message_bytes)"));
    }
    return answer;
  }();
  if (options_.observer != nullptr) {
    options_.observer->RequestFinished(
        method, model, result.status().code(),
        std::chrono::duration<double>(Clock::now() - arrived).count());
  }
  return result;
}

void RequestScheduler::RunBatch(ModelQueue& queue, std::vector<std::unique_ptr<Pending>> batch) {
  RequestObserver* observer = options_.observer;
  const Clock::time_point started = Clock::now();
  const auto now = std::chrono::system_clock::now();
  std::vector<std::unique_ptr<Pending>> live;
  std::vector<const PreparedQuery*> queries;
  live.reserve(batch.size());
  queries.reserve(batch.size());
  auto finish = [&](Pending& pending, const absl::Status& status, Answer answer) {
    // Before the answer leaves: whoever holds the answer then sees the call out of flight
    // (decremented after `done`, a client could read in-flight 1 with nothing pending).
    if (observer != nullptr) observer->InFlightChanged(queue.name(), -1);
    Finish(MethodName(pending.query.method), queue.name(), pending.arrived, status,
           pending.servable.version, std::move(answer), pending.done);
  };
  int64_t rows = 0;
  for (auto& pending : batch) {
    if (observer != nullptr) {
      observer->QueueWait(queue.name(),
                          std::chrono::duration<double>(started - pending->arrived).count());
    }
    // An expired call also counts as cancelled, so the deadline is checked first.
    if (pending->control.deadline <= now) {
      finish(*pending, absl::DeadlineExceededError("the deadline passed before the call ran"),
             Answer());
      continue;
    }
    if (pending->control.is_cancelled && pending->control.is_cancelled()) {
      finish(*pending, absl::CancelledError("the call was cancelled before it ran"), Answer());
      continue;
    }
    rows += pending->query.points_count();
    queries.push_back(&pending->query);
    live.push_back(std::move(pending));
  }
  if (live.empty()) return;
  if (observer != nullptr) {
    observer->BatchStarted(queue.name(), static_cast<int64_t>(live.size()), rows);
  }
  std::vector<absl::StatusOr<Answer>> answers = live.front()->servable.model->Compute(queries);
  for (size_t i = 0; i < live.size(); ++i) {
    absl::StatusOr<Answer>& answer = answers[i];
    if (answer.ok() && answer->bytes() > options_.max_response_bytes) {
      answer = absl::ResourceExhaustedError(absl::StrCat(
          "the response would be ", answer->bytes(), " bytes, above the server's limit of ",
          options_.max_response_bytes, " (--max_message_bytes); ask for fewer rows at a time"));
    }
    if (observer != nullptr && answer.ok() && answer->trust) {
      observer->TrustScored(queue.name(), static_cast<int64_t>(answer->trust->score.size()),
                            answer->trust->flagged);
    }
    finish(*live[i], answer.status(), answer.ok() ? *std::move(answer) : Answer());
  }
}

}  // namespace dino::serving
