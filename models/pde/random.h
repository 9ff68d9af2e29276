// Reproducible standard-normal numbers for prior sampling and randomized sketches.
//
// std::normal_distribution is implementation-defined (libstdc++ and libc++ produce different
// sequences), so it cannot be used for data sets that must be regenerated bit for bit on
// another machine. NormalRng fixes every step:
//  * engine: std::mt19937_64 (its output sequence is fixed by the C++ standard), seeded by
//    std::seed_seq{lo32(seed), hi32(seed), lo32(stream), hi32(stream)} (seed_seq's mixing
//    algorithm is also fixed by the standard), so (seed, stream) pairs give independent
//    streams, e.g. one per sample index;
//  * uniforms: the top 53 bits of one engine output k, u = (k >> 11) · 2⁻⁵³ ∈ [0, 1);
//  * normals: Box–Muller on two consecutive uniforms u1, u2 (u1 replaced by 1 − u1 ∈ (0, 1]
//    so the logarithm is finite), r = √(−2 ln u1), z₁ = r cos(2π u2), z₂ = r sin(2π u2),
//    returned in that order; every pair of normals consumes exactly two engine outputs.
// Results are bitwise identical wherever std::log, std::cos, std::sin and std::sqrt agree
// (std::sqrt is exact; glibc's log/sin/cos are accurate to within 1 ulp), so across C
// libraries they can differ at most in the last bits.
#ifndef DINO_MODELS_PDE_RANDOM_H_
#define DINO_MODELS_PDE_RANDOM_H_

#include <Eigen/Core>
#include <cstdint>
#include <random>

namespace dino::pde {

class NormalRng {
 public:
  explicit NormalRng(std::uint64_t seed, std::uint64_t stream = 0);

  // One standard normal number.
  double Next();
  // n numbers, in order.
  Eigen::VectorXd Vector(Eigen::Index n);
  // rows × cols numbers filled column by column (column-major order).
  Eigen::MatrixXd Matrix(Eigen::Index rows, Eigen::Index cols);

 private:
  double Uniform();

  std::mt19937_64 engine_;
  double pending_ = 0.0;
  bool has_pending_ = false;
};

}  // namespace dino::pde

#endif  // DINO_MODELS_PDE_RANDOM_H_
