// Structured P1 triangulation of the unit square Ω = (0,1)² used by the data generator
// (paper §3.1: a uniform 64 × 64 mesh, d_M = 4225 nodal parameter values).
//
// Numbering, fixed because the generated data sets store nodal vectors in this order:
//  * node (i, j) at (i/n, j/n), 0 ≤ i, j ≤ n, has index (n+1)·j + i (x fastest);
//  * mesh square (ci, cj) has index c = n·cj + ci and is split along its bottom-left to
//    top-right diagonal into element 2c = (BL, BR, TR) and element 2c+1 = (BL, TR, TL),
//    both listed counter-clockwise.
#ifndef DINO_MODELS_PDE_MESH_H_
#define DINO_MODELS_PDE_MESH_H_

#include <Eigen/Core>
#include <array>
#include <functional>

namespace dino::pde {

// Where a point lies: an element containing it and the point's barycentric coordinates with
// respect to that element's vertices (in the element's vertex order). These coordinates are
// the values of the element's three P1 basis functions at the point.
struct PointLocation {
  int element = -1;
  Eigen::Vector3d barycentric = Eigen::Vector3d::Zero();
};

class StructuredTriMesh {
 public:
  static constexpr int kDefaultResolution = 64;

  // n mesh squares per side. Throws std::invalid_argument unless 1 ≤ n ≤ 4096 (beyond that
  // the node count no longer fits comfortably in the int indices Eigen's sparse matrices use).
  explicit StructuredTriMesh(int n = kDefaultResolution);

  int n() const { return n_; }
  double h() const { return 1.0 / n_; }
  int num_nodes() const { return (n_ + 1) * (n_ + 1); }
  int num_elements() const { return 2 * n_ * n_; }

  int NodeIndex(int i, int j) const { return (n_ + 1) * j + i; }
  Eigen::Vector2d NodeCoordinates(int node) const;
  // Node indices of element e, counter-clockwise.
  std::array<int, 3> Element(int e) const;
  Eigen::Matrix<double, 3, 2> ElementVertices(int e) const;
  double ElementArea() const { return 0.5 / (static_cast<double>(n_) * n_); }

  // Locates a point of the closed unit square. Points on element edges belong to several
  // elements; any of them is returned (P1 functions are continuous, so evaluation does not
  // depend on the choice). Points farther than 1e-12 outside [0,1]² are rejected with
  // std::invalid_argument.
  PointLocation Locate(const Eigen::Vector2d& point) const;

  // Nodal interpolant of f.
  Eigen::VectorXd Interpolate(const std::function<double(const Eigen::Vector2d&)>& f) const;

 private:
  int n_;
};

}  // namespace dino::pde

#endif  // DINO_MODELS_PDE_MESH_H_
