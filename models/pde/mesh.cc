#include "models/pde/mesh.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace dino::pde {

StructuredTriMesh::StructuredTriMesh(int n) : n_(n) {
  if (n < 1 || n > 4096) {
    std::ostringstream msg;
    msg << "StructuredTriMesh: resolution n = " << n << " is outside [1, 4096]";
    throw std::invalid_argument(msg.str());
  }
}

Eigen::Vector2d StructuredTriMesh::NodeCoordinates(int node) const {
  const int i = node % (n_ + 1);
  const int j = node / (n_ + 1);
  return Eigen::Vector2d(static_cast<double>(i) / n_, static_cast<double>(j) / n_);
}

std::array<int, 3> StructuredTriMesh::Element(int e) const {
  const int cell = e / 2;
  const int ci = cell % n_;
  const int cj = cell / n_;
  const int bl = NodeIndex(ci, cj);
  const int br = NodeIndex(ci + 1, cj);
  const int tr = NodeIndex(ci + 1, cj + 1);
  const int tl = NodeIndex(ci, cj + 1);
  if (e % 2 == 0) return {bl, br, tr};
  return {bl, tr, tl};
}

Eigen::Matrix<double, 3, 2> StructuredTriMesh::ElementVertices(int e) const {
  const std::array<int, 3> nodes = Element(e);
  Eigen::Matrix<double, 3, 2> vertices;
  for (int a = 0; a < 3; ++a) vertices.row(a) = NodeCoordinates(nodes[a]).transpose();
  return vertices;
}

PointLocation StructuredTriMesh::Locate(const Eigen::Vector2d& point) const {
  constexpr double kOutsideTolerance = 1e-12;
  if (!point.allFinite() || point.minCoeff() < -kOutsideTolerance ||
      point.maxCoeff() > 1.0 + kOutsideTolerance) {
    std::ostringstream msg;
    msg.precision(17);
    msg << "StructuredTriMesh::Locate: point (" << point.x() << ", " << point.y()
        << ") is not in the closed unit square";
    throw std::invalid_argument(msg.str());
  }
  // Mesh-square coordinates; the last row/column of squares also owns the boundary x = 1
  // (resp. y = 1).
  const double sx = std::clamp(point.x(), 0.0, 1.0) * n_;
  const double sy = std::clamp(point.y(), 0.0, 1.0) * n_;
  const int ci = std::min(static_cast<int>(std::floor(sx)), n_ - 1);
  const int cj = std::min(static_cast<int>(std::floor(sy)), n_ - 1);
  const double lx = sx - ci;
  const double ly = sy - cj;
  const int cell = n_ * cj + ci;
  PointLocation location;
  if (lx >= ly) {
    // Lower-right triangle (BL, BR, TR): φ_BL = 1 − lx, φ_BR = lx − ly, φ_TR = ly.
    location.element = 2 * cell;
    location.barycentric = Eigen::Vector3d(1.0 - lx, lx - ly, ly);
  } else {
    // Upper-left triangle (BL, TR, TL): φ_BL = 1 − ly, φ_TR = lx, φ_TL = ly − lx.
    location.element = 2 * cell + 1;
    location.barycentric = Eigen::Vector3d(1.0 - ly, lx, ly - lx);
  }
  return location;
}

Eigen::VectorXd StructuredTriMesh::Interpolate(
    const std::function<double(const Eigen::Vector2d&)>& f) const {
  Eigen::VectorXd values(num_nodes());
  for (int node = 0; node < num_nodes(); ++node) values[node] = f(NodeCoordinates(node));
  return values;
}

}  // namespace dino::pde
