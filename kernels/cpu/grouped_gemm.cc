// CPU grouped GEMM: validation, work planning and run-time ISA dispatch. The
// kernels themselves live in grouped_gemm_kernels.inc, compiled here three times
// (AVX-512, AVX2+FMA, portable scalar) under per-region target pragmas, so the
// file builds with plain -O3 (no -march) and runs on any x86-64 CPU.
//
// Algorithm: work items are (expert, row block, panel block). A panel is two
// vectors of W columns (for GLU: the gate and up columns of the same outputs),
// packed K-major as float while converting bf16/f16; x rows are packed into
// kMR-row groups and a kMR x (2 vectors) register-tiled FMA microkernel
// accumulates over K in blocks. The epilogue (bias, activation, row scale)
// runs once per output element. Groups of an [N, K] weight with few rows skip
// the W transpose: up to Isa::dot_max_rows rows take a dot-product path (vectors
// along K, each W row streamed once, the rows in passes of a few), up to
// kRowsTMax rows a path whose vectors run along the x rows with W elements
// broadcast from a float copy of a K chunk. Groups of a [K, N] weight with up to
// kGemvMaxRows rows stream W rows over K slices; up to Isa::ekn_max_rows rows
// keep their sums in registers, reading W unpacked.
#include "kernels/cpu/grouped_gemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "kernels/common/error.h"
#include "kernels/cpu/thread_pool.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOEKIT_GG_X86 1
#include <immintrin.h>
#else
#define MOEKIT_GG_X86 0
#endif

namespace moekit::cpu {

namespace {

// Weight element tags: the kernels are templated on the stored element type.
struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

inline float to_float(float v) { return v; }
inline float to_float(Bf16 v) { return bf16_to_float(v.bits); }
inline float to_float(F16 v) { return f16_to_float(v.bits); }

// How the packed columns of a panel map to weight columns.
enum class ColumnMode {
  kPlain,        // 2 vectors of consecutive columns
  kHalves,       // gate = column j, up = column N/2 + j
  kInterleaved,  // gate = column 2j, up = column 2j + 1
  kTwoMatrices,  // gate = w column j, up = w_up column j
};

constexpr int kMaxBlockPanels = 64;  // panels per GEMM work item, at most
constexpr int kGemvMaxRows = 4;      // rows per expert served by the [K, N] decode path
// NOTE: on Zen 4 (bf16, K = 768..14336) the dot-product path in passes of at most 6
// rows beat the few-rows path up to 24 rows per expert (1.1-1.6x from 7 to 24 rows,
// even at 16 where the few-rows path pads nothing) and lost from 32 rows at K = 768;
// the few-rows path beats the packed GEMM up to 64 rows. With AVX2's 16 registers
// a pass of 6 rows gets one W row per step (dot_cols), so passes of at most 5 rows
// (Zen 4 running the AVX2 code): 1.1-2.3x the old paths from 6 to 12 rows, equal
// below. The limits are per ISA (Isa::dot_max_rows, Isa::dot_chunk_rows).
// NOTE: for [K, N] weights, 5..24 rows per expert on AVX-512 (passes of at most 12)
// ran 1.3-1.8x faster on the register-sums path (kEknRows) than packed into panels
// (bf16, K = 2880, N = 5760 and K = 768, N = 2048); with AVX2 (16 registers, passes of
// at most 6 rows) only a single pass of 5..6 rows won (1.2-1.3x), two passes lost.
// 1..4 rows stay on the K-sliced decode path, which splits K over the cores.
constexpr int kDotChunkMax = 8;      // rows per pass of the [N, K] dot-product path, at most
constexpr int kDotColsMax = 8;       // W rows per step of that path, at most
// NOTE: up to 16 rows the W stream dominates; a wide, shallow W block keeps the
// rows being packed long and contiguous (for [K, N] weights).
constexpr int64_t kSmallRows = 16;
constexpr int64_t kBlockK = 256;       // K slice per packed block (prefill)
constexpr int64_t kSmallBlockK = 64;   // K slice per packed block (few rows)
constexpr int64_t kBlockCols = 256;    // W columns per packed block (prefill)
constexpr int64_t kSmallBlockCols = 1024;
constexpr int64_t kGemvCols = 64;      // W rows per dot-product work item ([N, K] weights)
constexpr int64_t kStreamCols = 2048;  // packed columns per decode work item ([K, N] weights)
constexpr int64_t kStreamMinK = 128;   // K rows per decode slice, at least
constexpr int kStreamRowsPerStep = 4;  // W rows per pass of the [K, N] decode path
constexpr int64_t kBlockMGroups = 16;  // kMR-row groups per row block
constexpr int64_t kRowsTMax = 64;      // rows per expert served by the [N, K] few-rows path
constexpr int64_t kRowsTK = 128;       // K chunk of W converted per pass of that path
// NOTE: padded row stride of the converted chunk: a power-of-two stride would put
// the kW rows' broadcast loads in few L1 sets.
constexpr int64_t kRowsTLd = kRowsTK + 16;
constexpr int64_t kRowsTPanels = 8;    // panels per item of that path, at most
constexpr int64_t kEknBlockK = 256;    // K rows per register pass of the [K, N] few-rows path
constexpr int kEknChunkMax = 12;       // rows per pass of that path, at most
constexpr int64_t kEknPanels = 16;     // panels per item of that path, at most
constexpr int64_t kEknPrefetchRows = 64;  // W rows ahead that path prefetches

inline int64_t round_up_floats(int64_t n) { return (n + 15) & ~int64_t{15}; }

struct Problem {
  const float* x;
  int64_t k;
  int64_t n;
  int64_t n_out;
  ColumnMode mode;
  bool glu;
  const void* w;
  const void* w_up;
  const void* bias;
  const void* bias_up;
  DType w_dtype;
  WeightLayout layout;
  Activation act;
  float alpha;
  float limit;
  const float* row_scale;
  float* y;
  float* partial;    // kStreamRows partial sums, see Item::partial_offset
  int32_t* pending;  // [groups] K slices of each kStreamRows group not yet finished
};

enum class ItemKind {
  kGemm,        // packed, register-tiled GEMM over a row block x panel block
  kGemvRows,    // decode, W [N, K]: dot products along contiguous W rows
  kStreamRows,  // decode, W [K, N]: stream W rows over a K slice, partial sums
  kRowsT,       // few rows, W [N, K]: vectors along x rows, W broadcast (no W transpose)
  kEknRows,     // few rows, W [K, N]: vectors along W rows, x broadcast, sums in registers
};

struct Item {
  ItemKind kind;
  int64_t row0;    // first x row
  int64_t expert;
  int64_t rows;    // rows of this item (<= one row block)
  int64_t panel0;  // first panel
  int64_t panels;  // panels (<= kMaxBlockPanels for kGemm)
  int64_t kc;      // kGemm: K slice per packed block
  int64_t chunk;   // kGemvRows, kEknRows: rows per pass
  int64_t k0, k1;  // kStreamRows: this item's K slice
  int64_t slice;   // kStreamRows: index of the K slice, of `slices`
  int64_t slices;
  int64_t group;   // kStreamRows: (expert, panel block) index into Problem::pending
  int64_t partial_offset;  // kStreamRows: group's [slices][rows][panels * 2w] sums in Problem::partial
};

// Weight column (a row of W for kENK) feeding packed column c (0 <= c < 2w) of
// `panel`, w = vector width; *up says it comes from w_up; -1 for padding.
inline int64_t panel_column(const Problem& pr, int64_t panel, int c, int w, bool* up) {
  *up = false;
  const int64_t j = panel * w + c % w;
  switch (pr.mode) {
    case ColumnMode::kPlain: {
      const int64_t col = panel * 2 * w + c;
      return col < pr.n ? col : -1;
    }
    case ColumnMode::kHalves:
      if (j >= pr.n / 2) return -1;
      return c < w ? j : pr.n / 2 + j;
    case ColumnMode::kInterleaved:
      if (j >= pr.n / 2) return -1;
      return 2 * j + (c < w ? 0 : 1);
    case ColumnMode::kTwoMatrices:
      if (j >= pr.n) return -1;
      *up = c >= w;
      return j;
  }
  return -1;
}

using RunItemFn = void (*)(const Problem&, const Item&, float*);

struct Isa {
  const char* name;
  int width;  // floats per vector
  int mr;     // microkernel rows
  int dot_max_rows;    // rows per expert served by the [N, K] dot-product path
  int dot_chunk_rows;  // rows per pass of that path
  int ekn_max_rows;    // rows per expert served by the [K, N] few-rows path
  int ekn_chunk_rows;  // rows per pass of that path
  RunItemFn run_item;
};

// ---------------------------------------------------------------------------
// Portable scalar "vector" of 4 floats (the compiler may still use SSE2).
namespace scalar_isa {

struct V {
  static constexpr int kWidth = 4;
  static constexpr int kMR = 4;
  static constexpr int kRegs = 16;
  struct Reg {
    float v[4];
  };
  static Reg zero() { return Reg{{0.0f, 0.0f, 0.0f, 0.0f}}; }
  static Reg set1(float a) { return Reg{{a, a, a, a}}; }
  static Reg load(const float* p) { return Reg{{p[0], p[1], p[2], p[3]}}; }
  static Reg load(const Bf16* p) {
    return Reg{{to_float(p[0]), to_float(p[1]), to_float(p[2]), to_float(p[3])}};
  }
  static Reg load(const F16* p) { return Reg{{to_float(p[0]), to_float(p[1]), to_float(p[2]), to_float(p[3])}}; }
  static void store(float* p, Reg a) {
    for (int i = 0; i < 4; ++i) p[i] = a.v[i];
  }
  static void store_n(float* p, Reg a, int64_t n) {
    for (int i = 0; i < 4 && i < n; ++i) p[i] = a.v[i];
  }
#define MOEKIT_GG_SCALAR_OP(name, expr)            \
  static Reg name(Reg a, Reg b) {                  \
    Reg r;                                         \
    for (int i = 0; i < 4; ++i) r.v[i] = (expr);   \
    return r;                                      \
  }
  MOEKIT_GG_SCALAR_OP(add, a.v[i] + b.v[i])
  MOEKIT_GG_SCALAR_OP(sub, a.v[i] - b.v[i])
  MOEKIT_GG_SCALAR_OP(mul, a.v[i] * b.v[i])
  MOEKIT_GG_SCALAR_OP(div, a.v[i] / b.v[i])
  MOEKIT_GG_SCALAR_OP(min, a.v[i] < b.v[i] ? a.v[i] : b.v[i])
  MOEKIT_GG_SCALAR_OP(max, a.v[i] > b.v[i] ? a.v[i] : b.v[i])
  MOEKIT_GG_SCALAR_OP(copysign, std::copysign(a.v[i], b.v[i]))
#undef MOEKIT_GG_SCALAR_OP
  static Reg fmadd(Reg a, Reg b, Reg c) {
    Reg r;
    for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
  static Reg abs(Reg a) {
    for (int i = 0; i < 4; ++i) a.v[i] = std::fabs(a.v[i]);
    return a;
  }
  static Reg round(Reg a) {
    for (int i = 0; i < 4; ++i) a.v[i] = std::nearbyint(a.v[i]);
    return a;
  }
  // 2^n for integral n in [-126, 127].
  static Reg pow2i(Reg a) {
    for (int i = 0; i < 4; ++i) a.v[i] = bits_float(static_cast<uint32_t>(static_cast<int32_t>(a.v[i]) + 127) << 23);
    return a;
  }
  static float reduce_add(Reg a) { return (a.v[0] + a.v[1]) + (a.v[2] + a.v[3]); }
  static void transpose(Reg* r) {
    for (int i = 0; i < 4; ++i) {
      for (int j = i + 1; j < 4; ++j) {
        const float t = r[i].v[j];
        r[i].v[j] = r[j].v[i];
        r[j].v[i] = t;
      }
    }
  }
  static void deinterleave(Reg a, Reg b, Reg* even, Reg* odd) {
    *even = Reg{{a.v[0], a.v[2], b.v[0], b.v[2]}};
    *odd = Reg{{a.v[1], a.v[3], b.v[1], b.v[3]}};
  }
};

using VH = V;

#include "kernels/cpu/grouped_gemm_kernels.inc"

}  // namespace scalar_isa

#if MOEKIT_GG_X86

// ---------------------------------------------------------------------------
// AVX2 + FMA + F16C: 8 floats per vector, 6 x 16 microkernel (12 accumulators).
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2_isa {

struct V {
  static constexpr int kWidth = 8;
  static constexpr int kMR = 6;
  static constexpr int kRegs = 16;
  using Reg = __m256;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float a) { return _mm256_set1_ps(a); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(const Bf16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static Reg load(const F16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static void store(float* p, Reg a) { _mm256_storeu_ps(p, a); }
  static void store_n(float* p, Reg a, int64_t n) {
    if (n >= 8) {
      _mm256_storeu_ps(p, a);
    } else if (n > 0) {
      const __m256i mask =
          _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      _mm256_maskstore_ps(p, mask, a);
    }
  }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg abs(Reg a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
  static Reg copysign(Reg mag, Reg sign) {
    const __m256 sign_bit = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
    return _mm256_or_ps(_mm256_andnot_ps(sign_bit, mag), _mm256_and_ps(sign_bit, sign));
  }
  static Reg round(Reg a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static Reg pow2i(Reg a) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(a), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static float reduce_add(Reg a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void transpose(Reg* r) {
    // Stage 1-2: within each 128-bit lane, 4x4 transposes of row quads.
    __m256 u[8];  // u[4q + s], lane j = rows 4q..4q+3 at column 4j + s
    for (int q = 0; q < 2; ++q) {
      const __m256 t0 = _mm256_unpacklo_ps(r[4 * q], r[4 * q + 1]);
      const __m256 t1 = _mm256_unpackhi_ps(r[4 * q], r[4 * q + 1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[4 * q + 2], r[4 * q + 3]);
      const __m256 t3 = _mm256_unpackhi_ps(r[4 * q + 2], r[4 * q + 3]);
      u[4 * q + 0] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
      u[4 * q + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
      u[4 * q + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
      u[4 * q + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
    }
    // Stage 3: column 4j + s = (u[s].lane j, u[4 + s].lane j).
    for (int s = 0; s < 4; ++s) {
      r[s] = _mm256_permute2f128_ps(u[s], u[4 + s], 0x20);
      r[4 + s] = _mm256_permute2f128_ps(u[s], u[4 + s], 0x31);
    }
  }
  static void deinterleave(Reg a, Reg b, Reg* even, Reg* odd) {
    const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
    const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
  }
};

// Half width (4 floats), for the few-rows path.
struct VH {
  static constexpr int kWidth = 4;
  using Reg = __m128;
  static Reg zero() { return _mm_setzero_ps(); }
  static Reg set1(float a) { return _mm_set1_ps(a); }
  static Reg load(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, Reg a) { _mm_storeu_ps(p, a); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm_fmadd_ps(a, b, c); }
};

#include "kernels/cpu/grouped_gemm_kernels.inc"

}  // namespace avx2_isa
#pragma GCC pop_options

// ---------------------------------------------------------------------------
// AVX-512 (F/BW/VL/DQ): 16 floats per vector, 12 x 32 microkernel (24 accumulators).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#pragma GCC diagnostic push
// NOTE: GCC 12's own AVX-512 headers trip -Wuninitialized (_mm512_undefined_ps)
// when the ISA is enabled by pragma rather than -m flags.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512_isa {

struct V {
  static constexpr int kWidth = 16;
  static constexpr int kMR = 12;
  static constexpr int kRegs = 32;
  using Reg = __m512;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float a) { return _mm512_set1_ps(a); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load(const Bf16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static Reg load(const F16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static void store(float* p, Reg a) { _mm512_storeu_ps(p, a); }
  static void store_n(float* p, Reg a, int64_t n) {
    if (n >= 16) {
      _mm512_storeu_ps(p, a);
    } else if (n > 0) {
      _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), a);
    }
  }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg abs(Reg a) { return _mm512_abs_ps(a); }
  static Reg copysign(Reg mag, Reg sign) {
    // NOTE: ternary-logic 0xCA = (sign_bit ? sign : mag) bitwise, one instruction.
    const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    return _mm512_castsi512_ps(
        _mm512_ternarylogic_epi32(sign_bit, _mm512_castps_si512(sign), _mm512_castps_si512(mag), 0xCA));
  }
  static Reg round(Reg a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static Reg pow2i(Reg a) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(a), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static float reduce_add(Reg a) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void transpose(Reg* r) {
    // Stage 1-2: within each 128-bit lane, 4x4 transposes of row quads.
    __m512 u[16];  // u[4q + s], lane j = rows 4q..4q+3 at column 4j + s
    for (int q = 0; q < 4; ++q) {
      const __m512 t0 = _mm512_unpacklo_ps(r[4 * q], r[4 * q + 1]);
      const __m512 t1 = _mm512_unpackhi_ps(r[4 * q], r[4 * q + 1]);
      const __m512 t2 = _mm512_unpacklo_ps(r[4 * q + 2], r[4 * q + 3]);
      const __m512 t3 = _mm512_unpackhi_ps(r[4 * q + 2], r[4 * q + 3]);
      u[4 * q + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
      u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
      u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
      u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    }
    // Stage 3-4: gather lane j of u[s], u[4+s], u[8+s], u[12+s] into column 4j + s.
    for (int s = 0; s < 4; ++s) {
      const __m512 a = _mm512_shuffle_f32x4(u[s], u[4 + s], 0x88);       // lanes 0,2 of each
      const __m512 b = _mm512_shuffle_f32x4(u[s], u[4 + s], 0xDD);       // lanes 1,3 of each
      const __m512 c = _mm512_shuffle_f32x4(u[8 + s], u[12 + s], 0x88);
      const __m512 d = _mm512_shuffle_f32x4(u[8 + s], u[12 + s], 0xDD);
      r[s] = _mm512_shuffle_f32x4(a, c, 0x88);
      r[4 + s] = _mm512_shuffle_f32x4(b, d, 0x88);
      r[8 + s] = _mm512_shuffle_f32x4(a, c, 0xDD);
      r[12 + s] = _mm512_shuffle_f32x4(b, d, 0xDD);
    }
  }
  static void deinterleave(Reg a, Reg b, Reg* even, Reg* odd) {
    const __m512i even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd_idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 e = _mm512_permutex2var_ps(a, even_idx, b);
    const __m512 o = _mm512_permutex2var_ps(a, odd_idx, b);
    *even = e;
    *odd = o;
  }
};

// Half width (8 floats, AVX-512VL encoding), for the few-rows path.
struct VH {
  static constexpr int kWidth = 8;
  using Reg = __m256;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float a) { return _mm256_set1_ps(a); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Reg a) { _mm256_storeu_ps(p, a); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
};

#include "kernels/cpu/grouped_gemm_kernels.inc"

}  // namespace avx512_isa
#pragma GCC diagnostic pop
#pragma GCC pop_options

#endif  // MOEKIT_GG_X86

// ---------------------------------------------------------------------------
// Dispatch

const Isa kScalarIsa{"scalar", scalar_isa::V::kWidth, scalar_isa::V::kMR, 6, 6, 0, 1, &scalar_isa::run_item};  // no [K, N] few-rows path

const Isa& select_isa() {
#if MOEKIT_GG_X86
  static const Isa kAvx2Isa{"avx2", avx2_isa::V::kWidth, avx2_isa::V::kMR, 12, 5, 6, 6, &avx2_isa::run_item};
  static const Isa kAvx512Isa{"avx512", avx512_isa::V::kWidth, avx512_isa::V::kMR, 24, 6, 24, 12, &avx512_isa::run_item};
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("f16c");
  const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  std::string cap = "avx512";
  if (const char* env = std::getenv("MOEKIT_CPU_ISA"); env != nullptr && *env != '\0') cap = env;  // "" = unset
  if (has_avx512 && cap == "avx512") return kAvx512Isa;
  if (has_avx2 && (cap == "avx512" || cap == "avx2")) return kAvx2Isa;
#endif
  return kScalarIsa;
}

const Isa& isa() {
  static const Isa& chosen = select_isa();
  return chosen;
}

// Per-thread packing scratch, grown on demand and kept for the next call.
float* thread_scratch(int64_t floats) {
  struct Buffer {
    float* data = nullptr;
    int64_t capacity = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buf;
  if (buf.capacity < floats) {
    std::free(buf.data);
    buf.data = nullptr;
    buf.capacity = 0;
    const size_t bytes = (static_cast<size_t>(floats) * sizeof(float) + 63) & ~size_t{63};
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr) fail(code::kOutOfMemory, "grouped_gemm: cannot allocate ", bytes, " bytes of scratch");
    buf.data = static_cast<float*>(p);
    buf.capacity = floats;
  }
  return buf.data;
}

void validate(const GroupedGemmParams& p) {
  check_grouped_gemm_shape(p);
  if (p.experts == 0) return;
  MOEKIT_REQUIRE(p.offsets != nullptr, "grouped_gemm: offsets is null");
  MOEKIT_REQUIRE(p.offsets[0] >= 0, "grouped_gemm: offsets[0] must be >= 0, got ", p.offsets[0]);
  for (int64_t e = 0; e < p.experts; ++e) {
    MOEKIT_REQUIRE(p.offsets[e + 1] >= p.offsets[e], "grouped_gemm: offsets must be non-decreasing (offsets[", e,
                   "]=", p.offsets[e], ", offsets[", e + 1, "]=", p.offsets[e + 1], ")");
  }
  MOEKIT_REQUIRE(p.offsets[p.experts] <= p.rows, "grouped_gemm: offsets[experts]=", p.offsets[p.experts],
                 " exceeds rows=", p.rows);
  if (p.offsets[p.experts] == p.offsets[0]) return;  // no rows to compute
  MOEKIT_REQUIRE(p.x != nullptr && p.w != nullptr && p.y != nullptr, "grouped_gemm: x, w and y must be non-null");
}

struct Plan {
  std::vector<Item> items;
  int64_t scratch_floats = 0;  // per-thread scratch
  int64_t partial_floats = 0;  // shared kStreamRows partial sums
  int64_t groups = 0;          // kStreamRows groups
};

// Splits every expert's rows into work items. `panel_shift` halves the panels
// per GEMM item that many times (more, smaller items when work is scarce).
Plan make_plan(const GroupedGemmParams& p, const Problem& pr, const Isa& is, int threads, int panel_shift) {
  Plan plan;
  const int64_t panel_w = 2 * is.width;
  const int64_t out_cols = pr.glu ? is.width : panel_w;
  const int64_t panels = (pr.n_out + out_cols - 1) / out_cols;
  const int64_t block_m = kBlockMGroups * is.mr;
  const auto clamp_panels = [&](int64_t v) {
    v >>= panel_shift;
    if (v < 1) v = 1;
    return v > kMaxBlockPanels ? int64_t{kMaxBlockPanels} : v;
  };
  // Decode groups of a [K, N] weight: (expert, panel block) groups, each split
  // into K slices so that even one expert keeps every core streaming.
  const int64_t stream_np = std::max<int64_t>(1, kStreamCols / panel_w);
  const int64_t stream_blocks = (panels + stream_np - 1) / stream_np;
  int64_t stream_groups = 0;
  for (int64_t e = 0; e < p.experts; ++e) {
    const int64_t m = p.offsets[e + 1] - p.offsets[e];
    if (pr.layout == WeightLayout::kEKN && m > 0 && m <= kGemvMaxRows) stream_groups += stream_blocks;
  }
  int64_t slices = 1;
  if (stream_groups > 0) {
    slices = (4 * threads + stream_groups - 1) / stream_groups;
    slices = std::max<int64_t>(1, std::min(slices, pr.k / kStreamMinK));
  }
  const int64_t slice_k = (pr.k + slices - 1) / slices;
  // One item per block of np panels: copies of `base` (kind, rows and per-kind
  // fields set) with panel0 / panels filled in.
  const auto push_panel_items = [&](const Item& base, int64_t np) {
    for (int64_t p0 = 0; p0 < panels; p0 += np) {
      Item it = base;
      it.panel0 = p0;
      it.panels = std::min(np, panels - p0);
      plan.items.push_back(it);
    }
  };
  const auto rows_item = [](ItemKind kind, int64_t e, int64_t row0, int64_t rows) {
    Item it{};
    it.kind = kind;
    it.row0 = row0;
    it.expert = e;
    it.rows = rows;
    return it;
  };

  for (int64_t e = 0; e < p.experts; ++e) {
    const int64_t row0 = p.offsets[e];
    const int64_t m = p.offsets[e + 1] - row0;
    if (m == 0) continue;
    if (m <= is.dot_max_rows && pr.layout == WeightLayout::kENK) {
      const int64_t np = (kGemvCols + panel_w - 1) / panel_w;
      Item it = rows_item(ItemKind::kGemvRows, e, row0, m);
      it.chunk = std::min(is.dot_chunk_rows, kDotChunkMax);
      push_panel_items(it, np);
      plan.scratch_floats = std::max<int64_t>(plan.scratch_floats, (kDotChunkMax + 1) * panel_w);
      continue;
    }
    if (m <= kRowsTMax && pr.layout == WeightLayout::kENK) {
      int64_t np = kRowsTPanels >> panel_shift;
      np = std::max<int64_t>(1, std::min(np, panels));
      push_panel_items(rows_item(ItemKind::kRowsT, e, row0, m), np);
      // xt + wf + acc + z + bias (see run_rowst_item_v), vector widths <= is.width.
      const int64_t mp = m + is.width;
      plan.scratch_floats = std::max<int64_t>(
          plan.scratch_floats, round_up_floats(mp * pr.k) + is.width * kRowsTLd + round_up_floats(mp * is.width) +
                                   round_up_floats(mp * panel_w) + panel_w + 64);
      continue;
    }
    if (pr.layout == WeightLayout::kEKN && m > kGemvMaxRows && m <= is.ekn_max_rows) {
      const int64_t np = std::max<int64_t>(1, std::min<int64_t>(kEknPanels >> panel_shift, panels));
      const int chunk = std::min(is.ekn_chunk_rows, kEknChunkMax);
      Item it = rows_item(ItemKind::kEknRows, e, row0, m);
      it.chunk = chunk;
      push_panel_items(it, np);
      plan.scratch_floats = std::max<int64_t>(plan.scratch_floats, (np * chunk + 1) * panel_w);
      continue;
    }
    if (m <= kGemvMaxRows) {  // [K, N] weight
      for (int64_t p0 = 0; p0 < panels; p0 += stream_np) {
        const int64_t np = std::min(stream_np, panels - p0);
        const int64_t group_slices = (pr.k + slice_k - 1) / slice_k;
        for (int64_t s = 0; s < group_slices; ++s) {
          Item it{};
          it.kind = ItemKind::kStreamRows;
          it.row0 = row0;
          it.expert = e;
          it.rows = m;
          it.panel0 = p0;
          it.panels = np;
          it.k0 = s * slice_k;
          it.k1 = std::min(pr.k, it.k0 + slice_k);
          it.slice = s;
          it.slices = group_slices;
          it.group = plan.groups;
          it.partial_offset = plan.partial_floats;
          plan.items.push_back(it);
        }
        plan.partial_floats += round_up_floats(group_slices * m * np * panel_w);
        ++plan.groups;
        plan.scratch_floats = std::max<int64_t>(plan.scratch_floats, round_up_floats(np * panel_w) + panel_w);
      }
      continue;
    }
    const bool small = pr.layout == WeightLayout::kEKN && m <= kSmallRows;
    const int64_t np = clamp_panels((small ? kSmallBlockCols : kBlockCols) / panel_w);
    const int64_t kc = std::min<int64_t>(small ? kSmallBlockK : kBlockK, pr.k);
    const int64_t row_blocks = (m + block_m - 1) / block_m;
    // NOTE: equal row blocks (rounded to whole microkernel groups) avoid a thin last block.
    const int64_t per_block = ((m + row_blocks - 1) / row_blocks + is.mr - 1) / is.mr * is.mr;
    for (int64_t r0 = 0; r0 < m; r0 += per_block) {
      const int64_t rows = std::min(per_block, m - r0);
      Item it = rows_item(ItemKind::kGemm, e, row0 + r0, rows);
      it.kc = kc;
      push_panel_items(it, np);
    }
    const int64_t groups = (std::min(per_block, m) + is.mr - 1) / is.mr;
    const int64_t need = round_up_floats(np * kc * panel_w) + round_up_floats(kc * is.mr + is.width) +
                         round_up_floats(groups * is.mr * np * panel_w) + round_up_floats(np * panel_w);
    plan.scratch_floats = std::max(plan.scratch_floats, need);
  }
  return plan;
}

}  // namespace

const char* grouped_gemm_isa() { return isa().name; }

void grouped_gemm(const GroupedGemmParams& p) {
  validate(p);
  if (p.experts == 0 || p.offsets[p.experts] == p.offsets[0]) return;

  Problem pr{};
  pr.x = p.x;
  pr.k = p.k;
  pr.n = p.n;
  pr.w = p.w;
  pr.w_up = p.w_up;
  pr.bias = p.bias;
  pr.bias_up = p.bias_up;
  pr.w_dtype = p.w_dtype;
  pr.layout = p.layout;
  pr.act = p.activation;
  pr.alpha = p.alpha;
  pr.limit = p.limit;
  pr.row_scale = p.row_scale;
  pr.y = p.y;
  pr.glu = activation_is_glu(p.activation);
  if (p.w_up != nullptr) {
    pr.mode = ColumnMode::kTwoMatrices;
    pr.n_out = p.n;
  } else if (!pr.glu) {
    pr.mode = ColumnMode::kPlain;
    pr.n_out = p.n;
  } else {
    pr.mode = (p.activation == Activation::kSwiGLUInterleaved || p.activation == Activation::kGptOssSwiGLU)
                  ? ColumnMode::kInterleaved
                  : ColumnMode::kHalves;
    pr.n_out = p.n / 2;
  }

  const Isa& is = isa();
  const int threads = num_threads();
  Plan plan = make_plan(p, pr, is, threads, 0);
  // NOTE: with few items (one small expert), narrower panel blocks keep every core busy.
  for (int shift = 1; shift <= 3 && static_cast<int64_t>(plan.items.size()) < 4 * threads; ++shift) {
    Plan finer = make_plan(p, pr, is, threads, shift);
    if (finer.items.size() == plan.items.size()) break;
    plan = std::move(finer);
  }

  std::vector<float> partial(static_cast<size_t>(plan.partial_floats));  // kStreamRows sums
  std::vector<int32_t> pending(static_cast<size_t>(plan.groups));        // slices left per group
  for (const Item& it : plan.items) {
    if (it.kind == ItemKind::kStreamRows) pending[it.group] = static_cast<int32_t>(it.slices);
  }
  pr.partial = partial.data();
  pr.pending = pending.data();

  const int64_t n_items = static_cast<int64_t>(plan.items.size());
  if (n_items == 1 || threads == 1) {
    float* scratch = thread_scratch(plan.scratch_floats);
    for (const Item& it : plan.items) is.run_item(pr, it, scratch);
    return;
  }
  // Items are claimed one at a time from a shared counter, so uneven items
  // (skewed expert loads, tail blocks) balance across cores.
  std::atomic<int64_t> next{0};
  parallel_for(threads, 1, [&](int64_t, int64_t) {
    float* scratch = thread_scratch(plan.scratch_floats);
    for (int64_t i = next.fetch_add(1); i < n_items; i = next.fetch_add(1)) is.run_item(pr, plan.items[i], scratch);
  });
}

}  // namespace moekit::cpu
