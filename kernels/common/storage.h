// Memory owned by the kernels core on one device. A Storage is always held by
// shared_ptr: a tensor and every piece of in-flight work that reads it hold a
// reference, so disposing a tensor while a forward uses it cannot free the bytes
// under the running kernel.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace moekit {

struct Device {
  enum class Kind : int32_t { kCpu = 0, kCuda = 1 };
  Kind kind = Kind::kCpu;
  int32_t index = 0;  // CUDA ordinal; 0 for the CPU
  bool is_cpu() const { return kind == Kind::kCpu; }
  bool is_cuda() const { return kind == Kind::kCuda; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  std::string name() const { return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index); }
};

class Storage {
 public:
  // Allocates `bytes` on `device`; throws Error with ERR_OOM / ERR_CUDA_OOM when it cannot.
  static std::shared_ptr<Storage> allocate(Device device, int64_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Storage(Device device, void* data, int64_t bytes) : device_(device), data_(data), bytes_(bytes) {}
  Device device_;
  void* data_;
  int64_t bytes_;
};

// Copies between any two storages' devices (host<->device, device<->device, host<->host).
// Device copies run on the destination (or source) device's stream and are complete on return.
void copy_bytes(Device dst_device, void* dst, Device src_device, const void* src, int64_t bytes);

}  // namespace moekit
