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

struct Tensor {
  std::shared_ptr<Storage> storage;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t bytes() const { return numel() * dtype_size(dtype); }
  Device device() const { return storage ? storage->device() : Device{}; }
  void* data() const { return storage ? storage->data() : nullptr; }
  template <typename T>
  T* as() const { return static_cast<T*>(data()); }
  int64_t dim(size_t i) const { return shape.at(i); }

  static Tensor empty(DType dtype, std::vector<int64_t> shape, Device device) {
    Tensor t;
    t.dtype = dtype;
    t.shape = std::move(shape);
    for (int64_t d : t.shape) MOEKIT_REQUIRE(d >= 0, "tensor dimensions must be >= 0, got ", d);
    t.storage = Storage::allocate(device, t.numel() * dtype_size(dtype));
    return t;
  }
};

inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace moekit
