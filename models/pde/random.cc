#include "models/pde/random.h"

#include <cmath>

namespace dino::pde {
namespace {

std::mt19937_64 SeededEngine(std::uint64_t seed, std::uint64_t stream) {
  auto lo = [](std::uint64_t v) { return static_cast<std::uint32_t>(v & 0xffffffffu); };
  auto hi = [](std::uint64_t v) { return static_cast<std::uint32_t>(v >> 32); };
  std::seed_seq sequence{lo(seed), hi(seed), lo(stream), hi(stream)};
  return std::mt19937_64(sequence);
}

}  // namespace

NormalRng::NormalRng(std::uint64_t seed, std::uint64_t stream)
    : engine_(SeededEngine(seed, stream)) {}

double NormalRng::Uniform() {
  constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;
  return static_cast<double>(engine_() >> 11) * kTwoToMinus53;
}

double NormalRng::Next() {
  if (has_pending_) {
    has_pending_ = false;
    return pending_;
  }
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const double u1 = 1.0 - Uniform();  // (0, 1]
  const double u2 = Uniform();        // [0, 1)
  const double radius = std::sqrt(-2.0 * std::log(u1));
  const double angle = kTwoPi * u2;
  pending_ = radius * std::sin(angle);
  has_pending_ = true;
  return radius * std::cos(angle);
}

Eigen::VectorXd NormalRng::Vector(Eigen::Index n) {
  Eigen::VectorXd values(n);
  for (Eigen::Index i = 0; i < n; ++i) values[i] = Next();
  return values;
}

Eigen::MatrixXd NormalRng::Matrix(Eigen::Index rows, Eigen::Index cols) {
  Eigen::MatrixXd values(rows, cols);
  // Column-major storage: filling the flat buffer in order is filling column by column.
  for (Eigen::Index i = 0; i < values.size(); ++i) values.data()[i] = Next();
  return values;
}

}  // namespace dino::pde
