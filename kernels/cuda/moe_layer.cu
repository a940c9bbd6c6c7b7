// The MoE layer forward on the device: the same steps as kernels/cpu/moe_layer.cc,
// each a kernel family launched on one stream; temporaries come from the stream-ordered
// pool (cudaMallocAsync) and nothing waits on the host.
#include <cuda_runtime.h>

#include <optional>
#include <vector>

#include "kernels/common/dispatch_params.h"
#include "kernels/common/env.h"
#include "kernels/common/error.h"
#include "kernels/cuda/combine.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_runtime.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/gating.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/moe_layer.h"

namespace moekit::cuda {

namespace {

// Device memory from the stream's pool, released (stream-ordered) when it goes out of scope.
class Scratch {
 public:
  Scratch(int64_t bytes, cudaStream_t stream) : stream_(stream) {
    cudaError_t err = cudaMallocAsync(&ptr_, static_cast<size_t>(bytes > 0 ? bytes : 1), stream);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      fail(code::kCudaOutOfMemory, "out of device memory allocating ", bytes, " bytes of MoE layer scratch");
    }
    MOEKIT_CUDA_CHECK(err);
  }
  ~Scratch() { cudaFreeAsync(ptr_, stream_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

__global__ void fill_offsets_kernel(int32_t* offsets, int32_t rows) {
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    offsets[1] = rows;
  }
}

// row_weight[r] = weights[sorted_pairs[r]] (0 for padding rows).
__global__ void row_weight_kernel(const int32_t* __restrict__ sorted_pairs, const float* __restrict__ weights,
                                  const int32_t* __restrict__ offsets, int64_t experts, float* __restrict__ row_weight,
                                  int64_t max_rows) {
  const int64_t rows = offsets[experts];
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < max_rows; r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t pair = r < rows ? sorted_pairs[r] : -1;
    row_weight[r] = pair >= 0 ? weights[pair] : 0.0f;
  }
}

// Forced routing: copy ids, count the load, check ids (bad ids are clamped to -1 and
// counted in `bad` so the host can report them without a synchronisation inside the forward).
__global__ void forced_ids_kernel(const int32_t* __restrict__ forced, int32_t* __restrict__ ids, int32_t* __restrict__ load,
                                  int64_t n, int64_t experts, int32_t* __restrict__ bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int32_t id = forced[i];
    if (id < -1 || id >= experts) {
      atomicAdd(bad, 1);
      id = -1;
    }
    ids[i] = id;
    if (id >= 0) atomicAdd(&load[id], 1);
  }
}

// Weights of forced ids from the router logits, post-processed like the gate: the same
// float32 arithmetic as kernels/cpu/moe_layer.cc (one thread per token).
__global__ void forced_weights_kernel(const float* __restrict__ logits, int64_t cols, const int32_t* __restrict__ ids,
                                      float* __restrict__ weights, int64_t tokens, int64_t k, int32_t scoring,
                                      bool over_chosen, bool renormalize, float scaling) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* row = logits + t * cols;
  const int32_t* id = ids + t * k;
  float* w = weights + t * k;
  if (over_chosen || scoring == static_cast<int32_t>(Scoring::kSoftmax)) {
    float mx = -INFINITY;
    if (over_chosen) {
      for (int64_t s = 0; s < k; ++s)
        if (id[s] >= 0) mx = fmaxf(mx, row[id[s]]);
    } else {
      for (int64_t c = 0; c < cols; ++c) mx = fmaxf(mx, row[c]);
    }
    float sum = 0.0f;
    if (over_chosen) {
      for (int64_t s = 0; s < k; ++s)
        if (id[s] >= 0) sum = __fadd_rn(sum, expf(row[id[s]] - mx));
    } else {
      for (int64_t c = 0; c < cols; ++c) sum = __fadd_rn(sum, expf(row[c] - mx));
    }
    for (int64_t s = 0; s < k; ++s) w[s] = id[s] >= 0 ? __fdiv_rn(expf(row[id[s]] - mx), sum) : 0.0f;
  } else {
    for (int64_t s = 0; s < k; ++s) {
      if (id[s] < 0) {
        w[s] = 0.0f;
        continue;
      }
      const float x = row[id[s]];
      w[s] = scoring == static_cast<int32_t>(Scoring::kSigmoid) ? 1.0f / (1.0f + expf(-x))
                                                                 : sqrtf(x > 20.0f ? x : log1pf(expf(x)));
    }
  }
  if (renormalize) {
    float sum = 0.0f;
    for (int64_t s = 0; s < k; ++s) sum = __fadd_rn(sum, w[s]);
    for (int64_t s = 0; s < k; ++s) w[s] = __fdiv_rn(w[s], __fadd_rn(sum, 1e-20f));
  }
  for (int64_t s = 0; s < k; ++s) w[s] = __fmul_rn(w[s], scaling);
}

__global__ void sigmoid_kernel(float* __restrict__ v, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    v[i] = 1.0f / (1.0f + expf(-v[i]));
}

constexpr int kThreads = 256;
unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks < 4096 ? blocks : 4096);
}

// A dense projection over all rows (one "expert"): y = act(x . W^T + b) (* row_scale).
void dense(const float* x, int64_t rows, int64_t in, int64_t out, const WeightRef& w, const WeightRef& b,
           const WeightRef& w_up, Activation act, float* y, const float* row_scale, const int32_t* offsets_dev,
           cudaStream_t stream) {
  grouped_gemm(dense_projection(x, rows, in, out, w, b, w_up, act, y, row_scale, offsets_dev), stream);
}

// Shared experts: out [T, H] = (optional sigmoid gate) * down(SwiGLU(gate_up(x))).
void shared_experts(const MoELayerParams& p, const float* x, const int32_t* all_rows, float* out, cudaStream_t stream) {
  const int64_t T = p.tokens, H = p.hidden, Is = p.shared_intermediate;
  const bool separate = p.shared_w_in_up.data != nullptr;
  Scratch hs(T * Is * 4, stream);
  dense(x, T, H, separate ? Is : 2 * Is, p.shared_w_in, WeightRef{}, p.shared_w_in_up, Activation::kSwiGLU, hs.as<float>(),
        nullptr, all_rows, stream);
  Scratch gate(T * 4, stream);
  if (p.shared_gate.data != nullptr) {
    dense(x, T, H, 1, p.shared_gate, WeightRef{}, WeightRef{}, Activation::kNone, gate.as<float>(), nullptr, all_rows, stream);
    sigmoid_kernel<<<grid_for(T), kThreads, 0, stream>>>(gate.as<float>(), T);
    MOEKIT_CUDA_CHECK(cudaGetLastError());
  }
  dense(hs.as<float>(), T, Is, H, p.shared_w_out, WeightRef{}, WeightRef{}, Activation::kNone, out,
        p.shared_gate.data != nullptr ? gate.as<float>() : nullptr, all_rows, stream);
}

// MOEKIT_CONCURRENT_SHARED=1: the shared experts run on the worker's side stream, beside
// the router, gating, dispatch and routed experts (they need only x). Opt-in until run on
// a GPU; read once per process.
bool concurrent_shared_enabled() {
  static const bool on = env_choice("MOEKIT_CONCURRENT_SHARED", {"0", "1"}) == 1;
  return on;
}

// A branch forked from `main` onto the side stream; joined back (main waits for it) by
// join() or, on any exit, the destructor, so nothing freed on the main stream afterwards
// can still be in use by the branch.
class SideBranch {
 public:
  SideBranch(cudaStream_t main, const SideStream& side)
      : main_(main), side_(static_cast<cudaStream_t>(side.stream)), join_(static_cast<cudaEvent_t>(side.join)) {
    const cudaEvent_t fork = static_cast<cudaEvent_t>(side.fork);
    MOEKIT_CUDA_CHECK(cudaEventRecord(fork, main_));
    MOEKIT_CUDA_CHECK(cudaStreamWaitEvent(side_, fork, 0));
  }
  ~SideBranch() {
    if (joined_) return;
    // While unwinding. An invalidated capture refuses these calls, and its work never runs.
    // Outside a capture, if the join cannot be enqueued, wait for the branch on the host so
    // nothing freed on the main stream afterwards is still in use by it.
    if (cudaEventRecord(join_, side_) != cudaSuccess || cudaStreamWaitEvent(main_, join_, 0) != cudaSuccess) {
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(side_, &status) == cudaSuccess && status == cudaStreamCaptureStatusNone)
        cudaStreamSynchronize(side_);
    }
    cudaGetLastError();
  }
  SideBranch(const SideBranch&) = delete;
  SideBranch& operator=(const SideBranch&) = delete;
  cudaStream_t stream() const { return side_; }
  void join() {
    MOEKIT_CUDA_CHECK(cudaEventRecord(join_, side_));
    MOEKIT_CUDA_CHECK(cudaStreamWaitEvent(main_, join_, 0));
    joined_ = true;  // only once both are enqueued; otherwise the destructor retries
  }

 private:
  cudaStream_t main_, side_;
  cudaEvent_t join_;
  bool joined_ = false;
};

}  // namespace

void moe_layer_forward(const MoELayerParams& p, void* stream_ptr) {
  // Shape contract: as kernels/cpu/moe_layer.cc; every pointer is device memory.
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t T = p.tokens, H = p.hidden, E = p.experts, I = p.intermediate, K = p.gating.k;
  MOEKIT_REQUIRE(T >= 0 && H >= 1 && E >= 1 && I >= 1 && K >= 1, "moe_layer_forward: bad sizes T=", T, " H=", H,
                 " E=", E, " I=", I, " k=", K);
  MOEKIT_REQUIRE(dispatch_max_rows(T, K, E, p.block_size) <= INT32_MAX, "moe_layer_forward: ", T, " tokens x ", K,
                 " slots exceed 32-bit row indices");
  const bool glu = activation_is_glu(p.activation) || p.w_in_up.data != nullptr;
  const int64_t n_in = glu && p.w_in_up.data == nullptr ? 2 * I : I;
  MOEKIT_CUDA_CHECK(cudaMemsetAsync(p.load, 0, static_cast<size_t>(E) * sizeof(int32_t), stream));
  if (p.dropped) MOEKIT_CUDA_CHECK(cudaMemsetAsync(p.dropped, 0, sizeof(int64_t), stream));
  if (T == 0) return;

  // 1. Input as float32; offsets {0, T} for the dense projections.
  Scratch x(T * H * 4, stream);
  convert_to_f32(p.x_dtype, p.x, x.as<float>(), T * H, stream);
  Scratch all_rows(2 * sizeof(int32_t), stream);
  fill_offsets_kernel<<<1, 32, 0, stream>>>(all_rows.as<int32_t>(), static_cast<int32_t>(T));
  MOEKIT_CUDA_CHECK(cudaGetLastError());

  // 8 (first, opt-in). Shared experts on the side stream, beside steps 2-7. Declared after
  // the buffers it reads or writes (x, all_rows, shared), so it is joined before they are
  // freed on any exit.
  const int64_t Is = p.shared_intermediate;
  Scratch shared(Is > 0 ? T * H * 4 : 4, stream);
  std::optional<SideBranch> side;
  if (Is > 0 && concurrent_shared_enabled()) {
    side.emplace(stream, side_stream());
    shared_experts(p, x.as<float>(), all_rows.as<int32_t>(), shared.as<float>(), side->stream());
  }

  // 2-3. Router and gate, or forced routing.
  const int64_t cols = p.gating.experts + p.gating.null_experts;
  const bool need_router = p.forced_ids == nullptr || p.forced_weights == nullptr;
  Scratch logits(need_router ? T * cols * 4 : 4, stream);
  if (need_router) {
    MOEKIT_REQUIRE(p.router_w.data != nullptr, "moe_layer_forward: the router weight is missing");
    dense(x.as<float>(), T, H, cols, p.router_w, p.router_b, WeightRef{}, Activation::kNone, logits.as<float>(), nullptr,
          all_rows.as<int32_t>(), stream);
  }
  if (p.forced_ids != nullptr) {
    // NOTE: lib/ has validated the forced ids; out-of-range ids that still arrive are
    // treated as skipped slots (counted in scratch, never dereferenced).
    Scratch bad(sizeof(int32_t), stream);
    MOEKIT_CUDA_CHECK(cudaMemsetAsync(bad.as<int32_t>(), 0, sizeof(int32_t), stream));
    forced_ids_kernel<<<grid_for(T * K), kThreads, 0, stream>>>(p.forced_ids, p.ids, p.load, T * K, E, bad.as<int32_t>());
    MOEKIT_CUDA_CHECK(cudaGetLastError());
    if (p.forced_weights != nullptr) {
      MOEKIT_CUDA_CHECK(cudaMemcpyAsync(p.weights, p.forced_weights, static_cast<size_t>(T * K) * 4, cudaMemcpyDeviceToDevice, stream));
    } else {
      forced_weights_kernel<<<grid_for(T), kThreads, 0, stream>>>(
          logits.as<float>(), cols, p.ids, p.weights, T, K, static_cast<int32_t>(p.gating.scoring),
          p.gating.selection == Selection::kTopkLogitsThenSoftmax, p.gating.renormalize, p.gating.routed_scaling);
      MOEKIT_CUDA_CHECK(cudaGetLastError());
    }
  } else {
    GatingParams g = p.gating;
    g.logits = logits.as<float>();
    g.logits_dtype = DType::kF32;
    g.tokens = T;
    g.logit_bias = nullptr;  // the router bias is already in the logits
    g.ids = p.ids;
    g.weights = p.weights;
    g.load = p.load;
    gating(g, stream);
  }

  // 4. Dispatch (device-side counting sort).
  const int64_t max_rows = dispatch_max_rows(T, K, E, p.block_size);
  Scratch counts(E * 4, stream), offsets((E + 1) * 4, stream), sorted_pairs(max_rows * 4, stream),
      pair_to_row(T * K * 4, stream), dropped(8, stream);
  DispatchParams d;
  d.ids = p.ids;
  d.tokens = T;
  d.k = K;
  d.experts = E;
  d.block_size = p.block_size;
  d.capacity = p.capacity;
  d.counts = counts.as<int32_t>();
  d.offsets = offsets.as<int32_t>();
  d.sorted_pairs = sorted_pairs.as<int32_t>();
  d.pair_to_row = pair_to_row.as<int32_t>();
  d.dropped = p.dropped != nullptr ? p.dropped : dropped.as<int64_t>();
  dispatch(d, stream);

  // 5. Gather rows in expert order (padding rows zero) and each row's routing weight.
  // NOTE: buffers are sized for the upper bound of rows; kernels read offsets[E] on the device.
  Scratch xs(max_rows * H * 4, stream), row_weight(max_rows * 4, stream);
  PermuteParams perm;
  perm.x = x.as<float>();
  perm.sorted_pairs = sorted_pairs.as<int32_t>();
  perm.rows = max_rows;
  perm.k = K;
  perm.hidden = H;
  perm.out = xs.as<float>();
  permute_rows(perm, stream);
  row_weight_kernel<<<grid_for(max_rows), kThreads, 0, stream>>>(sorted_pairs.as<int32_t>(), p.weights, offsets.as<int32_t>(), E,
                                                                 row_weight.as<float>(), max_rows);
  MOEKIT_CUDA_CHECK(cudaGetLastError());

  // 6. First projection with the activation fused: h [rows, I].
  Scratch h(max_rows * I * 4, stream);
  GroupedGemmParams g1;
  g1.x = xs.as<float>();
  g1.offsets = offsets.as<int32_t>();
  g1.rows = max_rows;
  g1.experts = E;
  g1.n = n_in;
  g1.k = H;
  g1.w = p.w_in.data;
  g1.w_dtype = p.w_in.dtype;
  g1.layout = p.w_in.layout;
  g1.w_up = p.w_in_up.data;
  g1.bias = p.b_in.data;
  g1.bias_up = p.b_in_up.data;
  g1.activation = p.activation;
  g1.alpha = p.alpha;
  g1.limit = p.limit;
  g1.y = h.as<float>();
  grouped_gemm(g1, stream);

  // 7. Second projection with the routing weight fused as a row scale: ye [rows, H].
  Scratch ye(max_rows * H * 4, stream);
  GroupedGemmParams g2;
  g2.x = h.as<float>();
  g2.offsets = offsets.as<int32_t>();
  g2.rows = max_rows;
  g2.experts = E;
  g2.n = H;
  g2.k = I;
  g2.w = p.w_out.data;
  g2.w_dtype = p.w_out.dtype;
  g2.layout = p.w_out.layout;
  g2.bias = p.b_out.data;
  g2.activation = Activation::kNone;
  g2.row_scale = row_weight.as<float>();
  g2.y = ye.as<float>();
  grouped_gemm(g2, stream);

  // 8. Shared experts (here on the main stream, or joined from the side stream).
  if (side.has_value()) {
    side->join();
  } else if (Is > 0) {
    shared_experts(p, x.as<float>(), all_rows.as<int32_t>(), shared.as<float>(), stream);
  }

  // 9. Combine in token order, then the output dtype.
  Scratch out(T * H * 4, stream);
  CombineParams c;
  c.y = ye.as<float>();
  c.pair_to_row = pair_to_row.as<int32_t>();
  c.weights = nullptr;
  c.shared = Is > 0 ? shared.as<float>() : nullptr;
  c.tokens = T;
  c.k = K;
  c.hidden = H;
  c.rows = max_rows;
  c.out = out.as<float>();
  combine(c, stream);
  convert_from_f32(p.y_dtype, out.as<float>(), p.y, T * H, stream);
}

}  // namespace moekit::cuda
