// CUDA gating. Semantics and arithmetic mirror kernels/cpu/gating.cc (the reference):
// the same float32 formulas in the same order wherever a selection (an integer
// output) depends on them, the same ranking order (value descending, NaN after every
// number, then id ascending), double softmax sums accumulated sequentially, top-p
// cumulative sums in double in selection order, Sinkhorn in double with the same
// 64-row blocked column sums, and the expert-choice capacity computed on the host
// with the same double expression.
//
// Layout of the work:
//   route_rows_kernel     one block per token (grid-stride): kTopkScores,
//                         kTopkLogitsThenSoftmax, kTopP, the final top-k of kSinkhorn,
//                         and the score pass of kExpertChoice.
//   expert_choice_kernel  one block per expert: exact top-C over tokens by radix select.
//   sinkhorn_*_kernel     initial matrix, blocked column sums, row normalisation.
#include <cuda_runtime.h>

#include <cfloat>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/common/error.h"
#include "kernels/common/ranking.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gating.h"

namespace moekit::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kRenormEps = 1e-20f;
constexpr int64_t kSinkhornBlock = 64;  // must equal the CPU's fixed column-sum block

// ---------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------

// As ranks_before, with id < 0 meaning "no candidate" (ranks after everything).
template <typename T>
__device__ __forceinline__ bool better(T a, int32_t ia, T b, int32_t ib) {
  if (ia < 0) return false;
  if (ib < 0) return true;
  return ranks_before(a, ia, b, ib);
}

// float32 exp as the CPU's glibc expf returns it: glibc's expf is (nearly always)
// correctly rounded, and so is rounding CUDA's double exp to float, whereas CUDA's
// expf may be off by an ulp or two.
// NOTE: double exp costs more than expf; it keeps exact ties and near-ties ordered
// as on the CPU, which the integer outputs depend on.
__device__ __forceinline__ float exp_f32(float v) { return __double2float_rn(exp(static_cast<double>(v))); }

// Logit c of row t as float32 (+ logit_bias), as read_logits_row on the CPU.
__device__ __forceinline__ float load_logit(const GatingParams& p, int64_t t, int64_t cols, int64_t c) {
  const int64_t i = t * cols + c;
  float x;
  switch (p.logits_dtype) {
    case DType::kF16: x = f16_to_float(static_cast<const uint16_t*>(p.logits)[i]); break;
    case DType::kBF16: x = bf16_to_float(static_cast<const uint16_t*>(p.logits)[i]); break;
    default: x = static_cast<const float*>(p.logits)[i]; break;
  }
  if (p.logit_bias != nullptr) x = __fadd_rn(x, p.logit_bias[c]);
  if (isinf(x)) x = x > 0.0f ? FLT_MAX : -FLT_MAX;  // as the CPU: infinities clamped
  return x;
}

// Shared scratch for the block reductions (one set per block, blockDim <= 1024).
struct Reduce {
  float f[kWarp];
  double d[kWarp];
  int32_t i[kWarp];
  float scalar_f;
  double scalar_d;
};

// Block-wide max with the CPU's `if (x > m) m = x` semantics from -inf: NaNs never
// win, so the result does not depend on the reduction order. All threads get it.
__device__ float block_max(float m, Reduce& r) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const float o = __shfl_down_sync(kFullMask, m, off);
    if (o > m) m = o;
  }
  if (lane == 0) r.f[warp] = m;
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? r.f[lane] : -INFINITY;
    for (int off = kWarp / 2; off > 0; off >>= 1) {
      const float o = __shfl_down_sync(kFullMask, m, off);
      if (o > m) m = o;
    }
    if (lane == 0) r.scalar_f = m;
  }
  __syncthreads();
  m = r.scalar_f;
  __syncthreads();  // r is reused by the next reduction
  return m;
}

template <typename T>
__device__ __forceinline__ T* reduce_values(Reduce& r);
template <>
__device__ __forceinline__ float* reduce_values<float>(Reduce& r) { return r.f; }
template <>
__device__ __forceinline__ double* reduce_values<double>(Reduce& r) { return r.d; }

// Block-wide argmax of v[0, n) in the ranking order, among the entries that rank
// after (prev_v, prev_i) (all entries when prev_i < 0). The order is a strict total
// order, so the result does not depend on the reduction tree (deterministic).
// Returns the id (-1 when no entry qualifies) and its value; all threads get them.
template <typename T>
__device__ int32_t block_argmax(const T* v, int64_t n, T prev_v, int32_t prev_i, Reduce& r, T* out_v) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  T bv = T(0);
  int32_t bi = -1;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const T x = v[j];
    const int32_t id = static_cast<int32_t>(j);
    if (prev_i >= 0 && !ranks_before(prev_v, prev_i, x, id)) continue;
    if (better(x, id, bv, bi)) {
      bv = x;
      bi = id;
    }
  }
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const T ov = __shfl_down_sync(kFullMask, bv, off);
    const int32_t oi = __shfl_down_sync(kFullMask, bi, off);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  T* rv = reduce_values<T>(r);
  if (lane == 0) {
    rv[warp] = bv;
    r.i[warp] = bi;
  }
  __syncthreads();
  if (warp == 0) {
    bv = lane < warps ? rv[lane] : T(0);
    bi = lane < warps ? r.i[lane] : -1;
    for (int off = kWarp / 2; off > 0; off >>= 1) {
      const T ov = __shfl_down_sync(kFullMask, bv, off);
      const int32_t oi = __shfl_down_sync(kFullMask, bi, off);
      if (better(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if (lane == 0) {
      rv[0] = bv;
      r.i[0] = bi;
    }
  }
  __syncthreads();
  *out_v = rv[0];
  bi = r.i[0];
  __syncthreads();  // r is reused by the next reduction
  return bi;
}

// sel[0, k) <- the k best entries of v[0, n) (1 <= k <= n), best first: k rounds of
// block argmax, each restricted to the entries ranking after the previous pick.
// NOTE: O(k * n / threads) per row: simple and exact; fine for the usual k <= 16.
// sel is visible to every thread on return.
template <typename T>
__device__ void block_select_topk(const T* v, int64_t n, int64_t k, int32_t* sel, Reduce& r) {
  T pv = T(0);
  int32_t pi = -1;
  for (int64_t round = 0; round < k; ++round) {
    pi = block_argmax(v, n, pv, pi, r, &pv);
    if (threadIdx.x == 0) sel[round] = pi;
  }
  __syncthreads();
}

// x[0, n) <- softmax(x) in place, as the CPU's softmax(): float32 max (NaN ignored),
// float32 exp of (x - max), double sum in index order, double division rounded to
// float. NOTE: the sum is sequential on one thread so that it rounds exactly like
// the CPU's (a tree sum could move a probability by an ulp and flip a near-tie or
// the top-p cut); the other steps are parallel.
__device__ void block_softmax(float* x, int64_t n, Reduce& r) {
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (x[j] > m) m = x[j];
  }
  m = block_max(m, r);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) x[j] = exp_f32(__fsub_rn(x[j], m));
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j)
      if (!isnan(x[j])) sum = __dadd_rn(sum, static_cast<double>(x[j]));  // NaN entries left out, as the CPU
    r.scalar_d = sum;
  }
  __syncthreads();
  const double sum = r.scalar_d;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    x[j] = __double2float_rn(__ddiv_rn(static_cast<double>(x[j]), sum));
  }
  __syncthreads();
}

// x[0, n) <- scores of x in place (compute_scores on the CPU).
__device__ void block_scores(Scoring scoring, float* x, int64_t n, Reduce& r) {
  if (scoring == Scoring::kSoftmax) {
    block_softmax(x, n, r);
    return;
  }
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = x[j];
    if (scoring == Scoring::kSigmoid) {
      x[j] = __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_f32(-v)));
    } else {
      // sqrt(softplus): log1p rounded from double, like exp_f32 (glibc's log1pf is
      // within an ulp; see the review notes).
      const float sp = v > 20.0f ? v : __double2float_rn(log1p(static_cast<double>(exp_f32(v))));
      x[j] = __fsqrt_rn(sp);
    }
  }
  __syncthreads();
}

// Byte offsets of the per-token arrays of route_rows_kernel inside its block buffer
// (dynamic shared memory, or a global scratch slice for very wide rows).
struct RowLayout {
  int64_t score = 0;   // float [cols]: logits, then scores / probabilities
  int64_t choice = 0;  // float [cols]: selection values (kTopkScores with bias or groups)
  int64_t gscore = 0;  // float [n_group]
  int64_t gsel = 0;    // int32 [n_group]
  int64_t gkeep = 0;   // int32 [n_group]
  int64_t sel = 0;     // int32 [k]
  int64_t w = 0;       // float [k]
  int64_t bytes = 0;   // total
};

// sel[0, k), w[0, k) -> the token's ids / weights row (write_row on the CPU), and
// the load counts. Renormalisation sums all k slots (null experts included) in slot
// order; null-expert and unused slots become (-1, 0); routed_scaling applies last.
__device__ void write_row(const GatingParams& p, int64_t t, const int32_t* sel, const float* w, Reduce& r) {
  const int64_t k = p.k;
  // A slot picked with a NaN score has weight 0 (as the CPU's write_row).
  if (p.renormalize && threadIdx.x == 0) {
    float sum = 0.0f;
    for (int64_t s = 0; s < k; ++s) sum = __fadd_rn(sum, isnan(w[s]) ? 0.0f : w[s]);
    r.scalar_f = __fadd_rn(sum, kRenormEps);
  }
  __syncthreads();
  const float denom = r.scalar_f;
  const float scale = p.routed_scaling;
  for (int64_t s = threadIdx.x; s < k; s += blockDim.x) {
    int32_t id = sel[s];
    const float wv = isnan(w[s]) ? 0.0f : w[s];
    float ws = p.renormalize ? __fmul_rn(__fdiv_rn(wv, denom), scale) : __fmul_rn(wv, scale);
    if (id < 0 || id >= p.experts) {
      id = -1;
      ws = 0.0f;
    } else {
      // NOTE: integer atomics: the final counts are exact whatever the order.
      atomicAdd(p.load + id, 1);
    }
    p.ids[t * k + s] = id;
    p.weights[t * k + s] = ws;
  }
  __syncthreads();  // r.scalar_f and the row buffers are reused by the next token
}

// ---------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------

// One block per token (grid-stride over tokens); the row lives in `buf`: dynamic
// shared memory, or this block's slice of `scratch` (bytes per block = layout.bytes)
// when the row is too wide for shared memory.
//   kTopkScores / kTopkLogitsThenSoftmax / kTopP: the row-wise modes.
//   kSinkhorn: top-k over the balanced row sink_p[t, :] (double), softmax weights.
//   kExpertChoice: scores into weights[t, :], ids[t, :] = -1 (pass 1).
// NOTE: per-token block + k rounds of block argmax: simple and exact; E values stay
// in shared memory, so each round is a shared-memory scan and two barriers.
__global__ void route_rows_kernel(GatingParams p, RowLayout layout, const double* __restrict__ sink_p,
                                  unsigned char* __restrict__ scratch) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ Reduce red;
  unsigned char* buf = scratch != nullptr ? scratch + static_cast<int64_t>(blockIdx.x) * layout.bytes : smem;
  float* score = reinterpret_cast<float*>(buf + layout.score);
  float* choice = reinterpret_cast<float*>(buf + layout.choice);
  float* gscore = reinterpret_cast<float*>(buf + layout.gscore);
  int32_t* gsel = reinterpret_cast<int32_t*>(buf + layout.gsel);
  int32_t* gkeep = reinterpret_cast<int32_t*>(buf + layout.gkeep);
  int32_t* sel = reinterpret_cast<int32_t*>(buf + layout.sel);
  float* w = reinterpret_cast<float*>(buf + layout.w);

  const int64_t cols = p.experts + p.null_experts;
  const int64_t k = p.k;
  for (int64_t t = blockIdx.x; t < p.tokens; t += gridDim.x) {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) score[c] = load_logit(p, t, cols, c);
    __syncthreads();

    switch (p.selection) {
      case Selection::kTopkScores: {
        block_scores(p.scoring, score, cols, red);
        const bool own_choice = p.correction_bias != nullptr || p.n_group > 1;
        float* ch = own_choice ? choice : score;
        if (own_choice) {
          for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = score[c];
            if (p.correction_bias != nullptr && c < p.experts) v = __fadd_rn(v, p.correction_bias[c]);
            ch[c] = v;
          }
          __syncthreads();
        }
        if (p.n_group > 1) {
          // Group scores: top-1, or top-2 sum with a correction bias (one thread per
          // group, sequential insertion as the CPU's select_topk does).
          const int64_t gsize = p.experts / p.n_group;
          const bool top2 = p.correction_bias != nullptr && gsize >= 2;
          for (int64_t g = threadIdx.x; g < p.n_group; g += blockDim.x) {
            const float* v = ch + g * gsize;
            int32_t b0 = -1, b1 = -1;
            for (int32_t i = 0; i < static_cast<int32_t>(gsize); ++i) {
              if (b0 < 0 || ranks_before(v[i], i, v[b0], b0)) {
                b1 = b0;
                b0 = i;
              } else if (b1 < 0 || ranks_before(v[i], i, v[b1], b1)) {
                b1 = i;
              }
            }
            float gs = v[b0];
            if (top2) gs = __fadd_rn(gs, v[b1]);
            gscore[g] = gs;
            gkeep[g] = 0;
          }
          __syncthreads();
          block_select_topk(gscore, p.n_group, p.topk_group, gsel, red);
          for (int64_t i = threadIdx.x; i < p.topk_group; i += blockDim.x) gkeep[gsel[i]] = 1;
          __syncthreads();
          for (int64_t c = threadIdx.x; c < p.experts; c += blockDim.x) {
            if (!gkeep[c / gsize]) ch[c] = -INFINITY;
          }
          __syncthreads();
        }
        block_select_topk(ch, cols, k, sel, red);
        for (int64_t i = threadIdx.x; i < k; i += blockDim.x) w[i] = score[sel[i]];
        __syncthreads();
        write_row(p, t, sel, w, red);
        break;
      }
      case Selection::kTopkLogitsThenSoftmax: {
        block_select_topk(score, cols, k, sel, red);
        if (threadIdx.x == 0) {
          // softmax over the chosen k in selection order (k is small: one thread).
          float m = -INFINITY;
          for (int64_t i = 0; i < k; ++i) {
            const float v = score[sel[i]];
            if (v > m) m = v;
          }
          double sum = 0.0;
          for (int64_t i = 0; i < k; ++i) {
            w[i] = exp_f32(__fsub_rn(score[sel[i]], m));
            if (!isnan(w[i])) sum = __dadd_rn(sum, static_cast<double>(w[i]));
          }
          for (int64_t i = 0; i < k; ++i) w[i] = __double2float_rn(__ddiv_rn(static_cast<double>(w[i]), sum));
        }
        __syncthreads();
        write_row(p, t, sel, w, red);
        break;
      }
      case Selection::kTopP: {
        block_softmax(score, cols, red);
        block_select_topk(score, cols, k, sel, red);
        if (threadIdx.x == 0) {
          // Cumulative sum in double over the float32 probabilities, selection order.
          double cum = 0.0;
          int64_t used = k;
          for (int64_t i = 0; i < k; ++i) {
            cum = __dadd_rn(cum, static_cast<double>(score[sel[i]]));
            if (cum >= static_cast<double>(p.top_p)) {
              used = i + 1;
              break;
            }
          }
          for (int64_t i = 0; i < k; ++i) {
            if (i < used) {
              w[i] = score[sel[i]];
            } else {
              sel[i] = -1;
              w[i] = 0.0f;
            }
          }
        }
        __syncthreads();
        write_row(p, t, sel, w, red);
        break;
      }
      case Selection::kSinkhorn: {
        block_select_topk(sink_p + t * cols, cols, k, sel, red);
        block_softmax(score, cols, red);
        for (int64_t i = threadIdx.x; i < k; i += blockDim.x) w[i] = score[sel[i]];
        __syncthreads();
        write_row(p, t, sel, w, red);
        break;
      }
      case Selection::kExpertChoice: {
        block_scores(p.scoring, score, cols, red);
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
          p.weights[t * cols + c] = score[c];
          p.ids[t * cols + c] = -1;
        }
        __syncthreads();  // score is reloaded for the next token
        break;
      }
    }
  }
}

// Expert-choice ranking key: larger key = ranks earlier (value descending, NaN last,
// then token id ascending). All keys of a column are distinct.
__device__ __forceinline__ uint64_t expert_choice_key(float v, int64_t t) {
  uint32_t ord;
  if (v != v) {
    ord = 0u;  // NaN: below every number (-inf maps to 0x007fffff)
  } else {
    if (v == 0.0f) v = 0.0f;  // -0 and +0 tie in the ranking order
    const uint32_t u = __float_as_uint(v);
    ord = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  return (static_cast<uint64_t>(ord) << 32) | static_cast<uint64_t>(0xffffffffu - static_cast<uint32_t>(t));
}

// Pass 2 of expert-choice: one block per expert (grid-stride); weights holds the
// [T, E] scores from pass 1. Expert e takes exactly its top-C tokens: the C-th
// largest key is found by an 8-pass, 8-bit MSB radix select (histograms in shared
// memory with integer atomics, so the result is exact and deterministic), then the
// tokens with key >= it are taken. The CPU's nth_element takes the same set.
// NOTE: the column is read with stride E (9 passes); columns of neighbouring experts
// share cache lines, so most of those reads hit L2. Good enough next to a GEMM.
__global__ void expert_choice_kernel(GatingParams p, int64_t capacity) {
  __shared__ uint32_t hist[256];
  __shared__ uint64_t s_prefix;
  __shared__ int64_t s_remaining;
  const int64_t T = p.tokens;
  const int64_t E = p.experts;
  for (int64_t e = blockIdx.x; e < E; e += gridDim.x) {
    const float* col = p.weights + e;
    uint64_t threshold = 0;  // C == T: every key (>= 0) is taken
    const bool none = capacity == 0;
    if (capacity > 0 && capacity < T) {
      uint64_t prefix = 0;
      uint64_t mask = 0;
      int64_t remaining = capacity;  // rank (1-based) of the wanted key among the matches
      for (int shift = 56; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
          const uint64_t key = expert_choice_key(col[t * E], t);
          if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
          int64_t above = 0;  // matching keys in higher bins
          int b = 255;
          for (; b > 0; --b) {
            if (above + static_cast<int64_t>(hist[b]) >= remaining) break;
            above += hist[b];
          }
          s_prefix = prefix | (static_cast<uint64_t>(b) << shift);
          s_remaining = remaining - above;
        }
        __syncthreads();
        prefix = s_prefix;
        remaining = s_remaining;
        mask |= static_cast<uint64_t>(0xffu) << shift;
        // hist is zeroed by the next pass only after every thread passed the barrier
        // above, and thread 0 finished reading it before that barrier.
      }
      threshold = prefix;
    }
    for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
      float* wt = p.weights + t * E + e;
      const bool take = !none && expert_choice_key(*wt, t) >= threshold;
      if (take) p.ids[t * E + e] = static_cast<int32_t>(e);
      *wt = take && !isnan(*wt) ? __fmul_rn(*wt, p.routed_scaling) : 0.0f;
    }
    if (threadIdx.x == 0) p.load[e] = static_cast<int32_t>(capacity);
    __syncthreads();  // s_prefix / hist reused by the next expert
  }
}

// Sinkhorn initial matrix: P[t, e] = exp(double(x) - double(rowmax)), x the biased
// float32 logits. One warp per token (grid-stride).
__global__ void sinkhorn_init_kernel(GatingParams p, double* __restrict__ P) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  const int64_t E = p.experts;
  for (int64_t t = blockIdx.x * warps_per_block + threadIdx.x / kWarp; t < p.tokens;
       t += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    float m = -INFINITY;
    for (int64_t e = lane; e < E; e += kWarp) {
      const float x = load_logit(p, t, E, e);
      if (x > m) m = x;
    }
    for (int off = kWarp / 2; off > 0; off >>= 1) {
      const float o = __shfl_xor_sync(kFullMask, m, off);
      if (o > m) m = o;
    }
    for (int64_t e = lane; e < E; e += kWarp) {
      const double x = static_cast<double>(load_logit(p, t, E, e));
      P[t * E + e] = isnan(x) ? 0.0 : exp(__dsub_rn(x, static_cast<double>(m)));  // as the CPU
    }
  }
}

// partial[b, e] = sum of P[t, e] over the rows t of 64-row block b, in row order
// (the CPU's per-block partials). One thread per (b, e); e fastest (coalesced).
__global__ void sinkhorn_partial_kernel(const double* __restrict__ P, int64_t T, int64_t E, int64_t blocks,
                                        double* __restrict__ partial) {
  const int64_t n = blocks * E;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / E;
    const int64_t e = i % E;
    const int64_t end = (b + 1) * kSinkhornBlock < T ? (b + 1) * kSinkhornBlock : T;
    double s = 0.0;
    for (int64_t t = b * kSinkhornBlock; t < end; ++t) s = __dadd_rn(s, P[t * E + e]);
    partial[i] = s;
  }
}

// colsum[e] = sum of partial[b, e] over blocks b in block order. One thread per e.
__global__ void sinkhorn_colsum_kernel(const double* __restrict__ partial, int64_t E, int64_t blocks,
                                       double* __restrict__ colsum) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < E;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int64_t b = 0; b < blocks; ++b) s = __dadd_rn(s, partial[b * E + e]);
    colsum[e] = s;
  }
}

// Row normalisation: row /= colsum (elementwise), then row /= its sum (summed in
// expert order). One warp per token: lane 0 forms the sequential row sum (same
// rounding as the CPU), then the lanes rescale.
__global__ void sinkhorn_rows_kernel(double* __restrict__ P, const double* __restrict__ colsum, int64_t T,
                                     int64_t E) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  for (int64_t t = blockIdx.x * warps_per_block + threadIdx.x / kWarp; t < T;
       t += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    double* row = P + t * E;
    double rowsum = 0.0;
    if (lane == 0) {
      // A zero sum is left undivided, as the CPU.
      for (int64_t e = 0; e < E; ++e) rowsum = __dadd_rn(rowsum, colsum[e] != 0.0 ? __ddiv_rn(row[e], colsum[e]) : row[e]);
    }
    __syncwarp();  // lane 0's reads of the row come before the other lanes' writes
    rowsum = __shfl_sync(kFullMask, rowsum, 0);
    for (int64_t e = lane; e < E; e += kWarp) {
      const double v = colsum[e] != 0.0 ? __ddiv_rn(row[e], colsum[e]) : row[e];
      row[e] = rowsum != 0.0 ? __ddiv_rn(v, rowsum) : v;
    }
  }
}

// ---------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------

// Stream-ordered device scratch, freed (stream-ordered) when it goes out of scope,
// also when a later launch throws.
class Scratch {
 public:
  Scratch(int64_t bytes, cudaStream_t s) : stream_(s) {
    if (bytes > 0) MOEKIT_CUDA_CHECK(cudaMallocAsync(&ptr_, static_cast<size_t>(bytes), s));
  }
  ~Scratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

int multiprocessors() {
  int device = 0;
  MOEKIT_CUDA_CHECK(cudaGetDevice(&device));
  int sms = 0;
  MOEKIT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms > 0 ? sms : 1;
}

unsigned grid_1d(int64_t items, int64_t per_block, int64_t cap) {
  int64_t g = (items + per_block - 1) / per_block;
  if (g > cap) g = cap;
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

int64_t align16(int64_t b) { return (b + 15) / 16 * 16; }

// The shared checks, plus the device ranking keys' limit.
void validate(const GatingParams& p) {
  check_gating_params(p);
  if (p.selection == Selection::kExpertChoice)
    // The device ranking keys hold the token id in 32 bits.
    MOEKIT_REQUIRE(p.tokens <= static_cast<int64_t>(UINT32_MAX), "gating: expert-choice on CUDA needs tokens < 2^32, got ", p.tokens);
}

// Launches route_rows_kernel for p.selection (sink_p: the balanced matrix for kSinkhorn).
void launch_route_rows(const GatingParams& p, const double* sink_p, cudaStream_t stream) {
  const int64_t cols = p.experts + p.null_experts;
  const bool per_token_k = p.selection != Selection::kExpertChoice;
  const bool own_choice = p.selection == Selection::kTopkScores && (p.correction_bias != nullptr || p.n_group > 1);
  const int64_t ng = p.selection == Selection::kTopkScores && p.n_group > 1 ? p.n_group : 0;
  const int64_t kk = per_token_k ? p.k : 0;
  RowLayout L;
  int64_t at = 0;
  L.score = at; at = align16(at + cols * 4);
  L.choice = at; at = align16(at + (own_choice ? cols * 4 : 0));
  L.gscore = at; at = align16(at + ng * 4);
  L.gsel = at; at = align16(at + ng * 4);
  L.gkeep = at; at = align16(at + ng * 4);
  L.sel = at; at = align16(at + kk * 4);
  L.w = at; at = align16(at + kk * 4);
  L.bytes = at;

  const int threads = cols <= 32 ? 32 : cols <= 64 ? 64 : cols <= 128 ? 128 : 256;
  // NOTE: rows up to ~5k experts fit the default 48 KiB of shared memory (static
  // Reduce included, hence 46 KiB dynamic); wider rows run from a global scratch
  // slice per block (L1/L2-resident) rather than opting into more shared memory.
  constexpr int64_t kSmemLimit = 46 * 1024;
  const bool in_smem = L.bytes <= kSmemLimit;
  const int64_t cap = static_cast<int64_t>(multiprocessors()) * (in_smem ? 32 : 4);
  const unsigned grid = grid_1d(p.tokens, 1, cap);
  Scratch scratch(in_smem ? 0 : static_cast<int64_t>(grid) * L.bytes, stream);
  route_rows_kernel<<<grid, threads, in_smem ? static_cast<size_t>(L.bytes) : 0, stream>>>(
      p, L, sink_p, static_cast<unsigned char*>(scratch.get()));
  MOEKIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

// Shape contract: logits [tokens, experts + null_experts] (f32/f16/bf16);
// logit_bias [experts + null_experts] or null; correction_bias [experts] or null;
// ids / weights [tokens, k] (k = experts for expert-choice); load [experts].
// All device pointers; results are written on `stream`.
void gating(const GatingParams& p, void* stream) {
  validate(p);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  MOEKIT_CUDA_CHECK(cudaMemsetAsync(p.load, 0, static_cast<size_t>(p.experts) * sizeof(int32_t), s));
  if (p.tokens == 0) return;
  const int64_t T = p.tokens;
  const int64_t E = p.experts;

  switch (p.selection) {
    case Selection::kTopkScores:
    case Selection::kTopkLogitsThenSoftmax:
    case Selection::kTopP:
      launch_route_rows(p, nullptr, s);
      return;

    case Selection::kExpertChoice: {
      launch_route_rows(p, nullptr, s);  // pass 1: scores, ids = -1
      // Capacity exactly as the CPU computes it (host double arithmetic).
      double cap = std::ceil(static_cast<double>(p.capacity_factor) * static_cast<double>(T) *
                             static_cast<double>(p.choice_k) / static_cast<double>(E));
      cap = std::min(std::max(cap, 0.0), static_cast<double>(T));
      const int64_t C = static_cast<int64_t>(cap);
      const unsigned grid = grid_1d(E, 1, static_cast<int64_t>(multiprocessors()) * 16);
      expert_choice_kernel<<<grid, 256, 0, s>>>(p, C);
      MOEKIT_CUDA_CHECK(cudaGetLastError());
      return;
    }

    case Selection::kSinkhorn: {
      const int64_t iters = p.sinkhorn_iters;
      const int64_t blocks = (T + kSinkhornBlock - 1) / kSinkhornBlock;
      const int64_t p_elems = T * E;
      const int64_t extra = iters > 0 ? blocks * E + E : 0;  // partial [blocks, E], colsum [E]
      Scratch scratch((p_elems + extra) * static_cast<int64_t>(sizeof(double)), s);
      double* P = static_cast<double*>(scratch.get());
      double* partial = P + p_elems;
      double* colsum = partial + blocks * E;
      const int sms = multiprocessors();
      constexpr int kThreads = 256;
      constexpr int64_t kWarpsPerBlock = kThreads / kWarp;
      const unsigned row_grid = grid_1d(T, kWarpsPerBlock, static_cast<int64_t>(sms) * 32);
      sinkhorn_init_kernel<<<row_grid, kThreads, 0, s>>>(p, P);
      MOEKIT_CUDA_CHECK(cudaGetLastError());
      for (int64_t it = 0; it < iters; ++it) {
        sinkhorn_partial_kernel<<<grid_1d(blocks * E, kThreads, static_cast<int64_t>(sms) * 32), kThreads, 0, s>>>(
            P, T, E, blocks, partial);
        MOEKIT_CUDA_CHECK(cudaGetLastError());
        sinkhorn_colsum_kernel<<<grid_1d(E, kThreads, static_cast<int64_t>(sms) * 32), kThreads, 0, s>>>(
            partial, E, blocks, colsum);
        MOEKIT_CUDA_CHECK(cudaGetLastError());
        sinkhorn_rows_kernel<<<row_grid, kThreads, 0, s>>>(P, colsum, T, E);
        MOEKIT_CUDA_CHECK(cudaGetLastError());
      }
      launch_route_rows(p, P, s);
      return;  // scratch is freed stream-ordered after the last kernel
    }
  }
}

}  // namespace moekit::cuda
