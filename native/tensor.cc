#include "native/tensor.h"

#include <cstring>
#include <vector>

#include "kernels/cpu/convert.h"
#include "native/async.h"
#include "native/errors.h"

namespace moekit::native {

namespace {

DType dtype_from_js(const Napi::Value& v) {
  const int32_t d = v.As<Napi::Number>().Int32Value();
  MOEKIT_REQUIRE(d >= 0 && d <= static_cast<int32_t>(DType::kI64), "unknown dtype code ", d);
  return static_cast<DType>(d);
}

std::vector<int64_t> shape_from_js(const Napi::Value& v) {
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> shape(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) shape[i] = a.Get(i).As<Napi::Number>().Int64Value();
  return shape;
}

}  // namespace

Device device_from_js(const Napi::Value& kind, const Napi::Value& index) {
  Device d;
  d.kind = kind.As<Napi::Number>().Int32Value() == 1 ? Device::Kind::kCuda : Device::Kind::kCpu;
  d.index = index.As<Napi::Number>().Int32Value();
  return d;
}

Napi::Function NativeTensor::define(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {
                         StaticMethod<&NativeTensor::from_array>("fromArray"),
                         StaticMethod<&NativeTensor::empty>("empty"),
                         InstanceAccessor<&NativeTensor::dtype>("dtype"),
                         InstanceAccessor<&NativeTensor::shape>("shape"),
                         InstanceAccessor<&NativeTensor::device>("device"),
                         InstanceAccessor<&NativeTensor::disposed>("disposed"),
                         InstanceMethod<&NativeTensor::dispose>("dispose"),
                         InstanceMethod<&NativeTensor::read_sync>("readSync"),
                         InstanceMethod<&NativeTensor::read>("read"),
                         InstanceMethod<&NativeTensor::to>("to"),
                     });
}

NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {}

NativeTensor::~NativeTensor() {
  Napi::Env env = Env();
  release(&env);
}

void NativeTensor::release(Napi::Env* env) {
  if (env != nullptr && reported_bytes_ != 0) Napi::MemoryManagement::AdjustExternalMemory(*env, -reported_bytes_);
  reported_bytes_ = 0;
  tensor_.storage.reset();  // in-flight work holds its own reference
}

Napi::Object NativeTensor::wrap(Napi::Env env, Tensor t) {
  Napi::Object obj = addon_data(env).tensor_class.New({});
  NativeTensor* self = Napi::ObjectWrap<NativeTensor>::Unwrap(obj);
  self->tensor_ = std::move(t);
  if (self->tensor_.device().is_cpu() && self->tensor_.storage) {
    // NOTE: tell V8 about native memory so finalizers of undisposed tensors run in time.
    self->reported_bytes_ = self->tensor_.storage->bytes();
    Napi::MemoryManagement::AdjustExternalMemory(env, self->reported_bytes_);
  }
  return obj;
}

const Tensor& NativeTensor::unwrap(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(addon_data(env).tensor_class.Value()))
    throw Napi::TypeError::New(env, std::string("Expected a Tensor for ") + what);
  return Napi::ObjectWrap<NativeTensor>::Unwrap(v.As<Napi::Object>())->live(env);
}

const Tensor& NativeTensor::live(Napi::Env env) const {
  if (disposed_ || !tensor_.storage)
    throw Napi::Error(env, make_error(env, code::kDisposed, "the tensor has been disposed"));
  return tensor_;
}

// fromArray(view, dtype, shape): copies (and converts) a typed array into a new host tensor.
// The view is a Float32Array (any float dtype), Uint16Array (f16/bf16 bits), Int32Array
// (i32) or BigInt64Array (i64); lib/tensor.ts has checked the pairing and the length.
Napi::Value NativeTensor::from_array(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    // NOTE: napi_get_typedarray_info gives the data pointer for views of both ArrayBuffer
    // and SharedArrayBuffer (the ArrayBuffer accessor refuses the latter).
    napi_typedarray_type type;
    size_t length = 0, byte_offset = 0;
    void* data = nullptr;
    napi_value buffer;
    if (!info[0].IsTypedArray() ||
        napi_get_typedarray_info(env, info[0], &type, &length, &data, &buffer, &byte_offset) != napi_ok)
      throw Napi::TypeError::New(env, "Expected a typed array for data");
    const DType dtype = dtype_from_js(info[1]);
    Tensor t = Tensor::empty(dtype, shape_from_js(info[2]), Device{});
    MOEKIT_REQUIRE(static_cast<int64_t>(length) == t.numel(), "array has ", length, " elements but the shape ",
                   shape_string(t.shape), " needs ", t.numel());
    const uint8_t* src = static_cast<const uint8_t*>(data);
    if (type == napi_float32_array) {
      cpu::convert_from_f32(dtype, reinterpret_cast<const float*>(src), t.data(), t.numel());
    } else {
      const int64_t elem = type == napi_uint16_array ? 2 : type == napi_int32_array ? 4 : type == napi_bigint64_array ? 8 : 0;
      MOEKIT_REQUIRE(elem == dtype_size(dtype), "a ", dtype_name(dtype), " tensor cannot be filled from this typed array");
      if (t.bytes() > 0) std::memcpy(t.data(), src, static_cast<size_t>(t.bytes()));
    }
    return wrap(env, std::move(t));
  });
}

// empty(dtype, shape, kind, index): uninitialised memory on a device (no JS copy).
Napi::Value NativeTensor::empty(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return wrap(env, Tensor::empty(dtype_from_js(info[0]), shape_from_js(info[1]), device_from_js(info[2], info[3])));
  });
}

Napi::Value NativeTensor::dtype(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<int32_t>(tensor_.dtype));
}

Napi::Value NativeTensor::shape(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env(), tensor_.shape.size());
  for (uint32_t i = 0; i < tensor_.shape.size(); ++i) a.Set(i, Napi::Number::New(info.Env(), static_cast<double>(tensor_.shape[i])));
  return a;
}

Napi::Value NativeTensor::device(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), tensor_.device().name());
}

Napi::Value NativeTensor::disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), disposed_);
}

Napi::Value NativeTensor::dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  disposed_ = true;
  release(&env);
  return env.Undefined();
}

Napi::Value host_to_js_array(Napi::Env env, DType dtype, const void* data, int64_t numel, bool as_f32) {
  const DType out_type = as_f32 ? DType::kF32 : dtype;
  const int64_t bytes = numel * dtype_size(out_type);
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, static_cast<size_t>(bytes));
  void* dst = buf.Data();
  if (as_f32)
    cpu::convert_to_f32(dtype, data, static_cast<float*>(dst), numel);
  else if (bytes > 0)
    std::memcpy(dst, data, static_cast<size_t>(bytes));
  const size_t n = static_cast<size_t>(numel);
  switch (out_type) {
    case DType::kF32: return Napi::Float32Array::New(env, n, buf, 0);
    case DType::kF16:
    case DType::kBF16: return Napi::Uint16Array::New(env, n, buf, 0);
    case DType::kI32: return Napi::Int32Array::New(env, n, buf, 0);
    case DType::kI64: return Napi::TypedArrayOf<int64_t>::New(env, n, buf, 0, napi_bigint64_array);
  }
  return env.Undefined();
}

// readSync(asF32): host tensors only (lib/ checks); returns a fresh typed array.
Napi::Value NativeTensor::read_sync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const Tensor& t = live(env);
    MOEKIT_REQUIRE(t.device().is_cpu(), "readSync works on host tensors; this one is on ", t.device().name());
    return host_to_js_array(env, t.dtype, t.data(), t.numel(), info[0].ToBoolean());
  });
}

// read(asF32): any device; copies device data to the host off the JS thread.
Napi::Value NativeTensor::read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const Tensor t = live(env);  // a copy: holds the storage until the job ends
    const bool as_f32 = info[0].ToBoolean();
    auto host = std::make_shared<Tensor>();
    return Job::start(
        env, "moekit.read",
        [t, host] {
          if (t.device().is_cpu()) {
            *host = t;
            return;
          }
          *host = Tensor::empty(t.dtype, t.shape, Device{});
          copy_bytes(Device{}, host->data(), t.device(), t.data(), t.bytes());
        },
        [host, as_f32](Napi::Env e) { return host_to_js_array(e, host->dtype, host->data(), host->numel(), as_f32); });
  });
}

// to(kind, index): a copy of the tensor on another device.
Napi::Value NativeTensor::to(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const Tensor t = live(env);
    const Device dst = device_from_js(info[0], info[1]);
    auto out = std::make_shared<Tensor>();
    return Job::start(
        env, "moekit.to",
        [t, dst, out] {
          *out = Tensor::empty(t.dtype, t.shape, dst);
          copy_bytes(dst, out->data(), t.device(), t.data(), t.bytes());
        },
        [out](Napi::Env e) -> Napi::Value { return wrap(e, std::move(*out)); });
  });
}

}  // namespace moekit::native
