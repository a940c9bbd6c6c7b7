#include <cuda_runtime.h>

#include "kernels/common/error.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_check.h"

namespace moekit::cuda {

namespace {

template <typename In>
__device__ __forceinline__ float load_as_f32(const In* p, int64_t i);
template <>
__device__ __forceinline__ float load_as_f32<int32_t>(const int32_t* p, int64_t i) { return static_cast<float>(p[i]); }
template <>
__device__ __forceinline__ float load_as_f32<int64_t>(const int64_t* p, int64_t i) { return static_cast<float>(p[i]); }

template <typename In>
__global__ void to_f32_kernel(const In* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = load_as_f32(src, i);
}

template <bool kBf16>
__global__ void half_to_f32_kernel(const uint16_t* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = kBf16 ? bf16_to_float(src[i]) : f16_to_float(src[i]);
}

template <bool kBf16>
__global__ void f32_to_half_kernel(const float* __restrict__ src, uint16_t* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = kBf16 ? float_to_bf16(src[i]) : float_to_f16(src[i]);
}

__global__ void copy_f32_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

constexpr int kThreads = 256;
unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 4096 ? blocks : 4096);  // grid-stride loops cover the rest
}

}  // namespace

void convert_to_f32(DType src_type, const void* src, float* dst, int64_t n, void* stream) {
  if (n <= 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (src_type) {
    case DType::kF32: copy_f32_kernel<<<grid_for(n), kThreads, 0, s>>>(static_cast<const float*>(src), dst, n); break;
    case DType::kBF16: half_to_f32_kernel<true><<<grid_for(n), kThreads, 0, s>>>(static_cast<const uint16_t*>(src), dst, n); break;
    case DType::kF16: half_to_f32_kernel<false><<<grid_for(n), kThreads, 0, s>>>(static_cast<const uint16_t*>(src), dst, n); break;
    case DType::kI32: to_f32_kernel<int32_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<const int32_t*>(src), dst, n); break;
    case DType::kI64: to_f32_kernel<int64_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<const int64_t*>(src), dst, n); break;
  }
  MOEKIT_CUDA_CHECK(cudaGetLastError());
}

void convert_from_f32(DType dst_type, const float* src, void* dst, int64_t n, void* stream) {
  if (n <= 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dst_type) {
    case DType::kF32: copy_f32_kernel<<<grid_for(n), kThreads, 0, s>>>(src, static_cast<float*>(dst), n); break;
    case DType::kBF16: f32_to_half_kernel<true><<<grid_for(n), kThreads, 0, s>>>(src, static_cast<uint16_t*>(dst), n); break;
    case DType::kF16: f32_to_half_kernel<false><<<grid_for(n), kThreads, 0, s>>>(src, static_cast<uint16_t*>(dst), n); break;
    default: fail(code::kInvalidArgument, "cannot convert float32 data to ", dtype_name(dst_type));
  }
  MOEKIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moekit::cuda
