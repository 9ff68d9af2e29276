#include "models/pde/quadrature.h"

namespace dino::pde {

const TriangleQuadrature<3>& DegreeTwoRule() {
  static const TriangleQuadrature<3> rule = [] {
    TriangleQuadrature<3> r;
    r.degree = 2;
    constexpr double kMajor = 2.0 / 3.0;
    constexpr double kMinor = 1.0 / 6.0;
    r.barycentric << kMajor, kMinor, kMinor,  //
        kMinor, kMajor, kMinor,               //
        kMinor, kMinor, kMajor;
    r.weights.setConstant(1.0 / 3.0);
    return r;
  }();
  return rule;
}

const TriangleQuadrature<6>& DegreeFourRule() {
  static const TriangleQuadrature<6> rule = [] {
    TriangleQuadrature<6> r;
    r.degree = 4;
    // Closed forms (Strang & Fix 1973; Dunavant 1985), evaluated to 30 digits:
    //   a = (8 − √10 + √(38 − 44√(2/5)))/18,  wa = (620 + √(213125 − 53320√10))/3720,
    //   b = (8 − √10 − √(38 − 44√(2/5)))/18,  wb = (620 − √(213125 − 53320√10))/3720.
    constexpr double a = 0.445948490915964886318329253883;
    constexpr double b = 0.0915762135097707434595714634022;
    constexpr double wa = 0.223381589678011465695007008433;
    constexpr double wb = 0.109951743655321867638326324900;
    r.barycentric << 1.0 - 2.0 * a, a, a,  //
        a, 1.0 - 2.0 * a, a,               //
        a, a, 1.0 - 2.0 * a,               //
        1.0 - 2.0 * b, b, b,               //
        b, 1.0 - 2.0 * b, b,               //
        b, b, 1.0 - 2.0 * b;
    r.weights << wa, wa, wa, wb, wb, wb;
    return r;
  }();
  return rule;
}

}  // namespace dino::pde
