// Latency statistics for dino-bench.
#ifndef DINO_CLIENT_BENCH_LATENCY_STATS_H_
#define DINO_CLIENT_BENCH_LATENCY_STATS_H_

#include <cstdint>
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

}  // namespace dino::bench

#endif  // DINO_CLIENT_BENCH_LATENCY_STATS_H_
