#pragma once

#include "kernels/common/moe_layer_params.h"

namespace moekit::cpu {
// One MoE layer forward on the CPU (see moe_layer_params.h).
void moe_layer_forward(const MoELayerParams& p);
}  // namespace moekit::cpu
