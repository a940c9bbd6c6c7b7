// Device-to-device copy kernel (see memcopy.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/memcopy.h"

namespace moekit::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // 16-byte vectors per thread per iteration, all loaded before any store

// dst[i] = src[i] for i < n (16-byte vectors). Each block takes kUnroll * kThreads
// consecutive vectors per iteration (coalesced: vector u of thread t is base + u * kThreads + t).
__global__ void __launch_bounds__(kThreads) copy16_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads * kUnroll;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kUnroll; base < n; base += step) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads + threadIdx.x;
      if (i < n) v[u] = __ldcs(src + i);  // streaming: read once
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads + threadIdx.x;
      if (i < n) __stcs(dst + i, v[u]);
    }
  }
}

}  // namespace

void copy_device(void* dst, const void* src, int64_t bytes, void* stream) {
  if (bytes <= 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool aligned = ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & 15) == 0;
  const int64_t n = aligned ? bytes / 16 : 0;
  if (n > 0) {
    // At most 8 resident-sized waves of blocks; the grid-stride loop covers the rest.
    int dev = 0, sms = 132;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();
      sms = 132;
    }
    const int64_t per_block = int64_t{kThreads} * kUnroll;
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((n + per_block - 1) / per_block, int64_t{sms} * 8 * 8));
    copy16_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(static_cast<const uint4*>(src), static_cast<uint4*>(dst), n);
    MOEKIT_CUDA_CHECK(cudaGetLastError());
  }
  const int64_t done = n * 16;
  if (done < bytes)
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + done, static_cast<const char*>(src) + done,
                                      static_cast<size_t>(bytes - done), cudaMemcpyDeviceToDevice, s));
}

}  // namespace moekit::cuda
