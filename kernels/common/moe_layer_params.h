// One MoE layer forward: router -> gating -> dispatch -> expert MLPs -> combine
// (+ shared experts). Every pointer is on the device the forward runs on.
#pragma once

#include <cstdint>

#include "kernels/common/dtype.h"
#include "kernels/common/gating_params.h"
#include "kernels/common/grouped_gemm_params.h"

namespace moekit {

// A weight tensor as the layer reads it.
struct WeightRef {
  const void* data = nullptr;  // null = absent
  DType dtype = DType::kF32;
  WeightLayout layout = WeightLayout::kENK;
};

struct MoELayerParams {
  const void* x = nullptr;  // [tokens, hidden], dtype x_dtype
  DType x_dtype = DType::kF32;
  int64_t tokens = 0;
  int64_t hidden = 0;

  // Router: logits = x . router_w^T + router_b, [tokens, experts + null_experts].
  WeightRef router_w;  // [experts + null_experts, hidden]
  WeightRef router_b;  // [experts + null_experts]
  // Gating options (its logits/ids/weights/load pointers are set by the forward).
  GatingParams gating;
  // Forced routing: when forced_ids is set the router and gate are skipped.
  const int32_t* forced_ids = nullptr;    // [tokens, k], -1 = skip
  const float* forced_weights = nullptr;  // [tokens, k] or null (then the router's softmax probability of each id)

  // Routed experts.
  int64_t experts = 0;
  int64_t intermediate = 0;  // I
  WeightRef w_in;            // [E, 2I, H] / [E, H, 2I] fused gate+up (or [E, I, H] gate when w_in_up is set, or the only projection for non-GLU)
  WeightRef w_in_up;         // [E, I, H] up projection when gate and up are separate
  WeightRef b_in;            // [E, 2I] (or [E, I])
  WeightRef b_in_up;         // [E, I]
  WeightRef w_out;           // [E, H, I] / [E, I, H]
  WeightRef b_out;           // [E, H]
  Activation activation = Activation::kSwiGLU;
  float alpha = 1.702f;
  float limit = 7.0f;

  // Shared experts (dense, on every token), SwiGLU: shared_intermediate = 0 means none.
  int64_t shared_intermediate = 0;
  WeightRef shared_w_in;     // [2Is, H] fused gate+up, or [Is, H] gate with shared_w_in_up
  WeightRef shared_w_in_up;  // [Is, H]
  WeightRef shared_w_out;    // [H, Is]
  WeightRef shared_gate;     // [1, H]: out += sigmoid(x . shared_gate) * shared(x) (Qwen2-MoE)

  // Dispatch options.
  int64_t block_size = 1;
  int64_t capacity = -1;

  // Outputs.
  void* y = nullptr;  // [tokens, hidden], dtype y_dtype
  DType y_dtype = DType::kF32;
  int32_t* ids = nullptr;      // [tokens, k]
  float* weights = nullptr;    // [tokens, k]
  int32_t* load = nullptr;     // [experts]
  int64_t* dropped = nullptr;  // [1]
};

// The grouped GEMM of one dense projection over every row (a single "expert" whose
// group is rows [0, rows), given by `offsets` = {0, rows} on the backend's device):
// y = act(x . W^T + b) (* row_scale). Used for the router and the shared experts.
inline GroupedGemmParams dense_projection(const float* x, int64_t rows, int64_t in, int64_t out, const WeightRef& w,
                                          const WeightRef& b, const WeightRef& w_up, Activation act, float* y,
                                          const float* row_scale, const int32_t* offsets) {
  GroupedGemmParams g;
  g.x = x;
  g.offsets = offsets;
  g.rows = rows;
  g.experts = 1;
  g.n = out;
  g.k = in;
  g.w = w.data;
  g.w_dtype = w.dtype;
  g.layout = w.layout;
  g.w_up = w_up.data;
  g.bias = b.data;
  g.activation = act;
  g.row_scale = row_scale;
  g.y = y;
  return g;
}

}  // namespace moekit
