// The pure parts of a dino-bench load plan: sweep lists from flags and the send schedule of
// open-loop (fixed-rate) load. No gRPC here, so tests/client can check them exactly.
#ifndef DINO_CLIENT_BENCH_LOAD_PLAN_H_
#define DINO_CLIENT_BENCH_LOAD_PLAN_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dino::bench {

// "1,8,64" → {1, 8, 64}: positive integers, at most `max` each, duplicates allowed (a point is
// measured once per entry). `flag` names the flag in errors, e.g. "--concurrency".
absl::StatusOr<std::vector<int64_t>> ParsePositiveIntList(absl::string_view text,
                                                          absl::string_view flag, int64_t max);

// "100,2000.5" → {100, 2000.5}: finite positive numbers.
absl::StatusOr<std::vector<double>> ParsePositiveDoubleList(absl::string_view text,
                                                            absl::string_view flag);

// How open-loop requests arrive.
enum class Arrivals {
  kFixed,    // Evenly spaced, 1/rate apart: the smoothest load a rate can be.
  kPoisson,  // Exponential gaps of mean 1/rate: independent clients, bursts included.
};

// "fixed" | "poisson".
absl::StatusOr<Arrivals> ParseArrivals(absl::string_view text);
absl::string_view ArrivalsName(Arrivals arrivals);

// The scheduled send times of an open-loop run, in seconds after its start. The schedule is
// fixed in advance and does not depend on when responses come back: a load generator that
// waits for a slow response before sending the next request sends less exactly when the
// server is slow and so hides the queueing delay ("coordinated omission"). Latency is
// measured from these times, not from when the request actually left.
class ArrivalSchedule {
 public:
  // rate > 0 requests per second; `seed` fixes the Poisson gaps.
  ArrivalSchedule(Arrivals arrivals, double rate, uint64_t seed);

  // The send time of the next request (the first is at 0 for kFixed, after one gap for
  // kPoisson), strictly increasing for kFixed and non-decreasing for kPoisson.
  double Next();

 private:
  Arrivals arrivals_;
  double rate_;
  int64_t index_ = 0;  // kFixed: the time is index_ / rate_, free of accumulated rounding.
  double time_ = 0;    // kPoisson: sum of the gaps so far.
  std::mt19937_64 rng_;
  std::exponential_distribution<double> gap_;
};

// Splits `total` (clients or, rounded, requests) over `parts` workers as evenly as possible:
// the first total % parts workers get one more. Sums to total.
std::vector<int64_t> SplitEvenly(int64_t total, int parts);

}  // namespace dino::bench

#endif  // DINO_CLIENT_BENCH_LOAD_PLAN_H_
