#include "client/bench/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace dino::bench {

double Percentile(const std::vector<double>& sorted, double q) {
  const double rank = std::ceil(q * static_cast<double>(sorted.size()));
  const size_t index = static_cast<size_t>(std::max(1.0, rank)) - 1;
  return sorted[std::min(index, sorted.size() - 1)];
}

LatencyStats ComputeLatencyStats(std::vector<double>* samples_us) {
  LatencyStats stats;
  if (samples_us->empty()) return stats;
  std::sort(samples_us->begin(), samples_us->end());
  const std::vector<double>& s = *samples_us;
  stats.count = static_cast<int64_t>(s.size());
  stats.p50_us = Percentile(s, 0.50);
  stats.p90_us = Percentile(s, 0.90);
  stats.p99_us = Percentile(s, 0.99);
  stats.mean_us = std::accumulate(s.begin(), s.end(), 0.0) / static_cast<double>(s.size());
  stats.min_us = s.front();
  stats.max_us = s.back();
  return stats;
}

void LatencyRecorder::Merge(const LatencyRecorder& other) {
  successes_.insert(successes_.end(), other.successes_.begin(), other.successes_.end());
  for (const auto& [code, samples] : other.failures_) {
    std::vector<double>& mine = failures_[code];
    mine.insert(mine.end(), samples.begin(), samples.end());
  }
}

LatencyRecorder::Summary LatencyRecorder::Summarize() {
  Summary summary;
  summary.successes = ComputeLatencyStats(&successes_);
  for (auto& [code, samples] : failures_) {
    summary.failures[code] = ComputeLatencyStats(&samples);
    summary.failure_count += static_cast<int64_t>(samples.size());
  }
  return summary;
}

}  // namespace dino::bench
