// Latency statistics for dino-bench.
#ifndef DINO_CLIENT_BENCH_LATENCY_STATS_H_
#define DINO_CLIENT_BENCH_LATENCY_STATS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dino::bench {

struct LatencyStats {
  int64_t count = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0, mean_us = 0, min_us = 0, max_us = 0;
};

// Nearest-rank percentile (the smallest sample with at least `q` of the samples at or below
// it) of an ascending, non-empty sample; q in (0, 1].
double Percentile(const std::vector<double>& sorted, double q);

// Statistics of `samples_us` (microseconds; sorted in place). All zero for no samples.
LatencyStats ComputeLatencyStats(std::vector<double>* samples_us);

// Latencies of one measurement, successes apart from failures and failures by status code: a
// refusal (RESOURCE_EXHAUSTED) answered in 50 µs must neither flatter the successes' p99 nor
// be lost among them, and how fast refusals come back is itself a target.
class LatencyRecorder {
 public:
  void RecordSuccess(double latency_us) { successes_.push_back(latency_us); }
  // `code` is the status code's name, e.g. "RESOURCE_EXHAUSTED".
  void RecordFailure(const std::string& code, double latency_us) {
    failures_[code].push_back(latency_us);
  }
  // Adds another recorder's samples (one recorder per load-generating thread).
  void Merge(const LatencyRecorder& other);

  struct Summary {
    LatencyStats successes;
    std::map<std::string, LatencyStats> failures;  // By code; count is the number of calls.
    int64_t failure_count = 0;                     // Sum over codes.
  };
  // Sorts the samples in place (cheap to call again).
  Summary Summarize();

 private:
  std::vector<double> successes_;
  std::map<std::string, std::vector<double>> failures_;
};

}  // namespace dino::bench

#endif  // DINO_CLIENT_BENCH_LATENCY_STATS_H_
