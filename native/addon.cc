// Module entry: registers the classes and functions the TypeScript layer calls.
// Nothing here computes; it translates between JavaScript and the kernels core.
#include <napi.h>

#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cuda/cuda_runtime.h"
#include "native/errors.h"
#include "native/ops.h"
#include "native/tensor.h"

namespace moekit::native {

namespace {

Napi::Value set_error_class(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "Expected a class for setErrorClass");
  addon_data(env).error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

// runtime(): what this binary was built with and what it can use on this machine.
Napi::Value runtime(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const cuda::RuntimeInfo& r = cuda::runtime_info();
    Napi::Object o = Napi::Object::New(env);
    o.Set("compiledWithCuda", r.compiled_with_cuda);
    o.Set("cudaDriverVersion", r.driver_version);
    o.Set("cudaRuntimeVersion", r.runtime_version);
    o.Set("cudaUnavailableReason", r.unavailable_reason.empty() ? env.Null() : Napi::String::New(env, r.unavailable_reason));
    Napi::Array devices = Napi::Array::New(env, r.devices.size());
    for (size_t i = 0; i < r.devices.size(); ++i) {
      const cuda::DeviceInfo& d = r.devices[i];
      Napi::Object od = Napi::Object::New(env);
      od.Set("index", d.index);
      od.Set("name", d.name);
      od.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
      od.Set("memoryBytes", static_cast<double>(d.memory_bytes));
      od.Set("multiprocessors", d.multiprocessors);
      devices.Set(static_cast<uint32_t>(i), od);
    }
    o.Set("devices", devices);
    o.Set("cpuThreads", cpu::num_threads());
    o.Set("cpuIsa", cpu::grouped_gemm_isa());
    return o;
  });
}

// deviceMemory(index) -> {freeBytes, totalBytes, poolUsedBytes, poolReservedBytes, graphUsedBytes,
// graphReservedBytes} of a CUDA device.
Napi::Value device_memory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const cuda::MemoryInfo m = cuda::memory_info(info[0].As<Napi::Number>().Int32Value());
    Napi::Object o = Napi::Object::New(env);
    o.Set("freeBytes", static_cast<double>(m.free_bytes));
    o.Set("totalBytes", static_cast<double>(m.total_bytes));
    o.Set("poolUsedBytes", static_cast<double>(m.pool_used_bytes));
    o.Set("poolReservedBytes", static_cast<double>(m.pool_reserved_bytes));
    o.Set("graphUsedBytes", static_cast<double>(m.graph_used_bytes));
    o.Set("graphReservedBytes", static_cast<double>(m.graph_reserved_bytes));
    return o;
  });
}

Napi::Object init_module(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  Napi::Function tensor_class = NativeTensor::define(env);
  data->tensor_class = Napi::Persistent(tensor_class);
  exports.Set("NativeTensor", tensor_class);
  exports.Set("setErrorClass", Napi::Function::New(env, set_error_class, "setErrorClass"));
  exports.Set("runtime", Napi::Function::New(env, runtime, "runtime"));
  exports.Set("deviceMemory", Napi::Function::New(env, device_memory, "deviceMemory"));
  register_ops(env, exports);
  register_io(env, exports);
  return exports;
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) { return init_module(env, exports); }

}  // namespace moekit::native

static Napi::Object InitMoekit(Napi::Env env, Napi::Object exports) { return moekit::native::init(env, exports); }

NODE_API_MODULE(NODE_GYP_MODULE_NAME, InitMoekit)
