// CUDA combine: out[t, :] = (shared[t, :] or 0) + sum over slots s = 0..k-1 with
// pair_to_row[t*k+s] >= 0 of w(t, s) * y[row, :], in slot order, float32.
// Every output element is formed by exactly the CPU's sequence of roundings
// (kernels/cpu/combine.cc: out = shared/0, then out += w * y per slot), with the
// multiply and the add rounded separately (__fmul_rn / __fadd_rn: no FMA
// contraction), so the result is bit-identical to the CPU backend's.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/error.h"
#include "kernels/cuda/combine.h"
#include "kernels/cuda/cuda_check.h"

namespace moekit::cuda {

namespace {

__device__ __forceinline__ float madd_rn(float acc, float w, float y) { return __fadd_rn(acc, __fmul_rn(w, y)); }

__device__ __forceinline__ float4 madd_rn(float4 acc, float w, float4 y) {
  return make_float4(madd_rn(acc.x, w, y.x), madd_rn(acc.y, w, y.y), madd_rn(acc.z, w, y.z), madd_rn(acc.w, w, y.w));
}

template <int V>
struct Vec;
template <>
struct Vec<1> {
  using T = float;
  static __device__ __forceinline__ T zero() { return 0.0f; }
};
template <>
struct Vec<4> {
  using T = float4;
  static __device__ __forceinline__ T zero() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
};

// One block per token (grid-stride over tokens); threads stride over the hidden
// dimension in units of V floats (V = 4 when every row is 16-byte aligned).
// NOTE: the token's k (row, weight) pairs are re-read by every thread; they are
// broadcast loads that hit L1, and k is small next to hidden.
// A row >= rows (the CPU reports it as an error) cannot be reported from the
// device and is skipped rather than read out of bounds.
template <int V>
__global__ void combine_kernel(const float* __restrict__ y, const int32_t* __restrict__ pair_to_row,
                               const float* __restrict__ weights, const float* __restrict__ shared,
                               int64_t tokens, int64_t k, int64_t hidden, int64_t rows, float* __restrict__ out) {
  using T = typename Vec<V>::T;
  const int64_t vecs = hidden / V;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const int32_t* slots = pair_to_row + t * k;
    T* dst = reinterpret_cast<T*>(out + t * hidden);
    const T* sh = shared != nullptr ? reinterpret_cast<const T*>(shared + t * hidden) : nullptr;
    for (int64_t h = threadIdx.x; h < vecs; h += blockDim.x) {
      T acc = sh != nullptr ? sh[h] : Vec<V>::zero();
      for (int64_t s = 0; s < k; ++s) {
        const int32_t row = slots[s];
        if (row < 0 || row >= rows) continue;
        const float w = weights != nullptr ? weights[t * k + s] : 1.0f;
        const T* src = reinterpret_cast<const T*>(y + static_cast<int64_t>(row) * hidden);
        acc = madd_rn(acc, w, src[h]);
      }
      dst[h] = acc;
    }
  }
}

}  // namespace

// Shape contract: y [rows, hidden]; pair_to_row [tokens, k]; weights [tokens, k] or
// null; shared [tokens, hidden] or null; out [tokens, hidden]. All device pointers.
void combine(const CombineParams& p, void* stream) {
  MOEKIT_REQUIRE(p.tokens >= 0 && p.k >= 1 && p.hidden >= 0 && p.rows >= 0, "combine: bad sizes tokens=",
                 p.tokens, " k=", p.k, " hidden=", p.hidden, " rows=", p.rows);
  if (p.tokens == 0 || p.hidden == 0) return;
  MOEKIT_REQUIRE(p.out != nullptr && p.pair_to_row != nullptr, "combine: out and pair_to_row must not be null");
  MOEKIT_REQUIRE(p.rows == 0 || p.y != nullptr, "combine: y must not be null");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  auto aligned = [](const void* ptr) { return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vec4 = p.hidden % 4 == 0 && aligned(p.y) && aligned(p.shared) && aligned(p.out);
  const int64_t per_row = vec4 ? p.hidden / 4 : p.hidden;
  const int threads = per_row >= 256 ? 256 : per_row >= 128 ? 128 : per_row >= 64 ? 64 : 32;
  // NOTE: one block per token, grid-stride past 64k blocks: tokens are independent.
  const unsigned grid = static_cast<unsigned>(p.tokens < 65536 ? p.tokens : 65536);
  if (vec4) {
    combine_kernel<4><<<grid, threads, 0, s>>>(p.y, p.pair_to_row, p.weights, p.shared, p.tokens, p.k, p.hidden,
                                               p.rows, p.out);
  } else {
    combine_kernel<1><<<grid, threads, 0, s>>>(p.y, p.pair_to_row, p.weights, p.shared, p.tokens, p.k, p.hidden,
                                               p.rows, p.out);
  }
  MOEKIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moekit::cuda
