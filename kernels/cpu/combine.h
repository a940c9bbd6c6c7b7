#pragma once

#include "kernels/common/combine_params.h"

namespace moekit::cpu {
// Weighted sum of each token's expert outputs (see combine_params.h).
void combine(const CombineParams& p);
}  // namespace moekit::cpu
