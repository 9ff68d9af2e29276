// The load-generating core of dino-bench: unary calls of one RPC, sent from a pool of
// requests serialized once, over several channels, on gRPC's asynchronous completion-queue
// API. Each worker thread drives all of its in-flight calls from one completion queue, so
// 256 concurrent clients cost 256 small call objects, not 256 threads: the load generator
// shares the CPU with the server it measures and must stay cheap.
#ifndef DINO_CLIENT_BENCH_LOAD_RUNNER_H_
#define DINO_CLIENT_BENCH_LOAD_RUNNER_H_

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/bench/latency_stats.h"
#include "client/bench/load_plan.h"

namespace dino::bench {

// `count` channels to `target`, each with its own TCP connection: gRPC shares one connection
// between channels whose arguments are equal, so each gets a distinct (otherwise unused)
// argument and a local subchannel pool. One HTTP/2 connection also caps the concurrent
// streams (the server's limit, often 100): more clients than that would queue inside the
// client and hide the server's own queueing and refusals. Waits up to `connect_timeout_s`
// for every channel to connect. `credentials`: null for plaintext, else TLS (see
// dino::client::TlsChannelCredentials); `tls_server_name` overrides the name checked against
// the server's certificate.
absl::StatusOr<std::vector<std::shared_ptr<grpc::Channel>>> ConnectChannels(
    const std::string& target, int count, double connect_timeout_s,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials = nullptr,
    const std::string& tls_server_name = "");

// One unary call with a serialized request, waiting for its answer. `method` is the full
// path, e.g. "/dino.v1.Surrogate/Evaluate". Returns the response bytes or the call's status.
absl::StatusOr<grpc::ByteBuffer> CallOnce(const std::shared_ptr<grpc::Channel>& channel,
                                          const std::string& method,
                                          const grpc::ByteBuffer& request, double timeout_s);

// Checks one successful response to pool request `pool_index`; an error says what is wrong.
// Called on the worker threads, possibly concurrently.
using ResponseCheck =
    std::function<absl::Status(size_t pool_index, const grpc::ByteBuffer& response)>;

// One measured point of a sweep.
struct LoadPoint {
  std::string method;  // Full RPC path.
  // Closed loop: `concurrency` clients, each sending its next request when its previous one
  // is answered. Used when rate == 0.
  int64_t concurrency = 1;
  // Open loop: requests per second at the scheduled times of an ArrivalSchedule, whatever
  // the responses do; latency counts from the scheduled time.
  double rate = 0;
  Arrivals arrivals = Arrivals::kFixed;
  // Measured requests: exactly `n` when n > 0, else as many as are sent (closed loop) or
  // scheduled (open loop) during `duration_s` seconds.
  int64_t n = 0;
  double duration_s = 0;
  // Unmeasured requests first, sent the same way (connections, server threads and caches
  // warm up; a batching server finds its steady state).
  int64_t warmup = 0;
  double timeout_s = 10;  // Deadline of each call.
  int threads = 1;        // Worker threads, each with its own completion queue.
  uint64_t seed = 1;      // Of the Poisson arrivals and the backoff jitter.
  // Closed loop: after a RESOURCE_EXHAUSTED answer a client waits before its next request, as
  // the refusal asks and as gRPC's retry policy does: a uniformly random time up to
  // min(refusal_backoff_max_ms, refusal_backoff_ms * 2^(refusals in a row - 1)) ("full
  // jitter"); a success resets the count. 0: the next request leaves at once (the worst case
  // for the server: every refused client comes straight back).
  double refusal_backoff_ms = 0;
  double refusal_backoff_max_ms = 1000;
};

struct LoadResult {
  LatencyRecorder::Summary latency;  // Measured calls only.
  int64_t sent = 0;                  // Measured requests sent.
  int64_t warmup_failures = 0;
  // Seconds from the first measured send (or scheduled send) to the last measured answer.
  double wall_s = 0;
  // Responses given to the check, and those it refused (with the first reason).
  int64_t checked = 0;
  int64_t check_failures = 0;
  std::string first_check_failure;
  // The first failed call's "CODE: message", to show why calls failed.
  std::string first_error;
  // Open loop only: how late requests left after their scheduled time (the load generator's
  // own lag; a large value means the client, not the server, was the bottleneck), and the
  // most requests in flight at once.
  LatencyStats send_lag;
  int64_t max_in_flight = 0;
  // CPU seconds this process (the load generator, gRPC's own threads included) used during
  // the point, warm-up included: on a machine shared with the server, what the client took
  // from it. point_s is the point's whole duration, warm-up included.
  double client_cpu_s = 0;
  double point_s = 0;
};

// Runs one point: requests cycle through `pool`, clients spread over `channels`. `check`
// may be null (responses are then not parsed at all).
LoadResult RunLoadPoint(const LoadPoint& point,
                        const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                        const std::vector<grpc::ByteBuffer>& pool, const ResponseCheck& check);

// "RESOURCE_EXHAUSTED" for grpc::StatusCode::RESOURCE_EXHAUSTED, etc.
std::string StatusCodeName(int code);

}  // namespace dino::bench

#endif  // DINO_CLIENT_BENCH_LOAD_RUNNER_H_
