#include "client/bench/load_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "client/bench/latency_stats.h"

namespace dino::bench {
namespace {

TEST(LoadPlanTest, ParsesListsAndNamesTheFlagInErrors) {
  EXPECT_EQ(*ParsePositiveIntList("1,8,64", "--concurrency", 1000),
            (std::vector<int64_t>{1, 8, 64}));
  EXPECT_EQ(*ParsePositiveIntList("5", "--concurrency", 1000), (std::vector<int64_t>{5}));
  for (const char* bad : {"", "0", "1,,2", "-3", "2001", "1.5", "x"}) {
    absl::StatusOr<std::vector<int64_t>> parsed = ParsePositiveIntList(bad, "--concurrency", 2000);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("--concurrency"), absl::string_view::npos);
  }
  EXPECT_EQ(*ParsePositiveDoubleList("100,2500.5", "--rate"), (std::vector<double>{100, 2500.5}));
  for (const char* bad : {"0", "-1", "inf", "nan", "1,a"}) {
    EXPECT_FALSE(ParsePositiveDoubleList(bad, "--rate").ok()) << bad;
  }
  EXPECT_EQ(*ParseArrivals("poisson"), Arrivals::kPoisson);
  EXPECT_EQ(ArrivalsName(*ParseArrivals("fixed")), "fixed");
  EXPECT_FALSE(ParseArrivals("uniform").ok());
}

TEST(LoadPlanTest, FixedArrivalsAreExactlyEvenlySpaced) {
  ArrivalSchedule schedule(Arrivals::kFixed, 1000, 1);
  for (int i = 0; i < 100000; ++i) {
    // i / rate exactly, with no rounding error accumulated over the run.
    ASSERT_EQ(schedule.Next(), i / 1000.0) << i;
  }
}

TEST(LoadPlanTest, PoissonArrivalsHaveExponentialGapsOfMeanOneOverRate) {
  const double rate = 500;
  ArrivalSchedule schedule(Arrivals::kPoisson, rate, 7);
  const int n = 200000;
  std::vector<double> gaps;
  double previous = 0;
  for (int i = 0; i < n; ++i) {
    const double t = schedule.Next();
    ASSERT_GE(t, previous);
    gaps.push_back(t - previous);
    previous = t;
  }
  const double mean = std::accumulate(gaps.begin(), gaps.end(), 0.0) / n;
  double variance = 0;
  for (double g : gaps) variance += (g - mean) * (g - mean);
  variance /= n - 1;
  // Standard errors of the mean and of the coefficient of variation are about 0.2 % here.
  EXPECT_NEAR(mean * rate, 1.0, 0.01);
  EXPECT_NEAR(std::sqrt(variance) / mean, 1.0, 0.02);  // Exponential: std = mean.
  // P(gap > 3 / rate) = e^-3 for an exponential distribution.
  const double tail =
      std::count_if(gaps.begin(), gaps.end(), [&](double g) { return g > 3 / rate; });
  EXPECT_NEAR(tail / n, std::exp(-3.0), 0.003);
  // Same seed, same schedule; another seed, another one.
  ArrivalSchedule again(Arrivals::kPoisson, rate, 7), other(Arrivals::kPoisson, rate, 8);
  const double first = again.Next();
  EXPECT_DOUBLE_EQ(first, gaps[0]);
  EXPECT_NE(other.Next(), first);
}

TEST(LoadPlanTest, SplitEvenly) {
  EXPECT_EQ(SplitEvenly(10, 3), (std::vector<int64_t>{4, 3, 3}));
  EXPECT_EQ(SplitEvenly(2, 4), (std::vector<int64_t>{1, 1, 0, 0}));
  EXPECT_EQ(SplitEvenly(0, 2), (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(SplitEvenly(7, 1), (std::vector<int64_t>{7}));
}

TEST(LatencyRecorderTest, KeepsRefusalsApartFromSuccesses) {
  LatencyRecorder a, b;
  for (int i = 1; i <= 100; ++i) a.RecordSuccess(1000 + i);
  for (int i = 1; i <= 10; ++i) b.RecordFailure("RESOURCE_EXHAUSTED", i);
  b.RecordFailure("DEADLINE_EXCEEDED", 5000);
  b.RecordSuccess(900);
  a.Merge(b);
  const LatencyRecorder::Summary s = a.Summarize();
  EXPECT_EQ(s.successes.count, 101);
  EXPECT_EQ(s.successes.min_us, 900);
  EXPECT_EQ(s.successes.p50_us, 1050);  // 51st of 900, 1001..1100: the refusals are not in it.
  EXPECT_EQ(s.failure_count, 11);
  ASSERT_EQ(s.failures.size(), 2u);
  EXPECT_EQ(s.failures.at("RESOURCE_EXHAUSTED").count, 10);
  EXPECT_EQ(s.failures.at("RESOURCE_EXHAUSTED").p50_us, 5);
  EXPECT_EQ(s.failures.at("RESOURCE_EXHAUSTED").p99_us, 10);
  EXPECT_EQ(s.failures.at("DEADLINE_EXCEEDED").max_us, 5000);
}

}  // namespace
}  // namespace dino::bench
