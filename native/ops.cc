// Op bindings: each unpacks a params object that lib/ops.ts or lib/layer.ts has
// validated into a kernels params struct, runs the kernel off the JS thread and
// wraps the results as tensors. No arithmetic here.
#include "native/ops.h"

#include <functional>
#include <memory>
#include <optional>

#include "kernels/common/dispatch_params.h"
#include "kernels/common/tensor.h"
#include "kernels/cpu/combine.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gating.h"
#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/moe_layer.h"
#include "kernels/cuda/combine.h"
#include "kernels/cuda/cuda_runtime.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/gating.h"
#include "kernels/cuda/grouped_gemm.h"
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

// gating({logits, logitBias?, correctionBias?, ...options}) -> Promise<[ids, weights, load]>
Napi::Value gating_op(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    Napi::Object o = info[0].As<Napi::Object>();
    const Tensor logits = req_tensor(env, o, "logits");
    const std::optional<Tensor> logit_bias = opt_tensor(env, o, "logitBias");
    const std::optional<Tensor> correction_bias = opt_tensor(env, o, "correctionBias");
    const Device dev = logits.device();
    require_on(logit_bias, dev, "logitBias");
    require_on(correction_bias, dev, "correctionBias");
    GatingParams g = gating_options(o);
    g.tokens = dim_of(logits, 2, 0, "logits");
    MOEKIT_REQUIRE(logits.shape[1] == g.experts + g.null_experts, "logits must have experts + nullExperts = ",
                   g.experts + g.null_experts, " columns, got ", logits.shape[1]);
    require_shape(logit_bias, {g.experts + g.null_experts}, "logitBias");
    require_shape(correction_bias, {g.experts}, "correctionBias");
    if (logit_bias) require_dtype(*logit_bias, DType::kF32, "logitBias");
    if (correction_bias) require_dtype(*correction_bias, DType::kF32, "correctionBias");
    auto out = std::make_shared<std::array<Tensor, 3>>();
    return Job::start(
        env, "moekit.gating",
        [g, logits, logit_bias, correction_bias, out, dev]() mutable { run_on(dev, [&](void* stream) {
          (*out)[0] = Tensor::empty(DType::kI32, {g.tokens, g.k}, dev);
          (*out)[1] = Tensor::empty(DType::kF32, {g.tokens, g.k}, dev);
          (*out)[2] = Tensor::empty(DType::kI32, {g.experts}, dev);
          g.logits = logits.data();
          g.logits_dtype = logits.dtype;
          g.logit_bias = logit_bias ? logit_bias->as<float>() : nullptr;
          g.correction_bias = correction_bias ? correction_bias->as<float>() : nullptr;
          g.ids = (*out)[0].as<int32_t>();
          g.weights = (*out)[1].as<float>();
          g.load = (*out)[2].as<int32_t>();
          if (dev.is_cpu())
            cpu::gating(g);
          else
            cuda::gating(g, stream);
        }); },
        [out](Napi::Env e) -> Napi::Value {
          Napi::Array a = Napi::Array::New(e, 3);
          for (uint32_t i = 0; i < 3; ++i) a.Set(i, NativeTensor::wrap(e, std::move((*out)[i])));
          return a;
        });
  });
}

// dispatch({ids, experts, blockSize, capacity}) -> Promise<[counts, offsets, sortedPairs, pairToRow, dropped]>
Napi::Value dispatch_op(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    Napi::Object o = info[0].As<Napi::Object>();
    const Tensor ids = req_tensor(env, o, "ids");
    const Device dev = ids.device();
    require_dtype(ids, DType::kI32, "ids");
    DispatchParams d;
    d.tokens = dim_of(ids, 2, 0, "ids");
    d.k = ids.shape[1];
    d.experts = get_i64(o, "experts", 0);
    d.block_size = get_i64(o, "blockSize", 1);
    d.capacity = get_i64(o, "capacity", -1);
    MOEKIT_REQUIRE(d.experts >= 1 && d.k >= 1 && d.block_size >= 1, "dispatch needs experts, k and blockSize >= 1");
    // Checked before allocating: row indices are 32-bit.
    MOEKIT_REQUIRE(dispatch_max_rows(d.tokens, d.k, d.experts, d.block_size) <= INT32_MAX,
                   "dispatch of ", d.tokens, " tokens x ", d.k, " slots over ", d.experts, " experts with blockSize ",
                   d.block_size, " needs more rows than 32-bit row indices address");
    auto out = std::make_shared<std::array<Tensor, 5>>();
    return Job::start(
        env, "moekit.dispatch",
        [d, ids, out, dev]() mutable { run_on(dev, [&](void* stream) {
          const int64_t max_rows = dispatch_max_rows(d.tokens, d.k, d.experts, d.block_size);
          (*out)[0] = Tensor::empty(DType::kI32, {d.experts}, dev);
          (*out)[1] = Tensor::empty(DType::kI32, {d.experts + 1}, dev);
          (*out)[2] = Tensor::empty(DType::kI32, {max_rows}, dev);
          (*out)[3] = Tensor::empty(DType::kI32, {d.tokens, d.k}, dev);
          (*out)[4] = Tensor::empty(DType::kI64, {1}, dev);
          d.ids = ids.as<int32_t>();
          d.counts = (*out)[0].as<int32_t>();
          d.offsets = (*out)[1].as<int32_t>();
          d.sorted_pairs = (*out)[2].as<int32_t>();
          d.pair_to_row = (*out)[3].as<int32_t>();
          d.dropped = (*out)[4].as<int64_t>();
          int32_t rows_used = 0;
          if (dev.is_cpu()) {
            cpu::dispatch(d);
            rows_used = d.offsets[d.experts];
          } else {
            cuda::dispatch(d, stream);
            // NOTE: the standalone op reads back the row count to size its result; the layer
            // forward never does (it works on the upper bound of rows).
            cuda::copy(dev.index, &rows_used, d.offsets + d.experts, sizeof(int32_t), cuda::CopyKind::kDeviceToHost);
          }
          // Trim the row list to the rows actually used.
          (*out)[2].shape = {static_cast<int64_t>(rows_used)};
        }); },
        [out](Napi::Env e) -> Napi::Value {
          Napi::Array a = Napi::Array::New(e, 5);
          for (uint32_t i = 0; i < 5; ++i) a.Set(i, NativeTensor::wrap(e, std::move((*out)[i])));
          return a;
        });
  });
}

// groupedGemm({x, offsets, w, wUp?, bias?, biasUp?, rowScale?, layout, n, k, activation, alpha, limit, nOut})
Napi::Value grouped_gemm_op(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    Napi::Object o = info[0].As<Napi::Object>();
    const Tensor x = req_tensor(env, o, "x");
    const Tensor offsets = req_tensor(env, o, "offsets");
    const Tensor w = req_tensor(env, o, "w");
    const std::optional<Tensor> w_up = opt_tensor(env, o, "wUp"), bias = opt_tensor(env, o, "bias"),
                                bias_up = opt_tensor(env, o, "biasUp"), row_scale = opt_tensor(env, o, "rowScale");
    const Device dev = x.device();
    require_on(offsets, dev, "offsets");
    require_on(w, dev, "w");
    require_on(w_up, dev, "wUp");
    require_on(bias, dev, "bias");
    require_on(bias_up, dev, "biasUp");
    require_on(row_scale, dev, "rowScale");
    require_dtype(x, DType::kF32, "x");
    require_dtype(offsets, DType::kI32, "offsets");
    GroupedGemmParams g;
    g.rows = dim_of(x, 2, 0, "x");
    g.experts = dim_of(offsets, 1, 0, "offsets") - 1;
    g.layout = static_cast<WeightLayout>(get_i64(o, "layout", 0));
    MOEKIT_REQUIRE(g.experts >= 1 && dim_of(w, 3, 0, "w") == g.experts, "w must be [experts, ., .] with experts = ",
                   g.experts, ", got ", shape_string(w.shape));
    g.n = g.layout == WeightLayout::kENK ? w.shape[1] : w.shape[2];
    g.k = g.layout == WeightLayout::kENK ? w.shape[2] : w.shape[1];
    MOEKIT_REQUIRE(x.shape[1] == g.k, "x must have ", g.k, " columns to match w, got ", x.shape[1]);
    g.activation = static_cast<Activation>(get_i64(o, "activation", 0));
    g.alpha = get_f32(o, "alpha", 1.702f);
    g.limit = get_f32(o, "limit", 7.0f);
    if (w_up) {
      require_shape(*w_up, w.shape, "wUp");
      require_dtype(*w_up, w.dtype, "wUp");
    }
    require_shape(bias, {g.experts, g.n}, "bias");
    require_shape(bias_up, {g.experts, g.n}, "biasUp");
    require_shape(row_scale, {g.rows}, "rowScale");
    // The output width follows from the activation, never from the caller.
    const int64_t n_out = (activation_is_glu(g.activation) && !w_up) ? g.n / 2 : g.n;
    auto y = std::make_shared<Tensor>();
    return Job::start(
        env, "moekit.groupedGemm",
        [g, x, offsets, w, w_up, bias, bias_up, row_scale, n_out, y, dev]() mutable { run_on(dev, [&](void* stream) {
          *y = Tensor::empty(DType::kF32, {g.rows, n_out}, dev);
          g.x = x.as<float>();
          g.offsets = offsets.as<int32_t>();
          g.w = w.data();
          g.w_dtype = w.dtype;
          g.w_up = data_or_null(w_up);
          g.bias = data_or_null(bias);
          g.bias_up = data_or_null(bias_up);
          g.row_scale = row_scale ? row_scale->as<float>() : nullptr;
          g.y = y->as<float>();
          if (dev.is_cpu())
            cpu::grouped_gemm(g);
          else
            cuda::grouped_gemm(g, stream);
        }); },
        [y](Napi::Env e) -> Napi::Value { return NativeTensor::wrap(e, std::move(*y)); });
  });
}

// combine({y, pairToRow, weights?, shared?}) -> Promise<out [tokens, hidden]>
Napi::Value combine_op(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    Napi::Object o = info[0].As<Napi::Object>();
    const Tensor y = req_tensor(env, o, "y");
    const Tensor pair_to_row = req_tensor(env, o, "pairToRow");
    const std::optional<Tensor> weights = opt_tensor(env, o, "weights"), shared = opt_tensor(env, o, "shared");
    const Device dev = y.device();
    require_on(pair_to_row, dev, "pairToRow");
    require_on(weights, dev, "weights");
    require_on(shared, dev, "shared");
    require_dtype(y, DType::kF32, "y");
    require_dtype(pair_to_row, DType::kI32, "pairToRow");
    CombineParams c;
    c.rows = dim_of(y, 2, 0, "y");
    c.hidden = y.shape[1];
    c.tokens = dim_of(pair_to_row, 2, 0, "pairToRow");
    c.k = pair_to_row.shape[1];
    require_shape(weights, {c.tokens, c.k}, "weights");
    require_shape(shared, {c.tokens, c.hidden}, "shared");
    auto out = std::make_shared<Tensor>();
    return Job::start(
        env, "moekit.combine",
        [c, y, pair_to_row, weights, shared, out, dev]() mutable { run_on(dev, [&](void* stream) {
          *out = Tensor::empty(DType::kF32, {c.tokens, c.hidden}, dev);
          c.y = y.as<float>();
          c.pair_to_row = pair_to_row.as<int32_t>();
          c.weights = weights ? weights->as<float>() : nullptr;
          c.shared = shared ? shared->as<float>() : nullptr;
          c.out = out->as<float>();
          if (dev.is_cpu())
            cpu::combine(c);
          else
            cuda::combine(c, stream);
        }); },
        [out](Napi::Env e) -> Napi::Value { return NativeTensor::wrap(e, std::move(*out)); });
  });
}

// moeLayerForward({x, routerW, routerB?, wIn, wInUp?, bIn?, bInUp?, wOut, bOut?, layoutIn, layoutOut,
//   sharedWIn?, sharedWInUp?, sharedWOut?, sharedGate?, sharedIntermediate, forcedIds?, forcedWeights?,
//   experts, intermediate, activation, alpha, limit, blockSize, capacity, outDtype, ...gating options})
//   -> Promise<[y, ids, weights, load, dropped]>
Napi::Value moe_layer_forward_op(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    Napi::Object o = info[0].As<Napi::Object>();
    const Tensor x = req_tensor(env, o, "x");
    const Device dev = x.device();
    std::vector<std::optional<Tensor>> held;  // keeps every storage alive for the job
    auto take = [&](const char* name) -> size_t {
      held.push_back(opt_tensor(env, o, name));
      require_on(held.back(), dev, name);
      return held.size() - 1;
    };
    const size_t router_w = take("routerW"), router_b = take("routerB"), w_in = take("wIn"), w_in_up = take("wInUp"),
                 b_in = take("bIn"), b_in_up = take("bInUp"), w_out = take("wOut"), b_out = take("bOut"),
                 s_in = take("sharedWIn"), s_in_up = take("sharedWInUp"), s_out = take("sharedWOut"),
                 s_gate = take("sharedGate"), f_ids = take("forcedIds"), f_w = take("forcedWeights"),
                 corr = take("correctionBias");
    MoELayerParams p;
    p.tokens = dim_of(x, 2, 0, "x");
    p.hidden = x.shape[1];
    p.x_dtype = x.dtype;
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
    const WeightLayout layout_in = static_cast<WeightLayout>(get_i64(o, "layoutIn", 0));
    const WeightLayout layout_out = static_cast<WeightLayout>(get_i64(o, "layoutOut", 0));
    auto out = std::make_shared<std::array<Tensor, 5>>();
    return Job::start(
        env, "moekit.moeLayerForward",
        [p, x, held, out, router_w, router_b, w_in, w_in_up, b_in, b_in_up, w_out, b_out, s_in, s_in_up, s_out,
         s_gate, f_ids, f_w, corr, layout_in, layout_out, dev]() mutable { run_on(dev, [&](void* stream) {
          const int64_t T = p.tokens, K = p.gating.k;
          (*out)[0] = Tensor::empty(p.y_dtype, {T, p.hidden}, dev);
          (*out)[1] = Tensor::empty(DType::kI32, {T, K}, dev);
          (*out)[2] = Tensor::empty(DType::kF32, {T, K}, dev);
          (*out)[3] = Tensor::empty(DType::kI32, {p.experts}, dev);
          (*out)[4] = Tensor::empty(DType::kI64, {1}, dev);
          p.x = x.data();
          p.router_w = weight_ref(held[router_w]);
          p.router_b = weight_ref(held[router_b]);
          p.w_in = weight_ref(held[w_in], layout_in);
          p.w_in_up = weight_ref(held[w_in_up], layout_in);
          p.b_in = weight_ref(held[b_in]);
          p.b_in_up = weight_ref(held[b_in_up]);
          p.w_out = weight_ref(held[w_out], layout_out);
          p.b_out = weight_ref(held[b_out]);
          p.shared_w_in = weight_ref(held[s_in]);
          p.shared_w_in_up = weight_ref(held[s_in_up]);
          p.shared_w_out = weight_ref(held[s_out]);
          p.shared_gate = weight_ref(held[s_gate]);
          p.forced_ids = held[f_ids] ? held[f_ids]->as<int32_t>() : nullptr;
          p.forced_weights = held[f_w] ? held[f_w]->as<float>() : nullptr;
          p.gating.correction_bias = held[corr] ? held[corr]->as<float>() : nullptr;
          p.y = (*out)[0].data();
          p.ids = (*out)[1].as<int32_t>();
          p.weights = (*out)[2].as<float>();
          p.load = (*out)[3].as<int32_t>();
          p.dropped = (*out)[4].as<int64_t>();
          if (dev.is_cpu())
            cpu::moe_layer_forward(p);
          else
            cuda::moe_layer_forward(p, stream);
        }); },
        [out](Napi::Env e) -> Napi::Value {
          Napi::Array a = Napi::Array::New(e, 5);
          for (uint32_t i = 0; i < 5; ++i) a.Set(i, NativeTensor::wrap(e, std::move((*out)[i])));
          return a;
        });
  });
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("gating", Napi::Function::New(env, gating_op, "gating"));
  exports.Set("dispatch", Napi::Function::New(env, dispatch_op, "dispatch"));
  exports.Set("groupedGemm", Napi::Function::New(env, grouped_gemm_op, "groupedGemm"));
  exports.Set("combine", Napi::Function::New(env, combine_op, "combine"));
  exports.Set("moeLayerForward", Napi::Function::New(env, moe_layer_forward_op, "moeLayerForward"));
}

}  // namespace moekit::native
