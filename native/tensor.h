// NativeTensor: the JavaScript handle of a moekit::Tensor. One ObjectWrap per
// native resource; lib/tensor.ts wraps it with validation and typing.
#pragma once

#include <napi.h>

#include "kernels/common/tensor.h"

namespace moekit::native {

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function define(Napi::Env env);
  // A new JS handle owning `t` (reports its host bytes to the garbage collector).
  static Napi::Object wrap(Napi::Env env, Tensor t);
  // The tensor behind a JS handle; throws ERR_DISPOSED / TypeError.
  static const Tensor& unwrap(Napi::Env env, Napi::Value v, const char* what);

  explicit NativeTensor(const Napi::CallbackInfo& info);
  ~NativeTensor() override;

 private:
  static Napi::Value from_array(const Napi::CallbackInfo& info);
  static Napi::Value empty(const Napi::CallbackInfo& info);
  Napi::Value dtype(const Napi::CallbackInfo& info);
  Napi::Value shape(const Napi::CallbackInfo& info);
  Napi::Value device(const Napi::CallbackInfo& info);
  Napi::Value disposed(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);
  Napi::Value read_sync(const Napi::CallbackInfo& info);
  Napi::Value read(const Napi::CallbackInfo& info);
  Napi::Value to(const Napi::CallbackInfo& info);

  const Tensor& live(Napi::Env env) const;
  void release(Napi::Env* env);

  Tensor tensor_;
  bool disposed_ = false;
  int64_t reported_bytes_ = 0;  // host bytes reported to V8 as external memory
};

// Device from the JS pair (kind, index) as lib/device.ts encodes it.
Device device_from_js(const Napi::Value& kind, const Napi::Value& index);

// Copies host bytes of `t` into a new JS typed array (as float32 when `as_f32`).
Napi::Value host_to_js_array(Napi::Env env, DType dtype, const void* data, int64_t numel, bool as_f32);

}  // namespace moekit::native
