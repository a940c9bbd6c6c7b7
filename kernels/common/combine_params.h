// Combine: the weighted sum of each token's expert outputs, back in token order.
// out[t, :] = sum over slots s with pair_to_row[t*k+s] >= 0 of
//             w(t, s) * y[pair_to_row[t*k+s], :]  (+ shared[t, :] when given)
// where w(t, s) = weights[t*k+s], or 1 when weights is null (already applied,
// e.g. fused into the down projection). Float32 accumulation in slot order.
#pragma once

#include <cstdint>

namespace moekit {

struct CombineParams {
  const float* y = nullptr;            // [rows, hidden] expert outputs in dispatch order
  const int32_t* pair_to_row = nullptr;  // [tokens, k]
  const float* weights = nullptr;      // [tokens, k] or null
  const float* shared = nullptr;       // [tokens, hidden] or null
  int64_t tokens = 0;
  int64_t k = 0;
  int64_t hidden = 0;
  int64_t rows = 0;
  float* out = nullptr;  // [tokens, hidden]
};

}  // namespace moekit
