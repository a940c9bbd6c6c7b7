#pragma once

#include "kernels/common/dispatch_params.h"

namespace moekit::cpu {
// Counting sort of the pairs by expert (see dispatch_params.h).
void dispatch(const DispatchParams& p);
// Row gather into dispatch order (see PermuteParams).
void permute_rows(const PermuteParams& p);
}  // namespace moekit::cpu
