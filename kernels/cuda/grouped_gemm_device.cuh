// Device-side pieces shared by the grouped GEMM kernels (grouped_gemm.cu: decode,
// SIMT and mma.sync kernels; grouped_gemm_sm90.cu: the wgmma kernel): the kernel
// argument struct, weight element tags, the column mapping of GLU modes, the
// epilogue math, the device-side work mapping and PTX wrappers. Semantics and the
// accumulator-column conventions are described at the top of grouped_gemm.cu.
// Only for .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/env.h"
#include "kernels/common/grouped_gemm_params.h"

namespace moekit::cuda::gg {
constexpr int kThreads = 256;     // every kernel
constexpr int kSmallMaxRows = 8;  // experts with 1..8 rows take the GEMV kernels
constexpr int kTinyMaxRows = 2;   // ... split into 1..2 rows and 3..8 rows (see gemv_*_kernel)
constexpr int kSkinnyMaxRows = 16;  // with the skinny kernel (opt-in): it takes 3..16 rows instead
constexpr int kMaxInt = 2147483647;

// How weight columns feed outputs (see the file comment).
enum class ColMode : int {
  kPlain,        // output j = weight column j (no GLU)
  kInterleaved,  // gate = column 2j, up = column 2j + 1
  kHalves,       // gate = column j, up = column N/2 + j; with Args::two:
                 // gate = w column j, up = w_up column j ("kTwo" in the comments)
};

// Everything a kernel needs; passed by value.
struct Args {
  const float* x;            // [rows, k] f32
  const int32_t* offsets;    // [experts + 1] device
  const void* w;             // [E, n, k] or [E, k, n], weight dtype
  const void* w_up;          // like w, or null (kHalves with two only)
  const void* bias;          // [E, n] weight dtype, or null
  const void* bias_up;       // [E, n] weight dtype, or null (kHalves with two only)
  const float* row_scale;    // [rows] or null
  float* y;                  // [rows, n_out] f32
  int64_t n;                 // weight columns N
  int64_t k;                 // K
  int64_t n_out;             // output columns
  int32_t rows;
  int32_t experts;
  int32_t tile_min_rows;     // experts with at least this many rows take the tiled kernels
                             // (kSmallMaxRows + 1, or kSkinnyMaxRows + 1 when the skinny
                             // kernel takes the experts in between)
  float alpha;               // kGptOssSwiGLU
  float limit;               // kGptOssSwiGLU
  Activation act;            // applied by a run-time switch in the epilogues
  bool two;    // gate from w, up from w_up (kHalves only)
  bool vec_w;  // 16-byte weight vectors are legal (alignment and divisibility, see launcher)
  bool vec_x;  // float4 loads of x are legal
  bool vec_y;  // float2 stores of y are legal
};

// ---------------------------------------------------------------------------
// Weight element types: raw storage and conversions.

struct TagBf16 {
  using Raw = uint16_t;
  static __device__ __forceinline__ float to_f(uint16_t u) { return __uint_as_float(static_cast<uint32_t>(u) << 16); }
  // Two floats -> packed pair, `lo` in the low 16 bits (the lower k index for mma).
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return (static_cast<uint32_t>(__bfloat16_as_ushort(h.y)) << 16) | __bfloat16_as_ushort(h.x);
  }
};

struct TagF16 {
  using Raw = uint16_t;
  static __device__ __forceinline__ float to_f(uint16_t u) { return __half2float(__ushort_as_half(u)); }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return (static_cast<uint32_t>(__half_as_ushort(h.y)) << 16) | __half_as_ushort(h.x);
  }
};

struct TagF32 {
  using Raw = float;
  static __device__ __forceinline__ float to_f(float v) { return v; }
};

// Unpacks one 16-byte vector of weights into floats: 8 (16-bit) or 4 (f32).
__device__ __forceinline__ void unpack16(TagBf16, const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void unpack16(TagF16, const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(u[i] & 0xffffu)));
    f[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(u[i] >> 16)));
  }
}
__device__ __forceinline__ void unpack16(TagF32, const uint4& v, float* f) {
  f[0] = __uint_as_float(v.x);
  f[1] = __uint_as_float(v.y);
  f[2] = __uint_as_float(v.z);
  f[3] = __uint_as_float(v.w);
}

// NOTE: weights are streamed once per CTA; the read-only path (ld.global.nc) keeps
// them from evicting x and the partial tiles from L1.
__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(static_cast<const uint4*>(p)); }

// ---------------------------------------------------------------------------
// Column mapping.

template <ColMode M>
constexpr bool kGlu = M != ColMode::kPlain;

// True when role `role` of output columns reads w_up (and bias_up): the up role of kTwo.
template <ColMode M>
__device__ __forceinline__ bool uses_up(const Args& a, int role) {
  return M == ColMode::kHalves && a.two && role == 1;
}

// Weight column of output j for role 0 (gate / plain) or 1 (up), in w (or w_up, see uses_up).
template <ColMode M>
__device__ __forceinline__ int64_t weight_col(const Args& a, int64_t j, int role) {
  switch (M) {
    case ColMode::kInterleaved: return 2 * j + role;
    case ColMode::kHalves: return a.two ? j : j + role * (a.n >> 1);
    default: return j;  // kPlain
  }
}

// Start of expert e's weight matrix (w, or w_up for the up role of kTwo).
template <class Tag, ColMode M>
__device__ __forceinline__ const typename Tag::Raw* expert_matrix(const Args& a, int64_t e, int role) {
  using Raw = typename Tag::Raw;
  const void* base = uses_up<M>(a, role) ? a.w_up : a.w;
  return static_cast<const Raw*>(base) + e * a.n * a.k;
}

// Source of accumulator column c of a tensor-core tile whose columns start at weight
// column n0 (kPlain, kInterleaved: natural order) or at output j0 (kHalves, kTwo: 8-column
// blocks alternating gate / up of the same 8 outputs): the start of its weight row
// ([E,N,K]: K contiguous elements) or weight column ([E,K,N]: stride N). *valid = false
// for columns past the end (then the expert's matrix start is returned, a real address
// for zero-filling copies).
template <class Tag, WeightLayout L, ColMode M>
__device__ __forceinline__ const typename Tag::Raw* tile_col_source(const Args& a, int64_t e, int64_t n0, int64_t j0,
                                                                     int c, bool* valid) {
  int role = 0;
  int64_t wc;
  if (M == ColMode::kPlain || M == ColMode::kInterleaved) {
    wc = n0 + c;
    *valid = wc < a.n;
  } else {
    const int b = c >> 3;
    role = b & 1;
    const int64_t j = j0 + (b >> 1) * 8 + (c & 7);
    *valid = j < a.n_out;
    wc = weight_col<M>(a, j, role);
  }
  const typename Tag::Raw* m = expert_matrix<Tag, M>(a, e, role);
  if (!*valid) return m;
  return L == WeightLayout::kENK ? m + wc * a.k : m + wc;
}

// Bias of output j, role `role` (0 when there is none). The up role of kTwo takes
// bias_up; the other GLU modes take both halves from bias.
// NOTE: bias and bias_up apply independently, as on the CPU backend.
template <class Tag, ColMode M>
__device__ __forceinline__ float bias_at(const Args& a, int64_t e, int role, int64_t j) {
  using Raw = typename Tag::Raw;
  const void* b = uses_up<M>(a, role) ? a.bias_up : a.bias;
  if (b == nullptr) return 0.0f;
  return Tag::to_f(static_cast<const Raw*>(b)[e * a.n + weight_col<M>(a, j, role)]);
}

// ---------------------------------------------------------------------------
// Epilogue math (f32, accurate libdevice functions; no fast-math).

__device__ __forceinline__ float sigmoid_f(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_tanh(float v) {
  const float u = 0.79788456080286536f * (v + 0.044715f * v * v * v);
  return 0.5f * v * (1.0f + tanhf(u));
}

template <Activation A>
__device__ __forceinline__ float act_plain(float v) {
  switch (A) {
    case Activation::kGelu: return gelu_erf(v);
    case Activation::kGeluTanh: return gelu_tanh(v);
    case Activation::kRelu: return fmaxf(v, 0.0f);
    case Activation::kSilu: return v * sigmoid_f(v);
    default: return v;
  }
}

template <Activation A>
__device__ __forceinline__ float act_glu(float gate, float up, float alpha, float limit) {
  switch (A) {
    case Activation::kGeGLU: return gelu_erf(gate) * up;
    case Activation::kGptOssSwiGLU: {
      gate = fminf(gate, limit);
      up = fminf(fmaxf(up, -limit), limit);
      return gate * sigmoid_f(gate * alpha) * (up + 1.0f);
    }
    default: return gate * sigmoid_f(gate) * up;  // kSwiGLU, kSwiGLUInterleaved
  }
}

// Run-time activation (a warp-uniform switch; see dispatch_activation for why it is
// not a template argument).
__device__ __forceinline__ float act_plain_rt(Activation act, float v) {
  switch (act) {
    case Activation::kGelu: return act_plain<Activation::kGelu>(v);
    case Activation::kGeluTanh: return act_plain<Activation::kGeluTanh>(v);
    case Activation::kRelu: return act_plain<Activation::kRelu>(v);
    case Activation::kSilu: return act_plain<Activation::kSilu>(v);
    default: return v;
  }
}
__device__ __forceinline__ float act_glu_rt(Activation act, float gate, float up, float alpha, float limit) {
  switch (act) {
    case Activation::kGeGLU: return act_glu<Activation::kGeGLU>(gate, up, alpha, limit);
    case Activation::kGptOssSwiGLU: return act_glu<Activation::kGptOssSwiGLU>(gate, up, alpha, limit);
    default: return act_glu<Activation::kSwiGLU>(gate, up, alpha, limit);
  }
}

// ---------------------------------------------------------------------------
// Device-side work mapping.

struct Unit {
  int expert;     // -1: this CTA has no work
  int index;      // unit index within the expert (row tile for the tiled kernels)
  int row_begin;  // expert's rows [row_begin, row_end)
  int row_end;
};

// Finds work unit `target` (blockIdx.x): the units are the row tiles of kBM rows of
// the experts whose row count lies in [min_rows, max_rows] (the GEMV and skinny kernels
// use kBM = max_rows: one unit per expert). Warp 0 scans the experts 32 at a time
// (inclusive warp scan of per-expert unit counts); the result is broadcast through
// shared memory. Must be called by every thread of the CTA (contains __syncthreads).
template <int kBM>
__device__ Unit locate_unit(const Args& a, int target, int min_rows, int max_rows) {
  static_assert(kBM > 0, "bad unit size");
  __shared__ int s_unit[4];  // [expert, index, row_begin, row_end]
  if (threadIdx.x < 32) {
    const unsigned lane = threadIdx.x;
    if (lane == 0) s_unit[0] = -1;
    __syncwarp();
    int running = 0;  // units of the experts before this group of 32
    for (int base = 0; base < a.experts; base += 32) {
      const int e = base + static_cast<int>(lane);
      int begin = 0, end = 0, units = 0;
      if (e < a.experts) {
        begin = min(max(__ldg(a.offsets + e), 0), a.rows);
        end = min(max(__ldg(a.offsets + e + 1), begin), a.rows);
        const int count = end - begin;
        units = (count >= min_rows && count <= max_rows) ? (count - 1) / kBM + 1 : 0;  // no int overflow
      }
      int incl = units;  // inclusive scan over lanes
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, d);
        if (static_cast<int>(lane) >= d) incl += v;
      }
      const int excl = incl - units;
      const int t = target - running;
      const bool mine = units > 0 && t >= excl && t < incl;
      if (mine) {
        s_unit[0] = e;
        s_unit[1] = t - excl;
        s_unit[2] = begin;
        s_unit[3] = end;
      }
      if (__any_sync(0xffffffffu, mine)) break;  // warp-uniform
      running += __shfl_sync(0xffffffffu, incl, 31);
      if (running > target) break;  // cannot happen with a consistent scan; defensive
    }
  }
  __syncthreads();
  Unit u;
  u.expert = s_unit[0];
  u.index = s_unit[1];
  u.row_begin = s_unit[2];
  u.row_end = s_unit[3];
  return u;
}

// ---------------------------------------------------------------------------
// PTX wrappers (sm_80+).

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; zero-fills the destination when !valid (src-size 0:
// nothing is read from `src`, which must still be a valid-looking address).
__device__ __forceinline__ void cp_async16(void* smem, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kPending of this thread's committed cp.async groups are incomplete.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

// d += A(16x16, row) * B(16x8, col), f32 accumulate.
__device__ __forceinline__ void mma16816(TagBf16, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma16816(TagF16, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------------------
// Epilogue of the mma.sync kernels (gemm_tc_kernel, gemm_skinny_kernel): bias,
// activation, row scale and store, straight from a warp's m16n8 accumulator fragments.
// The warp holds MI m16 tiles (tile rows row_off + 16 mi ..) times NI = 4 n8 tiles
// (accumulator columns wn * 32 + 8 ni ..) of a 128-column tile whose columns start at
// weight column n0 (kPlain, kInterleaved) or output j0 (kHalves, kTwo); see
// tile_col_source. Rows of the tile at or past mrows are not stored; row0 is the tile's
// first row in x / y. Fragment layout: acc[mi][ni] = {(row g, cols 2t, 2t+1),
// (row g + 8, cols 2t, 2t+1)}, g = lane / 4, t = lane % 4.
template <class Tag, ColMode M, int MI>
__device__ __forceinline__ void store_mma_tile(const Args& a, int64_t e, int64_t n0, int64_t j0, int wn, int row_off,
                                               int row0, int mrows, const float (&acc)[MI][4][4]) {
  constexpr int NI = 4;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float* y = a.y;
  // Per-thread output columns and biases, hoisted out of the row loop.
  // ocol[ni][q]: output column of accumulator (ni, q), -1 if none / invalid.
  // kPlain: q = 0, 1 -> columns; kInterleaved: q = 0 only (q = 1 is its up);
  // kHalves/kTwo: even ni carries the gate, ni + 1 the up of the same outputs.
  int64_t ocol[NI][2];
  float bg[NI][2];  // gate / plain bias
  float bu[NI][2];  // up bias (GLU)
#pragma unroll
  for (int ni = 0; ni < NI; ++ni) {
    const int c = wn * 32 + ni * 8 + 2 * t;  // even accumulator column
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      int64_t j = -1;
      float b0 = 0.0f, b1 = 0.0f;
      if (M == ColMode::kPlain) {
        j = n0 + c + q;
        if (j < a.n_out) {
          b0 = bias_at<Tag, M>(a, e, 0, j);
        } else {
          j = -1;
        }
      } else if (M == ColMode::kInterleaved) {
        j = q == 0 ? (n0 + c) / 2 : -1;  // n0 and c even
        if (j >= a.n_out) j = -1;
        if (j >= 0) {
          b0 = bias_at<Tag, M>(a, e, 0, j);
          b1 = bias_at<Tag, M>(a, e, 1, j);
        }
      } else {
        if ((ni & 1) == 0) {
          j = j0 + ((wn * 32 + ni * 8) >> 4) * 8 + 2 * t + q;
          if (j >= a.n_out) j = -1;
          if (j >= 0) {
            b0 = bias_at<Tag, M>(a, e, 0, j);
            b1 = bias_at<Tag, M>(a, e, 1, j);
          }
        }
      }
      ocol[ni][q] = j;
      bg[ni][q] = b0;
      bu[ni][q] = b1;
    }
  }

#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int rl = row_off + mi * 16 + g + h * 8;
      if (rl >= mrows) continue;
      const int64_t row = row0 + rl;
      const float scale = a.row_scale != nullptr ? a.row_scale[row] : 1.0f;
      float* yrow = y + row * a.n_out;
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
        if (M == ColMode::kPlain) {
          const float o0 = act_plain_rt(a.act, v0 + bg[ni][0]) * scale;
          const float o1 = act_plain_rt(a.act, v1 + bg[ni][1]) * scale;
          const int64_t j = ocol[ni][0];
          if (j < 0) continue;
          if (ocol[ni][1] >= 0 && a.vec_y) {
            *reinterpret_cast<float2*>(yrow + j) = make_float2(o0, o1);  // j even, n_out even
          } else {
            yrow[j] = o0;
            if (ocol[ni][1] >= 0) yrow[j + 1] = o1;
          }
        } else if (M == ColMode::kInterleaved) {
          const int64_t j = ocol[ni][0];
          if (j >= 0) yrow[j] = act_glu_rt(a.act, v0 + bg[ni][0], v1 + bu[ni][0], a.alpha, a.limit) * scale;
        } else if ((ni & 1) == 0) {
          const float u0 = acc[mi][ni + 1][2 * h], u1 = acc[mi][ni + 1][2 * h + 1];
          const int64_t j = ocol[ni][0];
          if (j < 0) continue;
          const float o0 = act_glu_rt(a.act, v0 + bg[ni][0], u0 + bu[ni][0], a.alpha, a.limit) * scale;
          const float o1 = act_glu_rt(a.act, v1 + bg[ni][1], u1 + bu[ni][1], a.alpha, a.limit) * scale;
          if (ocol[ni][1] >= 0 && a.vec_y) {
            *reinterpret_cast<float2*>(yrow + j) = make_float2(o0, o1);  // j even, n_out even
          } else {
            yrow[j] = o0;
            if (ocol[ni][1] >= 0) yrow[j + 1] = o1;
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Opt-in kernels, host side.

// An opt-in kernel's environment variable (MOEKIT_WGMMA, MOEKIT_SKINNY): 0 off, 1 for "1"
// (use the kernel where it applies), 2 for "require" (also make every decline an error, for
// test runs). Callers read it once per process.
inline int opt_in_mode(const char* variable) { return env_choice(variable, {"0", "1", "require"}); }

// The Hopper path (grouped_gemm_sm90.cu).

// Enqueues the 128-row-tile part of a grouped GEMM ([E, N, K] bf16/f16 weights) on the
// wgmma kernel: the units gemm_tc_kernel<..., 128> would take. Returns false, having
// enqueued nothing, when the path is not enabled (MOEKIT_WGMMA=1 or =require, a 9.0
// device, a build with the sm_90a target) or the operands do not qualify
// (alignment, K % 8, no room for the 16-bit copy of x); the caller then launches
// gemm_tc_kernel. Throws moekit::Error on a launch failure, and instead of returning
// false when MOEKIT_WGMMA=require (ERR_UNSUPPORTED).
bool launch_sm90_gemm(const Args& a, DType dtype, ColMode mode, cudaStream_t s);

// ---------------------------------------------------------------------------
// The skinny path (grouped_gemm_skinny.cu), host side.

// Enqueues the part of a grouped GEMM ([E, N, K] bf16/f16 weights) that falls to experts
// with kTinyMaxRows + 1 .. kSkinnyMaxRows rows on gemm_skinny_kernel, in place of the
// 3..8-row GEMV kernel and the tiled kernels' 9..16-row experts. Returns true when it did
// (the caller then launches the tiled kernels for experts of more than kSkinnyMaxRows
// rows only, and no 3..8-row GEMV), false, having enqueued nothing, when the path is not
// enabled (MOEKIT_SKINNY=1 or =require) or the operands do not qualify (16-byte aligned
// x and weights, K % 8 == 0). Throws moekit::Error on a launch failure, and instead of
// returning false when MOEKIT_SKINNY=require (ERR_UNSUPPORTED).
bool launch_skinny_gemm(const Args& a, DType dtype, ColMode mode, cudaStream_t s);

}  // namespace moekit::cuda::gg
