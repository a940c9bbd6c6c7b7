// The CUDA runtime interface: device discovery, the per-device worker (lock +
// stream), stream-ordered allocation and copies. Linked with static cudart, so a
// binary containing this file loads on machines without a GPU or a driver.
#include <cuda_runtime.h>

#include <chrono>
#include <mutex>
#include <vector>

#include "kernels/common/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_runtime.h"

namespace moekit::cuda {

namespace {

std::string reason_in_words(cudaError_t err) {
  switch (err) {
    case cudaErrorInsufficientDriver:
      return "CUDA error 35 (cudaErrorInsufficientDriver): no NVIDIA driver is installed, or the "
             "installed driver is older than this CUDA 13 runtime needs (driver 580 or newer)";
    case cudaErrorNoDevice:
      return "CUDA error 100 (cudaErrorNoDevice): the driver is installed but reports no CUDA device "
             "(check CUDA_VISIBLE_DEVICES and nvidia-smi)";
    default:
      return "CUDA error " + std::to_string(static_cast<int>(err)) + " (" + cudaGetErrorName(err) +
             "): " + cudaGetErrorString(err);
  }
}

struct DeviceState {
  std::mutex lock;              // held by the worker running on this device
  cudaStream_t stream = nullptr;
  std::mutex pending_lock;      // guards pending_frees and pending_tasks
  std::vector<void*> pending_frees;  // freed while the device was busy; released by the worker
  std::vector<std::function<void()>> pending_tasks;  // run_or_defer_on_device while busy
  std::mutex copy_lock;           // held by the copy worker (run_copy_on_device)
  cudaStream_t copy_stream = nullptr;
  // The worker's second stream and its fork / join events (side_stream), made by the
  // worker (run_locked, under `lock`) before it runs any work.
  cudaStream_t side_stream = nullptr;
  cudaEvent_t side_fork = nullptr;
  cudaEvent_t side_join = nullptr;
};

std::vector<DeviceState>& device_states() {
  // NOTE: leaked on purpose: a libuv thread may still hold a device lock while static
  // destructors run at process exit.
  static std::vector<DeviceState>* states = new std::vector<DeviceState>(runtime_info().devices.size());
  return *states;
}

thread_local cudaStream_t tls_stream = nullptr;
thread_local int32_t tls_device = -1;  // set only while holding that device's compute lock
thread_local bool tls_copy_worker = false;

DeviceState& state_for(int32_t device) {
  require_device(device);
  return device_states()[static_cast<size_t>(device)];
}

// Runs fn quietly: deferred release work must not fail the op that drains it.
void run_quietly(const std::function<void()>& fn) {
  try {
    fn();
  } catch (...) {
  }
  cudaGetLastError();
}

// With the device's lock held and tls_stream set.
void drain_pending_frees(DeviceState& s) {
  std::vector<void*> frees;
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> g(s.pending_lock);
    frees.swap(s.pending_frees);
    tasks.swap(s.pending_tasks);
  }
  for (void* p : frees) cudaFreeAsync(p, s.stream);
  cudaGetLastError();  // a failed free must not surface as the next launch's error
  for (const auto& t : tasks) run_quietly(t);
}

bool has_pending(DeviceState& s) {
  std::lock_guard<std::mutex> g(s.pending_lock);
  return !s.pending_frees.empty() || !s.pending_tasks.empty();
}

}  // namespace

const RuntimeInfo& runtime_info() {
  static const RuntimeInfo info = [] {
    RuntimeInfo r;
    r.compiled_with_cuda = true;
    cudaRuntimeGetVersion(&r.runtime_version);
    if (cudaDriverGetVersion(&r.driver_version) != cudaSuccess) r.driver_version = 0;
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear, so later calls do not see a stale error
      r.unavailable_reason = reason_in_words(err);
      return r;
    }
    if (count == 0) {
      r.unavailable_reason = reason_in_words(cudaErrorNoDevice);
      return r;
    }
    for (int i = 0; i < count; ++i) {
      cudaDeviceProp prop{};
      const cudaError_t perr = cudaGetDeviceProperties(&prop, i);
      if (perr != cudaSuccess) {
        // Devices are addressed by ordinal: a device that cannot be queried makes CUDA unusable
        // rather than shifting every later ordinal.
        cudaGetLastError();
        r.devices.clear();
        r.unavailable_reason = "CUDA device " + std::to_string(i) + " could not be queried: " + reason_in_words(perr);
        return r;
      }
      DeviceInfo d;
      d.index = i;
      d.name = prop.name;
      d.major = prop.major;
      d.minor = prop.minor;
      d.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
      d.multiprocessors = prop.multiProcessorCount;
      r.devices.push_back(d);
    }
    return r;
  }();
  return info;
}

void require_device(int32_t device) {
  const RuntimeInfo& info = runtime_info();
  if (!info.unavailable_reason.empty())
    fail(code::kCudaUnavailable, "CUDA is not usable: ", info.unavailable_reason);
  if (device < 0 || device >= static_cast<int32_t>(info.devices.size()))
    fail(code::kCudaUnavailable, "CUDA device ", device, " does not exist (", info.devices.size(),
         " device(s) found)");
}

namespace {

// The worker proper: the device lock, the device current, its stream; synchronised at the end.
void run_locked(DeviceState& s, int32_t device, const std::function<void()>& fn) {
  std::lock_guard<std::mutex> g(s.lock);
  MOEKIT_CUDA_CHECK(cudaSetDevice(device));
  if (s.stream == nullptr) MOEKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
  // NOTE: made here, never inside fn: fn may be capturing the stream into a CUDA graph,
  // where creating streams or events is not documented as allowed.
  if (s.side_stream == nullptr) MOEKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&s.side_stream, cudaStreamNonBlocking));
  if (s.side_fork == nullptr) MOEKIT_CUDA_CHECK(cudaEventCreateWithFlags(&s.side_fork, cudaEventDisableTiming));
  if (s.side_join == nullptr) MOEKIT_CUDA_CHECK(cudaEventCreateWithFlags(&s.side_join, cudaEventDisableTiming));
  // Restored on exit (a copy worker allocating device memory comes through here).
  struct Reset {
    cudaStream_t stream = tls_stream;
    int32_t device = tls_device;
    ~Reset() {
      tls_stream = stream;
      tls_device = device;
    }
  } reset;
  tls_stream = s.stream;
  tls_device = device;
  drain_pending_frees(s);
  try {
    fn();
  } catch (...) {
    // Leave no work in flight that references freed memory: the main stream, and the side
    // stream in case a side branch could not be joined back (side_stream()).
    cudaStreamSynchronize(s.stream);
    cudaStreamSynchronize(s.side_stream);
    cudaGetLastError();
    drain_pending_frees(s);
    throw;
  }
  MOEKIT_CUDA_CHECK(cudaStreamSynchronize(s.stream));
  // Frees queued by finalizers while this work ran are released now, not at the next op.
  drain_pending_frees(s);
}

// Frees and tasks queued while the worker was finishing (after its last drain, before it
// unlocked) would otherwise wait for the next job: drained here if the device is idle.
void drain_if_idle(DeviceState& s, int32_t device) {
  while (has_pending(s)) {
    std::unique_lock<std::mutex> g(s.lock, std::try_to_lock);
    if (!g.owns_lock()) return;  // the worker that holds it drains when it finishes
    if (cudaSetDevice(device) != cudaSuccess) {
      cudaGetLastError();
      return;
    }
    const cudaStream_t saved_stream = tls_stream;
    tls_stream = s.stream;
    tls_device = device;
    drain_pending_frees(s);
    tls_stream = saved_stream;
    tls_device = -1;
  }
}

}  // namespace

void run_on_device(int32_t device, const std::function<void()>& fn) {
  if (tls_device == device) {  // already this device's worker: run inline (the lock is held)
    fn();
    return;
  }
  // NOTE: holding two device locks could deadlock against a thread taking them in the
  // other order; cross-device work goes through the host.
  MOEKIT_CHECK(tls_device < 0, "work for cuda:", device, " requested inside work for cuda:", tls_device);
  DeviceState& s = state_for(device);
  run_locked(s, device, fn);
  drain_if_idle(s, device);
}

double run_copy_on_device(int32_t device, const std::function<void()>& fn) {
  MOEKIT_CHECK(tls_device < 0 && !tls_copy_worker, "copy work for cuda:", device, " requested inside other device work");
  DeviceState& s = state_for(device);
  std::lock_guard<std::mutex> g(s.copy_lock);
  const auto start = std::chrono::steady_clock::now();
  MOEKIT_CUDA_CHECK(cudaSetDevice(device));
  if (s.copy_stream == nullptr) MOEKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&s.copy_stream, cudaStreamNonBlocking));
  // NOTE: tls_device stays unset: this thread does not hold the compute lock, so frees and
  // deferred releases from here go through the lock (or its queue), never inline.
  tls_stream = s.copy_stream;
  tls_copy_worker = true;
  struct Reset {
    ~Reset() {
      tls_stream = nullptr;
      tls_copy_worker = false;
    }
  } reset;
  try {
    fn();
  } catch (...) {
    cudaStreamSynchronize(s.copy_stream);
    throw;
  }
  MOEKIT_CUDA_CHECK(cudaStreamSynchronize(s.copy_stream));
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

SideStream side_stream() {
  MOEKIT_CHECK(tls_device >= 0 && tls_stream != nullptr, "side_stream() outside run_on_device");
  DeviceState& s = device_states()[static_cast<size_t>(tls_device)];
  MOEKIT_CHECK(s.side_stream != nullptr && s.side_fork != nullptr && s.side_join != nullptr,
               "side_stream(): not made by the worker");  // run_locked makes them
  return SideStream{s.side_stream, s.side_fork, s.side_join};
}

void* current_stream() {
  MOEKIT_CHECK(tls_stream != nullptr, "current_stream() outside run_on_device");
  return tls_stream;
}

void* device_alloc(int32_t device, int64_t bytes) {
  void* p = nullptr;
  run_on_device(device, [&] {
    cudaError_t err = cudaMallocAsync(&p, static_cast<size_t>(bytes > 0 ? bytes : 1), tls_stream);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      fail(code::kCudaOutOfMemory, "out of device memory on cuda:", device, " allocating ", bytes,
           " bytes");
    }
    MOEKIT_CUDA_CHECK(err);
  });
  return p;
}

void device_free(int32_t device, void* ptr) {
  if (ptr == nullptr) return;
  const RuntimeInfo& info = runtime_info();
  if (device < 0 || device >= static_cast<int32_t>(info.devices.size())) return;
  DeviceState& s = device_states()[static_cast<size_t>(device)];
  if (tls_device == device) {  // on this device's worker already (the lock is held)
    cudaFreeAsync(ptr, tls_stream);
    return;
  }
  // NOTE: never block the caller (often the JS thread running a finalizer) on a busy
  // device: when the worker holds the lock, queue the pointer for it to release.
  std::unique_lock<std::mutex> g(s.lock, std::try_to_lock);
  if (g.owns_lock() && s.stream != nullptr) {
    cudaSetDevice(device);
    cudaFreeAsync(ptr, s.stream);
    return;
  }
  std::lock_guard<std::mutex> pg(s.pending_lock);
  s.pending_frees.push_back(ptr);
}

void run_or_defer_on_device(int32_t device, std::function<void()> fn) {
  const RuntimeInfo& info = runtime_info();
  if (device < 0 || device >= static_cast<int32_t>(info.devices.size())) return;
  DeviceState& s = device_states()[static_cast<size_t>(device)];
  if (tls_device == device) {
    run_quietly(fn);
    return;
  }
  std::unique_lock<std::mutex> g(s.lock, std::try_to_lock);
  if (g.owns_lock() && s.stream != nullptr) {
    int previous = -1;
    cudaGetDevice(&previous);
    cudaSetDevice(device);
    cudaStream_t saved_stream = tls_stream;
    const int32_t saved_device = tls_device;
    tls_stream = s.stream;
    tls_device = device;
    run_quietly(fn);
    tls_stream = saved_stream;
    tls_device = saved_device;
    if (previous >= 0) cudaSetDevice(previous);
    return;
  }
  std::lock_guard<std::mutex> pg(s.pending_lock);
  s.pending_tasks.push_back(std::move(fn));
}

void copy(int32_t device, void* dst, const void* src, int64_t bytes, CopyKind kind) {
  if (bytes == 0) return;
  cudaMemcpyKind k = kind == CopyKind::kHostToDevice   ? cudaMemcpyHostToDevice
                     : kind == CopyKind::kDeviceToHost ? cudaMemcpyDeviceToHost
                                                       : cudaMemcpyDeviceToDevice;
  run_on_device(device, [&] {
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), k, tls_stream));
  });
}

MemoryInfo memory_info(int32_t device) {
  MemoryInfo m;
  run_on_device(device, [&] {
    // Frees still queued on the stream count as used until the stream reaches them.
    MOEKIT_CUDA_CHECK(cudaStreamSynchronize(tls_stream));
    size_t free_b = 0, total_b = 0;
    MOEKIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    cudaMemPool_t pool = nullptr;
    MOEKIT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    unsigned long long used = 0, reserved = 0;  // cuuint64_t
    MOEKIT_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
    MOEKIT_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved));
    m.free_bytes = static_cast<int64_t>(free_b);
    m.total_bytes = static_cast<int64_t>(total_b);
    m.pool_used_bytes = static_cast<int64_t>(used);
    m.pool_reserved_bytes = static_cast<int64_t>(reserved);
    unsigned long long graph_used = 0, graph_reserved = 0;  // cuuint64_t
    MOEKIT_CUDA_CHECK(cudaDeviceGetGraphMemAttribute(device, cudaGraphMemAttrUsedMemCurrent, &graph_used));
    MOEKIT_CUDA_CHECK(cudaDeviceGetGraphMemAttribute(device, cudaGraphMemAttrReservedMemCurrent, &graph_reserved));
    m.graph_used_bytes = static_cast<int64_t>(graph_used);
    m.graph_reserved_bytes = static_cast<int64_t>(graph_reserved);
  });
  return m;
}

namespace {

// Owns the graph objects and events of one time_replays call.
struct ReplayResources {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  std::vector<cudaEvent_t> events;
  ~ReplayResources() {
    for (cudaEvent_t e : events) cudaEventDestroy(e);
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    if (graph != nullptr) cudaGraphDestroy(graph);
  }
};

// Captures body into res.graph / res.exec. Returns false (capture abandoned, the stream
// back to normal, errors cleared) when the work cannot be captured.
bool capture(const std::function<void(void*)>& body, cudaStream_t s, ReplayResources& res) {
  MOEKIT_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  try {
    body(s);
  } catch (...) {
    // A step that cannot be captured invalidates the capture (and throws here): the
    // work then runs eagerly. Any other error is the work's own and is thrown.
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(s, &status);
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(s, &g);
    if (g != nullptr) cudaGraphDestroy(g);
    cudaGetLastError();
    if (status != cudaStreamCaptureStatusInvalidated) throw;
    return false;
  }
  cudaError_t err = cudaStreamEndCapture(s, &res.graph);
  if (err == cudaSuccess) err = cudaGraphInstantiate(&res.exec, res.graph, 0);
  if (err != cudaSuccess) {
    cudaGetLastError();
    res.exec = nullptr;  // not valid after a failed instantiation
    if (res.graph != nullptr) cudaGraphDestroy(res.graph);
    res.graph = nullptr;
    if (err == cudaErrorMemoryAllocation) fail(code::kCudaOutOfMemory, "out of device memory instantiating a CUDA graph");
    return false;
  }
  return true;
}

}  // namespace

Timing time_replays(const std::function<void(void*)>& body, int warmup, int repeats, bool use_graph) {
  MOEKIT_CHECK(tls_stream != nullptr, "time_replays() outside run_on_device");
  MOEKIT_CHECK(repeats >= 1 && warmup >= 0, "time_replays needs repeats >= 1, warmup >= 0");
  cudaStream_t s = tls_stream;
  ReplayResources res;
  Timing t;
  t.graph = use_graph && capture(body, s, res);
  auto launch = [&] {
    if (t.graph)
      MOEKIT_CUDA_CHECK(cudaGraphLaunch(res.exec, s));
    else
      body(s);
  };
  for (int i = 0; i < warmup; ++i) launch();
  res.events.resize(static_cast<size_t>(repeats) + 1, nullptr);
  for (cudaEvent_t& e : res.events) MOEKIT_CUDA_CHECK(cudaEventCreate(&e));
  MOEKIT_CUDA_CHECK(cudaEventRecord(res.events[0], s));
  for (int i = 0; i < repeats; ++i) {
    launch();
    MOEKIT_CUDA_CHECK(cudaEventRecord(res.events[static_cast<size_t>(i) + 1], s));
  }
  MOEKIT_CUDA_CHECK(cudaStreamSynchronize(s));
  t.ms.resize(static_cast<size_t>(repeats));
  for (int i = 0; i < repeats; ++i) {
    float ms = 0.0f;
    MOEKIT_CUDA_CHECK(cudaEventElapsedTime(&ms, res.events[static_cast<size_t>(i)], res.events[static_cast<size_t>(i) + 1]));
    t.ms[static_cast<size_t>(i)] = ms;
  }
  return t;
}

}  // namespace moekit::cuda
