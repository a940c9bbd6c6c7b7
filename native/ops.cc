// Op bindings: each unpacks a params object that lib/ops.ts or lib/layer.ts has
// validated into a kernels params struct, runs the kernel off the JS thread and
// wraps the results as tensors. No arithmetic here.
#include "native/ops.h"

#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <vector>
#include <memory>
#include <optional>

#include "kernels/common/dispatch_params.h"
#include "kernels/common/tensor.h"
#include "kernels/cpu/combine.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gating.h"
#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/moe_layer.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cuda/combine.h"
#include "kernels/cuda/cuda_runtime.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/gating.h"
#include "kernels/cuda/graph_cache.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/memcopy.h"
#include "kernels/cuda/moe_layer.h"
#include "native/async.h"
#include "native/errors.h"
#include "native/tensor.h"

namespace moekit::native {

namespace {

// Reading fields of the params object.
std::optional<Tensor> opt_tensor(Napi::Env env, const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (v.IsUndefined() || v.IsNull()) return std::nullopt;
  return NativeTensor::unwrap(env, v, name);
}
Tensor req_tensor(Napi::Env env, const Napi::Object& o, const char* name) {
  std::optional<Tensor> t = opt_tensor(env, o, name);
  if (!t) throw Napi::TypeError::New(env, std::string("Expected a Tensor for ") + name);
  return *t;
}
int64_t get_i64(const Napi::Object& o, const char* name, int64_t def) {
  Napi::Value v = o.Get(name);
  return v.IsNumber() ? v.As<Napi::Number>().Int64Value() : def;
}
float get_f32(const Napi::Object& o, const char* name, float def) {
  Napi::Value v = o.Get(name);
  return v.IsNumber() ? v.As<Napi::Number>().FloatValue() : def;
}
bool get_bool(const Napi::Object& o, const char* name, bool def) {
  Napi::Value v = o.Get(name);
  return v.IsBoolean() ? v.As<Napi::Boolean>().Value() : def;
}

// Every tensor of an op lives on the op's device (the device of its first input).
void require_on(const Tensor& t, Device dev, const char* name) {
  if (!(t.device() == dev))
    fail(code::kInvalidArgument, name, " is on ", t.device().name(), " but this op runs on ", dev.name(),
         " (the device of its first input): move tensors with .to()");
}
void require_on(const std::optional<Tensor>& t, Device dev, const char* name) {
  if (t) require_on(*t, dev, name);
}

// Runs fn(stream) for the device: inline on the CPU (stream null), or as the CUDA device's
// worker with its stream (outputs allocated inside fn land on that device).
void run_on(Device dev, const std::function<void(void*)>& fn) {
  if (dev.is_cpu())
    fn(nullptr);
  else
    cuda::run_on_device(dev.index, [&] { fn(cuda::current_stream()); });
}

const void* data_or_null(const std::optional<Tensor>& t) { return t ? t->data() : nullptr; }

// Second line of defence behind lib/: a tensor's exact shape.
void require_shape(const Tensor& t, const std::vector<int64_t>& shape, const char* name) {
  MOEKIT_REQUIRE(t.shape == shape, name, " must have shape ", shape_string(shape), ", got ", shape_string(t.shape));
}
void require_shape(const std::optional<Tensor>& t, const std::vector<int64_t>& shape, const char* name) {
  if (t) require_shape(*t, shape, name);
}
void require_dtype(const Tensor& t, DType dtype, const char* name) {
  MOEKIT_REQUIRE(t.dtype == dtype, name, " must be ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
}

GatingParams gating_options(const Napi::Object& o) {
  GatingParams g;
  g.experts = get_i64(o, "experts", 0);
  g.null_experts = get_i64(o, "nullExperts", 0);
  g.k = get_i64(o, "k", 1);
  g.scoring = static_cast<Scoring>(get_i64(o, "scoring", 0));
  g.selection = static_cast<Selection>(get_i64(o, "selection", 0));
  g.n_group = static_cast<int32_t>(get_i64(o, "nGroup", 1));
  g.topk_group = static_cast<int32_t>(get_i64(o, "topkGroup", 1));
  g.renormalize = get_bool(o, "renormalize", false);
  g.routed_scaling = get_f32(o, "routedScaling", 1.0f);
  g.top_p = get_f32(o, "topP", 1.0f);
  g.capacity_factor = get_f32(o, "capacityFactor", 1.0f);
  g.choice_k = get_i64(o, "choiceK", 1);
  g.sinkhorn_iters = static_cast<int32_t>(get_i64(o, "sinkhornIters", 0));
  return g;
}

WeightRef weight_ref(const std::optional<Tensor>& t, WeightLayout layout = WeightLayout::kENK) {
  WeightRef w;
  if (t) {
    w.data = t->data();
    w.dtype = t->dtype;
    w.layout = layout;
  }
  return w;
}

// An op prepared on the JavaScript thread (arguments read and checked), run later on the
// device's worker in steps, so that the same op can run once (the op call) or many times
// (profile): alloc makes the outputs and fills the params; compute only launches work
// into those outputs (on CUDA: stream-ordered, no host sync, so it can be captured in a
// graph); finish may sync and read back; resolve builds the result on the JS thread.
// The state the lambdas share holds every input tensor, so their memory lives until the
// job ends even if JavaScript disposes them meanwhile.
struct Prepared {
  Device dev;
  std::function<void()> alloc;
  std::function<void(void*)> compute;
  std::function<void(void*)> compute_once;  // the op call's compute when it differs (CUDA-graph cache)
  std::function<void()> finish;
  std::function<Napi::Value(Napi::Env)> resolve;
};

Napi::Value run_once(Napi::Env env, const char* name, const Prepared& p) {
  return Job::start(
      env, name,
      [p]() {
        run_on(p.dev, [&](void* stream) {
          p.alloc();
          if (p.compute_once)
            p.compute_once(stream);
          else
            p.compute(stream);
          if (p.finish) p.finish();
        });
      },
      p.resolve);
}

template <size_t N>
Napi::Value tensor_array(Napi::Env e, std::array<Tensor, N>& out) {
  Napi::Array a = Napi::Array::New(e, N);
  for (uint32_t i = 0; i < N; ++i) a.Set(i, NativeTensor::wrap(e, std::move(out[i])));
  return a;
}

// gating({logits, logitBias?, correctionBias?, ...options}) -> [ids, weights, load]
Prepared prepare_gating(Napi::Env env, const Napi::Object& o) {
  struct State {
    GatingParams g;
    Tensor logits;
    std::optional<Tensor> logit_bias, correction_bias;
    std::array<Tensor, 3> out;
  };
  auto st = std::make_shared<State>();
  st->logits = req_tensor(env, o, "logits");
  st->logit_bias = opt_tensor(env, o, "logitBias");
  st->correction_bias = opt_tensor(env, o, "correctionBias");
  const Device dev = st->logits.device();
  require_on(st->logit_bias, dev, "logitBias");
  require_on(st->correction_bias, dev, "correctionBias");
  GatingParams& g = st->g;
  g = gating_options(o);
  g.tokens = dim_of(st->logits, 2, 0, "logits");
  MOEKIT_REQUIRE(st->logits.shape[1] == g.experts + g.null_experts, "logits must have experts + nullExperts = ",
                 g.experts + g.null_experts, " columns, got ", st->logits.shape[1]);
  require_shape(st->logit_bias, {g.experts + g.null_experts}, "logitBias");
  require_shape(st->correction_bias, {g.experts}, "correctionBias");
  if (st->logit_bias) require_dtype(*st->logit_bias, DType::kF32, "logitBias");
  if (st->correction_bias) require_dtype(*st->correction_bias, DType::kF32, "correctionBias");
  Prepared p;
  p.dev = dev;
  p.alloc = [st, dev] {
    GatingParams& g = st->g;
    st->out[0] = Tensor::empty(DType::kI32, {g.tokens, g.k}, dev);
    st->out[1] = Tensor::empty(DType::kF32, {g.tokens, g.k}, dev);
    st->out[2] = Tensor::empty(DType::kI32, {g.experts}, dev);
    g.logits = st->logits.data();
    g.logits_dtype = st->logits.dtype;
    g.logit_bias = st->logit_bias ? st->logit_bias->as<float>() : nullptr;
    g.correction_bias = st->correction_bias ? st->correction_bias->as<float>() : nullptr;
    g.ids = st->out[0].as<int32_t>();
    g.weights = st->out[1].as<float>();
    g.load = st->out[2].as<int32_t>();
  };
  p.compute = [st, dev](void* stream) {
    if (dev.is_cpu())
      cpu::gating(st->g);
    else
      cuda::gating(st->g, stream);
  };
  p.resolve = [st](Napi::Env e) { return tensor_array(e, st->out); };
  return p;
}

// dispatch({ids, experts, blockSize, capacity}) -> [counts, offsets, sortedPairs, pairToRow, dropped]
Prepared prepare_dispatch(Napi::Env env, const Napi::Object& o) {
  struct State {
    DispatchParams d;
    Tensor ids;
    std::array<Tensor, 5> out;
  };
  auto st = std::make_shared<State>();
  st->ids = req_tensor(env, o, "ids");
  const Device dev = st->ids.device();
  require_dtype(st->ids, DType::kI32, "ids");
  DispatchParams& d = st->d;
  d.tokens = dim_of(st->ids, 2, 0, "ids");
  d.k = st->ids.shape[1];
  d.experts = get_i64(o, "experts", 0);
  d.block_size = get_i64(o, "blockSize", 1);
  d.capacity = get_i64(o, "capacity", -1);
  MOEKIT_REQUIRE(d.experts >= 1 && d.k >= 1 && d.block_size >= 1, "dispatch needs experts, k and blockSize >= 1");
  // Checked before allocating: row indices are 32-bit.
  MOEKIT_REQUIRE(dispatch_max_rows(d.tokens, d.k, d.experts, d.block_size) <= INT32_MAX,
                 "dispatch of ", d.tokens, " tokens x ", d.k, " slots over ", d.experts, " experts with blockSize ",
                 d.block_size, " needs more rows than 32-bit row indices address");
  Prepared p;
  p.dev = dev;
  p.alloc = [st, dev] {
    DispatchParams& d = st->d;
    const int64_t max_rows = dispatch_max_rows(d.tokens, d.k, d.experts, d.block_size);
    st->out[0] = Tensor::empty(DType::kI32, {d.experts}, dev);
    st->out[1] = Tensor::empty(DType::kI32, {d.experts + 1}, dev);
    st->out[2] = Tensor::empty(DType::kI32, {max_rows}, dev);
    st->out[3] = Tensor::empty(DType::kI32, {d.tokens, d.k}, dev);
    st->out[4] = Tensor::empty(DType::kI64, {1}, dev);
    d.ids = st->ids.as<int32_t>();
    d.counts = st->out[0].as<int32_t>();
    d.offsets = st->out[1].as<int32_t>();
    d.sorted_pairs = st->out[2].as<int32_t>();
    d.pair_to_row = st->out[3].as<int32_t>();
    d.dropped = st->out[4].as<int64_t>();
  };
  p.compute = [st, dev](void* stream) {
    if (dev.is_cpu())
      cpu::dispatch(st->d);
    else
      cuda::dispatch(st->d, stream);
  };
  p.finish = [st, dev] {
    const DispatchParams& d = st->d;
    int32_t rows_used = 0;
    if (dev.is_cpu())
      rows_used = d.offsets[d.experts];
    else
      // NOTE: the standalone op reads back the row count to size its result; the layer
      // forward never does (it works on the upper bound of rows).
      cuda::copy(dev.index, &rows_used, d.offsets + d.experts, sizeof(int32_t), cuda::CopyKind::kDeviceToHost);
    // Trim the row list to the rows actually used.
    st->out[2].shape = {static_cast<int64_t>(rows_used)};
  };
  p.resolve = [st](Napi::Env e) { return tensor_array(e, st->out); };
  return p;
}

// groupedGemm({x, offsets, w, wUp?, bias?, biasUp?, rowScale?, layout, activation, alpha, limit}) -> y
Prepared prepare_grouped_gemm(Napi::Env env, const Napi::Object& o) {
  struct State {
    GroupedGemmParams g;
    Tensor x, offsets, w;
    std::optional<Tensor> w_up, bias, bias_up, row_scale;
    int64_t n_out = 0;
    std::array<Tensor, 1> y;
  };
  auto st = std::make_shared<State>();
  st->x = req_tensor(env, o, "x");
  st->offsets = req_tensor(env, o, "offsets");
  st->w = req_tensor(env, o, "w");
  st->w_up = opt_tensor(env, o, "wUp");
  st->bias = opt_tensor(env, o, "bias");
  st->bias_up = opt_tensor(env, o, "biasUp");
  st->row_scale = opt_tensor(env, o, "rowScale");
  const Tensor& x = st->x;
  const Tensor& w = st->w;
  const Device dev = x.device();
  require_on(st->offsets, dev, "offsets");
  require_on(w, dev, "w");
  require_on(st->w_up, dev, "wUp");
  require_on(st->bias, dev, "bias");
  require_on(st->bias_up, dev, "biasUp");
  require_on(st->row_scale, dev, "rowScale");
  require_dtype(x, DType::kF32, "x");
  require_dtype(st->offsets, DType::kI32, "offsets");
  GroupedGemmParams& g = st->g;
  g.rows = dim_of(x, 2, 0, "x");
  g.experts = dim_of(st->offsets, 1, 0, "offsets") - 1;
  g.layout = static_cast<WeightLayout>(get_i64(o, "layout", 0));
  MOEKIT_REQUIRE(g.experts >= 1 && dim_of(w, 3, 0, "w") == g.experts, "w must be [experts, ., .] with experts = ",
                 g.experts, ", got ", shape_string(w.shape));
  g.n = g.layout == WeightLayout::kENK ? w.shape[1] : w.shape[2];
  g.k = g.layout == WeightLayout::kENK ? w.shape[2] : w.shape[1];
  MOEKIT_REQUIRE(x.shape[1] == g.k, "x must have ", g.k, " columns to match w, got ", x.shape[1]);
  g.activation = static_cast<Activation>(get_i64(o, "activation", 0));
  g.alpha = get_f32(o, "alpha", 1.702f);
  g.limit = get_f32(o, "limit", 7.0f);
  if (st->w_up) {
    require_shape(*st->w_up, w.shape, "wUp");
    require_dtype(*st->w_up, w.dtype, "wUp");
  }
  require_shape(st->bias, {g.experts, g.n}, "bias");
  require_shape(st->bias_up, {g.experts, g.n}, "biasUp");
  require_shape(st->row_scale, {g.rows}, "rowScale");
  // The output width follows from the activation, never from the caller.
  st->n_out = (activation_is_glu(g.activation) && !st->w_up) ? g.n / 2 : g.n;
  Prepared p;
  p.dev = dev;
  p.alloc = [st, dev] {
    GroupedGemmParams& g = st->g;
    st->y[0] = Tensor::empty(DType::kF32, {g.rows, st->n_out}, dev);
    g.x = st->x.as<float>();
    g.offsets = st->offsets.as<int32_t>();
    g.w = st->w.data();
    g.w_dtype = st->w.dtype;
    g.w_up = data_or_null(st->w_up);
    g.bias = data_or_null(st->bias);
    g.bias_up = data_or_null(st->bias_up);
    g.row_scale = st->row_scale ? st->row_scale->as<float>() : nullptr;
    g.y = st->y[0].as<float>();
  };
  p.compute = [st, dev](void* stream) {
    if (dev.is_cpu())
      cpu::grouped_gemm(st->g);
    else
      cuda::grouped_gemm(st->g, stream);
  };
  p.resolve = [st](Napi::Env e) -> Napi::Value { return NativeTensor::wrap(e, std::move(st->y[0])); };
  return p;
}

// combine({y, pairToRow, weights?, shared?}) -> out [tokens, hidden]
Prepared prepare_combine(Napi::Env env, const Napi::Object& o) {
  struct State {
    CombineParams c;
    Tensor y, pair_to_row;
    std::optional<Tensor> weights, shared;
    std::array<Tensor, 1> out;
  };
  auto st = std::make_shared<State>();
  st->y = req_tensor(env, o, "y");
  st->pair_to_row = req_tensor(env, o, "pairToRow");
  st->weights = opt_tensor(env, o, "weights");
  st->shared = opt_tensor(env, o, "shared");
  const Device dev = st->y.device();
  require_on(st->pair_to_row, dev, "pairToRow");
  require_on(st->weights, dev, "weights");
  require_on(st->shared, dev, "shared");
  require_dtype(st->y, DType::kF32, "y");
  require_dtype(st->pair_to_row, DType::kI32, "pairToRow");
  CombineParams& c = st->c;
  c.rows = dim_of(st->y, 2, 0, "y");
  c.hidden = st->y.shape[1];
  c.tokens = dim_of(st->pair_to_row, 2, 0, "pairToRow");
  c.k = st->pair_to_row.shape[1];
  require_shape(st->weights, {c.tokens, c.k}, "weights");
  require_shape(st->shared, {c.tokens, c.hidden}, "shared");
  Prepared p;
  p.dev = dev;
  p.alloc = [st, dev] {
    CombineParams& c = st->c;
    st->out[0] = Tensor::empty(DType::kF32, {c.tokens, c.hidden}, dev);
    c.y = st->y.as<float>();
    c.pair_to_row = st->pair_to_row.as<int32_t>();
    c.weights = st->weights ? st->weights->as<float>() : nullptr;
    c.shared = st->shared ? st->shared->as<float>() : nullptr;
    c.out = st->out[0].as<float>();
  };
  p.compute = [st, dev](void* stream) {
    if (dev.is_cpu())
      cpu::combine(st->c);
    else
      cuda::combine(st->c, stream);
  };
  p.resolve = [st](Napi::Env e) -> Napi::Value { return NativeTensor::wrap(e, std::move(st->out[0])); };
  return p;
}

using GraphCacheHolder = std::shared_ptr<cuda::LayerGraphCache>;

// Tags the externals createGraphCache makes, so no other External is taken for one.
const napi_type_tag kGraphCacheTag = {0x6d6f656b69744743ULL, 0x3a6772617068ULL};

bool is_graph_cache(Napi::Env env, const Napi::Value& v) {
  if (!v.IsExternal()) return false;
  bool tagged = false;
  return napi_check_object_type_tag(env, v, &kGraphCacheTag, &tagged) == napi_ok && tagged;
}

// moeLayerForward({x, routerW, routerB?, wIn, wInUp?, bIn?, bInUp?, wOut, bOut?, layoutIn, layoutOut,
//   sharedWIn?, sharedWInUp?, sharedWOut?, sharedGate?, sharedIntermediate, forcedIds?, forcedWeights?,
//   experts, intermediate, activation, alpha, limit, blockSize, capacity, outDtype, graphCache?, ...gating options})
//   -> [y, ids, weights, load, dropped]. With graphCache (CUDA) the call replays a cached graph.
Prepared prepare_moe_layer_forward(Napi::Env env, const Napi::Object& o) {
  enum Slot { kRouterW, kRouterB, kWIn, kWInUp, kBIn, kBInUp, kWOut, kBOut, kSIn, kSInUp, kSOut, kSGate, kFIds, kFW, kCorr, kSlots };
  static const char* const kNames[kSlots] = {"routerW", "routerB", "wIn", "wInUp", "bIn", "bInUp", "wOut", "bOut",
                                             "sharedWIn", "sharedWInUp", "sharedWOut", "sharedGate", "forcedIds",
                                             "forcedWeights", "correctionBias"};
  struct State {
    MoELayerParams p;
    Tensor x;
    std::array<std::optional<Tensor>, kSlots> held;
    WeightLayout layout_in = WeightLayout::kENK, layout_out = WeightLayout::kENK;
    std::shared_ptr<cuda::LayerGraphCache> graphs;  // set: replay cached CUDA graphs
    std::array<Tensor, 5> out;
  };
  auto st = std::make_shared<State>();
  st->x = req_tensor(env, o, "x");
  const Device dev = st->x.device();
  for (int i = 0; i < kSlots; ++i) {
    st->held[i] = opt_tensor(env, o, kNames[i]);
    require_on(st->held[i], dev, kNames[i]);
  }
  MoELayerParams& p = st->p;
  p.tokens = dim_of(st->x, 2, 0, "x");
  p.hidden = st->x.shape[1];
  p.x_dtype = st->x.dtype;
  p.gating = gating_options(o);
  p.experts = get_i64(o, "experts", 0);
  p.intermediate = get_i64(o, "intermediate", 0);
  p.activation = static_cast<Activation>(get_i64(o, "activation", 1));
  p.alpha = get_f32(o, "alpha", 1.702f);
  p.limit = get_f32(o, "limit", 7.0f);
  p.shared_intermediate = get_i64(o, "sharedIntermediate", 0);
  p.block_size = get_i64(o, "blockSize", 1);
  p.capacity = get_i64(o, "capacity", -1);
  p.y_dtype = static_cast<DType>(get_i64(o, "outDtype", 0));
  st->layout_in = static_cast<WeightLayout>(get_i64(o, "layoutIn", 0));
  st->layout_out = static_cast<WeightLayout>(get_i64(o, "layoutOut", 0));
  const Napi::Value graphs = o.Get("graphCache");
  if (dev.is_cuda() && is_graph_cache(env, graphs)) st->graphs = *graphs.As<Napi::External<GraphCacheHolder>>().Data();
  Prepared pr;
  pr.dev = dev;
  pr.alloc = [st, dev] {
    MoELayerParams& p = st->p;
    const auto& h = st->held;
    const int64_t T = p.tokens, K = p.gating.k;
    st->out[0] = Tensor::empty(p.y_dtype, {T, p.hidden}, dev);
    st->out[1] = Tensor::empty(DType::kI32, {T, K}, dev);
    st->out[2] = Tensor::empty(DType::kF32, {T, K}, dev);
    st->out[3] = Tensor::empty(DType::kI32, {p.experts}, dev);
    st->out[4] = Tensor::empty(DType::kI64, {1}, dev);
    p.x = st->x.data();
    p.router_w = weight_ref(h[kRouterW]);
    p.router_b = weight_ref(h[kRouterB]);
    p.w_in = weight_ref(h[kWIn], st->layout_in);
    p.w_in_up = weight_ref(h[kWInUp], st->layout_in);
    p.b_in = weight_ref(h[kBIn]);
    p.b_in_up = weight_ref(h[kBInUp]);
    p.w_out = weight_ref(h[kWOut], st->layout_out);
    p.b_out = weight_ref(h[kBOut]);
    p.shared_w_in = weight_ref(h[kSIn]);
    p.shared_w_in_up = weight_ref(h[kSInUp]);
    p.shared_w_out = weight_ref(h[kSOut]);
    p.shared_gate = weight_ref(h[kSGate]);
    p.forced_ids = h[kFIds] ? h[kFIds]->as<int32_t>() : nullptr;
    p.forced_weights = h[kFW] ? h[kFW]->as<float>() : nullptr;
    p.gating.correction_bias = h[kCorr] ? h[kCorr]->as<float>() : nullptr;
    p.y = st->out[0].data();
    p.ids = st->out[1].as<int32_t>();
    p.weights = st->out[2].as<float>();
    p.load = st->out[3].as<int32_t>();
    p.dropped = st->out[4].as<int64_t>();
  };
  pr.compute = [st, dev](void* stream) {
    if (dev.is_cpu())
      cpu::moe_layer_forward(st->p);
    else
      cuda::moe_layer_forward(st->p, stream);
  };
  if (st->graphs)
    pr.compute_once = [st](void* stream) {
      if (!cuda::graph_forward(*st->graphs, st->p, stream)) cuda::moe_layer_forward(st->p, stream);
    };
  pr.resolve = [st](Napi::Env e) { return tensor_array(e, st->out); };
  return pr;
}

// copy({src}) -> dst: a copy of src on its device (CPU: split over the CPU threads; CUDA:
// a device-to-device copy kernel on the op's stream, kernels/cuda/memcopy.cu). Used to
// measure memory bandwidth.
Prepared prepare_copy(Napi::Env env, const Napi::Object& o) {
  struct State {
    Tensor src;
    std::array<Tensor, 1> dst;
  };
  auto st = std::make_shared<State>();
  st->src = req_tensor(env, o, "src");
  const Device dev = st->src.device();
  Prepared p;
  p.dev = dev;
  p.alloc = [st, dev] { st->dst[0] = Tensor::empty(st->src.dtype, st->src.shape, dev); };
  p.compute = [st, dev](void* stream) {
    const int64_t bytes = st->src.numel() * dtype_size(st->src.dtype);
    auto* dst = static_cast<unsigned char*>(st->dst[0].data());
    const auto* src = static_cast<const unsigned char*>(st->src.data());
    if (dev.is_cpu())
      cpu::parallel_for(bytes, int64_t{1} << 20, [&](int64_t b, int64_t e) { std::memcpy(dst + b, src + b, static_cast<size_t>(e - b)); });
    else
      cuda::copy_device(dst, src, bytes, stream);
  };
  p.resolve = [st](Napi::Env e) -> Napi::Value { return NativeTensor::wrap(e, std::move(st->dst[0])); };
  return p;
}

// createGraphCache() -> an external holding one layer's CUDA-graph cache; freed with it
// (device work deferred to the device's worker). releaseGraphCache(ext) drops it early;
// forwards in flight keep their reference.
Napi::Value create_graph_cache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto* holder = new GraphCacheHolder(cuda::make_layer_graph_cache());
    auto ext = Napi::External<GraphCacheHolder>::New(env, holder, [](Napi::Env, GraphCacheHolder* h) { delete h; });
    if (napi_type_tag_object(env, ext, &kGraphCacheTag) != napi_ok) throw Napi::Error::New(env, "cannot tag the graph cache");
    return ext;
  });
}
Napi::Value release_graph_cache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (is_graph_cache(env, info[0])) info[0].As<Napi::External<GraphCacheHolder>>().Data()->reset();
    return env.Undefined();
  });
}

using Preparer = Prepared (*)(Napi::Env, const Napi::Object&);

template <Preparer prepare>
Napi::Value op_fn(const Napi::CallbackInfo& info, const char* name) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value { return run_once(env, name, prepare(env, info[0].As<Napi::Object>())); });
}

Preparer preparer_for(const std::string& op) {
  if (op == "gating") return prepare_gating;
  if (op == "dispatch") return prepare_dispatch;
  if (op == "groupedGemm") return prepare_grouped_gemm;
  if (op == "combine") return prepare_combine;
  if (op == "moeLayerForward") return prepare_moe_layer_forward;
  if (op == "copy") return prepare_copy;
  fail(code::kInvalidArgument, "profile: unknown op '", op, "'");
}

// Times `compute` on the CPU: warm-up runs, then one steady-clock interval per repeat.
std::vector<double> time_cpu(const std::function<void(void*)>& compute, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) compute(nullptr);
  std::vector<double> ms(static_cast<size_t>(repeats));
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    compute(nullptr);
    ms[static_cast<size_t>(i)] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  return ms;
}

// profile(op, args, {warmup, repeats, graph}) -> Promise<{times, timer, graph}>
// Allocates the op's outputs once, then runs its compute step warmup + repeats times on
// the device's worker and times each repeat: CUDA events around each launch (of a
// captured CUDA graph when `graph` is true and capture succeeds) on a GPU, the steady
// clock on the CPU. The outputs (of the last repeat) are returned only with keepOutput.
Napi::Value profile_fn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const std::string op = info[0].As<Napi::String>().Utf8Value();
    const Prepared p = preparer_for(op)(env, info[1].As<Napi::Object>());
    const Napi::Object opts = info[2].As<Napi::Object>();
    const int64_t warmup64 = get_i64(opts, "warmup", 3), repeats64 = get_i64(opts, "repeats", 20);
    MOEKIT_REQUIRE(warmup64 >= 0 && warmup64 <= 1000000 && repeats64 >= 1 && repeats64 <= 1000000,
                   "profile needs warmup in [0, 1e6] and repeats in [1, 1e6]");
    const int warmup = static_cast<int>(warmup64), repeats = static_cast<int>(repeats64);
    const bool graph = get_bool(opts, "graph", true);
    const bool keep = get_bool(opts, "keepOutput", false);
    auto result = std::make_shared<cuda::Timing>();
    return Job::start(
        env, "moekit.profile",
        [p, result, warmup, repeats, graph]() {
          run_on(p.dev, [&](void*) {
            p.alloc();
            if (p.dev.is_cpu())
              result->ms = time_cpu(p.compute, warmup, repeats);
            else
              *result = cuda::time_replays(p.compute, warmup, repeats, graph);
          });
        },
        [result, keep, resolve = p.resolve, dev = p.dev](Napi::Env e) -> Napi::Value {
          Napi::Object r = Napi::Object::New(e);
          Napi::Array times = Napi::Array::New(e, result->ms.size());
          for (uint32_t i = 0; i < result->ms.size(); ++i) times.Set(i, result->ms[i]);
          r.Set("times", times);
          r.Set("timer", dev.is_cpu() ? "steady-clock" : "cuda-event");
          r.Set("graph", result->graph);
          r.Set("device", dev.name());
          // The outputs of the last repeat, as the op itself returns them.
          if (keep) r.Set("result", resolve(e));
          return r;
        });
  });
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("gating", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return op_fn<prepare_gating>(i, "moekit.gating"); }, "gating"));
  exports.Set("dispatch", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return op_fn<prepare_dispatch>(i, "moekit.dispatch"); }, "dispatch"));
  exports.Set("groupedGemm", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return op_fn<prepare_grouped_gemm>(i, "moekit.groupedGemm"); }, "groupedGemm"));
  exports.Set("combine", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return op_fn<prepare_combine>(i, "moekit.combine"); }, "combine"));
  exports.Set("moeLayerForward", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return op_fn<prepare_moe_layer_forward>(i, "moekit.moeLayerForward"); }, "moeLayerForward"));
  exports.Set("copy", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return op_fn<prepare_copy>(i, "moekit.copy"); }, "copy"));
  exports.Set("profile", Napi::Function::New(env, profile_fn, "profile"));
  exports.Set("createGraphCache", Napi::Function::New(env, create_graph_cache, "createGraphCache"));
  exports.Set("releaseGraphCache", Napi::Function::New(env, release_graph_cache, "releaseGraphCache"));
}

}  // namespace moekit::native
