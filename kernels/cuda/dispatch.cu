// CUDA dispatch: a stable counting sort of the (token, slot) pairs by expert with the
// same outputs as kernels/cpu/dispatch.cc, and the row gather into dispatch order.
//
// The pairs are cut into fixed chunks, one warp per chunk, walked 32 pairs at a time
// in pair order:
//   1. count_kernel     chunk_counts[c, e] = pairs of chunk c routed to expert e
//   2. scan_kernel      (one block) per expert: exclusive prefix of chunk_counts over
//                       chunks (in place), routed total, kept count (capacity),
//                       padded group size; then an exclusive scan over experts
//                       -> offsets; dropped = sum of (routed - kept)
//   3. place_kernel     rank of a pair within its expert = prefix of its chunk +
//                       pairs of the same expert earlier in the chunk (ballot/match
//                       within each 32-pair step, running cursor per chunk)
// Every count is an exact integer formed in a fixed order, so the placement is
// deterministic and stable (ascending pair index within each expert), identical to
// the CPU's. Nothing is copied back to the host and nothing synchronises.
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "kernels/common/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dispatch.h"

namespace moekit::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kChunkThreads = 256;  // 8 warps = 8 chunks per block
constexpr int kScanThreads = 1024;

// Expert of pair i, or -1 when the pair is skipped (id < 0, or out of range: the
// device cannot raise the CPU's error, so such pairs are skipped).
__device__ __forceinline__ int32_t pair_expert(const int32_t* ids, int64_t i, int64_t pairs, int64_t experts) {
  if (i >= pairs) return -1;
  const int32_t e = ids[i];
  return e >= 0 && e < experts ? e : -1;
}

// Pass 1: chunk_counts[c, e] (zeroed first) += pairs of chunk c with expert e.
// One warp per chunk; within a 32-pair step the lanes with equal experts are grouped
// by __match_any_sync and the group's lowest lane adds the group size. A warp owns
// its chunk's row, so plain adds suffice.
__global__ void count_kernel(const int32_t* __restrict__ ids, int64_t pairs, int64_t experts, int64_t chunk,
                             int64_t chunks, int32_t* __restrict__ chunk_counts) {
  const int lane = threadIdx.x % kWarp;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (c >= chunks) return;  // whole warps leave together
  int32_t* row = chunk_counts + c * experts;
  const int64_t begin = c * chunk;
  const int64_t end = begin + chunk < pairs ? begin + chunk : pairs;
  for (int64_t base = begin; base < end; base += kWarp) {
    const int64_t i = base + lane;
    const int32_t e = pair_expert(ids, i, end, experts);
    const unsigned group = __match_any_sync(kFullMask, e);
    if (e >= 0 && lane == __ffs(group) - 1) row[e] += __popc(group);
    __syncwarp();  // the next step's leader may be another lane of this warp
  }
}

// Inclusive scan of v over the block (blockDim.x a multiple of 32, <= 1024); also
// returns the block total. warp_sums: shared [32].
__device__ int64_t block_inclusive_scan(int64_t v, int64_t* warp_sums, int64_t* total) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  for (int off = 1; off < kWarp; off <<= 1) {
    const int64_t o = __shfl_up_sync(kFullMask, v, off);
    if (lane >= off) v += o;
  }
  if (lane == kWarp - 1) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int64_t s = lane < warps ? warp_sums[lane] : 0;
    for (int off = 1; off < kWarp; off <<= 1) {
      const int64_t o = __shfl_up_sync(kFullMask, s, off);
      if (lane >= off) s += o;
    }
    if (lane < warps) warp_sums[lane] = s;  // inclusive prefix of the warp totals
  }
  __syncthreads();
  if (warp > 0) v += warp_sums[warp - 1];
  *total = warp_sums[warps - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return v;
}

// Pass 2 (a single block): per-expert totals and chunk prefixes, kept counts,
// padded offsets, dropped. offsets[e + 1] briefly holds expert e's padded size.
// NOTE: one thread per expert walks the chunks serially (loads are independent and
// coalesced across experts; the chunk count is bounded by the launcher).
__global__ void scan_kernel(int32_t* __restrict__ chunk_counts, int64_t chunks, int64_t experts,
                            int64_t block_size, int64_t capacity, int32_t* __restrict__ counts,
                            int32_t* __restrict__ offsets, int64_t* __restrict__ dropped) {
  __shared__ int64_t warp_sums[kWarp];
  int64_t my_dropped = 0;
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    int64_t run = 0;
#pragma unroll 8
    for (int64_t c = 0; c < chunks; ++c) {
      int32_t* cell = chunk_counts + c * experts + e;
      const int32_t v = *cell;
      *cell = static_cast<int32_t>(run);
      run += v;
    }
    int64_t kept = run;
    if (capacity >= 0 && kept > capacity) {
      my_dropped += kept - capacity;
      kept = capacity;
    }
    counts[e] = static_cast<int32_t>(kept);
    offsets[e + 1] = static_cast<int32_t>((kept + block_size - 1) / block_size * block_size);
  }
  __syncthreads();
  // Exclusive scan of the padded sizes, in tiles of blockDim experts with a carry.
  // Every thread reads its own entry and writes the same one, so no extra barrier
  // is needed between read and write.
  int64_t carry = 0;
  for (int64_t tile = 0; tile < experts; tile += blockDim.x) {
    const int64_t e = tile + threadIdx.x;
    const int64_t size = e < experts ? offsets[e + 1] : 0;
    int64_t total = 0;
    const int64_t incl = block_inclusive_scan(size, warp_sums, &total);
    if (e < experts) offsets[e + 1] = static_cast<int32_t>(carry + incl);
    carry += total;
  }
  if (threadIdx.x == 0) offsets[0] = 0;
  // dropped: integer block sum (exact, so the order does not matter).
  int64_t total = 0;
  block_inclusive_scan(my_dropped, warp_sums, &total);
  if (threadIdx.x == 0 && dropped != nullptr) *dropped = total;
}

// Pass 3: placement. chunk_counts[c, e] holds the rows of expert e taken by earlier
// chunks (exclusive prefix); each step a pair's rank is that value plus the lanes
// of its group below it; the group's lowest lane then advances the cursor.
__global__ void place_kernel(const int32_t* __restrict__ ids, int64_t pairs, int64_t experts, int64_t chunk,
                             int64_t chunks, int32_t* __restrict__ chunk_counts,
                             const int32_t* __restrict__ counts, const int32_t* __restrict__ offsets,
                             int32_t* __restrict__ sorted_pairs, int32_t* __restrict__ pair_to_row) {
  const int lane = threadIdx.x % kWarp;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (c >= chunks) return;
  int32_t* cursor = chunk_counts + c * experts;
  const unsigned lanes_below = (1u << lane) - 1u;
  const int64_t begin = c * chunk;
  const int64_t end = begin + chunk < pairs ? begin + chunk : pairs;
  for (int64_t base = begin; base < end; base += kWarp) {
    const int64_t i = base + lane;
    const int32_t e = pair_expert(ids, i, end, experts);
    const unsigned group = __match_any_sync(kFullMask, e);
    int32_t rank = 0;
    if (e >= 0) rank = cursor[e] + __popc(group & lanes_below);
    __syncwarp();  // every lane read its cursor before the leader advances it
    if (e >= 0 && lane == __ffs(group) - 1) cursor[e] += __popc(group);
    if (i < end) {
      int32_t row = -1;
      if (e >= 0 && rank < counts[e]) {
        row = offsets[e] + rank;
        sorted_pairs[row] = static_cast<int32_t>(i);
      }
      pair_to_row[i] = row;  // -1: skipped, or dropped by the capacity
    }
    __syncwarp();  // the cursor update is visible to the next step's readers
  }
}

// out[r, :] = x[sorted_pairs[r] / k, :], zeros for padding rows. One block per row
// (grid-stride); V floats per thread access (V = 4 when rows are 16-byte aligned).
template <int V>
__global__ void permute_kernel(const float* __restrict__ x, const int32_t* __restrict__ sorted_pairs, int64_t rows,
                               int64_t k, int64_t hidden, float* __restrict__ out) {
  const int64_t vecs = hidden / V;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int32_t pair = sorted_pairs[r];
    float* dst = out + r * hidden;
    if (pair < 0) {
      for (int64_t h = threadIdx.x; h < vecs; h += blockDim.x) {
        if constexpr (V == 4) {
          reinterpret_cast<float4*>(dst)[h] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        } else {
          dst[h] = 0.0f;
        }
      }
    } else {
      const float* src = x + (static_cast<int64_t>(pair) / k) * hidden;
      for (int64_t h = threadIdx.x; h < vecs; h += blockDim.x) {
        if constexpr (V == 4) {
          reinterpret_cast<float4*>(dst)[h] = reinterpret_cast<const float4*>(src)[h];
        } else {
          dst[h] = src[h];
        }
      }
    }
  }
}

}  // namespace

// Shape contract: ids [tokens, k] (device); counts [experts]; offsets [experts + 1];
// sorted_pairs [dispatch_max_rows(tokens, k, experts, block_size)];
// pair_to_row [tokens * k]; dropped [1] or null. All device pointers.
void dispatch(const DispatchParams& p, void* stream) {
  MOEKIT_REQUIRE(p.tokens >= 0 && p.k >= 1 && p.experts >= 1, "dispatch: bad sizes tokens=", p.tokens,
                 " k=", p.k, " experts=", p.experts);
  MOEKIT_REQUIRE(p.block_size >= 1, "dispatch: block_size must be >= 1, got ", p.block_size);
  constexpr int64_t kMaxI32 = std::numeric_limits<int32_t>::max();
  MOEKIT_REQUIRE(p.tokens <= kMaxI32 / p.k && p.experts <= kMaxI32 && p.block_size <= kMaxI32,
                 "dispatch: sizes do not fit 32-bit indices: tokens=", p.tokens, " k=", p.k,
                 " experts=", p.experts, " block_size=", p.block_size);
  const int64_t pairs = p.tokens * p.k;
  const int64_t max_rows = dispatch_max_rows(p.tokens, p.k, p.experts, p.block_size);
  MOEKIT_REQUIRE(max_rows <= kMaxI32, "dispatch: ", max_rows, " rows do not fit 32-bit row indices");
  MOEKIT_REQUIRE(p.counts != nullptr && p.offsets != nullptr, "dispatch: counts and offsets must not be null");
  if (max_rows > 0) MOEKIT_REQUIRE(p.sorted_pairs != nullptr, "dispatch: sorted_pairs must not be null");
  if (pairs > 0) {
    MOEKIT_REQUIRE(p.ids != nullptr, "dispatch: ids must not be null");
    MOEKIT_REQUIRE(p.pair_to_row != nullptr, "dispatch: pair_to_row must not be null");
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);

  // NOTE: chunks of >= 256 pairs (8 steps per warp), growing so that there are at
  // most ~1024 chunks: bounds both the chunk_counts scratch ([chunks, E] int32) and
  // the serial per-expert walk in scan_kernel.
  constexpr int64_t kMinChunk = 256;
  constexpr int64_t kMaxChunks = 1024;
  int64_t chunk = (pairs + kMaxChunks - 1) / kMaxChunks;
  chunk = (chunk + kWarp - 1) / kWarp * kWarp;
  if (chunk < kMinChunk) chunk = kMinChunk;
  const int64_t chunks = (pairs + chunk - 1) / chunk;  // 0 when there are no pairs

  void* scratch = nullptr;
  const size_t scratch_bytes = static_cast<size_t>(chunks * p.experts) * sizeof(int32_t);
  if (scratch_bytes > 0) {
    MOEKIT_CUDA_CHECK(cudaMallocAsync(&scratch, scratch_bytes, s));
  }
  int32_t* chunk_counts = static_cast<int32_t*>(scratch);
  // Frees the scratch (stream-ordered) on every exit, a throwing check included.
  struct Free {
    void* ptr;
    cudaStream_t stream;
    ~Free() {
      if (ptr != nullptr) cudaFreeAsync(ptr, stream);
    }
  } free_scratch{scratch, s};

  if (max_rows > 0) {
    // -1 in every row: padding and the unused tail stay -1 (0xff bytes = -1).
    MOEKIT_CUDA_CHECK(cudaMemsetAsync(p.sorted_pairs, 0xff, static_cast<size_t>(max_rows) * sizeof(int32_t), s));
  }
  const unsigned chunk_grid =
      static_cast<unsigned>((chunks + kChunkThreads / kWarp - 1) / (kChunkThreads / kWarp));
  if (chunks > 0) {
    MOEKIT_CUDA_CHECK(cudaMemsetAsync(chunk_counts, 0, scratch_bytes, s));
    count_kernel<<<chunk_grid, kChunkThreads, 0, s>>>(p.ids, pairs, p.experts, chunk, chunks, chunk_counts);
    MOEKIT_CUDA_CHECK(cudaGetLastError());
  }
  // Runs for empty input too: counts, offsets and dropped are written as zeros.
  scan_kernel<<<1, kScanThreads, 0, s>>>(chunk_counts, chunks, p.experts, p.block_size, p.capacity, p.counts,
                                         p.offsets, p.dropped);
  MOEKIT_CUDA_CHECK(cudaGetLastError());
  if (chunks > 0) {
    place_kernel<<<chunk_grid, kChunkThreads, 0, s>>>(p.ids, pairs, p.experts, chunk, chunks, chunk_counts,
                                                      p.counts, p.offsets, p.sorted_pairs, p.pair_to_row);
    MOEKIT_CUDA_CHECK(cudaGetLastError());
  }
}

// Shape contract: x [tokens, hidden] float32; sorted_pairs [rows]; out [rows, hidden].
// All device pointers.
void permute_rows(const PermuteParams& p, void* stream) {
  MOEKIT_REQUIRE(p.rows >= 0 && p.k >= 1 && p.hidden >= 0, "permute_rows: bad sizes rows=", p.rows, " k=", p.k,
                 " hidden=", p.hidden);
  if (p.rows == 0 || p.hidden == 0) return;
  MOEKIT_REQUIRE(p.sorted_pairs != nullptr && p.out != nullptr && p.x != nullptr,
                 "permute_rows: x, sorted_pairs and out must not be null");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool vec4 = p.hidden % 4 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
  const int64_t per_row = vec4 ? p.hidden / 4 : p.hidden;
  const int threads = per_row >= 256 ? 256 : per_row >= 128 ? 128 : per_row >= 64 ? 64 : 32;
  // NOTE: one block per row, grid-stride past 64k blocks: rows are independent.
  const unsigned grid = static_cast<unsigned>(p.rows < 65536 ? p.rows : 65536);
  if (vec4) {
    permute_kernel<4><<<grid, threads, 0, s>>>(p.x, p.sorted_pairs, p.rows, p.k, p.hidden, p.out);
  } else {
    permute_kernel<1><<<grid, threads, 0, s>>>(p.x, p.sorted_pairs, p.rows, p.k, p.hidden, p.out);
  }
  MOEKIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moekit::cuda
