// Skinny grouped GEMM: the experts with 3..16 rows (kTinyMaxRows + 1 .. kSkinnyMaxRows)
// of a grouped GEMM with bf16/f16 [E, N, K] weights, on tensor cores, with the weights
// streamed from global memory straight into mma fragments (no shared-memory staging).
// Opt-in (MOEKIT_SKINNY=1 or =require) until test/gpu/skinny.test.ts has passed on a GPU;
// semantics as every grouped GEMM kernel (grouped_gemm.cu's file comment).
//
// Why: these experts make decode and small-batch layers bandwidth-bound (each weight
// element is used by 3..16 rows), and on the H100 the 3..8-row GEMV kernel streamed
// weights at 1.5-1.9 TB/s against 2.9 TB/s for the 1..2-row one (mixtral T = 16,
// deepseek-v3 T = 128; docs/BENCHMARKS.md): each 16-byte weight vector cost it 8 rows x 8
// FMAs plus unpacking and 4 x loads per row. Here one mma.sync m16n8k16 does 16 rows x
// 8 columns x 16 k, so the instruction count per weight byte drops by an order of
// magnitude and the CTA keeps 2 k-steps of weights in flight per lane.
//
// The k permutation. A warp's 16-byte load per lane (g = lane / 4, t = lane % 4) takes
// weight row (accumulator column) c0 + g at k = k0 + 8t .. 8t + 7, i.e. 8 rows x 64
// contiguous bytes per instruction. Those 8 values feed two m16n8k16 MMAs whose k slots
// are assigned by the bijection
//   MMA q (q = 0, 1): k slots 2t, 2t+1  <- k 8t + 4q,     8t + 4q + 1
//                     k slots 2t+8, 2t+9 <- k 8t + 4q + 2, 8t + 4q + 3
// which depends only on the k slot (t is the slot's lane column in both the A and B
// fragment layouts, PTX ISA "Matrix Fragments for mma.m16n8k16"): the A fragment of lane
// (g, t) holds x rows g and g + 8 at the same k, so the MMAs sum x[r][k] * W[c][k] over
// all 32 k of the step. B registers: b0 = (slots 2t, 2t+1) = the 32-bit word q*2 of the
// 16-byte vector, b1 = word q*2 + 1 (low half = lower k, little-endian).
//
// x stays f32 in memory and is split on the fly into hi = round16(x) and
// lo = round16(x - hi) of the weight's 16-bit type (with f16, lo is scaled by 2^11 and
// accumulated apart; see split2); both are multiplied (two MMAs), so the product keeps
// about 16 (bf16) or 22 (f16) significant bits of x: results match the f32-x GEMV
// kernels' to f32 rounding, not the 8 bits of the tiled kernels' rounded x.
// |x| > 65504 overflows to +-inf with f16 weights, as on the tiled path.
//
// CTA: 256 threads = 4 column warps (wn: accumulator columns wn*32 .. +31, 4 n8 tiles,
// the column numbering of gemm_tc_kernel's 128-column tile, so tile_col_source and
// store_mma_tile serve both) x 2 k-slices (ks: k-steps of 32 with step % 2 == ks),
// reduced through 8 KB of shared memory before the epilogue. One unit per expert with
// 3..16 rows (locate_unit); grid.y = column blocks.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/grouped_gemm_device.cuh"

namespace moekit::cuda::gg {

namespace {

constexpr int kRows = kSkinnyMaxRows;  // one m16 tile
constexpr int kMinRows = kTinyMaxRows + 1;
constexpr int kColWarps = 4;
constexpr int kSlices = 2;
constexpr int kBN = 128;  // accumulator columns per CTA
constexpr int kStepK = 32;
static_assert(kColWarps * kSlices * 32 == kThreads, "4 column warps x 2 k-slices");
static_assert(kRows == 16, "one m16 tile of rows");

// f16: the remainder x - hi, or 0 where hi is not finite (|x| past f16's range, or
// +-inf): then the hi product alone gives +-inf, as on the tiled path, instead of the
// NaN of inf - inf. (bf16 has f32's range, so only x = +-inf gives an infinite hi; its
// remainder is then NaN and so is the output, where the tiled path gives +-inf. Not
// guarded: the check costs registers the bf16 kernel does not have to spare.)
__device__ __forceinline__ float remainder_of(float x, float hi) { return isfinite(hi) ? x - hi : 0.0f; }

// x0, x1 -> packed 16-bit pairs hi = round(x), lo = round((x - hi) * kLoScale) (x0 in the
// low half). bf16: kLoScale = 1 (bf16 has f32's exponent range, so lo keeps 8 bits of
// the remainder at any |x|). f16: kLoScale = 2^11, which lifts the remainder (at most
// 2^-11 |x|) back to |x|'s magnitude, so it stays a normal f16 with 11 bits down to
// |x| ~ 2^-13 instead of sinking into f16's subnormals below |x| ~ 0.1; the lo products
// then go to accumulators of their own, scaled back by 2^-11 (exact) at the end.
template <class Tag>
constexpr float kLoScale = 1.0f;
template <>
constexpr float kLoScale<TagF16> = 2048.0f;

__device__ __forceinline__ void split2(TagBf16, float x0, float x1, uint32_t& hi, uint32_t& lo) {
  hi = TagBf16::pack2(x0, x1);
  lo = TagBf16::pack2(x0 - __uint_as_float(hi << 16), x1 - __uint_as_float(hi & 0xffff0000u));
}
__device__ __forceinline__ void split2(TagF16, float x0, float x1, uint32_t& hi, uint32_t& lo) {
  hi = TagF16::pack2(x0, x1);
  const float h0 = __half2float(__ushort_as_half(static_cast<unsigned short>(hi & 0xffffu)));
  const float h1 = __half2float(__ushort_as_half(static_cast<unsigned short>(hi >> 16)));
  lo = TagF16::pack2(remainder_of(x0, h0) * kLoScale<TagF16>, remainder_of(x1, h1) * kLoScale<TagF16>);
}

// One k-step's operands of a lane: 4 weight vectors (n8 tiles) and x rows g, g + 8
// at k = k0 + 8t .. 8t + 7.
struct Stage {
  uint4 w[4];
  float4 x[2][2];  // [row g / g + 8][k 8t..8t+3 / 8t+4..8t+7]
};

// NOTE: two CTAs per SM caps registers at 128. ptxas (sm_90) fits the bf16 kernels with no
// spill; the f16 ones, with 16 more accumulators for the scaled lo products, spill 0-8
// bytes (sm_80: up to 40). Left so until measured against one CTA per SM.
template <class Tag, ColMode M>
__global__ void __launch_bounds__(kThreads, 2) gemm_skinny_kernel(Args a) {
  using Raw = typename Tag::Raw;
  __shared__ __align__(16) float4 red[4 * kColWarps * 32];  // [ni][wn][lane] partial sums of k-slice 1

  const Unit u = locate_unit<kRows>(a, static_cast<int>(blockIdx.x), kMinRows, kRows);
  if (u.expert < 0) return;  // uniform across the CTA
  const int64_t e = u.expert;
  const int row0 = u.row_begin;
  const int m = u.row_end - u.row_begin;  // 3..16
  const int64_t K = a.k;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wn = warp % kColWarps, ks = warp / kColWarps;
  const int g = lane >> 2, t = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * (kBN / 2);

  const Raw* wrow[4];  // [ni] weight row of accumulator column wn*32 + 8 ni + g
  bool wval[4];
#pragma unroll
  for (int ni = 0; ni < 4; ++ni)
    wrow[ni] = tile_col_source<Tag, WeightLayout::kENK, M>(a, e, n0, j0, wn * 32 + ni * 8 + g, &wval[ni]);
  const float* xrow[2];  // rows g, g + 8 (null past the expert's rows)
#pragma unroll
  for (int h = 0; h < 2; ++h) xrow[h] = g + 8 * h < m ? a.x + static_cast<int64_t>(row0 + g + 8 * h) * K : nullptr;

  const int n_steps = static_cast<int>((K + kStepK - 1) / kStepK);
  const int my_steps = n_steps > ks ? (n_steps - ks + kSlices - 1) / kSlices : 0;  // steps ks, ks + 2, ...

  // NOTE: K % 8 == 0 (the launcher checks), so each lane's 8-element chunk is entirely
  // inside K or entirely past it; steps past the end load nothing.
  auto load = [&](Stage& st, int i) {
    const int64_t k = static_cast<int64_t>(ks + kSlices * i) * kStepK + 8 * t;
    const bool in = i < my_steps && k < K;
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) st.w[ni] = in && wval[ni] ? ldg16(wrow[ni] + k) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (in && xrow[h] != nullptr) {
        st.x[h][0] = __ldg(reinterpret_cast<const float4*>(xrow[h] + k));
        st.x[h][1] = __ldg(reinterpret_cast<const float4*>(xrow[h] + k + 4));
      } else {
        st.x[h][0] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        st.x[h][1] = st.x[h][0];
      }
    }
  };

  // [mi][ni] mma accumulators (store_mma_tile's layout); with f16 the lo products (scaled
  // by kLoScale) go to acc_lo, added back at the end.
  constexpr bool kSepLo = kLoScale<Tag> != 1.0f;
  float acc[1][4][4];
  float acc_lo[kSepLo ? 4 : 1][4];
#pragma unroll
  for (int ni = 0; ni < 4; ++ni)
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[0][ni][q] = 0.0f;
#pragma unroll
  for (int ni = 0; ni < (kSepLo ? 4 : 1); ++ni)
#pragma unroll
    for (int q = 0; q < 4; ++q) acc_lo[ni][q] = 0.0f;

  auto compute = [&](const Stage& st) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {  // k 8t + 4q .. 8t + 4q + 3
      uint32_t ahi[4], alo[4];     // a0 (row g, slots 2t..), a1 (row g+8), a2 (row g, slots 2t+8..), a3
      split2(Tag{}, st.x[0][q].x, st.x[0][q].y, ahi[0], alo[0]);
      split2(Tag{}, st.x[1][q].x, st.x[1][q].y, ahi[1], alo[1]);
      split2(Tag{}, st.x[0][q].z, st.x[0][q].w, ahi[2], alo[2]);
      split2(Tag{}, st.x[1][q].z, st.x[1][q].w, ahi[3], alo[3]);
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const uint32_t b0 = q == 0 ? st.w[ni].x : st.w[ni].z;
        const uint32_t b1 = q == 0 ? st.w[ni].y : st.w[ni].w;
        mma16816(Tag{}, acc[0][ni], ahi, b0, b1);
        if constexpr (kSepLo) {
          mma16816(Tag{}, acc_lo[ni], alo, b0, b1);
        } else {
          mma16816(Tag{}, acc[0][ni], alo, b0, b1);
        }
      }
    }
  };

  // Two stages in registers: step i + 2's loads are issued as soon as step i is consumed,
  // so two steps of weights (128 bytes per lane) are in flight while one is multiplied.
  Stage s0, s1;
  load(s0, 0);
  load(s1, 1);
  for (int i = 0; i < my_steps; i += 2) {
    compute(s0);
    load(s0, i + 2);
    if (i + 1 < my_steps) {  // warp-uniform
      compute(s1);
      load(s1, i + 3);
    }
  }

  if constexpr (kSepLo) {
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[0][ni][q] += acc_lo[ni][q] * (1.0f / kLoScale<Tag>);
  }

  // k-slice 1 hands its partial sums to k-slice 0, which runs the epilogue.
  if (ks == 1) {
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
      red[(ni * kColWarps + wn) * 32 + lane] = make_float4(acc[0][ni][0], acc[0][ni][1], acc[0][ni][2], acc[0][ni][3]);
  }
  __syncthreads();
  if (ks == 1) return;
#pragma unroll
  for (int ni = 0; ni < 4; ++ni) {
    const float4 p = red[(ni * kColWarps + wn) * 32 + lane];
    acc[0][ni][0] += p.x;
    acc[0][ni][1] += p.y;
    acc[0][ni][2] += p.z;
    acc[0][ni][3] += p.w;
  }
  store_mma_tile<Tag, M, 1>(a, e, n0, j0, wn, 0, row0, m, acc);
}

// MOEKIT_SKINNY: "1" enables the path; "require" also turns every decline (operands not
// qualifying) into an error, so a test run can show that the skinny kernel is what it checked.
int env_mode() {  // 0 off, 1 on, 2 required
  static const int mode = opt_in_mode("MOEKIT_SKINNY");
  return mode;
}

template <class Tag, ColMode M>
void launch_typed(const Args& a, cudaStream_t s) {
  // At most min(experts, rows / 3) experts have 3..16 rows: one unit each.
  const int64_t gx = std::min<int64_t>(a.experts, a.rows / kMinRows);
  if (gx == 0) return;
  const int64_t outs_per_cta = M == ColMode::kPlain ? kBN : kBN / 2;
  const int64_t gy = (a.n_out + outs_per_cta - 1) / outs_per_cta;
  MOEKIT_CHECK(gy <= 65535, "the skinny GEMM kernel: ", gy, " column blocks");
  gemm_skinny_kernel<Tag, M><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), kThreads, 0, s>>>(a);
  MOEKIT_CUDA_CHECK(cudaGetLastError());
}

template <class Tag>
void launch_mode(const Args& a, ColMode mode, cudaStream_t s) {
  switch (mode) {
    case ColMode::kPlain: return launch_typed<Tag, ColMode::kPlain>(a, s);
    case ColMode::kInterleaved: return launch_typed<Tag, ColMode::kInterleaved>(a, s);
    case ColMode::kHalves: return launch_typed<Tag, ColMode::kHalves>(a, s);
  }
}

}  // namespace

bool launch_skinny_gemm(const Args& a, DType dtype, ColMode mode, cudaStream_t s) {
  if (env_mode() == 0) return false;
  auto decline = [&](const char* why) {
    if (env_mode() == 2) fail(code::kUnsupported, "grouped_gemm (cuda): MOEKIT_SKINNY=require but the skinny kernel cannot run: ", why);
    return false;
  };
  // NOTE: launch<> calls this only for bf16/f16 [E, N, K] weights: f32 and [E, K, N] calls
  // never take the skinny kernel, and `require` does not make them errors.
  if (dtype != DType::kBF16 && dtype != DType::kF16) return false;
  // vec_w ([E, N, K]): 16-byte aligned weights and K % 8 == 0; vec_x: 16-byte aligned x.
  if (!a.vec_w || !a.vec_x || a.k % 8 != 0) return decline("K is not a multiple of 8 or x / the weights are not 16-byte aligned");
  if (dtype == DType::kBF16) {
    launch_mode<TagBf16>(a, mode, s);
  } else {
    launch_mode<TagF16>(a, mode, s);
  }
  return true;
}

}  // namespace moekit::cuda::gg
