// CUDA gating (routing): router logits -> per-token expert ids, routing weights and
// per-expert load, for every Scoring / Selection mode in gating_params.h, with the
// same results as kernels/cpu/gating.cc (integer outputs identical for the same
// float32 inputs). No CUDA includes here: stream is a cudaStream_t passed as void*.
#pragma once

#include "kernels/common/gating_params.h"

namespace moekit::cuda {

// Runs the router described by `p`; every pointer in `p` is device memory.
// Validates the parameters on the host first (moekit::Error, ERR_INVALID_ARGUMENT;
// nothing is launched then). Zeroes p.load and fills p.ids / p.weights, all
// stream-ordered on `stream`, with no host synchronisation. Scratch (Sinkhorn,
// very wide rows) is allocated and freed stream-ordered on `stream`.
void gating(const GatingParams& p, void* stream);

}  // namespace moekit::cuda
