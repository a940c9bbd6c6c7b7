// Dispatch: groups the (token, slot) pairs of a routing by expert, the layout the
// grouped GEMM consumes, and the inverse map that combine uses.
//
// Pair p = t * k + s is token t's slot s. Pairs with ids[p] < 0 (unused slots) are
// skipped. Pairs are grouped by expert (ascending); within an expert, by p
// (ascending, i.e. token order). With a capacity, each expert keeps its first
// `capacity` pairs and drops the rest (later tokens are dropped first).
// Each expert's group is padded to a multiple of block_size rows.
#pragma once

#include <cstdint>

namespace moekit {

struct DispatchParams {
  const int32_t* ids = nullptr;  // [tokens, k] expert id per pair, -1 = skip
  int64_t tokens = 0;
  int64_t k = 0;
  int64_t experts = 0;
  int64_t block_size = 1;  // >= 1: each group padded to a multiple of this many rows
  int64_t capacity = -1;   // < 0: unlimited; else max pairs kept per expert

  int32_t* counts = nullptr;        // [experts] out: pairs kept per expert
  int32_t* offsets = nullptr;       // [experts + 1] out: first row of each expert's group; offsets[E] = rows used
  int32_t* sorted_pairs = nullptr;  // [max_rows] out: pair of each row, -1 for padding (and unused tail rows)
  int32_t* pair_to_row = nullptr;   // [tokens * k] out: row of each pair, -1 when skipped or dropped
  int64_t* dropped = nullptr;       // [1] out: pairs dropped by the capacity
};

// Upper bound of rows the padded layout can need: every pair plus the padding of
// every expert's last block.
inline int64_t dispatch_max_rows(int64_t tokens, int64_t k, int64_t experts, int64_t block_size) {
  return tokens * k + (block_size > 1 ? experts * (block_size - 1) : 0);
}

// Gathers rows in dispatch order: out[r, :] = x[sorted_pairs[r] / k, :], zeros for
// padding rows. x is float32 [tokens, hidden]; out is [rows, hidden].
struct PermuteParams {
  const float* x = nullptr;
  const int32_t* sorted_pairs = nullptr;  // [rows]
  int64_t rows = 0;
  int64_t k = 0;
  int64_t hidden = 0;
  float* out = nullptr;
};

}  // namespace moekit
