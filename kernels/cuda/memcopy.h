// Device-to-device copy as a kernel: 16-byte vector loads and stores, four per thread in
// flight. The bandwidth probe of `moekit bench` (native copy op) uses it because
// cudaMemcpyAsync reads well under what kernels stream on an H100 (2433 GB/s against
// PyTorch's 3.0 TB/s copy, docs/GPU-NOTES.md).
#pragma once

#include <cstdint>

namespace moekit::cuda {
// Enqueues dst[0, bytes) = src[0, bytes) on `stream` (a cudaStream_t); both device
// pointers. Unaligned pointers fall back to cudaMemcpyAsync. Throws moekit::Error
// (ERR_CUDA) on a launch failure.
void copy_device(void* dst, const void* src, int64_t bytes, void* stream);
}  // namespace moekit::cuda
