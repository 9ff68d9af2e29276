#include "client/bench/load_plan.h"

#include <cmath>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dino::bench {

absl::StatusOr<std::vector<int64_t>> ParsePositiveIntList(absl::string_view text,
                                                          absl::string_view flag, int64_t max) {
  std::vector<int64_t> values;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(item, &value) || value < 1 || value > max) {
      return absl::InvalidArgumentError(absl::StrCat(flag,
                                                     ": expected comma-separated integers in [1, ",
                                                     max, "], got '", item, "' in '", text, "'"));
    }
    values.push_back(value);
  }
  return values;
}

absl::StatusOr<std::vector<double>> ParsePositiveDoubleList(absl::string_view text,
                                                            absl::string_view flag) {
  std::vector<double> values;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    double value = 0;
    if (!absl::SimpleAtod(item, &value) || !std::isfinite(value) || value <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          flag, ": expected comma-separated positive numbers, got '", item, "' in '", text, "'"));
    }
    values.push_back(value);
  }
  return values;
}

absl::StatusOr<Arrivals> ParseArrivals(absl::string_view text) {
  if (text == "fixed") return Arrivals::kFixed;
  if (text == "poisson") return Arrivals::kPoisson;
  return absl::InvalidArgumentError(
      absl::StrCat("--arrivals: expected fixed or poisson, got '", text, "'"));
}

absl::string_view ArrivalsName(Arrivals arrivals) {
  return arrivals == Arrivals::kFixed ? "fixed" : "poisson";
}

ArrivalSchedule::ArrivalSchedule(Arrivals arrivals, double rate, uint64_t seed)
    : arrivals_(arrivals), rate_(rate), rng_(seed), gap_(rate) {}

double ArrivalSchedule::Next() {
  if (arrivals_ == Arrivals::kFixed) return static_cast<double>(index_++) / rate_;
  time_ += gap_(rng_);
  return time_;
}

std::vector<int64_t> SplitEvenly(int64_t total, int parts) {
  std::vector<int64_t> shares(static_cast<size_t>(parts), total / parts);
  for (int64_t i = 0; i < total % parts; ++i) ++shares[static_cast<size_t>(i)];
  return shares;
}

}  // namespace dino::bench
