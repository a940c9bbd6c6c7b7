// The one ranking order of every backend's selections: value descending, NaN after
// every number (-inf included), then id ascending, so ties go to the lower id.
#pragma once

#include <cstdint>

#include "kernels/common/dtype.h"

namespace moekit {

// True when (a, ia) comes before (b, ib). `x != x` tests NaN on host and device alike.
template <typename T>
MOEKIT_HD bool ranks_before(T a, int64_t ia, T b, int64_t ib) {
  const bool a_nan = a != a;
  const bool b_nan = b != b;
  if (a_nan || b_nan) {
    if (a_nan && b_nan) return ia < ib;
    return b_nan;
  }
  if (a != b) return a > b;
  return ia < ib;
}

}  // namespace moekit
