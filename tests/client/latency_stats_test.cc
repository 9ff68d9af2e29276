#include "client/bench/latency_stats.h"

#include <gtest/gtest.h>

namespace dino::bench {
namespace {

TEST(LatencyStatsTest, NearestRankPercentiles) {
  std::vector<double> samples;
  for (int i = 100; i >= 1; --i) samples.push_back(i);
  const LatencyStats s = ComputeLatencyStats(&samples);
  EXPECT_EQ(s.count, 100);
  EXPECT_EQ(s.p50_us, 50);
  EXPECT_EQ(s.p90_us, 90);
  EXPECT_EQ(s.p99_us, 99);
  EXPECT_EQ(s.mean_us, 50.5);
  EXPECT_EQ(s.min_us, 1);
  EXPECT_EQ(s.max_us, 100);
}

TEST(LatencyStatsTest, SmallAndEmptySamples) {
  std::vector<double> one = {7};
  const LatencyStats s = ComputeLatencyStats(&one);
  EXPECT_EQ(s.p50_us, 7);
  EXPECT_EQ(s.p99_us, 7);
  std::vector<double> three = {3, 1, 2};
  EXPECT_EQ(ComputeLatencyStats(&three).p50_us, 2);
  EXPECT_EQ(ComputeLatencyStats(&three).p99_us, 3);
  std::vector<double> none;
  EXPECT_EQ(ComputeLatencyStats(&none).count, 0);
  EXPECT_EQ(ComputeLatencyStats(&none).p99_us, 0);
}

}  // namespace
}  // namespace dino::bench
