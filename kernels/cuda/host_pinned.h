// Host-to-device copies staged through page-locked (pinned) host buffers. Pageable
// memory (a memory-mapped checkpoint) cannot be DMA'd directly: the driver would stage
// it itself, synchronously. Here a bounded pool of pinned buffers does it, double
// buffered, so that pinning never grows past kPinnedPoolBytes however much is copied
// (pinning tens of GB at once is a known way to run a machine out of memory).
// Implemented in host_pinned.cu; only compiled (and only called) in CUDA builds.
#pragma once

#include <cstdint>

namespace moekit::cuda {

// Size of one pinned staging buffer.
inline constexpr int64_t kPinnedBufferBytes = int64_t{8} << 20;  // 8 MiB
// Most pinned host memory the pool holds at once (all devices together).
inline constexpr int64_t kPinnedPoolBytes = int64_t{256} << 20;  // 256 MiB

// Inside run_copy_on_device (or run_on_device): copies `bytes` of pageable host memory `src` to device memory
// `dst` on the current stream through two pinned buffers of the pool; complete on return.
// Blocks while the pool has no free buffer.
void staged_host_to_device(void* dst, const void* src, int64_t bytes);

// Inside run_copy_on_device (or run_on_device): enqueues a device-to-device copy on the current stream.
void device_to_device_async(void* dst, const void* src, int64_t bytes);

// Pinned bytes the pool holds now (allocated buffers, in use or free).
int64_t pinned_pool_bytes();

}  // namespace moekit::cuda
