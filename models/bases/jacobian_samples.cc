#include "models/bases/jacobian_samples.h"

#include <Eigen/Dense>
#include <algorithm>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace dino::bases {
namespace {

using RowMajorMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMajorMatrix>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXd>;

// Rows of the stacked full Jacobian multiplied at once: large enough for efficient matrix
// products, small enough that the intermediate block (rows × k) stays a few tens of MB.
constexpr Eigen::Index kRowBlock = 4096;

void CheckDims(Eigen::Index n, Eigen::Index d_q, Eigen::Index d_m) {
  if (n < 1 || d_q < 1 || d_m < 1) {
    throw std::invalid_argument(
        "JacobianSamples: n, d_Q and d_M must be positive (got n = " + std::to_string(n) +
        ", d_Q = " + std::to_string(d_q) + ", d_M = " + std::to_string(d_m) + ")");
  }
}

// Σ over samples [0, n) of `add(begin, end, accumulator)`, divided by n. Each thread owns a
// contiguous range and its own accumulator; the partial sums are added in thread order, so the
// result does not depend on scheduling. An exception in a worker is rethrown here.
Eigen::MatrixXd SampleAverage(
    Eigen::Index n, Eigen::Index rows, Eigen::Index cols, int threads,
    const std::function<void(Eigen::Index, Eigen::Index, Eigen::MatrixXd&)>& add) {
  if (threads < 1) {
    throw std::invalid_argument("JacobianSamples: threads must be at least 1, not " +
                                std::to_string(threads));
  }
  const Eigen::Index workers = std::min<Eigen::Index>(threads, n);
  std::vector<Eigen::MatrixXd> partial(workers, Eigen::MatrixXd::Zero(rows, cols));
  std::vector<std::exception_ptr> errors(workers);
  auto run = [&](Eigen::Index w) {
    const Eigen::Index begin = n * w / workers;
    const Eigen::Index end = n * (w + 1) / workers;
    try {
      add(begin, end, partial[w]);
    } catch (...) {
      errors[w] = std::current_exception();
    }
  };
  if (workers == 1) {
    run(0);
  } else {
    std::vector<std::thread> pool;
    pool.reserve(workers);
    for (Eigen::Index w = 0; w < workers; ++w) pool.emplace_back(run, w);
    for (std::thread& t : pool) t.join();
  }
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  for (Eigen::Index w = 1; w < workers; ++w) partial[0] += partial[w];
  partial[0] /= static_cast<double>(n);
  return std::move(partial[0]);
}

}  // namespace

JacobianSamples JacobianSamples::Full(const double* jacobians, Eigen::Index n, Eigen::Index d_q,
                                      Eigen::Index d_m) {
  CheckDims(n, d_q, d_m);
  if (jacobians == nullptr) throw std::invalid_argument("JacobianSamples::Full: null data");
  JacobianSamples samples;
  samples.jacobians_ = jacobians;
  samples.n_ = n;
  samples.d_q_ = d_q;
  samples.d_m_ = d_m;
  return samples;
}

JacobianSamples JacobianSamples::TruncatedSvd(const double* u, const double* sigma, const double* v,
                                              Eigen::Index n, Eigen::Index d_q, Eigen::Index d_m,
                                              Eigen::Index rank) {
  CheckDims(n, d_q, d_m);
  if (rank < 1) {
    throw std::invalid_argument("JacobianSamples::TruncatedSvd: rank must be positive, not " +
                                std::to_string(rank));
  }
  if (u == nullptr || sigma == nullptr || v == nullptr) {
    throw std::invalid_argument("JacobianSamples::TruncatedSvd: null data");
  }
  JacobianSamples samples;
  samples.u_ = u;
  samples.sigma_ = sigma;
  samples.v_ = v;
  samples.n_ = n;
  samples.d_q_ = d_q;
  samples.d_m_ = d_m;
  samples.rank_ = rank;
  return samples;
}

Eigen::MatrixXd JacobianSamples::Jacobian(Eigen::Index i) const {
  if (i < 0 || i >= n_) {
    throw std::invalid_argument("JacobianSamples::Jacobian: sample " + std::to_string(i) +
                                " is outside [0, " + std::to_string(n_) + ")");
  }
  if (is_full()) return ConstRowMap(jacobians_ + i * d_q_ * d_m_, d_q_, d_m_);
  const ConstRowMap u(u_ + i * d_q_ * rank_, d_q_, rank_);
  const ConstVectorMap sigma(sigma_ + i * rank_, rank_);
  const ConstRowMap v(v_ + i * d_m_ * rank_, d_m_, rank_);
  return u * sigma.asDiagonal() * v.transpose();
}

Eigen::MatrixXd JacobianSamples::ApplyInputGram(const Eigen::MatrixXd& x, int threads) const {
  if (x.rows() != d_m_) {
    throw std::invalid_argument("JacobianSamples::ApplyInputGram: the block has " +
                                std::to_string(x.rows()) + " rows, d_M = " + std::to_string(d_m_));
  }
  if (is_full()) {
    // J [n, d_Q, d_M] in C order is the stacked matrix [n·d_Q × d_M] (row-major), so
    // Σᵢ JᵢᵀJᵢX is two large matrix products per block of rows.
    return SampleAverage(n_, d_m_, x.cols(), threads,
                         [&](Eigen::Index begin, Eigen::Index end, Eigen::MatrixXd& acc) {
                           const Eigen::Index first = begin * d_q_, last = end * d_q_;
                           for (Eigen::Index row = first; row < last; row += kRowBlock) {
                             const Eigen::Index rows = std::min(kRowBlock, last - row);
                             const ConstRowMap block(jacobians_ + row * d_m_, rows, d_m_);
                             const Eigen::MatrixXd jx = block * x;
                             acc.noalias() += block.transpose() * jx;
                           }
                         });
  }
  return SampleAverage(n_, d_m_, x.cols(), threads,
                       [&](Eigen::Index begin, Eigen::Index end, Eigen::MatrixXd& acc) {
                         for (Eigen::Index i = begin; i < end; ++i) {
                           const ConstRowMap u(u_ + i * d_q_ * rank_, d_q_, rank_);
                           const ConstVectorMap sigma(sigma_ + i * rank_, rank_);
                           const ConstRowMap v(v_ + i * d_m_ * rank_, d_m_, rank_);
                           // Vσ Uᵀ U σVᵀ X, right to left.
                           const Eigen::MatrixXd z = sigma.asDiagonal() * (v.transpose() * x);
                           const Eigen::MatrixXd uz = u * z;
                           const Eigen::MatrixXd back = sigma.asDiagonal() * (u.transpose() * uz);
                           acc.noalias() += v * back;
                         }
                       });
}

Eigen::MatrixXd JacobianSamples::ApplyOutputGram(const Eigen::MatrixXd& y, int threads) const {
  if (y.rows() != d_q_) {
    throw std::invalid_argument("JacobianSamples::ApplyOutputGram: the block has " +
                                std::to_string(y.rows()) + " rows, d_Q = " + std::to_string(d_q_));
  }
  if (is_full()) {
    return SampleAverage(n_, d_q_, y.cols(), threads,
                         [&](Eigen::Index begin, Eigen::Index end, Eigen::MatrixXd& acc) {
                           for (Eigen::Index i = begin; i < end; ++i) {
                             const ConstRowMap j(jacobians_ + i * d_q_ * d_m_, d_q_, d_m_);
                             const Eigen::MatrixXd jty = j.transpose() * y;
                             acc.noalias() += j * jty;
                           }
                         });
  }
  return SampleAverage(n_, d_q_, y.cols(), threads,
                       [&](Eigen::Index begin, Eigen::Index end, Eigen::MatrixXd& acc) {
                         for (Eigen::Index i = begin; i < end; ++i) {
                           const ConstRowMap u(u_ + i * d_q_ * rank_, d_q_, rank_);
                           const ConstVectorMap sigma(sigma_ + i * rank_, rank_);
                           const ConstRowMap v(v_ + i * d_m_ * rank_, d_m_, rank_);
                           // Uσ (VᵀV) σUᵀ Y with the small r × r Gram matrix of V.
                           const Eigen::MatrixXd vtv = v.transpose() * v;
                           const Eigen::MatrixXd z = sigma.asDiagonal() * (u.transpose() * y);
                           const Eigen::MatrixXd back = sigma.asDiagonal() * (vtv * z);
                           acc.noalias() += u * back;
                         }
                       });
}

Eigen::MatrixXd JacobianSamples::OutputGram(int threads) const {
  Eigen::MatrixXd gram = SampleAverage(
      n_, d_q_, d_q_, threads, [&](Eigen::Index begin, Eigen::Index end, Eigen::MatrixXd& acc) {
        for (Eigen::Index i = begin; i < end; ++i) {
          if (is_full()) {
            const ConstRowMap j(jacobians_ + i * d_q_ * d_m_, d_q_, d_m_);
            // Only the lower triangle is accumulated (half the flops).
            acc.selfadjointView<Eigen::Lower>().rankUpdate(j);
          } else {
            const ConstRowMap u(u_ + i * d_q_ * rank_, d_q_, rank_);
            const ConstVectorMap sigma(sigma_ + i * rank_, rank_);
            const ConstRowMap v(v_ + i * d_m_ * rank_, d_m_, rank_);
            const Eigen::MatrixXd middle =
                sigma.asDiagonal() * (v.transpose() * v) * sigma.asDiagonal();
            acc.noalias() += u * middle * u.transpose();
          }
        }
      });
  if (is_full()) return gram.selfadjointView<Eigen::Lower>();
  return 0.5 * (gram + gram.transpose());
}

double JacobianSamples::MeanSquaredNorm() const {
  double total = 0.0;
  if (is_full()) {
    total = ConstVectorMap(jacobians_, n_ * d_q_ * d_m_).squaredNorm();
  } else {
    for (Eigen::Index i = 0; i < n_; ++i) {
      const ConstRowMap u(u_ + i * d_q_ * rank_, d_q_, rank_);
      const ConstVectorMap sigma(sigma_ + i * rank_, rank_);
      const ConstRowMap v(v_ + i * d_m_ * rank_, d_m_, rank_);
      // ‖UσVᵀ‖²_F = trace(σUᵀUσ · VᵀV), exact for non-orthonormal factors too.
      const Eigen::MatrixXd left = sigma.asDiagonal() * (u.transpose() * u) * sigma.asDiagonal();
      const Eigen::MatrixXd right = v.transpose() * v;
      total += left.cwiseProduct(right).sum();
    }
  }
  return total / static_cast<double>(n_);
}

}  // namespace dino::bases
