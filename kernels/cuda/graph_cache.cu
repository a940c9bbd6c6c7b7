// CUDA-graph replay of MoE layer forwards (see graph_cache.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <list>
#include <mutex>
#include <sstream>
#include <string>

#include "kernels/common/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_runtime.h"
#include "kernels/cuda/graph_cache.h"
#include "kernels/cuda/moe_layer.h"

namespace moekit::cuda {

namespace {

// Graphs kept per layer and device; the least recently used is released beyond this.
constexpr size_t kMaxEntries = 8;

// Writes a float exactly (hex), so configurations that differ in any bit get different keys.
void put_float(std::ostringstream& k, float v) {
  uint32_t bits = 0;
  std::memcpy(&bits, &v, sizeof bits);
  k << std::hex << bits << std::dec << ',';
}

// Everything a captured forward depends on except the input/output buffers.
std::string config_key(const MoELayerParams& p, int device) {
  std::ostringstream k;
  auto w = [&](const WeightRef& r) { k << r.data << ':' << static_cast<int>(r.dtype) << ':' << static_cast<int>(r.layout) << ','; };
  const GatingParams& g = p.gating;
  k << device << '|' << static_cast<int>(p.x_dtype) << ',' << p.tokens << ',' << p.hidden << '|';
  w(p.router_w);
  w(p.router_b);
  k << g.experts << ',' << g.null_experts << ',' << g.k << ',' << static_cast<int>(g.scoring) << ','
    << static_cast<int>(g.selection) << ',' << g.logit_bias << ',' << g.correction_bias << ',' << g.n_group << ','
    << g.topk_group << ',' << g.renormalize << ',' << g.choice_k << ',' << g.sinkhorn_iters << ',';
  put_float(k, g.routed_scaling);
  put_float(k, g.top_p);
  put_float(k, g.capacity_factor);
  k << '|' << (p.forced_ids != nullptr) << (p.forced_weights != nullptr) << (p.dropped != nullptr) << '|' << p.experts
    << ',' << p.intermediate << ',';
  w(p.w_in);
  w(p.w_in_up);
  w(p.b_in);
  w(p.b_in_up);
  w(p.w_out);
  w(p.b_out);
  k << static_cast<int>(p.activation) << ',';
  put_float(k, p.alpha);
  put_float(k, p.limit);
  k << '|' << p.shared_intermediate << ',';
  w(p.shared_w_in);
  w(p.shared_w_in_up);
  w(p.shared_w_out);
  w(p.shared_gate);
  k << p.block_size << ',' << p.capacity << ',' << static_cast<int>(p.y_dtype);
  return k.str();
}

// The buffers every graph of one device reads its inputs from and writes its outputs to.
// Shared by all of that device's graphs (their replays are serialised on the device's
// stream); grown on demand, which releases the graphs captured over the old ones.
struct IoBuffers {
  int device = 0;
  void* x = nullptr;
  void* forced_ids = nullptr;
  void* forced_weights = nullptr;
  void* y = nullptr;
  void* ids = nullptr;
  void* weights = nullptr;
  void* load = nullptr;
  void* dropped = nullptr;
  int64_t x_cap = 0, pairs_cap = 0, y_cap = 0, load_cap = 0;  // bytes
};

struct Entry {
  std::string key;
  int device = 0;
  bool capturable = true;
  cudaGraphExec_t exec = nullptr;
};

// Sizes (bytes) a forward needs of the I/O buffers.
struct IoNeed {
  int64_t x, pairs, y, load;
};
IoNeed io_need(const MoELayerParams& p) {
  return {p.tokens * p.hidden * dtype_size(p.x_dtype), p.tokens * p.gating.k * 4,
          p.tokens * p.hidden * dtype_size(p.y_dtype), p.experts * 4};
}

void free_io(IoBuffers& b, cudaStream_t s) {
  for (void** ptr : {&b.x, &b.forced_ids, &b.forced_weights, &b.y, &b.ids, &b.weights, &b.load, &b.dropped}) {
    if (*ptr != nullptr) cudaFreeAsync(*ptr, s);
    *ptr = nullptr;
  }
  b.x_cap = b.pairs_cap = b.y_cap = b.load_cap = 0;
  cudaGetLastError();
}

// Releases a graph. Per the driver documentation an executable graph still in flight is
// freed when it completes, so no synchronisation is needed.
void release_exec(Entry& e) {
  if (e.exec != nullptr) cudaGraphExecDestroy(e.exec);
  e.exec = nullptr;
  cudaGetLastError();
}

void* alloc_or_throw(int64_t bytes, cudaStream_t s) {
  void* p = nullptr;
  cudaError_t err = cudaMallocAsync(&p, static_cast<size_t>(bytes > 0 ? bytes : 1), s);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    fail(code::kCudaOutOfMemory, "out of device memory allocating ", bytes, " bytes of CUDA-graph buffers");
  }
  MOEKIT_CUDA_CHECK(err);
  return p;
}

// Captures the forward over the I/O buffers into e.exec. A forward that cannot be
// captured (the capture is invalidated: some step synchronises or is not capturable)
// leaves e.capturable false and e.exec null; other errors are thrown.
void capture_entry(Entry& e, const MoELayerParams& p, const IoBuffers& b, cudaStream_t s) {
  MoELayerParams q = p;
  q.x = b.x;
  q.forced_ids = p.forced_ids != nullptr ? static_cast<const int32_t*>(b.forced_ids) : nullptr;
  q.forced_weights = p.forced_weights != nullptr ? static_cast<const float*>(b.forced_weights) : nullptr;
  q.y = b.y;
  q.ids = static_cast<int32_t*>(b.ids);
  q.weights = static_cast<float*>(b.weights);
  q.load = static_cast<int32_t*>(b.load);
  q.dropped = p.dropped != nullptr ? static_cast<int64_t*>(b.dropped) : nullptr;
  MOEKIT_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    moe_layer_forward(q, s);
  } catch (...) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(s, &status);
    cudaStreamEndCapture(s, &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    if (status != cudaStreamCaptureStatusInvalidated) throw;
    e.capturable = false;  // a step is not capturable: run this configuration eagerly
    return;
  }
  cudaError_t err = cudaStreamEndCapture(s, &graph);
  if (err == cudaSuccess) err = cudaGraphInstantiate(&e.exec, graph, 0);
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    e.exec = nullptr;
    if (err == cudaErrorMemoryAllocation) fail(code::kCudaOutOfMemory, "out of device memory instantiating a CUDA graph");
    e.capturable = false;
  }
}

}  // namespace

class LayerGraphCache {
 public:
  ~LayerGraphCache() {
    try {
      for (Entry& e : entries_) {
        const cudaGraphExec_t exec = e.exec;
        if (exec != nullptr) run_or_defer_on_device(e.device, [exec] { cudaGraphExecDestroy(exec); });
      }
      for (IoBuffers& b : io_) {
        IoBuffers copy = b;
        run_or_defer_on_device(copy.device, [copy]() mutable {
          free_io(copy, static_cast<cudaStream_t>(current_stream()));
          cudaDeviceGraphMemTrim(copy.device);
          cudaGetLastError();
        });
      }
    } catch (...) {
      // Out of host memory while queueing the release: the device memory stays until exit.
    }
  }

  bool forward(const MoELayerParams& p, cudaStream_t s) {
    int device = 0;
    MOEKIT_CUDA_CHECK(cudaGetDevice(&device));
    const std::string key = config_key(p, device);
    // One device's entries and buffers are used only by that device's worker, which
    // holds the device's compute lock; the mutex guards the lists against other devices'.
    std::unique_lock<std::mutex> g(lock_);
    IoBuffers& b = io_for(device);
    Entry* e = nullptr;
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (it->key == key) {
        entries_.splice(entries_.begin(), entries_, it);  // most recently used first
        e = &entries_.front();
        break;
      }
    if (e != nullptr && !e->capturable) return false;
    const IoNeed need = io_need(p);
    if (need.x > b.x_cap || need.pairs > b.pairs_cap || need.y > b.y_cap || need.load > b.load_cap) {
      // Every graph of this device was captured over the old buffers.
      release_device(device, s);
      grow(b, need, s);
      e = nullptr;
    }
    if (e == nullptr) {
      entries_.emplace_front();
      e = &entries_.front();
      e->key = key;
      e->device = device;
      try {
        capture_entry(*e, p, b, s);
      } catch (...) {
        entries_.pop_front();
        throw;
      }
      trim(device);
      if (!e->capturable) return false;
    }
    const cudaMemcpyKind d2d = cudaMemcpyDeviceToDevice;
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(b.x, p.x, static_cast<size_t>(need.x), d2d, s));
    if (p.forced_ids != nullptr) MOEKIT_CUDA_CHECK(cudaMemcpyAsync(b.forced_ids, p.forced_ids, static_cast<size_t>(need.pairs), d2d, s));
    if (p.forced_weights != nullptr) MOEKIT_CUDA_CHECK(cudaMemcpyAsync(b.forced_weights, p.forced_weights, static_cast<size_t>(need.pairs), d2d, s));
    MOEKIT_CUDA_CHECK(cudaGraphLaunch(e->exec, s));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.y, b.y, static_cast<size_t>(need.y), d2d, s));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.ids, b.ids, static_cast<size_t>(need.pairs), d2d, s));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.weights, b.weights, static_cast<size_t>(need.pairs), d2d, s));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.load, b.load, static_cast<size_t>(need.load), d2d, s));
    if (p.dropped != nullptr) MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.dropped, b.dropped, 8, d2d, s));
    return true;
  }

 private:
  IoBuffers& io_for(int device) {
    for (IoBuffers& b : io_)
      if (b.device == device) return b;
    io_.emplace_back();
    io_.back().device = device;
    return io_.back();
  }

  // Grows b to at least `need` (never shrinks), all of its buffers reallocated.
  static void grow(IoBuffers& b, const IoNeed& need, cudaStream_t s) {
    const IoNeed cap{std::max(need.x, b.x_cap), std::max(need.pairs, b.pairs_cap), std::max(need.y, b.y_cap),
                     std::max(need.load, b.load_cap)};
    free_io(b, s);
    b.x = alloc_or_throw(cap.x, s);
    b.forced_ids = alloc_or_throw(cap.pairs, s);
    b.forced_weights = alloc_or_throw(cap.pairs, s);
    b.y = alloc_or_throw(cap.y, s);
    b.ids = alloc_or_throw(cap.pairs, s);
    b.weights = alloc_or_throw(cap.pairs, s);
    b.load = alloc_or_throw(cap.load, s);
    b.dropped = alloc_or_throw(8, s);
    b.x_cap = cap.x;
    b.pairs_cap = cap.pairs;
    b.y_cap = cap.y;
    b.load_cap = cap.load;
  }

  // Releases every graph of one device (its memory back to the driver's graph pool).
  void release_device(int device, cudaStream_t) {
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->device == device) {
        release_exec(*it);
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
    cudaDeviceGraphMemTrim(device);
    cudaGetLastError();
  }

  // Releases this device's least recently used entries beyond kMaxEntries.
  void trim(int device) {
    size_t kept = 0;
    bool released = false;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->device == device && ++kept > kMaxEntries) {
        release_exec(*it);
        it = entries_.erase(it);
        released = true;
      } else {
        ++it;
      }
    }
    if (released) {
      cudaDeviceGraphMemTrim(device);
      cudaGetLastError();
    }
  }

  std::mutex lock_;
  std::list<Entry> entries_;  // std::list: pointers to entries stay valid across splices
  std::list<IoBuffers> io_;   // one per device used
};

std::shared_ptr<LayerGraphCache> make_layer_graph_cache() { return std::make_shared<LayerGraphCache>(); }

bool graph_forward(LayerGraphCache& cache, const MoELayerParams& p, void* stream) {
  return cache.forward(p, static_cast<cudaStream_t>(stream));
}

}  // namespace moekit::cuda
