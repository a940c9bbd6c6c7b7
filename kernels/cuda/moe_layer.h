#pragma once

#include "kernels/common/moe_layer_params.h"

namespace moekit::cuda {
// One MoE layer forward on the device (see moe_layer_params.h). Every pointer in p is
// device memory of the current device; all work is queued on `stream` (a cudaStream_t)
// with no host synchronisation, so the forward can be captured in a CUDA graph.
void moe_layer_forward(const MoELayerParams& p, void* stream);
}  // namespace moekit::cuda
