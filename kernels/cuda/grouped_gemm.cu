// CUDA grouped GEMM: y[r, :] = act(x[r, :] . W_e^T + b_e) * row_scale[r] for the
// rows r in [offsets[e], offsets[e+1]) of every expert e (exact semantics in
// kernels/common/grouped_gemm_params.h; reference: kernels/cpu/grouped_gemm.cc).
//
// Kernels (all 256 threads per CTA):
//   gemm_tc_kernel    bf16/f16 weights, experts with > kSmallMaxRows rows: tensor
//                     cores (mma.sync m16n8k16, f32 accumulate), BM x 128 tiles
//                     (BM = 64 or 128), BK = 32, 8 warps, ldmatrix from padded
//                     shared memory, weights double-buffered with cp.async (3 stages
//                     for BM = 64 with MOEKIT_TC_STAGES=3, opt-in until run on a GPU).
//                     x is converted f32 -> bf16/f16 while it is staged into
//                     shared memory, i.e. ACTIVATIONS ARE ROUNDED TO THE WEIGHT'S
//                     16-BIT TYPE on this path (the CPU backend keeps x in f32),
//                     so results differ from the CPU by about that rounding
//                     (~1.5e-3 of the output's scale for bf16, ~1.6e-4 for f16;
//                     |x| > 65504 overflows f16). The decode kernels below keep
//                     x in f32, so a token's result depends on whether its
//                     expert got more than kSmallMaxRows rows in the batch.
//                     Known, not yet changed: candidates are a split hi/lo x or
//                     tf32 MMAs (bf16/f16 weights are exact in tf32).
//   gemm_wgmma_kernel (grouped_gemm_sm90.cu) bf16/f16 [E, N, K] weights on a compute
//                     capability 9.0 device, in place of gemm_tc_kernel's 128-row
//                     tiles, when MOEKIT_WGMMA=1: warpgroup MMAs, 128 x 256 tiles.
//                     Opt-in until test/gpu/wgmma.test.ts has passed on an H100.
//   gemm_skinny_kernel (grouped_gemm_skinny.cu) bf16/f16 [E, N, K] weights, experts
//                     with 3..16 rows, when MOEKIT_SKINNY=1: tensor cores fed straight
//                     from global memory, x split into hi + lo 16-bit parts (f32-grade
//                     results). It replaces the 3..8-row GEMV kernel, and the tiled
//                     kernels then take experts of 17 or more rows (Args::tile_min_rows).
//                     Opt-in until test/gpu/skinny.test.ts has passed on a GPU.
//   gemm_simt_kernel  f32 weights, experts with > kSmallMaxRows rows: plain fp32
//                     FMA tiles (64 x 64, BK = 16, 4 x 4 per thread).
//   gemv_enk_kernel   any dtype, [E, N, K] weights, experts with 1..kSmallMaxRows
//   gemv_ekn_kernel   any dtype, [E, K, N] weights, experts with 1..kSmallMaxRows
//                     rows (decode): each weight element is read once with
//                     16-byte loads, x stays f32, fp32 accumulation and
//                     warp (ENK) / shared-memory (EKN) reductions. Each comes in
//                     two row buckets (kMR = 2 for 1..2 rows, kMR = 8 for 3..8),
//                     launched as separate kernels with their own grids.
//
// Scheduling without reading offsets on the host: every kernel's grid.x is an
// upper bound on its work units, and each CTA maps blockIdx.x to (expert, unit)
// on the device (locate_unit: warp 0 scans the per-expert unit counts computed
// from offsets). Work units are PER EXPERT, so a row tile never straddles two
// experts:
//   tiled kernels: units = ceil(count_e / BM) for experts with count_e >= tile_min_rows
//                  (kSmallMaxRows + 1, or kSkinnyMaxRows + 1 with the skinny kernel);
//                  sum <= ceil(rows / BM) + min(E, rows / tile_min_rows) = grid.x
//   GEMV kernels:  one unit per expert with 1..2 rows (grid.x = min(E, rows)),
//                  resp. 3..8 rows (grid.x = min(E, rows / 3))
// CTAs past the last unit exit after the scan; empty experts get no unit. The
// kernels of a call (up to three, same stream) write disjoint rows; rows outside
// every expert are untouched.
//
// Template arguments: weight dtype, layout, column mode (and BM / kMR); the
// activation is a warp-uniform run-time switch in the epilogues (build time, see
// dispatch_activation).
// Offsets are clamped to [0, rows] on the device, so malformed offsets give wrong
// results but never out-of-bounds accesses.
//
// Accumulator columns and GLU pairing (gate and up of one output in one thread):
//   tensor cores, kPlain/kInterleaved: natural weight-column order; interleaved
//     gate/up are the adjacent accumulator pair (c0, c1) of an mma fragment.
//   tensor cores, kHalves (incl. kTwo = separate w_up, see ColMode): 8-column
//     blocks alternate gate (even block) / up
//     (odd block) for the same 8 outputs, so each warp's 32 columns hold both.
//   SIMT and ENK GEMV: accumulator column c = (output c/2, gate if c even else up).
//   EKN GEMV: natural order (kPlain/kInterleaved) or gate half | up half (kHalves/kTwo).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/common/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/grouped_gemm_device.cuh"

namespace moekit::cuda {

namespace {

using namespace gg;  // kernels/cuda/grouped_gemm_device.cuh

// ---------------------------------------------------------------------------
// Tensor-core tiled GEMM (bf16 / f16 weights).
//
// CTA tile: kBM rows x 128 accumulator columns, K in steps of 32.
// Warps: 2 (M) x 4 (N); warp tile (kBM/2) x 32 = MI m16 tiles x 4 n8 tiles.
// Shared memory (uint16 elements, rows padded by 8 elements = 16 bytes so that the
// 8 row addresses of every ldmatrix phase fall in distinct 16-byte bank groups):
//   As[2][kBM][40]                 x tile, row-major (k contiguous), 16-bit
//   Bs[S][128][40]   ([E,N,K])     weight tile, one row per accumulator column
//   Bs[S][32][136]   ([E,K,N])     weight tile, one row per k (read with ldmatrix.trans)
// (S = kBStages weight stages, 2 or 3.)
//
// Fragment layouts (PTX ISA 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with
// floating point type"; g = lane >> 2, t = lane & 3):
//   A (4 x b32): a[0] = (row g,   k 2t..2t+1), a[1] = (row g+8, k 2t..2t+1),
//                a[2] = (row g,   k 2t+8..+9), a[3] = (row g+8, k 2t+8..+9)
//   B (2 x b32): b[0] = (k 2t..2t+1, col g),   b[1] = (k 2t+8..+9, col g)
//   C (4 x f32): c[0..1] = (row g, cols 2t, 2t+1), c[2..3] = (row g+8, cols 2t, 2t+1)
// ldmatrix.x4 (PTX ISA "ldmatrix"): lanes 8i..8i+7 give the 8 row addresses of
// matrix i; register r[i] of lane l holds row l>>2, elements 2(l&3), 2(l&3)+1 of
// matrix i (with .trans: of the transposed matrix, i.e. stored rows 2(l&3), 2(l&3)+1
// at column l>>2).
template <int kBM>
struct TcCfg {
  static constexpr int BM = kBM;
  static constexpr int BN = 128;
  static constexpr int BK = 32;
  static constexpr int WTM = kBM / 2;  // warp tile rows
  static constexpr int MI = WTM / 16;  // m16 tiles per warp
  static constexpr int NI = 4;         // n8 tiles per warp (32 columns)
  static constexpr int AS = BK + 8;    // As row stride (elements)
  static constexpr int BSK = BK + 8;   // Bs row stride, [E,N,K]
  static constexpr int BSN = BN + 8;   // Bs row stride, [E,K,N]
  static constexpr int A_VEC = BM * BK / 4 / kThreads;  // float4 x loads per thread per tile
  static_assert(A_VEC * 4 * kThreads == BM * BK, "x tile must split evenly");
};

// kBStages: shared-memory stages of the weight tile (2, or 3 with MOEKIT_TC_STAGES=3 for
// kBM = 64, opt-in until run on a GPU): tile kt + kBStages - 1 is requested with cp.async
// while tile kt is multiplied. x always has two stages, staged through registers.
template <class Tag, WeightLayout L, ColMode M, int kBM, int kBStages = 2>
__global__ void __launch_bounds__(kThreads, kBM == 128 ? 1 : 2) gemm_tc_kernel(Args a) {
  static_assert(kBStages == 2 || kBStages == 3, "2 or 3 weight stages");
  static_assert(kBStages == 2 || kBM == 64, "3 weight stages fit static shared memory with 64-row tiles only");
  using C = TcCfg<kBM>;
  constexpr int BM = C::BM, BN = C::BN, BK = C::BK, MI = C::MI, NI = C::NI;
  constexpr int AS = C::AS, BSK = C::BSK, BSN = C::BSN;
  constexpr int kBsElems = L == WeightLayout::kENK ? BN * BSK : BK * BSN;
  __shared__ __align__(16) uint16_t As[2][BM * AS];   // [stage][BM][AS]
  __shared__ __align__(16) uint16_t Bs[kBStages][kBsElems];  // [stage][BN][BSK] or [stage][BK][BSN]

  const Unit u = locate_unit<kBM>(a, static_cast<int>(blockIdx.x), a.tile_min_rows, kMaxInt);
  if (u.expert < 0) return;  // uniform across the CTA
  const int64_t e = u.expert;
  const int row0 = u.row_begin + u.index * BM;
  const int mrows = min(BM, u.row_end - row0);  // >= 1
  const int64_t K = a.k, N = a.n;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;  // warp position: 2 (M) x 4 (N)

  // Column bases of this CTA: natural order (kPlain, kInterleaved) starts at weight
  // column n0; paired blocks (kHalves, kTwo) start at output j0.
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * (BN / 2);

  // Source of accumulator column c (0..BN-1) of this tile (zero-filled when !valid).
  auto col_source = [&](int c, bool* valid) { return tile_col_source<Tag, L, M>(a, e, n0, j0, c, valid); };

  // ---- x tile loader: global f32 -> registers -> 16-bit shared.
  float4 xr[C::A_VEC];  // [A_VEC] staged x values of the next tile
  auto load_x = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < C::A_VEC; ++i) {
      const int idx = tid + i * kThreads;
      const int r = idx >> 3;          // row in tile (BK / 4 = 8 float4 per row)
      const int kk = (idx & 7) * 4;    // k in tile
      const int64_t k = k0 + kk;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < mrows) {
        const float* src = a.x + static_cast<int64_t>(row0 + r) * K + k;
        if (a.vec_x) {
          if (k < K) v = __ldg(reinterpret_cast<const float4*>(src));  // K % 4 == 0: all 4 in range
        } else {
          if (k < K) v.x = __ldg(src);
          if (k + 1 < K) v.y = __ldg(src + 1);
          if (k + 2 < K) v.z = __ldg(src + 2);
          if (k + 3 < K) v.w = __ldg(src + 3);
        }
      }
      xr[i] = v;
    }
  };
  auto store_x = [&](int stage) {
#pragma unroll
    for (int i = 0; i < C::A_VEC; ++i) {
      const int idx = tid + i * kThreads;
      const int r = idx >> 3;
      const int kk = (idx & 7) * 4;
      uint2 p;
      p.x = Tag::pack2(xr[i].x, xr[i].y);
      p.y = Tag::pack2(xr[i].z, xr[i].w);
      *reinterpret_cast<uint2*>(&As[stage][r * AS + kk]) = p;  // 8-byte aligned
    }
  };

  // ---- weight tile loader. Vector path: 16-byte cp.async chunks (8 elements),
  // 512 chunks per tile, 2 per thread; each thread's chunks keep the same
  // accumulator columns for every k tile, so their sources are computed once.
  // NOTE: with vec_w every chunk is entirely valid or entirely past the end
  // (the launcher checks K % 8 == 0, resp. N and n_out % 8 == 0), so no chunk
  // needs a partial copy.
  const typename Tag::Raw* bsrc[2];  // [2] chunk sources at k = 0
  bool bval[2];
  int bdst[2];   // [2] element offset in a Bs stage
  int bk[2];     // [2] k offset of the chunk within the tile
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int idx = tid + i * kThreads;
    if (L == WeightLayout::kENK) {
      const int c = idx >> 2, ch = idx & 3;  // column, 8-element chunk along k
      bsrc[i] = col_source(c, &bval[i]) + ch * 8;
      bdst[i] = c * BSK + ch * 8;
      bk[i] = ch * 8;
    } else {
      const int kr = idx >> 4, ch = idx & 15;  // k row, 8-column chunk
      bsrc[i] = col_source(ch * 8, &bval[i]);
      bdst[i] = kr * BSN + ch * 8;
      bk[i] = kr;
    }
  }
  auto load_w_async = [&](int stage, int64_t k0) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int64_t k = k0 + bk[i];
      const bool ok = bval[i] && k < K;
      // A zero-filled chunk reads nothing; its source is still a real address (w).
      const void* src = ok ? static_cast<const void*>(bsrc[i] + (L == WeightLayout::kENK ? k0 : k * N)) : a.w;
      cp_async16(&Bs[stage][bdst[i]], src, ok);
    }
  };
  // Fallback for unaligned shapes: element-wise predicated loads (synchronous).
  auto load_w_scalar = [&](int stage, int64_t k0) {
    for (int idx = tid; idx < BN * BK; idx += kThreads) {
      int c, kk, dst;
      if (L == WeightLayout::kENK) {
        c = idx / BK;
        kk = idx % BK;
        dst = c * BSK + kk;
      } else {
        kk = idx / BN;
        c = idx % BN;
        dst = kk * BSN + c;
      }
      bool valid;
      const typename Tag::Raw* src = col_source(c, &valid);
      const int64_t k = k0 + kk;
      uint16_t v = 0;
      if (valid && k < K) v = src[L == WeightLayout::kENK ? k : k * N];
      Bs[stage][dst] = v;
    }
  };

  float acc[MI][NI][4];  // [MI][NI] mma accumulators
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.0f;

  const int nk = static_cast<int>((K + BK - 1) / BK);

  // Prologue: weight tiles 0 .. kBStages - 2 requested (one cp.async group each, empty
  // past the last tile), x tile 0 staged; then wait for weight tile 0.
  if (a.vec_w) {
#pragma unroll
    for (int st = 0; st < kBStages - 1; ++st) {
      if (st < nk) load_w_async(st, static_cast<int64_t>(st) * BK);
      cp_async_commit();
    }
  } else {
    load_w_scalar(0, 0);
  }
  load_x(0);
  store_x(0);
  if (a.vec_w) cp_async_wait<kBStages - 2>();
  __syncthreads();

  // NOTE: tile kt + kBStages - 1's weights stream in with cp.async and tile kt + 1's x
  // sits in registers while tile kt is multiplied. kBM = 128 with 2 stages is 40,976 bytes
  // of static shared memory and, at 163-193 registers per thread, one CTA (8 warps) per SM;
  // kBM = 64 with 3 stages is the same 40,976 bytes ([E,N,K]; 36,368 for [E,K,N]) and
  // 104-128 registers (kHalves at the 128 cap, no spills), two CTAs per SM (ptxas -v, sm_90).
  // cp.async groups: one per weight tile, committed in tile order (the prologue's
  // kBStages - 1, then one per iteration, empty past the last tile), so waiting until at
  // most kBStages - 2 groups are pending at the end of iteration kt completes tile kt + 1.
  for (int kt = 0; kt < nk; ++kt) {
    const int cur = kt & 1;          // x stage
    const int bcur = kt % kBStages;  // weight stage
    const bool has_next = kt + 1 < nk;
    if (a.vec_w) {
      // Its stage last held tile kt - 1, released by the barrier ending iteration kt - 1.
      const int kf = kt + kBStages - 1;
      if (kf < nk) load_w_async(kf % kBStages, static_cast<int64_t>(kf) * BK);
      cp_async_commit();
    }
    if (has_next) load_x(static_cast<int64_t>(kt + 1) * BK);

#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t af[MI][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const int r = wm * C::WTM + mi * 16 + (lane & 15);
        const int kk = ks * 16 + (lane >> 4) * 8;
        ldmatrix_x4(af[mi], &As[cur][r * AS + kk]);
      }
      uint32_t bf[NI][2];
#pragma unroll
      for (int nj = 0; nj < NI; nj += 2) {
        uint32_t r4[4];
        if (L == WeightLayout::kENK) {
          // matrices: (cols nj*8.., k 0-7), (cols nj*8.., k 8-15), (cols +8, k 0-7), (cols +8, k 8-15)
          const int c = wn * 32 + nj * 8 + (lane & 7) + ((lane >> 4) << 3);
          const int kk = ks * 16 + ((lane >> 3) & 1) * 8;
          ldmatrix_x4(r4, &Bs[bcur][c * BSK + kk]);
        } else {
          // matrices (k rows x 8 cols, transposed on load): (k 0-7, cols nj*8..),
          // (k 8-15, cols nj*8..), (k 0-7, cols +8), (k 8-15, cols +8)
          const int kr = ks * 16 + (lane & 15);
          const int c = wn * 32 + nj * 8 + (lane >> 4) * 8;
          ldmatrix_x4_trans(r4, &Bs[bcur][kr * BSN + c]);
        }
        bf[nj][0] = r4[0];
        bf[nj][1] = r4[1];
        bf[nj + 1][0] = r4[2];
        bf[nj + 1][1] = r4[3];
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma16816(Tag{}, acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }

    if (has_next) {
      // The synchronous fallback fills tile kt + 1's stage itself (last read at tile
      // kt + 1 - kBStages <= kt - 1, released).
      if (!a.vec_w) load_w_scalar((kt + 1) % kBStages, static_cast<int64_t>(kt + 1) * BK);
      store_x(cur ^ 1);
    }
    if (a.vec_w) cp_async_wait<kBStages - 2>();  // weight tile kt + 1 landed (this thread's copies)
    __syncthreads();  // tile kt + 1 visible to all; the stages of tile kt free for reuse
  }

  // ---- epilogue: bias, activation, row scale, store (straight from registers).
  store_mma_tile<Tag, M, MI>(a, e, n0, j0, wn, wm * C::WTM, row0, mrows, acc);
}

// ---------------------------------------------------------------------------
// SIMT fp32 tiled GEMM (f32 weights). CTA tile 64 rows x 64 accumulator columns,
// K in steps of 16; thread (ty, tx) = (tid / 16, tid % 16) owns rows 4ty..4ty+3 and
// accumulator columns 4tx..4tx+3 (GLU: outputs 2tx, 2tx+1 as gate/up pairs).
// Shared: As[16][68] (x, k-major), Bs[16][68] (weights, k-major); 68 = 64 + 4 keeps
// float4 rows 16-byte aligned and spreads the transposed stores over banks.
struct SimtCfg {
  static constexpr int BM = 64;
  static constexpr int BN = 64;
  static constexpr int BK = 16;
  static constexpr int LD = 68;
};

template <WeightLayout L, ColMode M>
__global__ void __launch_bounds__(kThreads) gemm_simt_kernel(Args a) {
  constexpr int BM = SimtCfg::BM, BN = SimtCfg::BN, BK = SimtCfg::BK, LD = SimtCfg::LD;
  __shared__ __align__(16) float As[BK * LD];  // [BK][LD], row r at As[k * LD + r]
  __shared__ __align__(16) float Bs[BK * LD];  // [BK][LD], column c at Bs[k * LD + c]

  const Unit u = locate_unit<BM>(a, static_cast<int>(blockIdx.x), kSmallMaxRows + 1, kMaxInt);
  if (u.expert < 0) return;
  const int64_t e = u.expert;
  const int row0 = u.row_begin + u.index * BM;
  const int mrows = min(BM, u.row_end - row0);
  const int64_t K = a.k, N = a.n;
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  // Accumulator column c: kPlain -> output cbase + c; GLU -> output cbase + c/2, role c&1.
  const int64_t cbase = static_cast<int64_t>(blockIdx.y) * (kGlu<M> ? BN / 2 : BN);

  auto col_source = [&](int c, bool* valid) -> const float* {
    const int role = kGlu<M> ? (c & 1) : 0;
    const int64_t j = kGlu<M> ? cbase + (c >> 1) : cbase + c;
    *valid = j < a.n_out;
    const float* m = expert_matrix<TagF32, M>(a, e, role);
    if (!*valid) return m;
    const int64_t wc = weight_col<M>(a, j, role);
    return L == WeightLayout::kENK ? m + wc * K : m + wc;
  };

  // Per-thread load slots: 4 x values and 4 weights per tile.
  // x: idx -> (r = idx / 16, kk = idx % 16): coalesced along k.
  // W [E,N,K]: idx -> (c = idx / 16, kk = idx % 16); W [E,K,N]: (kk = idx / 64, c = idx % 64).
  const float* wsrc[4];
  bool wval[4];
  int wk[4], wc_[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int idx = tid + i * kThreads;
    if (L == WeightLayout::kENK) {
      wc_[i] = idx >> 4;
      wk[i] = idx & 15;
    } else {
      wk[i] = idx >> 6;
      wc_[i] = idx & 63;
    }
    wsrc[i] = col_source(wc_[i], &wval[i]);
  }
  float xr[4], wr[4];  // staged next tile
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int idx = tid + i * kThreads;
      const int r = idx >> 4, kk = idx & 15;
      const int64_t k = k0 + kk;
      xr[i] = (r < mrows && k < K) ? __ldg(a.x + static_cast<int64_t>(row0 + r) * K + k) : 0.0f;
      const int64_t kw = k0 + wk[i];
      wr[i] = (wval[i] && kw < K) ? __ldg(wsrc[i] + (L == WeightLayout::kENK ? kw : kw * N)) : 0.0f;
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int idx = tid + i * kThreads;
      As[(idx & 15) * LD + (idx >> 4)] = xr[i];
      Bs[wk[i] * LD + wc_[i]] = wr[i];
    }
  };

  float acc[4][4];  // [row][accumulator column]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  const int nk = static_cast<int>((K + BK - 1) / BK);
  load(0);
  for (int kt = 0; kt < nk; ++kt) {
    store();
    __syncthreads();
    if (kt + 1 < nk) load(static_cast<int64_t>(kt + 1) * BK);  // overlaps the FMAs below
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      const float4 av = *reinterpret_cast<const float4*>(&As[kk * LD + ty * 4]);
      const float4 bv = *reinterpret_cast<const float4*>(&Bs[kk * LD + tx * 4]);
      const float ar[4] = {av.x, av.y, av.z, av.w};
      const float br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
    }
    __syncthreads();  // tile consumed before the next store()
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int rl = ty * 4 + i;
    if (rl >= mrows) continue;
    const int64_t row = row0 + rl;
    const float scale = a.row_scale != nullptr ? a.row_scale[row] : 1.0f;
    float* yrow = a.y + row * a.n_out;
    if (M == ColMode::kPlain) {
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int64_t j = cbase + tx * 4 + jj;
        if (j < a.n_out) yrow[j] = act_plain_rt(a.act, acc[i][jj] + bias_at<TagF32, M>(a, e, 0, j)) * scale;
      }
    } else {
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const int64_t j = cbase + tx * 2 + p;
        if (j < a.n_out) {
          const float gte = acc[i][2 * p] + bias_at<TagF32, M>(a, e, 0, j);
          const float up = acc[i][2 * p + 1] + bias_at<TagF32, M>(a, e, 1, j);
          yrow[j] = act_glu_rt(a.act, gte, up, a.alpha, a.limit) * scale;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Decode GEMV, weights [E, N, K]: each warp streams 4 weight rows (accumulator
// columns, numbered as in the SIMT kernel) over all of K with 16-byte loads, lanes
// interleaved along K (so a warp reads 512 contiguous bytes per row per step),
// keeping kMR x rows' partial dots in registers; a butterfly shuffle reduction then
// gives every lane the totals. CTA: 8 warps = 32 accumulator columns.
constexpr int kEnkColsPerWarp = 4;
constexpr int kEnkColsPerCta = kEnkColsPerWarp * (kThreads / 32);

template <class Tag, ColMode M, int kMR>
__device__ __forceinline__ void gemv_enk_body(const Args& a, const Unit& u) {
  using Raw = typename Tag::Raw;
  constexpr int V = 16 / static_cast<int>(sizeof(Raw));  // weights per 16-byte vector
  const int64_t e = u.expert;
  const int m = u.row_end - u.row_begin;  // 1..kMR
  const int64_t K = a.k;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kEnkColsPerCta + warp * kEnkColsPerWarp;

  const Raw* wrow[kEnkColsPerWarp];  // [4] weight rows (K contiguous)
  bool wval[kEnkColsPerWarp];
#pragma unroll
  for (int q = 0; q < kEnkColsPerWarp; ++q) {
    const int64_t c = c0 + q;
    const int role = kGlu<M> ? static_cast<int>(c & 1) : 0;
    const int64_t j = kGlu<M> ? (c >> 1) : c;
    wval[q] = j < a.n_out;
    const Raw* mtx = expert_matrix<Tag, M>(a, e, role);
    wrow[q] = wval[q] ? mtx + weight_col<M>(a, j, role) * K : mtx;
  }
  const float* xrow[kMR];  // [kMR] x rows (rows past m alias row 0 and are never used)
#pragma unroll
  for (int r = 0; r < kMR; ++r) xrow[r] = a.x + static_cast<int64_t>(u.row_begin + (r < m ? r : 0)) * K;

  float acc[kEnkColsPerWarp][kMR];
#pragma unroll
  for (int q = 0; q < kEnkColsPerWarp; ++q)
#pragma unroll
    for (int r = 0; r < kMR; ++r) acc[q][r] = 0.0f;

  if (a.vec_w && a.vec_x) {
    // NOTE: 4 independent 16-byte weight loads per lane per step (64 B in flight per
    // lane, 2 KB per warp) hide DRAM latency without a deeper software pipeline.
    for (int64_t k = static_cast<int64_t>(lane) * V; k < K; k += 32 * V) {
      float wf[kEnkColsPerWarp][V];
#pragma unroll
      for (int q = 0; q < kEnkColsPerWarp; ++q) {
        uint4 raw = make_uint4(0u, 0u, 0u, 0u);
        if (wval[q]) raw = ldg16(wrow[q] + k);
        unpack16(Tag{}, raw, wf[q]);
      }
#pragma unroll
      for (int r = 0; r < kMR; ++r) {
        if (r >= m) break;
        float xv[V];
#pragma unroll
        for (int v4 = 0; v4 < V / 4; ++v4) {
          const float4 t4 = __ldg(reinterpret_cast<const float4*>(xrow[r] + k) + v4);
          xv[4 * v4] = t4.x;
          xv[4 * v4 + 1] = t4.y;
          xv[4 * v4 + 2] = t4.z;
          xv[4 * v4 + 3] = t4.w;
        }
#pragma unroll
        for (int q = 0; q < kEnkColsPerWarp; ++q)
#pragma unroll
          for (int i = 0; i < V; ++i) acc[q][r] = fmaf(xv[i], wf[q][i], acc[q][r]);
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      float wf[kEnkColsPerWarp];
#pragma unroll
      for (int q = 0; q < kEnkColsPerWarp; ++q) wf[q] = wval[q] ? Tag::to_f(wrow[q][k]) : 0.0f;
#pragma unroll
      for (int r = 0; r < kMR; ++r) {
        if (r >= m) break;
        const float xv = __ldg(xrow[r] + k);
#pragma unroll
        for (int q = 0; q < kEnkColsPerWarp; ++q) acc[q][r] = fmaf(xv, wf[q], acc[q][r]);
      }
    }
  }

#pragma unroll
  for (int q = 0; q < kEnkColsPerWarp; ++q)
#pragma unroll
    for (int r = 0; r < kMR; ++r)
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) acc[q][r] += __shfl_xor_sync(0xffffffffu, acc[q][r], d);

  // Epilogue: (row r, output p of this warp) is handled by lane r * kOuts + p.
  constexpr int kOuts = kGlu<M> ? kEnkColsPerWarp / 2 : kEnkColsPerWarp;
  static_assert(kMR * kOuts <= 32, "epilogue needs one lane per output");
#pragma unroll
  for (int r = 0; r < kMR; ++r) {
#pragma unroll
    for (int p = 0; p < kOuts; ++p) {
      if (lane != r * kOuts + p || r >= m) continue;
      const int64_t row = u.row_begin + r;
      const float scale = a.row_scale != nullptr ? a.row_scale[row] : 1.0f;
      if (kGlu<M>) {
        const int64_t j = (c0 >> 1) + p;  // c0 is a multiple of 4
        if (j >= a.n_out) continue;
        const float gte = acc[2 * p][r] + bias_at<Tag, M>(a, e, 0, j);
        const float up = acc[2 * p + 1][r] + bias_at<Tag, M>(a, e, 1, j);
        a.y[row * a.n_out + j] = act_glu_rt(a.act, gte, up, a.alpha, a.limit) * scale;
      } else {
        const int64_t j = c0 + p;
        if (j >= a.n_out) continue;
        a.y[row * a.n_out + j] = act_plain_rt(a.act, acc[p][r] + bias_at<Tag, M>(a, e, 0, j)) * scale;
      }
    }
  }
}

// NOTE: one kernel per row bucket (kMR = 2: experts with 1..2 rows, kMR = 8: 3..8
// rows), each with its own grid, so the common 1-2 row decode case runs at the
// register footprint (occupancy) of 2 rows rather than of 8.
template <class Tag, ColMode M, int kMR>
__global__ void __launch_bounds__(kThreads, kMR <= kTinyMaxRows ? 2 : 1) gemv_enk_kernel(Args a) {
  constexpr int kMin = kMR <= kTinyMaxRows ? 1 : kTinyMaxRows + 1;
  const Unit u = locate_unit<kMR>(a, static_cast<int>(blockIdx.x), kMin, kMR);
  if (u.expert < 0) return;
  gemv_enk_body<Tag, M, kMR>(a, u);
}

// ---------------------------------------------------------------------------
// Decode GEMV, weights [E, K, N]: a CTA owns 128 accumulator columns (natural
// order, or gate half | up half for kHalves/kTwo). Thread (kg, cg) =
// (tid / LPR, tid % LPR) owns the 16-byte column vector cg and the k rows
// kg, kg + KG, ...: LPR = 128 / V threads cover one 256-byte (16-bit) or 512-byte
// (f32) row segment, KG = 256 / LPR groups split K. x is staged transposed in
// shared memory in chunks of 256 k (xs[k][row], rows padded to 8) so one or two
// broadcast float4 reads give every row's x for a k. The KG partial sums are
// reduced through shared memory one row at a time, then the epilogue runs on the
// reduced accumulator columns.
constexpr int kEknCols = 128;   // accumulator columns per CTA
constexpr int kEknChunk = 256;  // k per x staging chunk

template <class Tag, ColMode M, int kMR>
__device__ __forceinline__ void gemv_ekn_body(const Args& a, const Unit& u, float* xs /* [kEknChunk][8] */,
                                              float* red /* [KG][kEknCols] */, float* sums /* [kEknCols] */) {
  using Raw = typename Tag::Raw;
  constexpr int V = 16 / static_cast<int>(sizeof(Raw));
  constexpr int LPR = kEknCols / V;
  constexpr int KG = kThreads / LPR;
  const int64_t e = u.expert;
  const int m = u.row_end - u.row_begin;
  const int64_t K = a.k, N = a.n;
  const int tid = threadIdx.x, cg = tid % LPR, kg = tid / LPR;

  // Accumulator column a_c (0..127) of this CTA -> weight column, role, validity.
  auto col_source = [&](int ac, bool* valid) -> const Raw* {
    int role = 0;
    int64_t j, wc;
    if (M == ColMode::kPlain || M == ColMode::kInterleaved) {
      wc = static_cast<int64_t>(blockIdx.y) * kEknCols + ac;
      *valid = wc < N;
    } else {
      role = ac >= kEknCols / 2 ? 1 : 0;
      j = static_cast<int64_t>(blockIdx.y) * (kEknCols / 2) + ac - role * (kEknCols / 2);
      *valid = j < a.n_out;
      wc = weight_col<M>(a, j, role);
    }
    const Raw* mtx = expert_matrix<Tag, M>(a, e, role);
    return *valid ? mtx + wc : mtx;
  };
  // NOTE: with vec_w the V columns of a vector are all valid or all invalid
  // (N, n_out multiples of 8 and segments of 64 columns).
  bool vval;
  const Raw* vsrc = col_source(cg * V, &vval);

  float acc[kMR][V];
#pragma unroll
  for (int r = 0; r < kMR; ++r)
#pragma unroll
    for (int i = 0; i < V; ++i) acc[r][i] = 0.0f;

  for (int64_t kc = 0; kc < K; kc += kEknChunk) {
    const int kn = static_cast<int>(K - kc < kEknChunk ? K - kc : kEknChunk);
    __syncthreads();  // previous chunk fully consumed
    for (int idx = tid; idx < kMR * kEknChunk; idx += kThreads) {
      const int r = idx / kEknChunk, kk = idx % kEknChunk;  // coalesced along k
      float v = 0.0f;
      if (r < m && kk < kn) v = __ldg(a.x + static_cast<int64_t>(u.row_begin + r) * K + kc + kk);
      xs[kk * 8 + r] = v;
    }
    __syncthreads();
    if (a.vec_w) {
#pragma unroll 4
      for (int kk = kg; kk < kn; kk += KG) {
        float wf[V];
        uint4 raw = make_uint4(0u, 0u, 0u, 0u);
        if (vval) raw = ldg16(vsrc + (kc + kk) * N);
        unpack16(Tag{}, raw, wf);
        // Only the kMR staged rows of xs are read (broadcast within a k group).
        float xv[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if constexpr (kMR <= 2) {
          const float2 x0 = *reinterpret_cast<const float2*>(&xs[kk * 8]);
          xv[0] = x0.x;
          xv[1] = x0.y;
        } else {
          static_assert(kMR == 8, "xs rows are staged in groups of 4");
          const float4 x0 = *reinterpret_cast<const float4*>(&xs[kk * 8]);
          const float4 x1 = *reinterpret_cast<const float4*>(&xs[kk * 8 + 4]);
          xv[0] = x0.x;
          xv[1] = x0.y;
          xv[2] = x0.z;
          xv[3] = x0.w;
          xv[4] = x1.x;
          xv[5] = x1.y;
          xv[6] = x1.z;
          xv[7] = x1.w;
        }
#pragma unroll
        for (int r = 0; r < kMR; ++r)
#pragma unroll
          for (int i = 0; i < V; ++i) acc[r][i] = fmaf(xv[r], wf[i], acc[r][i]);
      }
    } else {
      const Raw* ssrc[V];  // [V] per-column sources (unaligned fallback)
      bool sval[V];
#pragma unroll
      for (int i = 0; i < V; ++i) ssrc[i] = col_source(cg * V + i, &sval[i]);
      for (int kk = kg; kk < kn; kk += KG) {
        const int64_t krow = (kc + kk) * N;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const float wv = sval[i] ? Tag::to_f(ssrc[i][krow]) : 0.0f;
#pragma unroll
          for (int r = 0; r < kMR; ++r) acc[r][i] = fmaf(xs[kk * 8 + r], wv, acc[r][i]);
        }
      }
    }
  }

  // Reduce the KG partial sums of each row, then the epilogue for that row.
  constexpr int kOuts = M == ColMode::kPlain ? kEknCols : kEknCols / 2;  // outputs per CTA
#pragma unroll
  for (int r = 0; r < kMR; ++r) {
    if (r >= m) break;  // uniform: m is the same for the whole CTA
    __syncthreads();    // red / sums of the previous row consumed
#pragma unroll
    for (int i = 0; i < V; ++i) red[kg * kEknCols + cg * V + i] = acc[r][i];
    __syncthreads();
    if (tid < kEknCols) {
      float s = 0.0f;
#pragma unroll
      for (int gidx = 0; gidx < KG; ++gidx) s += red[gidx * kEknCols + tid];
      sums[tid] = s;
    }
    __syncthreads();
    if (tid < kOuts) {
      const int64_t row = u.row_begin + r;
      const float scale = a.row_scale != nullptr ? a.row_scale[row] : 1.0f;
      float out = 0.0f;
      int64_t j;
      if (M == ColMode::kPlain) {
        j = static_cast<int64_t>(blockIdx.y) * kEknCols + tid;
        if (j < a.n_out) out = act_plain_rt(a.act, sums[tid] + bias_at<Tag, M>(a, e, 0, j));
      } else if (M == ColMode::kInterleaved) {
        j = static_cast<int64_t>(blockIdx.y) * (kEknCols / 2) + tid;
        if (j < a.n_out)
          out = act_glu_rt(a.act, sums[2 * tid] + bias_at<Tag, M>(a, e, 0, j),
                           sums[2 * tid + 1] + bias_at<Tag, M>(a, e, 1, j), a.alpha, a.limit);
      } else {
        j = static_cast<int64_t>(blockIdx.y) * (kEknCols / 2) + tid;
        if (j < a.n_out)
          out = act_glu_rt(a.act, sums[tid] + bias_at<Tag, M>(a, e, 0, j),
                           sums[kEknCols / 2 + tid] + bias_at<Tag, M>(a, e, 1, j), a.alpha, a.limit);
      }
      if (j < a.n_out) a.y[row * a.n_out + j] = out * scale;
    }
  }
}

template <class Tag, ColMode M, int kMR>
__global__ void __launch_bounds__(kThreads, kMR <= kTinyMaxRows ? 2 : 1) gemv_ekn_kernel(Args a) {
  constexpr int V = 16 / static_cast<int>(sizeof(typename Tag::Raw));
  constexpr int KG = kThreads / (kEknCols / V);
  __shared__ __align__(16) float xs[kEknChunk * 8];  // [kEknChunk][8] x, transposed
  __shared__ __align__(16) float red[KG * kEknCols];  // [KG][kEknCols] partial sums
  __shared__ float sums[kEknCols];                    // [kEknCols] reduced sums of one row
  constexpr int kMin = kMR <= kTinyMaxRows ? 1 : kTinyMaxRows + 1;
  const Unit u = locate_unit<kMR>(a, static_cast<int>(blockIdx.x), kMin, kMR);
  if (u.expert < 0) return;
  gemv_ekn_body<Tag, M, kMR>(a, u, xs, red, sums);
}

// ---------------------------------------------------------------------------
// Host launcher.

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// grid.y holds column blocks (at most 65535); validate() bounds n so this holds.
void check_grid_y(int64_t gy, const char* kernel) {
  MOEKIT_CHECK(gy <= 65535, kernel, ": ", gy, " column blocks");
}

// Decode kernels and the f32 GEMM: templated on dtype, layout and column mode.
// small_gemv = false: the 3..8-row GEMV is not launched (the skinny kernel took those experts).
template <class Tag, WeightLayout L, ColMode M>
void launch_generic(const Args& a, cudaStream_t stream, bool small_gemv = true) {
  constexpr bool kF32 = sizeof(typename Tag::Raw) == 4;
  const int64_t rows = a.rows, experts = a.experts;

  // Decode-sized experts: one unit per expert; at most min(experts, rows) experts
  // have 1..2 rows and min(experts, rows / 3) have 3..8.
  {
    const int64_t gx_tiny = std::min<int64_t>(experts, rows);
    const int64_t gx_small = std::min<int64_t>(experts, rows / (kTinyMaxRows + 1));
    int64_t gy;
    if (L == WeightLayout::kENK) {
      gy = ceil_div(kGlu<M> ? 2 * a.n_out : a.n_out, kEnkColsPerCta);
    } else {
      gy = M == ColMode::kPlain || M == ColMode::kInterleaved ? ceil_div(a.n, kEknCols)
                                                              : ceil_div(a.n_out, kEknCols / 2);
    }
    check_grid_y(gy, "the decode kernel");
    const dim3 grid_tiny(static_cast<unsigned>(gx_tiny), static_cast<unsigned>(gy));
    if (L == WeightLayout::kENK) {
      gemv_enk_kernel<Tag, M, kTinyMaxRows><<<grid_tiny, kThreads, 0, stream>>>(a);
    } else {
      gemv_ekn_kernel<Tag, M, kTinyMaxRows><<<grid_tiny, kThreads, 0, stream>>>(a);
    }
    MOEKIT_CUDA_CHECK(cudaGetLastError());
    if (gx_small > 0 && small_gemv) {
      const dim3 grid_small(static_cast<unsigned>(gx_small), static_cast<unsigned>(gy));
      if (L == WeightLayout::kENK) {
        gemv_enk_kernel<Tag, M, kSmallMaxRows><<<grid_small, kThreads, 0, stream>>>(a);
      } else {
        gemv_ekn_kernel<Tag, M, kSmallMaxRows><<<grid_small, kThreads, 0, stream>>>(a);
      }
      MOEKIT_CUDA_CHECK(cudaGetLastError());
    }
  }

  // Larger experts: row tiles. An expert can only be large if rows > kSmallMaxRows.
  if (rows <= kSmallMaxRows) return;
  const int64_t max_large = std::min<int64_t>(experts, rows / (kSmallMaxRows + 1));
  if constexpr (kF32) {
    constexpr int BM = SimtCfg::BM;
    const int64_t gx = ceil_div(rows, BM) + max_large;
    const int64_t gy = ceil_div(a.n_out, kGlu<M> ? SimtCfg::BN / 2 : SimtCfg::BN);
    check_grid_y(gy, "the f32 GEMM kernel");
    gemm_simt_kernel<L, M><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), kThreads, 0, stream>>>(a);
    MOEKIT_CUDA_CHECK(cudaGetLastError());
  }
}

// MOEKIT_TC_STAGES=3: the 64-row tensor-core tiles keep 3 weight stages in flight instead
// of 2 (opt-in until run on a GPU); read once per process.
int tc_weight_stages() {
  static const int stages = env_choice("MOEKIT_TC_STAGES", {"2", "3"}) == 1 ? 3 : 2;
  return stages;
}

// Everything for one (dtype, layout, column mode): the decode kernel, then the
// tiled kernel (SIMT for f32 above, tensor cores for bf16/f16 here).
template <class Tag, WeightLayout L, ColMode M>
void launch(const Args& args, cudaStream_t stream) {
  constexpr bool kF32 = sizeof(typename Tag::Raw) == 4;
  Args a = args;
  // The skinny kernel (opt-in, grouped_gemm_skinny.cu) takes the experts with 3..16 rows
  // of [E, N, K] 16-bit weights; the tiled kernels then start at 17 rows.
  bool skinny = false;
  if constexpr (!kF32 && L == WeightLayout::kENK) {
    constexpr DType kDtype = std::is_same_v<Tag, TagBf16> ? DType::kBF16 : DType::kF16;
    skinny = launch_skinny_gemm(a, kDtype, M, stream);
  }
  if (skinny) a.tile_min_rows = kSkinnyMaxRows + 1;
  const int64_t rows = a.rows, experts = a.experts;
  launch_generic<Tag, L, M>(a, stream, !skinny);
  if (rows < a.tile_min_rows) return;
  const int64_t max_large = std::min<int64_t>(experts, rows / a.tile_min_rows);
  if constexpr (!kF32) {
    const int64_t gy = ceil_div(a.n_out, M == ColMode::kPlain ? 128 : 64);
    check_grid_y(gy, "the tensor-core GEMM kernel");
    // NOTE: 128-row tiles halve the L2 weight traffic but waste up to 127 rows per
    // expert; use them only when experts average at least 128 rows.
    if (rows >= 128 * experts) {
      // Hopper: the wgmma kernel (opt-in, grouped_gemm_sm90.cu) takes the same units.
      if constexpr (L == WeightLayout::kENK) {
        constexpr DType kDtype = std::is_same_v<Tag, TagBf16> ? DType::kBF16 : DType::kF16;
        if (launch_sm90_gemm(a, kDtype, M, stream)) return;
      }
      const int64_t gx = ceil_div(rows, 128) + max_large;
      gemm_tc_kernel<Tag, L, M, 128>
          <<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), kThreads, 0, stream>>>(a);
    } else {
      const int64_t gx = ceil_div(rows, 64) + max_large;
      const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
      if (tc_weight_stages() == 3) {
        gemm_tc_kernel<Tag, L, M, 64, 3><<<grid, kThreads, 0, stream>>>(a);
      } else {
        gemm_tc_kernel<Tag, L, M, 64><<<grid, kThreads, 0, stream>>>(a);
      }
    }
    MOEKIT_CUDA_CHECK(cudaGetLastError());
  }
}

// The activation picks the column mode (a template argument of every kernel); the
// activation itself is applied by a uniform run-time switch in the epilogues.
// NOTE: templating the kernels on the activation too multiplied the instantiations
// (x 4 architectures: minutes of build time) for an epilogue that runs once per
// output element after the whole K loop.
template <class Tag, WeightLayout L>
void dispatch_activation(const Args& a, Activation act, cudaStream_t s) {
  switch (act) {
    case Activation::kNone:
    case Activation::kGelu:
    case Activation::kRelu:
    case Activation::kSilu:
    case Activation::kGeluTanh: return launch<Tag, L, ColMode::kPlain>(a, s);
    case Activation::kSwiGLU:
    case Activation::kGeGLU:
      return launch<Tag, L, ColMode::kHalves>(a, s);  // a.two selects w_up for the up half
    case Activation::kSwiGLUInterleaved:
    case Activation::kGptOssSwiGLU: return launch<Tag, L, ColMode::kInterleaved>(a, s);
  }
  fail(code::kInvalidArgument, "grouped_gemm (cuda): unknown activation ", static_cast<int>(act));
}

template <class Tag>
void dispatch_layout(const Args& a, WeightLayout layout, Activation act, cudaStream_t s) {
  switch (layout) {
    case WeightLayout::kENK: return dispatch_activation<Tag, WeightLayout::kENK>(a, act, s);
    case WeightLayout::kEKN: return dispatch_activation<Tag, WeightLayout::kEKN>(a, act, s);
  }
  fail(code::kInvalidArgument, "grouped_gemm (cuda): unknown weight layout ", static_cast<int>(layout));
}

bool aligned(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0; }

// Host-side checks only: offsets live on the device and are not read here.
void validate(const GroupedGemmParams& p) {
  check_grouped_gemm_shape(p);
  // CUDA-specific limits: offsets are int32, so rows must fit; grid and loop indices are 32-bit.
  constexpr int64_t kI32 = std::numeric_limits<int32_t>::max();
  MOEKIT_REQUIRE(p.rows <= kI32, "grouped_gemm (cuda): rows must be <= ", kI32, ", got ", p.rows);
  MOEKIT_REQUIRE(p.experts < kI32, "grouped_gemm (cuda): experts must be < ", kI32, ", got ", p.experts);
  MOEKIT_REQUIRE(p.k <= kI32, "grouped_gemm (cuda): k must be <= ", kI32, ", got ", p.k);
  // The narrowest column block is 16 weight columns (the [E,N,K] decode kernel with
  // a two-matrix GLU), and grid.y is at most 65535.
  MOEKIT_REQUIRE(p.n <= int64_t{65535} * 16, "grouped_gemm (cuda): n must be <= ", int64_t{65535} * 16, ", got ",
                 p.n);
  if (p.experts == 0 || p.rows == 0) return;
  MOEKIT_REQUIRE(p.offsets != nullptr, "grouped_gemm: offsets is null");
  MOEKIT_REQUIRE(p.x != nullptr && p.w != nullptr && p.y != nullptr, "grouped_gemm: x, w and y must be non-null");
}

}  // namespace

void grouped_gemm(const GroupedGemmParams& p, void* stream) {
  validate(p);
  if (p.experts == 0 || p.rows == 0) return;

  const bool glu = activation_is_glu(p.activation);
  const bool two = p.w_up != nullptr;
  Args a{};
  a.x = p.x;
  a.offsets = p.offsets;
  a.w = p.w;
  a.w_up = p.w_up;
  a.bias = p.bias;
  a.bias_up = p.bias_up;
  a.row_scale = p.row_scale;
  a.y = p.y;
  a.n = p.n;
  a.k = p.k;
  a.n_out = (glu && !two) ? p.n / 2 : p.n;
  a.rows = static_cast<int32_t>(p.rows);
  a.experts = static_cast<int32_t>(p.experts);
  a.tile_min_rows = kSmallMaxRows + 1;
  a.alpha = p.alpha;
  a.limit = p.limit;
  a.act = p.activation;
  a.two = two;

  // Vector-path legality. 16-byte weight vectors hold V = 16 / sizeof(element)
  // elements (8 for bf16/f16; the tensor-core chunks are always 8 wide, and 8 is
  // required for f32 too for simplicity). Every vector must start on a 16-byte
  // boundary and lie entirely inside or entirely outside its row / column segment:
  //   [E,N,K]: K % 8 == 0;  [E,K,N]: N % 8 == 0 and n_out % 8 == 0 (the gate and up
  //   halves of kHalves are separate segments).
  const bool w_al = aligned(p.w, 16) && (p.w_up == nullptr || aligned(p.w_up, 16));
  if (p.layout == WeightLayout::kENK) {
    a.vec_w = w_al && p.k % 8 == 0;
  } else {
    a.vec_w = w_al && p.n % 8 == 0 && a.n_out % 8 == 0;
  }
  a.vec_x = aligned(p.x, 16) && p.k % 4 == 0;
  a.vec_y = aligned(p.y, 8) && a.n_out % 2 == 0;

  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.w_dtype) {
    case DType::kBF16: return dispatch_layout<TagBf16>(a, p.layout, p.activation, s);
    case DType::kF16: return dispatch_layout<TagF16>(a, p.layout, p.activation, s);
    case DType::kF32: return dispatch_layout<TagF32>(a, p.layout, p.activation, s);
    default: break;
  }
  fail(code::kInvalidArgument, "grouped_gemm: weight dtype must be f32, bf16 or f16, got ", dtype_name(p.w_dtype));
}

}  // namespace moekit::cuda
