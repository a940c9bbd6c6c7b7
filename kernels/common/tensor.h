// A tensor as the kernels core sees it: shared storage, element type, shape.
// Layout is always dense row-major (C order); strides are derived from the shape.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/common/dtype.h"
#include "kernels/common/error.h"
#include "kernels/common/storage.h"

namespace moekit {

inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct Tensor {
  std::shared_ptr<Storage> storage;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  int64_t numel() const { return checked_numel(shape); }
  int64_t bytes() const { return numel() * dtype_size(dtype); }
  Device device() const { return storage ? storage->device() : Device{}; }
  void* data() const { return storage ? storage->data() : nullptr; }
  template <typename T>
  T* as() const { return static_cast<T*>(data()); }
  int64_t dim(size_t i) const { return shape.at(i); }

  // Element count of a shape; refuses negative dimensions and counts whose byte size
  // (at 8 bytes an element) would overflow, so no allocation size can wrap around.
  static int64_t checked_numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) {
      MOEKIT_REQUIRE(d >= 0, "tensor dimensions must be >= 0, got ", d);
      if (__builtin_mul_overflow(n, d, &n) || n > (INT64_MAX >> 4))
        fail(code::kInvalidArgument, "a tensor of shape ", shape_string(shape), " has too many elements");
    }
    return n;
  }

  static Tensor empty(DType dtype, std::vector<int64_t> shape, Device device) {
    Tensor t;
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.storage = Storage::allocate(device, checked_numel(t.shape) * dtype_size(dtype));
    return t;
  }

};

// Dimension i of t, with the rank checked (ERR_INVALID_ARGUMENT rather than out_of_range).
inline int64_t dim_of(const Tensor& t, size_t rank, size_t i, const char* name) {
  MOEKIT_REQUIRE(t.shape.size() == rank, name, " must have ", rank, " dimensions, got ", t.shape.size());
  return t.shape[i];
}

}  // namespace moekit
