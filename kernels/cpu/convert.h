// Element-type conversions on host memory (round to nearest even into 16-bit types).
#pragma once

#include <cstdint>

#include "kernels/common/dtype.h"

namespace moekit::cpu {

// dst[i] = float(src[i]) for n elements of type `src_type` (integers convert exactly
// where float32 can hold them).
void convert_to_f32(DType src_type, const void* src, float* dst, int64_t n);

// dst[i] = src_type(src[i]); for f16/bf16 rounds to nearest, ties to even.
// Only float destinations (f32, f16, bf16).
void convert_from_f32(DType dst_type, const float* src, void* dst, int64_t n);

}  // namespace moekit::cpu
