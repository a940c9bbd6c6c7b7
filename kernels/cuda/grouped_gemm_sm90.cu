// Hopper (sm_90a) grouped GEMM for bf16/f16 weights in the [E, N, K] layout: the
// prefill path of kernels/cuda/grouped_gemm.cu on warpgroup MMAs (wgmma).
//
// OPT-IN, NOT YET RUN ON A GPU: written and compiled (ptxas, sm_90a) on a machine
// without one. grouped_gemm() takes this path only when MOEKIT_WGMMA=1 (or =require,
// which makes every fallback an error) is set in the environment, the device is
// compute capability 9.0 and the build has the sm_90a target (MOEKIT_CUDA_SM90A, set
// by CMakeLists.txt). test/gpu and scripts/gpu-check.sh
// (step "wgmma") check it against the CPU backend; it becomes the default only after
// they pass on an H100.
//
// Same semantics as gemm_tc_kernel with 128-row tiles (same work units, same
// accumulator-column conventions, x rounded to the weight's 16-bit type):
//   1. convert_from_f32 (convert.cu) writes x (f32) as a [rows, K] 16-bit copy in
//      stream-ordered scratch, so that both operands are 16-bit rows that cp.async can
//      copy as is.
//   2. gemm_wgmma_kernel: CTA tile 128 rows x 256 accumulator columns, K in steps of
//      64; 256 threads = 2 warpgroups, warpgroup g computes rows 64g..64g+63 of the
//      tile with wgmma.mma_async m64n256k16 (f32 accumulators: 128 registers per
//      thread). Operands in shared memory, 4 stages of (A 128 x 64, B 256 x 64)
//      16-bit = 48 KB each, filled by every thread with 16-byte cp.async and read by
//      the tensor cores through matrix descriptors.
//
// Shared-memory layout of a stage operand (PTX ISA, "Shared Memory Matrix Layout",
// K-major with 128-byte swizzle): row r (an A row or a B accumulator column) is 64
// elements = 128 bytes at byte r * 128 of a 1024-byte-aligned base; its 16-byte chunk c
// (elements 8c..8c+7) is stored at chunk position c ^ (r & 7). A descriptor for the
// k16 slice ks starts at base + ks * 32 bytes (the hardware applies the XOR to the
// address bits), leading byte offset unused (1), stride byte offset 1024 (eight rows).
//
// Pipeline (per CTA, all threads): tiles 0..S-3 are requested up front; iteration kt
// waits for tile kt's copies (cp.async.wait_group S-3), makes them visible to the
// tensor cores (fence.proxy.async + barrier), requests tile kt+S-2 into the stage of
// tile kt-2, issues tile kt's four wgmmas and waits until at most one wgmma group is in
// flight. After the barrier of iteration kt every thread has waited for tile kt-2's
// wgmmas, so the stage being refilled is no longer read.
//
// Accumulator fragment (PTX ISA, wgmma "Matrix fragments for accumulator D", m64nN):
// thread (warp w of the warpgroup, lane = 4g + t) holds d[i] at row 16w + g + 8*((i>>1)&1),
// column 8*(i>>2) + 2t + (i&1): the mma.sync C fragment repeated over N/8 column blocks.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/common/error.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/grouped_gemm_device.cuh"

namespace moekit::cuda::gg {

namespace {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOEKIT_WGMMA_DEVICE 1
#endif

constexpr int kBM = 128;         // rows per CTA tile
constexpr int kBN = 256;         // accumulator columns per CTA tile
constexpr int kBK = 64;          // K per stage (64 16-bit elements = one 128-byte swizzle row)
constexpr int kStages = 4;
constexpr int kRowBytes = kBK * 2;                 // 128
constexpr int kABytes = kBM * kRowBytes;           // 16 KB
constexpr int kBBytes = kBN * kRowBytes;           // 32 KB
constexpr int kStageBytes = kABytes + kBBytes;     // 48 KB
constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + alignment slack

static_assert(kThreads == 256, "two warpgroups");
static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm_90");

// Defined only where they can be used: the sm_90a device pass (and the host pass,
// which ignores device code); other architectures would warn that they are unused.
#if defined(MOEKIT_WGMMA_DEVICE) || !defined(__CUDA_ARCH__)

// ---------------------------------------------------------------------------
// PTX wrappers (sm_90a).

__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accumulator reads or writes across wgmma issue / wait.
__device__ __forceinline__ void fence_acc(float (&d)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Matrix descriptor of a K-major, 128-byte-swizzled operand whose first row starts at
// shared address `addr` (bits: 0-13 address >> 4, 16-29 leading byte offset >> 4,
// 32-45 stride byte offset >> 4, 62-63 swizzle mode, 1 = 128 bytes).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

// d += A (64 x 16, descriptor) * B (16 x 256, descriptor), f32 accumulate; scale-d = 1
// (accumulate), no negation, no transpose (both operands K-major). TY is the PTX type of
// A and B (bf16 or f16); the 128 accumulator registers are the operands %0..%127.
#define MOEKIT_WGMMA_D128 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define MOEKIT_WGMMA_D128_OPERANDS(d) \
      "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
      "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
      "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
      "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
      "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
      "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
      "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
      "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
      "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#define MOEKIT_WGMMA_M64N256K16(TY, d, desc_a, desc_b)                                   \
  asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " {" MOEKIT_WGMMA_D128 "}, " \
               "%128, %129, 1, 1, 1, 0, 0;\n"                                                   \
               : MOEKIT_WGMMA_D128_OPERANDS(d)                                                   \
               : "l"(desc_a), "l"(desc_b))

__device__ __forceinline__ void wgmma_k16(TagBf16, float (&d)[128], uint64_t da, uint64_t db) {
  MOEKIT_WGMMA_M64N256K16("bf16", d, da, db);
}
__device__ __forceinline__ void wgmma_k16(TagF16, float (&d)[128], uint64_t da, uint64_t db) {
  MOEKIT_WGMMA_M64N256K16("f16", d, da, db);
}

// y[j] = o0 and, when has1, y[j + 1] = o1 (one 8-byte store when allowed: j even, n_out even).
__device__ __forceinline__ void store_pair(float* yrow, int64_t j, float o0, float o1, bool has1, bool vec_y) {
  if (has1 && vec_y) {
    *reinterpret_cast<float2*>(yrow + j) = make_float2(o0, o1);
  } else {
    yrow[j] = o0;
    if (has1) yrow[j + 1] = o1;
  }
}

#endif  // MOEKIT_WGMMA_DEVICE || !__CUDA_ARCH__

// ---------------------------------------------------------------------------
// The kernel. Work units as gemm_tc_kernel<..., 128>: row tiles of 128 rows of the experts
// with at least a.tile_min_rows rows (locate_unit); grid.y = column blocks of 256 accumulator columns.
template <class Tag, ColMode M>
__global__ void __launch_bounds__(kThreads, 1) gemm_wgmma_kernel(Args a, const uint16_t* __restrict__ x16) {
#ifdef MOEKIT_WGMMA_DEVICE
  using Raw = typename Tag::Raw;
  extern __shared__ uint8_t smem_raw[];

  const Unit u = locate_unit<kBM>(a, static_cast<int>(blockIdx.x), a.tile_min_rows, kMaxInt);
  if (u.expert < 0) return;  // uniform across the CTA
  const int64_t e = u.expert;
  const int row0 = u.row_begin + u.index * kBM;
  const int mrows = min(kBM, u.row_end - row0);  // >= 1
  const int64_t K = a.k;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2;  // warpgroup: tile rows 64 wg .. 64 wg + 63
  const int wq = warp & 3;   // warp within the warpgroup: 16 of those rows

  // 1024-byte-aligned base (the swizzle pattern repeats every 1024 bytes of address).
  const uint32_t raw = smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* const sbase = smem_raw + (base - raw);

  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;        // kPlain / kInterleaved: first weight column
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * (kBN / 2);  // kHalves: first output

  // Weight row of accumulator column c (K contiguous elements), as in gemm_tc_kernel.
  auto col_source = [&](int c, bool* valid) { return tile_col_source<Tag, WeightLayout::kENK, M>(a, e, n0, j0, c, valid); };

  // Copy assignment: thread tid copies 16-byte chunk ch = tid & 7 of rows rb + 32 i
  // (A: i < 4, B: i < 8). Every such row has the same r & 7, so the same swizzled chunk.
  const int ch = tid & 7;
  const int rb = tid >> 3;
  const int swz = (ch ^ (rb & 7)) << 4;
  const uint16_t* const asrc = x16 + static_cast<int64_t>(row0) * K + ch * 8;
  const Raw* bsrc[8];
  bool bval[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) bsrc[i] = col_source(rb + 32 * i, &bval[i]) + ch * 8;

  auto load_tile = [&](int stage, int kt) {
    const int64_t k0 = static_cast<int64_t>(kt) * kBK;
    const bool kok = k0 + ch * 8 < K;  // K % 8 == 0: a chunk is all in range or all past it
    uint8_t* const sa = sbase + stage * kStageBytes;
    uint8_t* const sb = sa + kABytes;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = rb + 32 * i;
      const bool ok = kok && r < mrows;
      const void* src = ok ? static_cast<const void*>(asrc + static_cast<int64_t>(r) * K + k0) : static_cast<const void*>(x16);
      cp_async16(sa + r * kRowBytes + swz, src, ok);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int c = rb + 32 * i;
      const bool ok = kok && bval[i];
      const void* src = ok ? static_cast<const void*>(bsrc[i] + k0) : a.w;
      cp_async16(sb + c * kRowBytes + swz, src, ok);
    }
  };

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.0f;

  const int nk = static_cast<int>((K + kBK - 1) / kBK);
  // Prologue: tiles 0 .. S-3 (one commit group each, empty groups included, so that
  // the group count per iteration stays uniform).
#pragma unroll
  for (int t = 0; t < kStages - 2; ++t) {
    if (t < nk) load_tile(t, t);
    cp_async_commit();
  }

  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<kStages - 3>();  // this thread's copies of tile kt have landed
    fence_proxy_async_shared();    // ... and are visible to the async proxy (wgmma)
    __syncthreads();               // everyone's copies; everyone past tile kt-2's wgmmas
    {
      const int t = kt + kStages - 2;
      if (t < nk) load_tile(t % kStages, t);  // the stage of tile kt-2
      cp_async_commit();
    }
    const uint32_t st = base + static_cast<uint32_t>((kt % kStages) * kStageBytes);
    const uint32_t a_rows = st + static_cast<uint32_t>(wg * 64 * kRowBytes);
    const uint32_t b_rows = st + static_cast<uint32_t>(kABytes);
    fence_acc(acc);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      wgmma_k16(Tag{}, acc, smem_desc(a_rows + ks * 32), smem_desc(b_rows + ks * 32));
    }
    wgmma_commit();
    wgmma_wait<1>();  // tile kt-1's group is done; tile kt's may still run
    fence_acc(acc);
  }
  wgmma_wait<0>();
  fence_acc(acc);
  cp_async_wait<0>();  // only empty groups can remain; leave none behind

  // ---- epilogue: bias, activation, row scale, store (from registers).
  // NOTE: keep the second output's work inside `if (j + 1 < n_out)`: computing it
  // unconditionally (a ternary) gave the kPlain kernel a 512-byte stack frame (ptxas -v).
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int rl = wg * 64 + wq * 16 + g + 8 * h;
    if (rl >= mrows) continue;
    const int64_t row = row0 + rl;
    const float scale = a.row_scale != nullptr ? a.row_scale[row] : 1.0f;
    float* const yrow = a.y + row * a.n_out;
#pragma unroll
    for (int b = 0; b < kBN / 8; ++b) {
      const float v0 = acc[4 * b + 2 * h], v1 = acc[4 * b + 2 * h + 1];
      const int c = b * 8 + 2 * t;  // even accumulator column of (v0, v1)
      if (M == ColMode::kPlain) {
        const int64_t j = n0 + c;
        if (j >= a.n_out) continue;
        const float o0 = act_plain_rt(a.act, v0 + bias_at<Tag, M>(a, e, 0, j)) * scale;
        if (j + 1 < a.n_out) {
          store_pair(yrow, j, o0, act_plain_rt(a.act, v1 + bias_at<Tag, M>(a, e, 0, j + 1)) * scale, true, a.vec_y);
        } else {
          yrow[j] = o0;
        }
      } else if (M == ColMode::kInterleaved) {
        const int64_t j = (n0 + c) >> 1;  // n0 and c even: (gate, up) = (v0, v1)
        if (j >= a.n_out) continue;
        yrow[j] = act_glu_rt(a.act, v0 + bias_at<Tag, M>(a, e, 0, j), v1 + bias_at<Tag, M>(a, e, 1, j), a.alpha,
                             a.limit) *
                  scale;
      } else if ((b & 1) == 0) {  // kHalves: block b = gate, block b + 1 = up of the same outputs
        const float u0 = acc[4 * (b + 1) + 2 * h], u1 = acc[4 * (b + 1) + 2 * h + 1];
        const int64_t j = j0 + (b >> 1) * 8 + 2 * t;
        if (j >= a.n_out) continue;
        const float o0 = act_glu_rt(a.act, v0 + bias_at<Tag, M>(a, e, 0, j), u0 + bias_at<Tag, M>(a, e, 1, j),
                                    a.alpha, a.limit) *
                         scale;
        if (j + 1 < a.n_out) {
          const float o1 = act_glu_rt(a.act, v1 + bias_at<Tag, M>(a, e, 0, j + 1),
                                      u1 + bias_at<Tag, M>(a, e, 1, j + 1), a.alpha, a.limit) *
                           scale;
          store_pair(yrow, j, o0, o1, true, a.vec_y);
        } else {
          yrow[j] = o0;
        }
      }
    }
  }
#else
  // Not sm_90a machine code: the host never launches this (launch_sm90_gemm needs the
  // sm_90a build and a 9.0 device, whose driver loads the sm_90a cubin). Should a custom
  // architecture list break that, fail loudly instead of leaving y unwritten.
  (void)a;
  (void)x16;
  __trap();
#endif
}

// ---------------------------------------------------------------------------
// Host side.

// MOEKIT_WGMMA: "1" enables the path; "require" also turns every fallback to the
// mma.sync kernel (device, build or operands not qualifying) into an error, so a test
// run can show that the wgmma kernel is what it checked.
int env_mode() {  // 0 off, 1 on, 2 required
  static const int mode = opt_in_mode("MOEKIT_WGMMA");
  return mode;
}

// Compute capability of the current device is 9.0 (cached per device index).
bool current_device_is_sm90() {
  static std::atomic<int> cache[64];  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (dev < 0 || dev >= 64) return false;
  int c = cache[dev].load(std::memory_order_relaxed);
  if (c == 0) {
    int major = 0, minor = 0;
    const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess;
    if (!ok) cudaGetLastError();
    c = ok && major == 9 && minor == 0 ? 1 : 2;
    cache[dev].store(c, std::memory_order_relaxed);
  }
  return c == 1;
}

template <class Tag, ColMode M>
void launch_typed(const Args& a, const uint16_t* x16, cudaStream_t s) {
  auto* kernel = gemm_wgmma_kernel<Tag, M>;
  MOEKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const int64_t rows = a.rows, experts = a.experts;
  const int64_t max_large = std::min<int64_t>(experts, rows / a.tile_min_rows);
  const int64_t gx = (rows + kBM - 1) / kBM + max_large;
  const int64_t cols_per_cta = M == ColMode::kPlain ? kBN : kBN / 2;  // outputs per column block
  const int64_t gy = (a.n_out + cols_per_cta - 1) / cols_per_cta;
  MOEKIT_CHECK(gy <= 65535, "the wgmma GEMM kernel: ", gy, " column blocks");
  kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), kThreads, kSmemBytes, s>>>(a, x16);
  MOEKIT_CUDA_CHECK(cudaGetLastError());
}

template <class Tag>
void launch_mode(const Args& a, ColMode mode, const uint16_t* x16, cudaStream_t s) {
  switch (mode) {
    case ColMode::kPlain: return launch_typed<Tag, ColMode::kPlain>(a, x16, s);
    case ColMode::kInterleaved: return launch_typed<Tag, ColMode::kInterleaved>(a, x16, s);
    case ColMode::kHalves: return launch_typed<Tag, ColMode::kHalves>(a, x16, s);
  }
}

}  // namespace

bool launch_sm90_gemm(const Args& a, DType dtype, ColMode mode, cudaStream_t s) {
  const bool required = env_mode() == 2;
  // Returns false (the caller takes the mma.sync kernel), or throws when required.
  auto decline = [&](const char* why) {
    if (required) fail(code::kUnsupported, "grouped_gemm (cuda): MOEKIT_WGMMA=require but the wgmma kernel cannot run: ", why);
    return false;
  };
  if (env_mode() == 0) return false;
#ifndef MOEKIT_CUDA_SM90A
  return decline("this binary was built without the sm_90a target");
#else
  if (!current_device_is_sm90()) return decline("the device is not compute capability 9.0");
  if (dtype != DType::kBF16 && dtype != DType::kF16) return decline("the weights are not bf16 or f16");
  // 16-byte copies of whole 8-element chunks: K % 8 == 0 and aligned operands
  // (vec_w for [E, N, K] means 16-byte-aligned weights and K % 8 == 0).
  if (!a.vec_w || a.k % 8 != 0) return decline("K is not a multiple of 8 or the weights are not 16-byte aligned");
  if ((reinterpret_cast<uintptr_t>(a.x) & 15) != 0) return decline("x is not 16-byte aligned");
  if (a.rows <= 0 || a.k <= 0) return false;
  const int64_t n = static_cast<int64_t>(a.rows) * a.k;
  void* x16 = nullptr;
  cudaError_t err = cudaMallocAsync(&x16, static_cast<size_t>(n) * 2, s);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return decline("no device memory for the 16-bit copy of x");
  }
  struct Free {
    void* p;
    cudaStream_t s;
    ~Free() { cudaFreeAsync(p, s); }
  } release{x16, s};
  convert_from_f32(dtype, a.x, x16, n, s);  // round to nearest even, as gemm_tc_kernel does
  if (dtype == DType::kBF16) {
    launch_mode<TagBf16>(a, mode, static_cast<const uint16_t*>(x16), s);
  } else {
    launch_mode<TagF16>(a, mode, static_cast<const uint16_t*>(x16), s);
  }
  return true;
#endif
}

}  // namespace moekit::cuda::gg
