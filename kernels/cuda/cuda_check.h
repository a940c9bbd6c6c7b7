// Turns a failed CUDA call into a moekit::Error carrying the CUDA error name.
// Only for .cu files (needs cuda_runtime.h).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kernels/common/error.h"

namespace moekit::cuda {

inline void check(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear non-sticky errors so the process stays usable
  const char* c = err == cudaErrorMemoryAllocation ? code::kCudaOutOfMemory : code::kCuda;
  throw Error(c,
              std::string(cudaGetErrorString(err)) + " (" + what + " at " + file + ":" +
                  std::to_string(line) + ")",
              cudaGetErrorName(err));
}

}  // namespace moekit::cuda

#define MOEKIT_CUDA_CHECK(expr) ::moekit::cuda::check((expr), #expr, __FILE__, __LINE__)
