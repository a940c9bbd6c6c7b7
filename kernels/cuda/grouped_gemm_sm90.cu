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
// TMA variants (MOEKIT_WGMMA_TMA=1 or =ws beside MOEKIT_WGMMA; also opt-in, also not yet
// run): the same kernel with kFeed = kFeedTma or kFeedTmaWs. With kFeedTma, thread 0
// fills a stage with three tensor-memory-accelerator copies (cp.async.bulk.tensor: the A tile from a 2D map of x16 [rows, K], and
// two 128-row halves of the B tile from a 3D map of the weights [E, N, K]) that complete
// on the stage's mbarrier (expect_tx = the stage's 48 KB; TMA counts a box's out-of-range
// elements, written as zeros, in full). Every thread waits on that barrier instead of
// cp.async.wait_group; the per-iteration barrier still orders the refill of a stage after
// every warpgroup's wgmma.wait_group on it. The TMA boxes are written with the 128-byte
// swizzle, the layout above. Rows past an expert's end are loaded from the next
// expert's rows (or as zeros past the last row) and never stored, as in the cp.async
// kernel. With kHalves the B tile is [128 gate rows | 128 up rows] (two boxes), so the
// epilogue pairs accumulator block b (< 16) with block b + 16, instead of gemm_tc_kernel's
// alternating 8-column blocks. The wait for tile 0 gives up after 10 s with __trap(): a
// byte count that TMA never delivers then fails the launch instead of hanging the process's
// GPU work. That error (cudaErrorLaunchFailure) is sticky: every later CUDA call of the
// process fails too, so this is a diagnostic for the unrun opt-in path, to be removed once it
// has passed on an H100. (Later stages expect the same count; a count too small completes
// phases early: wrong results, no hang.) After each barrier wait a __syncwarp reconverges
// the warp (thread 0 issued copies, the wait loop may diverge) before the .aligned wgmma
// instructions.
// Warp-specialized (=ws, kFeedTmaWs): 384 threads; warpgroup 0 is the producer (registers
// cut to 40 with setmaxnreg; its thread 0 issues tile kt into stage kt % 4 once the
// stage's "empty" mbarrier shows that all 8 math warps have finished tile kt - 4),
// warpgroups 1 and 2 do the math (registers raised to 232) and arrive on a stage's
// "empty" barrier after wgmma.wait_group shows its wgmmas complete. No CTA-wide barrier in
// the main loop; up to four tiles in flight instead of two.
//
// Accumulator fragment (PTX ISA, wgmma "Matrix fragments for accumulator D", m64nN):
// thread (warp w of the warpgroup, lane = 4g + t) holds d[i] at row 16w + g + 8*((i>>1)&1),
// column 8*(i>>2) + 2t + (i&1): the mma.sync C fragment repeated over N/8 column blocks.
#include <cuda.h>  // CUtensorMap and its enums (types only; the encoder comes from the runtime)
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
// How the stages are filled: every thread's cp.async; TMA from thread 0 between the math;
// TMA from a producer warpgroup beside two math warpgroups (warp-specialized).
constexpr int kFeedCpAsync = 0;
constexpr int kFeedTma = 1;
constexpr int kFeedTmaWs = 2;
constexpr int kWsThreads = kThreads + 128;  // + the producer warpgroup
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

// mbarrier and TMA (PTX ISA 8.0, sm_90). `bar` and `dst` are shared-space addresses.
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the async proxy (the TMA unit).
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// This thread's arrival, and `bytes` more expected by the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// Waits for the phase of parity `parity` to complete.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}
// The same, giving up with __trap() after 10 s of the global timer (ns; not clock64, which
// counts per SM). Only where no wgmma is in flight: a trap reachable while one is makes
// ptxas wait for it there (warning C7517), and that wait could land on the main loop's path.
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
__device__ __forceinline__ void mbar_wait_bounded(uint32_t bar, uint32_t parity) {
  const uint64_t start = global_ns();
  while (!mbar_try_wait(bar, parity)) {
    if (global_ns() - start > 10'000'000'000ull) __trap();
  }
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Warpgroup-wide register budget changes (all four warps execute them together).
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
// Fetches a tensor map into the TMA unit's descriptor cache ahead of its first use.
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

#endif  // MOEKIT_WGMMA_DEVICE || !__CUDA_ARCH__

// Tensor maps of the TMA variant (unused by the cp.async one): x16 [rows, K] as a 2D map,
// box 64 x 128; the weights [E, N, K] (w, and w_up for two matrices) as 3D maps, box
// 64 x 128 x 1; all with the 128-byte swizzle.
struct TmaMaps {
  CUtensorMap x;
  CUtensorMap w;
  CUtensorMap w_up;
};

// ---------------------------------------------------------------------------
// The kernel. Work units as gemm_tc_kernel<..., 128>: row tiles of 128 rows of the experts
// with at least a.tile_min_rows rows (locate_unit); grid.y = column blocks of 256 accumulator columns.
// NOTE: the launch bounds are load-bearing for kFeedTmaWs: they cap the kernel at 168
// registers (65536 / 384), the count setmaxnreg's 128 x 40 + 256 x 232 re-divides; without
// them ptxas drops setmaxnreg (warning C7508).
template <class Tag, ColMode M, int kFeed>
__global__ void __launch_bounds__(kFeed == kFeedTmaWs ? kWsThreads : kThreads, 1)
    gemm_wgmma_kernel(Args a, const uint16_t* __restrict__ x16, const __grid_constant__ TmaMaps maps) {
#ifdef MOEKIT_WGMMA_DEVICE
  constexpr bool kTma = kFeed != kFeedCpAsync;
  constexpr int kMathWarps = kThreads / 32;  // warps of the two math warpgroups (kFeedTmaWs)
  using Raw = typename Tag::Raw;
  extern __shared__ uint8_t smem_raw[];

  const Unit u = locate_unit<kBM>(a, static_cast<int>(blockIdx.x), a.tile_min_rows, kMaxInt);
  if (u.expert < 0) return;  // uniform across the CTA
  const int64_t e = u.expert;
  const int row0 = u.row_begin + u.index * kBM;
  const int mrows = min(kBM, u.row_end - row0);  // >= 1
  const int64_t K = a.k;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Math warpgroup: tile rows 64 wg .. 64 wg + 63 (warp-specialized: warpgroup 0 is the
  // producer, wg = -1 there, and warpgroups 1, 2 do the math).
  const int wg = kFeed == kFeedTmaWs ? (warp >> 2) - 1 : warp >> 2;
  const int wq = warp & 3;  // warp within the warpgroup: 16 of those rows

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

  // The four wgmmas of the tile in stage `stage`, then wait until at most one group
  // (this tile's) is in flight.
  auto mma_stage = [&](int stage) {
    const uint32_t st = base + static_cast<uint32_t>(stage * kStageBytes);
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
  };

  if constexpr (kTma) {
    // Per stage: "full" = thread 0's arrival + the stage's bytes from TMA; "empty"
    // (warp-specialized only) = an arrival of lane 0 of each of the 8 math warps once the
    // warp's wgmmas on the stage are complete (wgmma.wait_group is warp-collective).
    __shared__ __align__(8) uint64_t full_bar[kStages];
    __shared__ __align__(8) uint64_t empty_bar[kStages];
    if (tid == 0) {
#pragma unroll
      for (int i = 0; i < kStages; ++i) {
        mbar_init(smem_addr(&full_bar[i]), 1);
        if (kFeed == kFeedTmaWs) mbar_init(smem_addr(&empty_bar[i]), kMathWarps);
      }
      mbar_init_fence();
    }
    __syncthreads();
    // Thread 0: tile kt into stage `stage` (A rows row0.., then the two 128-row halves of B).
    auto issue = [&](int stage, int kt) {
      const uint32_t bar = smem_addr(&full_bar[stage]);
      const uint32_t sa = base + static_cast<uint32_t>(stage * kStageBytes);
      const uint32_t sb = sa + static_cast<uint32_t>(kABytes);
      const uint32_t sb_hi = sb + static_cast<uint32_t>(128 * kRowBytes);
      const int k0 = kt * kBK;
      mbar_arrive_expect_tx(bar, static_cast<uint32_t>(kStageBytes));
      tma_load_2d(sa, &maps.x, bar, k0, row0);
      if (M == ColMode::kHalves) {
        // Gate rows of outputs j0 .. j0 + 127, then the up rows of the same outputs.
        const int up0 = static_cast<int>(a.two ? j0 : j0 + (a.n >> 1));
        tma_load_3d(sb, &maps.w, bar, k0, static_cast<int>(j0), static_cast<int>(e));
        tma_load_3d(sb_hi, &maps.w_up, bar, k0, up0, static_cast<int>(e));
      } else {
        tma_load_3d(sb, &maps.w, bar, k0, static_cast<int>(n0), static_cast<int>(e));
        tma_load_3d(sb_hi, &maps.w, bar, k0, static_cast<int>(n0) + 128, static_cast<int>(e));
      }
    };
    if constexpr (kFeed == kFeedTmaWs) {
      if (warp < 4) {  // producer warpgroup: one thread issues, up to kStages tiles ahead
        setmaxnreg_dec<40>();
        if (tid == 0) {
          tma_prefetch_map(&maps.x);
          tma_prefetch_map(&maps.w);
          tma_prefetch_map(&maps.w_up);
          for (int kt = 0; kt < nk; ++kt) {
            const int st = kt % kStages;
            // Tile kt - kStages, the stage's previous tile, released by every math thread.
            if (kt >= kStages) mbar_wait(smem_addr(&empty_bar[st]), static_cast<uint32_t>((kt / kStages - 1) & 1));
            issue(st, kt);
          }
        }
        return;  // no epilogue; the math warpgroups use no CTA-wide barrier after this
      }
      setmaxnreg_inc<232>();
      if (nk > 0) mbar_wait_bounded(smem_addr(&full_bar[0]), 0);  // time limit: see the TMA loop below
      for (int kt = 0; kt < nk; ++kt) {
        mbar_wait(smem_addr(&full_bar[kt % kStages]), static_cast<uint32_t>((kt / kStages) & 1));
        __syncwarp();             // converged for the .aligned wgmma instructions
        mma_stage(kt % kStages);  // tile kt-1's wgmmas are complete after this
        if (kt > 0 && lane == 0) mbar_arrive(smem_addr(&empty_bar[(kt - 1) % kStages]));
      }
      wgmma_wait<0>();
      fence_acc(acc);
    } else {
    if (tid == 0) {
#pragma unroll
      for (int t = 0; t < kStages - 2; ++t) {
        if (t < nk) issue(t, t);
      }
    }
    // Tile 0 with a time limit: every stage expects the same byte count, so a wrong count
    // would stop here first (the loop's wait on it then returns at once: stage 0's next
    // phase is only armed at kt = 2).
    if (nk > 0) mbar_wait_bounded(smem_addr(&full_bar[0]), 0);
    for (int kt = 0; kt < nk; ++kt) {
      __syncthreads();  // everyone past tile kt-2's wgmmas: its stage may be refilled
      if (tid == 0 && kt + kStages - 2 < nk) issue((kt + kStages - 2) % kStages, kt + kStages - 2);
      mbar_wait(smem_addr(&full_bar[kt % kStages]), static_cast<uint32_t>((kt / kStages) & 1));
      __syncwarp();  // thread 0 issued copies and the wait may diverge: converge for wgmma
      mma_stage(kt % kStages);
    }
    wgmma_wait<0>();
    fence_acc(acc);
    }
  } else {
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
    mma_stage(kt % kStages);
  }
  wgmma_wait<0>();
  fence_acc(acc);
  cp_async_wait<0>();  // only empty groups can remain; leave none behind
  }

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
      } else {
        // kHalves: gate block b with up block ub of the same outputs. cp.async tile:
        // alternating 8-column blocks (b even = gate, b + 1 = up); TMA tile: [128 gate |
        // 128 up] columns (b < 16 = gate, b + 16 = up).
        const bool gate_block = kTma ? b < kBN / 16 : (b & 1) == 0;
        if (!gate_block) continue;
        const int ub = kTma ? b + kBN / 16 : b + 1;
        const float u0 = acc[4 * ub + 2 * h], u1 = acc[4 * ub + 2 * h + 1];
        const int64_t j = j0 + (kTma ? b : b >> 1) * 8 + 2 * t;
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
  (void)maps;
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

template <class Tag, ColMode M, int kFeed>
void launch_typed(const Args& a, const uint16_t* x16, const TmaMaps& maps, cudaStream_t s) {
  auto* kernel = gemm_wgmma_kernel<Tag, M, kFeed>;
  MOEKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const int64_t rows = a.rows, experts = a.experts;
  const int64_t max_large = std::min<int64_t>(experts, rows / a.tile_min_rows);
  const int64_t gx = (rows + kBM - 1) / kBM + max_large;
  const int64_t cols_per_cta = M == ColMode::kPlain ? kBN : kBN / 2;  // outputs per column block
  const int64_t gy = (a.n_out + cols_per_cta - 1) / cols_per_cta;
  MOEKIT_CHECK(gy <= 65535, "the wgmma GEMM kernel: ", gy, " column blocks");
  const int threads = kFeed == kFeedTmaWs ? kWsThreads : kThreads;
  kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), threads, kSmemBytes, s>>>(a, x16, maps);
  MOEKIT_CUDA_CHECK(cudaGetLastError());
}

template <class Tag, int kFeed>
void launch_mode(const Args& a, ColMode mode, const uint16_t* x16, const TmaMaps& maps, cudaStream_t s) {
  switch (mode) {
    case ColMode::kPlain: return launch_typed<Tag, ColMode::kPlain, kFeed>(a, x16, maps, s);
    case ColMode::kInterleaved: return launch_typed<Tag, ColMode::kInterleaved, kFeed>(a, x16, maps, s);
    case ColMode::kHalves: return launch_typed<Tag, ColMode::kHalves, kFeed>(a, x16, maps, s);
  }
}

template <class Tag>
void launch_feed(const Args& a, ColMode mode, int feed, const uint16_t* x16, const TmaMaps& maps, cudaStream_t s) {
  switch (feed) {
    case kFeedTma: return launch_mode<Tag, kFeedTma>(a, mode, x16, maps, s);
    case kFeedTmaWs: return launch_mode<Tag, kFeedTmaWs>(a, mode, x16, maps, s);
    default: return launch_mode<Tag, kFeedCpAsync>(a, mode, x16, maps, s);
  }
}

// MOEKIT_WGMMA_TMA: "1" feeds the wgmma kernel by TMA from thread 0, "ws" from a producer
// warpgroup (see the file comment); anything else, cp.async. Read once.
int feed_wanted() {
  static_assert(kFeedCpAsync == 0 && kFeedTma == 1 && kFeedTmaWs == 2, "the choices' order");
  static const int feed = env_choice("MOEKIT_WGMMA_TMA", {"0", "1", "ws"});
  return feed;
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled through the runtime (no link against libcuda);
// null when the driver lacks it. The first call may come inside a graph capture in
// thread-local mode, so the lookup runs with this thread's capture mode relaxed.
EncodeTiled encode_tiled() {
  static const EncodeTiled fn = []() -> EncodeTiled {
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    const bool swapped = cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess;
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
    if (swapped) {
      cudaThreadExchangeStreamCaptureMode(&mode);
    } else {
      cudaGetLastError();  // not sticky; leave nothing for the next launch check to find
    }
    if (err != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

// A 16-bit tiled map with the 128-byte swizzle, box {64, 128[, 1]}: dims[0] = K
// (contiguous), dims[1] = rows, dims[2] (rank 3) = experts. Returns false when the driver
// rejects it.
bool make_map(CUtensorMap* map, DType dtype, const void* base, int rank, const cuuint64_t* dims,
              const cuuint64_t* strides_bytes) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(kBK), 128u, 1u};
  const cuuint32_t elem_strides[3] = {1u, 1u, 1u};
  const CUtensorMapDataType type =
      dtype == DType::kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return encode(map, type, static_cast<cuuint32_t>(rank), const_cast<void*>(base), dims, strides_bytes, box,
                elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The three maps of the TMA variant; false (with *why set) when they cannot be made.
bool make_maps(const Args& a, DType dtype, ColMode mode, const void* x16, TmaMaps* maps, const char** why) {
  const int64_t lim = int64_t{1} << 31;  // TMA coordinates are 32-bit signed
  if (a.k >= lim || a.n >= lim || a.rows >= lim || a.experts >= lim) {
    *why = "a dimension does not fit the TMA's 32-bit coordinates";
    return false;
  }
  const cuuint64_t x_dims[2] = {static_cast<cuuint64_t>(a.k), static_cast<cuuint64_t>(a.rows)};
  const cuuint64_t x_strides[1] = {static_cast<cuuint64_t>(a.k) * 2};
  const cuuint64_t w_dims[3] = {static_cast<cuuint64_t>(a.k), static_cast<cuuint64_t>(a.n),
                                static_cast<cuuint64_t>(a.experts)};
  const cuuint64_t w_strides[2] = {static_cast<cuuint64_t>(a.k) * 2, static_cast<cuuint64_t>(a.n * a.k) * 2};
  const bool two = mode == ColMode::kHalves && a.two;
  if (!make_map(&maps->x, dtype, x16, 2, x_dims, x_strides) || !make_map(&maps->w, dtype, a.w, 3, w_dims, w_strides) ||
      (two && !make_map(&maps->w_up, dtype, a.w_up, 3, w_dims, w_strides))) {
    *why = encode_tiled() == nullptr ? "the driver has no cuTensorMapEncodeTiled" : "cuTensorMapEncodeTiled rejected a map";
    return false;
  }
  if (!two) maps->w_up = maps->w;  // the up rows of one matrix come from the same map
  return true;
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
  TmaMaps maps{};
  int feed = feed_wanted();
  if (feed != kFeedCpAsync) {
    const char* why = nullptr;
    if (!make_maps(a, dtype, mode, x16, &maps, &why)) {
      // Under require an error (a test then shows which feed it checked); else cp.async.
      if (required) fail(code::kUnsupported, "grouped_gemm (cuda): MOEKIT_WGMMA=require with MOEKIT_WGMMA_TMA but no tensor maps: ", why);
      feed = kFeedCpAsync;
    }
  }
  convert_from_f32(dtype, a.x, x16, n, s);  // round to nearest even, as gemm_tc_kernel does
  const auto* x16p = static_cast<const uint16_t*>(x16);
  if (dtype == DType::kBF16) {
    launch_feed<TagBf16>(a, mode, feed, x16p, maps, s);
  } else {
    launch_feed<TagF16>(a, mode, feed, x16p, maps, s);
  }
  return true;
#endif
}

}  // namespace moekit::cuda::gg
