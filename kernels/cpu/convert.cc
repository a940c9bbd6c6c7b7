#include "kernels/cpu/convert.h"

#include <cstring>

#include "kernels/common/error.h"

namespace moekit::cpu {

void convert_to_f32(DType src_type, const void* src, float* dst, int64_t n) {
  if (n <= 0) return;  // empty tensors may have null data (memcpy of null is undefined)
  switch (src_type) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_float(s[i]);
      return;
    }
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(s[i]);
      return;
    }
    case DType::kI32: {
      const int32_t* s = static_cast<const int32_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      return;
    }
    case DType::kI64: {
      const int64_t* s = static_cast<const int64_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      return;
    }
  }
  fail(code::kInternal, "convert_to_f32: unknown dtype");
}

void convert_from_f32(DType dst_type, const float* src, void* dst, int64_t n) {
  if (n <= 0 && dtype_is_float(dst_type)) return;
  switch (dst_type) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_f16(src[i]);
      return;
    }
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i]);
      return;
    }
    default:
      fail(code::kInvalidArgument, "cannot convert float32 data to ", dtype_name(dst_type));
  }
}

}  // namespace moekit::cpu
