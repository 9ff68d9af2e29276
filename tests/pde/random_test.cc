// Reproducibility and moments of NormalRng.
#include "models/pde/random.h"

#include <gtest/gtest.h>

#include <cmath>

namespace dino::pde {
namespace {

TEST(NormalRng, SameSeedAndStreamReproduceTheSequence) {
  NormalRng a(42, 7);
  NormalRng b(42, 7);
  for (int i = 0; i < 1001; ++i) ASSERT_EQ(a.Next(), b.Next()) << "draw " << i;
  NormalRng c(42, 8);
  NormalRng d(43, 7);
  NormalRng e(42, 7);
  EXPECT_NE(c.Next(), e.Next());
  EXPECT_NE(d.Next(), NormalRng(42, 7).Next());
}

TEST(NormalRng, MatrixFillsColumnByColumn) {
  NormalRng a(5);
  NormalRng b(5);
  const Eigen::MatrixXd m = a.Matrix(3, 4);
  for (int col = 0; col < 4; ++col) {
    for (int row = 0; row < 3; ++row) EXPECT_EQ(m(row, col), b.Next());
  }
}

// Pins the documented algorithm (seed_seq seeding, 53-bit uniforms, Box–Muller cos/sin
// order): a change to any step changes these values and breaks regenerated data sets. The
// values were cross-checked against an independent Python implementation of std::seed_seq
// and std::mt19937_64 written from the C++ standard's specification.
TEST(NormalRng, FirstValuesAreStable) {
  NormalRng rng(1, 0);
  const double expected[] = {-0.4956984032891152, 0.9149543630689946, 0.3136619081820388,
                             0.49032074840945206};
  for (double value : expected) EXPECT_NEAR(rng.Next(), value, 1e-14);
}

TEST(NormalRng, MomentsMatchTheStandardNormal) {
  NormalRng rng(2024);
  constexpr int kCount = 400000;
  double sum = 0.0, sum2 = 0.0, sum4 = 0.0;
  int beyond_two = 0;
  for (int i = 0; i < kCount; ++i) {
    const double z = rng.Next();
    sum += z;
    sum2 += z * z;
    sum4 += z * z * z * z;
    if (std::abs(z) > 2.0) ++beyond_two;
  }
  // Five standard errors: Var(z) = 1, Var(z²) = 2, Var(z⁴) = 96, and a Bernoulli(0.0455).
  const double n = kCount;
  EXPECT_NEAR(sum / n, 0.0, 5.0 * std::sqrt(1.0 / n));
  EXPECT_NEAR(sum2 / n, 1.0, 5.0 * std::sqrt(2.0 / n));
  EXPECT_NEAR(sum4 / n, 3.0, 5.0 * std::sqrt(96.0 / n));
  const double p = std::erfc(2.0 / std::sqrt(2.0));
  EXPECT_NEAR(beyond_two / n, p, 5.0 * std::sqrt(p * (1 - p) / n));
}

}  // namespace
}  // namespace dino::pde
