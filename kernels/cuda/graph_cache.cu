// CUDA-graph replay of MoE layer forwards (see graph_cache.h).
#include <cuda_runtime.h>

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

// Graphs kept per layer; the least recently used is released beyond this.
constexpr size_t kMaxEntries = 16;

// Everything a captured forward depends on except the buffers the cache owns.
std::string config_key(const MoELayerParams& p, int device) {
  std::ostringstream k;
  auto w = [&](const WeightRef& r) { k << r.data << ':' << static_cast<int>(r.dtype) << ':' << static_cast<int>(r.layout) << ','; };
  const GatingParams& g = p.gating;
  k << device << '|' << static_cast<int>(p.x_dtype) << ',' << p.tokens << ',' << p.hidden << '|';
  w(p.router_w);
  w(p.router_b);
  k << g.experts << ',' << g.null_experts << ',' << g.k << ',' << static_cast<int>(g.scoring) << ','
    << static_cast<int>(g.selection) << ',' << g.logit_bias << ',' << g.correction_bias << ',' << g.n_group << ','
    << g.topk_group << ',' << g.renormalize << ',' << g.routed_scaling << ',' << g.top_p << ',' << g.capacity_factor
    << ',' << g.choice_k << ',' << g.sinkhorn_iters << '|';
  k << (p.forced_ids != nullptr) << (p.forced_weights != nullptr) << '|' << p.experts << ',' << p.intermediate << ',';
  w(p.w_in);
  w(p.w_in_up);
  w(p.b_in);
  w(p.b_in_up);
  w(p.w_out);
  w(p.b_out);
  k << static_cast<int>(p.activation) << ',' << p.alpha << ',' << p.limit << '|' << p.shared_intermediate << ',';
  w(p.shared_w_in);
  w(p.shared_w_in_up);
  w(p.shared_w_out);
  w(p.shared_gate);
  k << p.block_size << ',' << p.capacity << ',' << static_cast<int>(p.y_dtype);
  return k.str();
}

struct Entry {
  std::string key;
  int device = 0;
  bool capturable = true;
  cudaGraphExec_t exec = nullptr;
  // Buffers the graph reads and writes: inputs x, forced ids/weights; outputs.
  void* x = nullptr;
  void* forced_ids = nullptr;
  void* forced_weights = nullptr;
  void* y = nullptr;
  void* ids = nullptr;
  void* weights = nullptr;
  void* load = nullptr;
  void* dropped = nullptr;
  int64_t x_bytes = 0, ids_bytes = 0, y_bytes = 0, load_bytes = 0;
};

// Releases an entry's graph and buffers; runs on the entry's device worker.
void release_entry(Entry& e, cudaStream_t s) {
  if (e.exec != nullptr) {
    cudaStreamSynchronize(s);  // no replay of it may still be running
    cudaGraphExecDestroy(e.exec);
  }
  for (void** ptr : {&e.x, &e.forced_ids, &e.forced_weights, &e.y, &e.ids, &e.weights, &e.load, &e.dropped}) {
    if (*ptr != nullptr) cudaFreeAsync(*ptr, s);
    *ptr = nullptr;
  }
  e.exec = nullptr;
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

// Allocates the entry's buffers and captures the forward into a graph that uses them.
void build(Entry& e, const MoELayerParams& p, cudaStream_t s) {
  const int64_t T = p.tokens, K = p.gating.k;
  e.x_bytes = T * p.hidden * dtype_size(p.x_dtype);
  e.ids_bytes = T * K * 4;
  e.y_bytes = T * p.hidden * dtype_size(p.y_dtype);
  e.load_bytes = p.experts * 4;
  e.x = alloc_or_throw(e.x_bytes, s);
  if (p.forced_ids != nullptr) e.forced_ids = alloc_or_throw(e.ids_bytes, s);
  if (p.forced_weights != nullptr) e.forced_weights = alloc_or_throw(e.ids_bytes, s);
  e.y = alloc_or_throw(e.y_bytes, s);
  e.ids = alloc_or_throw(e.ids_bytes, s);
  e.weights = alloc_or_throw(e.ids_bytes, s);
  e.load = alloc_or_throw(e.load_bytes, s);
  e.dropped = alloc_or_throw(8, s);
  MoELayerParams q = p;
  q.x = e.x;
  q.forced_ids = static_cast<const int32_t*>(e.forced_ids);
  q.forced_weights = static_cast<const float*>(e.forced_weights);
  q.y = e.y;
  q.ids = static_cast<int32_t*>(e.ids);
  q.weights = static_cast<float*>(e.weights);
  q.load = static_cast<int32_t*>(e.load);
  q.dropped = static_cast<int64_t*>(e.dropped);
  MOEKIT_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    moe_layer_forward(q, s);
  } catch (...) {
    cudaStreamEndCapture(s, &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  cudaError_t err = cudaStreamEndCapture(s, &graph);
  if (err == cudaSuccess) err = cudaGraphInstantiate(&e.exec, graph, 0);
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    // Not capturable (some step synchronises or allocates outside the pool): remembered,
    // so this configuration runs eagerly from now on without trying again.
    cudaGetLastError();
    e.exec = nullptr;
    release_entry(e, s);
    e.capturable = false;
  }
}

}  // namespace

class LayerGraphCache {
 public:
  ~LayerGraphCache() {
    for (const Entry& e : entries_) {
      Entry copy = e;
      run_or_defer_on_device(copy.device, [copy]() mutable { release_entry(copy, static_cast<cudaStream_t>(current_stream())); });
    }
  }

  bool forward(const MoELayerParams& p, cudaStream_t s) {
    int device = 0;
    MOEKIT_CUDA_CHECK(cudaGetDevice(&device));
    const std::string key = config_key(p, device);
    // Entries of one device are used only by that device's worker, which holds the
    // device lock; the mutex guards the list against other devices' workers.
    Entry* e = nullptr;
    bool fresh = false;
    {
      std::lock_guard<std::mutex> g(lock_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it)
        if (it->key == key) {
          entries_.splice(entries_.begin(), entries_, it);  // most recently used first
          e = &entries_.front();
          break;
        }
      if (e == nullptr) {
        entries_.emplace_front();
        e = &entries_.front();
        e->key = key;
        e->device = device;
        fresh = true;
      }
    }
    if (!e->capturable) return false;
    if (fresh) {
      try {
        build(*e, p, s);
      } catch (...) {
        drop(key, s);
        throw;
      }
      trim(device, s);
      if (!e->capturable) return false;
    }
    const cudaMemcpyKind d2d = cudaMemcpyDeviceToDevice;
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(e->x, p.x, static_cast<size_t>(e->x_bytes), d2d, s));
    if (p.forced_ids != nullptr) MOEKIT_CUDA_CHECK(cudaMemcpyAsync(e->forced_ids, p.forced_ids, static_cast<size_t>(e->ids_bytes), d2d, s));
    if (p.forced_weights != nullptr) MOEKIT_CUDA_CHECK(cudaMemcpyAsync(e->forced_weights, p.forced_weights, static_cast<size_t>(e->ids_bytes), d2d, s));
    MOEKIT_CUDA_CHECK(cudaGraphLaunch(e->exec, s));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.y, e->y, static_cast<size_t>(e->y_bytes), d2d, s));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.ids, e->ids, static_cast<size_t>(e->ids_bytes), d2d, s));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.weights, e->weights, static_cast<size_t>(e->ids_bytes), d2d, s));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.load, e->load, static_cast<size_t>(e->load_bytes), d2d, s));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.dropped, e->dropped, 8, d2d, s));
    return true;
  }

 private:
  // Removes the entry for key (built partially or not at all) and frees what it holds.
  void drop(const std::string& key, cudaStream_t s) {
    std::lock_guard<std::mutex> g(lock_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (it->key == key) {
        release_entry(*it, s);
        entries_.erase(it);
        return;
      }
  }

  // Releases this device's least recently used entries beyond kMaxEntries.
  void trim(int device, cudaStream_t s) {
    std::lock_guard<std::mutex> g(lock_);
    size_t kept = 0;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->device != device) {
        ++it;
        continue;
      }
      if (++kept > kMaxEntries) {
        release_entry(*it, s);
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::mutex lock_;
  std::list<Entry> entries_;  // std::list: pointers to entries stay valid across splices
};

std::shared_ptr<LayerGraphCache> make_layer_graph_cache() { return std::make_shared<LayerGraphCache>(); }

bool graph_forward(LayerGraphCache& cache, const MoELayerParams& p, void* stream) {
  return cache.forward(p, static_cast<cudaStream_t>(stream));
}

}  // namespace moekit::cuda
