// CPU gating (routing): router logits -> per-token expert ids, routing weights and
// per-expert load, for every Scoring / Selection mode in gating_params.h.
#pragma once

#include "kernels/common/gating_params.h"

namespace moekit::cpu {

// Runs the router described by `p` on host memory. Validates the parameters first
// (moekit::Error with ERR_INVALID_ARGUMENT on bad ones; nothing is written then).
// Fills p.ids / p.weights ([tokens, k]) and p.load ([experts], zeroed first).
// Results do not depend on the number of threads.
void gating(const GatingParams& p);

}  // namespace moekit::cpu
