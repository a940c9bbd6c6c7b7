#include "kernels/common/storage.h"

#include <cstdlib>
#include <cstring>

#include "kernels/common/error.h"
#include "kernels/cuda/cuda_runtime.h"

namespace moekit {

namespace {
constexpr int64_t kHostAlignment = 64;  // one cache line; also what AVX-512 loads like
}

std::shared_ptr<Storage> Storage::allocate(Device device, int64_t bytes) {
  MOEKIT_REQUIRE(bytes >= 0, "cannot allocate a negative number of bytes (", bytes, ")");
  if (device.is_cpu()) {
    // aligned_alloc needs a size that is a multiple of the alignment.
    const int64_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    void* p = rounded > 0 ? std::aligned_alloc(kHostAlignment, static_cast<size_t>(rounded)) : nullptr;
    if (rounded > 0 && p == nullptr)
      fail(code::kOutOfMemory, "out of host memory allocating ", bytes, " bytes");
    return std::shared_ptr<Storage>(new Storage(device, p, bytes));
  }
  void* p = bytes > 0 ? cuda::device_alloc(device.index, bytes) : nullptr;
  return std::shared_ptr<Storage>(new Storage(device, p, bytes));
}

Storage::~Storage() {
  if (data_ == nullptr) return;
  if (device_.is_cpu())
    std::free(data_);
  else
    cuda::device_free(device_.index, data_);
}

void copy_bytes(Device dst_device, void* dst, Device src_device, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, static_cast<size_t>(bytes));
  } else if (dst_device.is_cuda() && src_device.is_cpu()) {
    cuda::copy(dst_device.index, dst, src, bytes, cuda::CopyKind::kHostToDevice);
  } else if (dst_device.is_cpu() && src_device.is_cuda()) {
    cuda::copy(src_device.index, dst, src, bytes, cuda::CopyKind::kDeviceToHost);
  } else {
    MOEKIT_REQUIRE(dst_device == src_device, "copies between two different CUDA devices (",
                   src_device.name(), " to ", dst_device.name(), ") go through the host");
    cuda::copy(dst_device.index, dst, src, bytes, cuda::CopyKind::kDeviceToDevice);
  }
}

}  // namespace moekit
