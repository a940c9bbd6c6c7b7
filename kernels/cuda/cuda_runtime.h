// What the rest of moekit may ask of CUDA. This header has no CUDA includes so that
// the binding and the CPU build can use it; the implementation is runtime.cu when
// the build has nvcc and runtime_disabled.cc otherwise.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moekit::cuda {

struct DeviceInfo {
  int32_t index = 0;
  std::string name;
  int32_t major = 0;  // compute capability
  int32_t minor = 0;
  int64_t memory_bytes = 0;
  int32_t multiprocessors = 0;
};

struct RuntimeInfo {
  bool compiled_with_cuda = false;
  int32_t driver_version = 0;   // e.g. 13000 for CUDA 13.0; 0 when no driver
  int32_t runtime_version = 0;  // the CUDA runtime linked into the binary
  std::vector<DeviceInfo> devices;
  std::string unavailable_reason;  // empty when at least one device is usable
};

// Queried once and cached; cheap after the first call.
const RuntimeInfo& runtime_info();

// Throws ERR_CUDA_UNAVAILABLE (with the reason in words) unless `device` is usable.
void require_device(int32_t device);

// Runs `fn` as the device's worker: with the device current, holding the device's
// lock, so work submitted to its stream from different threads is serialised.
// Synchronises the stream before returning and turns CUDA failures into Errors.
void run_on_device(int32_t device, const std::function<void()>& fn);

// Runs fn as the device's worker now if that needs no waiting (this thread is the
// worker, or the device is idle); otherwise queues it for the worker to run when its
// current work ends. For releasing device resources from any thread (finalizers).
// Errors inside fn are dropped. Does nothing when the device does not exist.
void run_or_defer_on_device(int32_t device, std::function<void()> fn);

// Runs `fn` as the device's copy worker: with the device current, holding the device's
// copy lock (not its compute lock, so copies overlap compute jobs) and with
// current_stream() the device's copy stream, which is synchronised before returning.
// For expert transfers; fn must only enqueue copies (and wait for its own copies).
// Returns the ms spent holding the copy lock (fn and the final synchronisation), i.e.
// the transfer time without the wait for the lock.
double run_copy_on_device(int32_t device, const std::function<void()>& fn);

// Inside run_on_device: the device's stream (a cudaStream_t, opaque here).
void* current_stream();

// Inside run_on_device (not on the copy worker): a second stream of the device's worker
// and two events (cudaStream_t / cudaEvent_t, opaque here), for work of one job that may
// run beside the main stream's: record `fork` on the main stream and make `stream` wait on
// it, enqueue, then record `join` on `stream` and make the main stream wait on it before
// the job's last use of the results or the end of the job (also on errors: the worker
// synchronises only the main stream). Joined this way, the branch is part of a CUDA-graph
// capture of the main stream. Jobs on a device are serialised, so one set serves them all;
// the worker makes them before running any job (never inside a capture). On an error the
// worker synchronises the side stream too.
struct SideStream {
  void* stream;
  void* fork;
  void* join;
};
SideStream side_stream();

// Stream-ordered allocation from the device's memory pool. ERR_CUDA_OOM when full.
void* device_alloc(int32_t device, int64_t bytes);
void device_free(int32_t device, void* ptr);

// Device memory as the driver and moekit's stream-ordered pool see it.
struct MemoryInfo {
  int64_t free_bytes = 0;           // cudaMemGetInfo
  int64_t total_bytes = 0;
  int64_t pool_used_bytes = 0;      // moekit's allocations alive in the device's default pool
  int64_t pool_reserved_bytes = 0;  // memory the pool holds from the driver
  int64_t graph_used_bytes = 0;      // memory of CUDA graphs' allocation nodes (graph cache, profiles)
  int64_t graph_reserved_bytes = 0;
};
// Waits for the device's worker (so frees queued meanwhile are released) and reports.
MemoryInfo memory_info(int32_t device);

// Timing of repeated launches (profile): one entry per timed repeat, in ms.
struct Timing {
  std::vector<double> ms;
  bool graph = false;  // the repeats replayed a captured CUDA graph
};

// Inside run_on_device: runs body(stream) `warmup` times, then `repeats` times with a CUDA
// event recorded before and after each, and returns the elapsed times. With use_graph,
// body is first captured into a CUDA graph (body must only enqueue stream-ordered work)
// and the graph is replayed; if capture or instantiation fails, body runs eagerly and
// Timing::graph is false.
Timing time_replays(const std::function<void(void*)>& body, int warmup, int repeats, bool use_graph);

enum class CopyKind { kHostToDevice, kDeviceToHost, kDeviceToDevice };
void copy(int32_t device, void* dst, const void* src, int64_t bytes, CopyKind kind);

}  // namespace moekit::cuda
