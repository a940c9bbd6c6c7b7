#include "kernels/cpu/dispatch.h"

#include <cstring>
#include <vector>

#include "kernels/common/error.h"
#include "kernels/cpu/thread_pool.h"

namespace moekit::cpu {

void dispatch(const DispatchParams& p) {
  // Shape contract: ids [tokens, k]; counts [E]; offsets [E+1]; sorted_pairs [max_rows];
  // pair_to_row [tokens*k]; dropped [1].
  MOEKIT_REQUIRE(p.tokens >= 0 && p.k >= 1 && p.experts >= 1, "dispatch: bad sizes tokens=", p.tokens,
                 " k=", p.k, " experts=", p.experts);
  MOEKIT_REQUIRE(p.block_size >= 1, "dispatch: block_size must be >= 1, got ", p.block_size);
  const int64_t pairs = p.tokens * p.k;
  const int64_t max_rows = dispatch_max_rows(p.tokens, p.k, p.experts, p.block_size);
  MOEKIT_REQUIRE(max_rows <= INT32_MAX, "dispatch: ", max_rows, " rows do not fit 32-bit row indices");
  for (int64_t i = 0; i < pairs; ++i)
    MOEKIT_REQUIRE(p.ids[i] < p.experts, "dispatch: expert id ", p.ids[i], " at pair ", i,
                   " is out of range for ", p.experts, " experts");

  // Pass 1: pairs routed to each expert (before capacity).
  std::vector<int64_t> routed(static_cast<size_t>(p.experts), 0);
  for (int64_t i = 0; i < pairs; ++i)
    if (p.ids[i] >= 0) ++routed[static_cast<size_t>(p.ids[i])];

  // Pass 2: kept counts and padded offsets.
  int64_t dropped = 0;
  p.offsets[0] = 0;
  for (int64_t e = 0; e < p.experts; ++e) {
    int64_t kept = routed[static_cast<size_t>(e)];
    if (p.capacity >= 0 && kept > p.capacity) {
      dropped += kept - p.capacity;
      kept = p.capacity;
    }
    p.counts[e] = static_cast<int32_t>(kept);
    const int64_t padded = (kept + p.block_size - 1) / p.block_size * p.block_size;
    p.offsets[e + 1] = static_cast<int32_t>(p.offsets[e] + padded);
  }
  if (p.dropped != nullptr) *p.dropped = dropped;

  // Pass 3: place pairs in order (stable: ascending pair index within each expert).
  std::fill(p.sorted_pairs, p.sorted_pairs + max_rows, -1);
  std::vector<int64_t> cursor(static_cast<size_t>(p.experts), 0);
  for (int64_t i = 0; i < pairs; ++i) {
    const int32_t e = p.ids[i];
    if (e < 0) {
      p.pair_to_row[i] = -1;
      continue;
    }
    int64_t& c = cursor[static_cast<size_t>(e)];
    if (c < p.counts[e]) {
      const int32_t row = static_cast<int32_t>(p.offsets[e] + c);
      p.sorted_pairs[row] = static_cast<int32_t>(i);
      p.pair_to_row[i] = row;
    } else {
      p.pair_to_row[i] = -1;  // dropped by the capacity
    }
    ++c;
  }
}

void permute_rows(const PermuteParams& p) {
  const size_t row_bytes = static_cast<size_t>(p.hidden) * sizeof(float);
  parallel_for(p.rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int32_t pair = p.sorted_pairs[r];
      float* dst = p.out + r * p.hidden;
      if (pair < 0)
        std::memset(dst, 0, row_bytes);
      else
        std::memcpy(dst, p.x + (pair / p.k) * p.hidden, row_bytes);
    }
  });
}

}  // namespace moekit::cpu
