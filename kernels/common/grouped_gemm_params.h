// Grouped GEMM: one GEMM per expert over its contiguous group of rows,
// y[r, :] = act(x[r, :] . W_e^T + b_e) for r in [offsets[e], offsets[e+1]).
// Float32 accumulation; weights in f32, bf16 or f16, converted on the fly.
#pragma once

#include <cstdint>

#include "kernels/common/dtype.h"

namespace moekit {

enum class WeightLayout : int32_t {
  kENK = 0,  // [E, N, K]: HF per-expert nn.Linear weight (out x in)
  kEKN = 1,  // [E, K, N]: gpt-oss gate_up_proj / down_proj
};

enum class Activation : int32_t {
  kNone = 0,               // y = x W^T + b                     (N_out = N)
  kSwiGLU = 1,             // gate = cols [0, N/2), up = [N/2, N): silu(gate) * up   (N_out = N/2)
  kSwiGLUInterleaved = 2,  // gate = even cols, up = odd cols: silu(gate) * up       (N_out = N/2)
  kGptOssSwiGLU = 3,       // interleaved; gate = min(gate, limit), up = clamp(up, -limit, limit),
                           // gate * sigmoid(alpha * gate) * (up + 1)               (N_out = N/2)
  kGeGLU = 4,              // halves like kSwiGLU: gelu(gate) * up (erf GELU)       (N_out = N/2)
  kGelu = 5,               // erf GELU                                             (N_out = N)
  kRelu = 6,
  kSilu = 7,
  kGeluTanh = 8,           // tanh-approximated GELU                               (N_out = N)
};

inline bool activation_is_glu(Activation a) {
  return a == Activation::kSwiGLU || a == Activation::kSwiGLUInterleaved || a == Activation::kGptOssSwiGLU ||
         a == Activation::kGeGLU;
}

struct GroupedGemmParams {
  const float* x = nullptr;        // [rows, K] float32 activations, grouped by expert
  const int32_t* offsets = nullptr;  // [experts + 1] row range of each expert's group
  int64_t rows = 0;
  int64_t experts = 0;
  int64_t n = 0;  // output columns of the weight (2*I for a fused gate/up projection)
  int64_t k = 0;  // input columns
  const void* w = nullptr;         // [E, N, K] or [E, K, N] per `layout`, dtype w_dtype
  DType w_dtype = DType::kF32;
  WeightLayout layout = WeightLayout::kENK;
  // Optional second weight: when set, the GLU's up projection comes from w_up (same
  // layout and dtype as w, N columns) and w gives the gate; the activation must be
  // kSwiGLU or kGeGLU and N_out = N.
  const void* w_up = nullptr;
  const void* bias = nullptr;      // [E, N] (dtype w_dtype) or null
  const void* bias_up = nullptr;   // [E, N] for w_up, or null
  Activation activation = Activation::kNone;
  float alpha = 1.702f;  // kGptOssSwiGLU sigmoid scale
  float limit = 7.0f;    // kGptOssSwiGLU clamp
  // Optional per-row scale applied to the output (routing weight fused into the
  // down projection); null = 1.
  const float* row_scale = nullptr;  // [rows]
  float* y = nullptr;  // [rows, N_out] float32 out
};

// Checks sizes, dtype, layout and activation (not offsets, which may live on a device);
// ERR_INVALID_ARGUMENT. Shared by every backend.
void check_grouped_gemm_shape(const GroupedGemmParams& p);

}  // namespace moekit
