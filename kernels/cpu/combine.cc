#include "kernels/cpu/combine.h"

#include "kernels/common/error.h"
#include "kernels/cpu/thread_pool.h"

namespace moekit::cpu {

void combine(const CombineParams& p) {
  MOEKIT_REQUIRE(p.tokens >= 0 && p.k >= 1 && p.hidden >= 0, "combine: bad sizes");
  parallel_for(p.tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* out = p.out + t * p.hidden;
      if (p.shared != nullptr) {
        const float* s = p.shared + t * p.hidden;
        for (int64_t h = 0; h < p.hidden; ++h) out[h] = s[h];
      } else {
        for (int64_t h = 0; h < p.hidden; ++h) out[h] = 0.0f;
      }
      for (int64_t s = 0; s < p.k; ++s) {
        const int32_t row = p.pair_to_row[t * p.k + s];
        if (row < 0) continue;
        MOEKIT_REQUIRE(row < p.rows, "combine: row ", row, " out of range for ", p.rows, " rows");
        const float w = p.weights != nullptr ? p.weights[t * p.k + s] : 1.0f;
        const float* y = p.y + static_cast<int64_t>(row) * p.hidden;
        // NOTE: plain loop; the compiler vectorises it (fma-free, same result everywhere).
        for (int64_t h = 0; h < p.hidden; ++h) out[h] += w * y[h];
      }
    }
  });
}

}  // namespace moekit::cpu
