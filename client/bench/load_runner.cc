#include "client/bench/load_runner.h"

#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <optional>
#include <queue>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dino::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Longest an open-loop worker issues calls without reading answers (see RunOpenLoop).
constexpr Clock::duration kMaxIssueBurst = std::chrono::milliseconds(1);

double MicrosecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::micro>(to - from).count();
}

std::chrono::system_clock::time_point DeadlineAfter(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(
             std::chrono::duration<double>(seconds));
}

// gRPC takes deadlines on the system clock only; the schedule runs on the steady clock.
std::chrono::system_clock::time_point SystemDeadline(Clock::time_point due) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(due - Clock::now());
}

// One call in flight. A ClientContext serves one call only, so each request gets a new Call.
struct Call {
  grpc::ClientContext context;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  grpc::ByteBuffer response;
  grpc::Status status;
  Clock::time_point start;  // Closed loop: when it was sent; open loop: when it was scheduled.
  size_t pool_index = 0;
  int64_t slot = 0;  // Closed loop: the client that sent it.
  bool measured = false;
};

// State shared by the workers of one point.
struct Shared {
  std::atomic<int64_t> claimed{0};  // Closed loop: requests handed out so far (warm-up first).
  // Closed loop with duration: when the first measured request was sent, as nanoseconds of
  // Clock since its epoch; 0 until then.
  std::atomic<int64_t> measure_start_ns{0};
};

class Worker {
 public:
  Worker(const LoadPoint& point, int id,
         const std::vector<std::shared_ptr<grpc::Channel>>& channels,
         const std::vector<grpc::ByteBuffer>& pool, const ResponseCheck& check, Shared* shared)
      : point_(point), id_(id), pool_(pool), check_(check), shared_(shared) {
    for (const std::shared_ptr<grpc::Channel>& channel : channels) {
      stubs_.push_back(std::make_unique<grpc::GenericStub>(channel));
    }
  }

  ~Worker() {
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) delete static_cast<Call*>(tag);
  }

  // Clients [first_slot, first_slot + slots) of a closed loop. A refused client backs off
  // (LoadPoint::refusal_backoff_ms) before its next request; the others go on meanwhile.
  void RunClosedLoop(int64_t first_slot, int64_t slots) {
    refusals_in_a_row_.assign(static_cast<size_t>(slots), 0);
    for (int64_t slot = first_slot; slot < first_slot + slots; ++slot) IssueClosed(slot);
    while (in_flight_ > 0 || !backing_off_.empty()) {
      void* tag;
      bool ok;
      grpc::CompletionQueue::NextStatus status;
      if (backing_off_.empty()) {
        status = cq_.Next(&tag, &ok) ? grpc::CompletionQueue::GOT_EVENT
                                     : grpc::CompletionQueue::SHUTDOWN;
      } else {
        status = cq_.AsyncNext(&tag, &ok, SystemDeadline(backing_off_.top().first));
      }
      if (status == grpc::CompletionQueue::SHUTDOWN) break;
      if (status == grpc::CompletionQueue::GOT_EVENT) {
        Call* call = static_cast<Call*>(tag);
        const Clock::time_point answered = Clock::now();
        Complete(call, answered);
        const int64_t slot = call->slot;
        const bool refused = call->status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
        delete call;
        int& in_a_row = refusals_in_a_row_[static_cast<size_t>(slot - first_slot)];
        in_a_row = refused ? in_a_row + 1 : 0;
        if (refused && point_.refusal_backoff_ms > 0) {
          backing_off_.emplace(answered + Backoff(in_a_row), slot);
        } else {
          IssueClosed(slot);
        }
      }
      const Clock::time_point now = Clock::now();
      while (!backing_off_.empty() && backing_off_.top().first <= now) {
        const int64_t slot = backing_off_.top().second;
        backing_off_.pop();
        IssueClosed(slot);
      }
    }
  }

  // This worker's share of an open loop: `rate` requests per second starting `phase_s` after
  // `start`, the first `warmup` of them unmeasured, then `n` (or `duration_s` seconds' worth).
  void RunOpenLoop(Clock::time_point start, double rate, double phase_s, int64_t warmup,
                   int64_t n) {
    ArrivalSchedule schedule(point_.arrivals, rate, point_.seed + static_cast<uint64_t>(id_));
    auto at = [&](double offset_s) {
      return start + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(phase_s + offset_s));
    };
    int64_t scheduled = 0;
    std::optional<double> measure_from_s;  // Offset of the first measured request.
    double next_s = schedule.Next();
    bool done = false;
    auto finished = [&]() {
      if (scheduled < warmup) return false;
      if (n > 0) return scheduled >= warmup + n;
      return measure_from_s.has_value() && next_s >= *measure_from_s + point_.duration_s;
    };
    done = finished();
    std::vector<double> lag_us;
    while (!done || in_flight_ > 0) {
      Clock::time_point now = Clock::now();
      // Issue what is due, but come back to the completion queue at least every
      // kMaxIssueBurst: this thread's polling is what reads the answers off the channel, and a
      // worker that has fallen behind its schedule would otherwise issue for ever, read nothing,
      // and see every call it sent run into its deadline in the client.
      const Clock::time_point issue_until = now + kMaxIssueBurst;
      while (!done && now >= at(next_s) && now < issue_until) {
        const bool measured = scheduled >= warmup;
        if (measured && !measure_from_s.has_value()) measure_from_s = next_s;
        const Clock::time_point due = at(next_s);
        if (measured) lag_us.push_back(MicrosecondsBetween(due, now));
        Issue(due, static_cast<size_t>(scheduled + id_), static_cast<size_t>(scheduled), 0,
              measured);
        max_in_flight_ = std::max(max_in_flight_, in_flight_);
        ++scheduled;
        next_s = schedule.Next();
        done = finished();
        now = Clock::now();
      }
      if (done && in_flight_ == 0) break;
      void* tag;
      bool ok;
      if (!done && now >= at(next_s)) {
        // Behind schedule: take every answer that is ready, without waiting, then issue again.
        while (cq_.AsyncNext(&tag, &ok, std::chrono::system_clock::now()) ==
               grpc::CompletionQueue::GOT_EVENT) {
          CompleteAndDelete(tag);
        }
        continue;
      }
      const grpc::CompletionQueue::NextStatus status =
          done ? (cq_.Next(&tag, &ok) ? grpc::CompletionQueue::GOT_EVENT
                                      : grpc::CompletionQueue::SHUTDOWN)
               : cq_.AsyncNext(&tag, &ok, SystemDeadline(at(next_s)));
      if (status == grpc::CompletionQueue::SHUTDOWN) break;
      if (status == grpc::CompletionQueue::GOT_EVENT) CompleteAndDelete(tag);
    }
    send_lag_ = ComputeLatencyStats(&lag_us);
  }

  LatencyRecorder& recorder() { return recorder_; }
  int64_t sent() const { return sent_; }
  int64_t warmup_failures() const { return warmup_failures_; }
  int64_t checked() const { return checked_; }
  int64_t check_failures() const { return check_failures_; }
  const std::string& first_check_failure() const { return first_check_failure_; }
  const std::string& first_error() const { return first_error_; }
  const std::optional<Clock::time_point>& first_measured_start() const {
    return first_measured_start_;
  }
  const std::optional<Clock::time_point>& last_measured_end() const { return last_measured_end_; }
  const LatencyStats& send_lag() const { return send_lag_; }
  int64_t max_in_flight() const { return max_in_flight_; }

 private:
  // Full jitter: uniform in [0, min(max, initial * 2^(refusals - 1))].
  Clock::duration Backoff(int refusals) {
    const double cap_ms =
        std::min(point_.refusal_backoff_max_ms,
                 point_.refusal_backoff_ms * std::ldexp(1.0, std::min(refusals - 1, 30)));
    const double ms = std::uniform_real_distribution<double>(0.0, cap_ms)(jitter_);
    return std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double, std::milli>(ms));
  }

  // Sends the next request of client `slot` if the point still wants one.
  void IssueClosed(int64_t slot) {
    const int64_t index = shared_->claimed.fetch_add(1);
    bool measured = index >= point_.warmup;
    const Clock::time_point now = Clock::now();
    if (measured) {
      if (point_.n > 0) {
        if (index >= point_.warmup + point_.n) return;
      } else {
        const int64_t now_ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
        int64_t start_ns = 0;
        // The first measured send opens the window for every worker.
        if (!shared_->measure_start_ns.compare_exchange_strong(start_ns, now_ns)) {
          if (now_ns - start_ns >= static_cast<int64_t>(point_.duration_s * 1e9)) return;
        }
      }
    }
    Issue(now, static_cast<size_t>(index), static_cast<size_t>(slot), slot, measured);
  }

  void Issue(Clock::time_point start, size_t pool_counter, size_t channel_counter, int64_t slot,
             bool measured) {
    Call* call = new Call;
    call->start = start;
    call->pool_index = pool_counter % pool_.size();
    call->slot = slot;
    call->measured = measured;
    if (measured) {
      ++sent_;
      if (!first_measured_start_.has_value() || start < *first_measured_start_) {
        first_measured_start_ = start;
      }
    }
    call->context.set_deadline(DeadlineAfter(point_.timeout_s));
    call->reader = stubs_[channel_counter % stubs_.size()]->PrepareUnaryCall(
        &call->context, point_.method, pool_[call->pool_index], &cq_);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
    ++in_flight_;
  }

  // An open-loop call's end: its answer recorded, its state freed.
  void CompleteAndDelete(void* tag) {
    Call* call = static_cast<Call*>(tag);
    Complete(call, Clock::now());
    delete call;
  }

  void Complete(Call* call, Clock::time_point now) {
    --in_flight_;
    const double latency_us = MicrosecondsBetween(call->start, now);
    if (call->status.ok()) {
      if (call->measured) recorder_.RecordSuccess(latency_us);
      if (check_) {
        ++checked_;
        if (absl::Status s = check_(call->pool_index, call->response); !s.ok()) {
          if (check_failures_++ == 0) {
            first_check_failure_ = absl::StrCat("request ", call->pool_index, ": ", s.message());
          }
        }
      }
    } else if (call->measured) {
      recorder_.RecordFailure(StatusCodeName(call->status.error_code()), latency_us);
      if (first_error_.empty()) {
        first_error_ = absl::StrCat(StatusCodeName(call->status.error_code()), ": ",
                                    call->status.error_message());
      }
    } else {
      ++warmup_failures_;
    }
    if (call->measured) {
      if (!last_measured_end_.has_value() || now > *last_measured_end_) last_measured_end_ = now;
    }
  }

  const LoadPoint& point_;
  const int id_;
  const std::vector<grpc::ByteBuffer>& pool_;
  const ResponseCheck& check_;
  Shared* shared_;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  grpc::CompletionQueue cq_;
  int64_t in_flight_ = 0;
  int64_t max_in_flight_ = 0;
  LatencyRecorder recorder_;
  int64_t sent_ = 0;
  int64_t warmup_failures_ = 0;
  int64_t checked_ = 0;
  int64_t check_failures_ = 0;
  std::string first_check_failure_;
  std::string first_error_;
  std::optional<Clock::time_point> first_measured_start_;
  std::optional<Clock::time_point> last_measured_end_;
  LatencyStats send_lag_;
  // Closed loop: consecutive refusals per client, and the clients waiting out a backoff
  // (earliest first).
  std::vector<int> refusals_in_a_row_;
  using Wakeup = std::pair<Clock::time_point, int64_t>;
  std::priority_queue<Wakeup, std::vector<Wakeup>, std::greater<Wakeup>> backing_off_;
  std::mt19937_64 jitter_{point_.seed * 7919 + static_cast<uint64_t>(id_)};
};

// User + system CPU seconds of this process so far.
double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

}  // namespace

std::string StatusCodeName(int code) {
  // gRPC's status codes are the canonical ones absl names.
  const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? absl::StrCat("CODE_", code) : name;
}

absl::StatusOr<std::vector<std::shared_ptr<grpc::Channel>>> ConnectChannels(
    const std::string& target, int count, double connect_timeout_s,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const std::string& tls_server_name) {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < count; ++i) {
    grpc::ChannelArguments args;
    // Requests and responses of large batches exceed gRPC's 4 MiB default; the server
    // enforces its own limit (--max_message_bytes) and the bench should see its refusals.
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("dino.bench.channel_index", i);
    if (!tls_server_name.empty()) args.SetSslTargetNameOverride(tls_server_name);
    std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
        target, credentials != nullptr ? credentials : grpc::InsecureChannelCredentials(), args);
    if (channel == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("cannot create a channel to ", target));
    }
    if (!channel->WaitForConnected(DeadlineAfter(connect_timeout_s))) {
      return absl::UnavailableError(absl::StrCat("channel ", i + 1, " of ", count,
                                                 " (--channels) did not connect to ", target,
                                                 " within ", connect_timeout_s, " s"));
    }
    channels.push_back(std::move(channel));
  }
  return channels;
}

absl::StatusOr<grpc::ByteBuffer> CallOnce(const std::shared_ptr<grpc::Channel>& channel,
                                          const std::string& method,
                                          const grpc::ByteBuffer& request, double timeout_s) {
  grpc::CompletionQueue cq;
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineAfter(timeout_s));
  grpc::ByteBuffer response;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader =
      stub.PrepareUnaryCall(&context, method, request, &cq);
  reader->StartCall();
  reader->Finish(&response, &status, &response);
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  return response;
}

LoadResult RunLoadPoint(const LoadPoint& point,
                        const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                        const std::vector<grpc::ByteBuffer>& pool, const ResponseCheck& check) {
  const double cpu_start = ProcessCpuSeconds();
  const Clock::time_point point_start = Clock::now();
  Shared shared;
  const bool open_loop = point.rate > 0;
  // No more workers than clients: an idle worker would only cost a thread.
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(point.threads, open_loop ? point.threads : point.concurrency)));
  std::vector<std::unique_ptr<Worker>> workers;
  for (int w = 0; w < threads; ++w) {
    workers.push_back(std::make_unique<Worker>(point, w, channels, pool, check, &shared));
  }
  const std::vector<int64_t> slots = SplitEvenly(point.concurrency, threads);
  const std::vector<int64_t> warmups = SplitEvenly(point.warmup, threads);
  const std::vector<int64_t> ns = SplitEvenly(point.n, threads);
  // Open loop: the workers start together, shortly from now, each at its own phase so that
  // fixed arrivals from several workers interleave evenly.
  const Clock::time_point start = Clock::now() + std::chrono::milliseconds(1);
  auto run = [&](int w) {
    if (open_loop) {
      workers[w]->RunOpenLoop(start, point.rate / threads, w / point.rate, warmups[w], ns[w]);
    } else {
      int64_t first = 0;
      for (int i = 0; i < w; ++i) first += slots[i];
      workers[w]->RunClosedLoop(first, slots[w]);
    }
  };
  std::vector<std::thread> extra;
  for (int w = 1; w < threads; ++w) extra.emplace_back(run, w);
  run(0);
  for (std::thread& t : extra) t.join();

  LoadResult result;
  LatencyRecorder all;
  std::optional<Clock::time_point> first, last;
  for (const std::unique_ptr<Worker>& worker : workers) {
    all.Merge(worker->recorder());
    result.sent += worker->sent();
    result.warmup_failures += worker->warmup_failures();
    result.checked += worker->checked();
    if (result.check_failures == 0) result.first_check_failure = worker->first_check_failure();
    result.check_failures += worker->check_failures();
    if (result.first_error.empty()) result.first_error = worker->first_error();
    if (worker->first_measured_start() && (!first || *worker->first_measured_start() < *first)) {
      first = worker->first_measured_start();
    }
    if (worker->last_measured_end() && (!last || *worker->last_measured_end() > *last)) {
      last = worker->last_measured_end();
    }
    // Per-worker lag statistics combine conservatively: the worst worker's.
    const LatencyStats& lag = worker->send_lag();
    if (lag.count > 0 && (result.send_lag.count == 0 || lag.p99_us > result.send_lag.p99_us)) {
      result.send_lag = lag;
    }
    result.max_in_flight += worker->max_in_flight();
  }
  result.client_cpu_s = ProcessCpuSeconds() - cpu_start;
  result.point_s = std::chrono::duration<double>(Clock::now() - point_start).count();
  result.latency = all.Summarize();
  if (first && last) result.wall_s = std::chrono::duration<double>(*last - *first).count();
  return result;
}

}  // namespace dino::bench
