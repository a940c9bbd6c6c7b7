// Element-type conversions on device memory (round to nearest even into 16-bit types).
#pragma once

#include <cstdint>

#include "kernels/common/dtype.h"

namespace moekit::cuda {
// dst[i] = float(src[i]); stream is a cudaStream_t.
void convert_to_f32(DType src_type, const void* src, float* dst, int64_t n, void* stream);
// dst[i] = dst_type(src[i]); float destinations only.
void convert_from_f32(DType dst_type, const float* src, void* dst, int64_t n, void* stream);
}  // namespace moekit::cuda
