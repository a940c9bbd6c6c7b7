// File bindings: tensor data read from checkpoint files straight into native memory.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "kernels/common/file_io.h"
#include "kernels/common/tensor.h"
#include "kernels/cpu/convert.h"
#include "native/async.h"
#include "native/errors.h"
#include "native/ops.h"
#include "native/tensor.h"

namespace moekit::native {

namespace {

// readTensor({parts: [{path, offset, bytes}], fileDtype, dtype, shape}) -> Promise<NativeTensor>
// Reads each part (a byte range of a file holding `fileDtype` elements) one after the
// other into a new host tensor of `dtype` and `shape` (converted through float32 when
// the two dtypes differ). Several parts stack per-expert tensors into one [E, ...]
// tensor without an intermediate copy. lib/safetensors.ts has checked every range
// against its file's header.
Napi::Value read_tensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    struct Part {
      std::string path;
      int64_t offset;
      int64_t bytes;
    };
    Napi::Object o = info[0].As<Napi::Object>();
    std::vector<Part> parts;
    Napi::Array pa = o.Get("parts").As<Napi::Array>();
    int64_t total = 0;
    for (uint32_t i = 0; i < pa.Length(); ++i) {
      Napi::Object p = pa.Get(i).As<Napi::Object>();
      parts.push_back({p.Get("path").As<Napi::String>().Utf8Value(), p.Get("offset").As<Napi::Number>().Int64Value(),
                       p.Get("bytes").As<Napi::Number>().Int64Value()});
      MOEKIT_REQUIRE(parts.back().offset >= 0 && parts.back().bytes >= 0, "readTensor: negative range");
      total += parts.back().bytes;
    }
    const DType file_dtype = static_cast<DType>(o.Get("fileDtype").As<Napi::Number>().Int32Value());
    const DType dtype = static_cast<DType>(o.Get("dtype").As<Napi::Number>().Int32Value());
    std::vector<int64_t> shape;
    Napi::Array a = o.Get("shape").As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) shape.push_back(a.Get(i).As<Napi::Number>().Int64Value());
    MOEKIT_REQUIRE(Tensor::checked_numel(shape) * dtype_size(file_dtype) == total, "readTensor: ", total,
                   " bytes do not hold ", dtype_name(file_dtype), " data of shape ", shape_string(shape));
    MOEKIT_REQUIRE(file_dtype == dtype || (dtype_is_float(file_dtype) && dtype_is_float(dtype)),
                   "readTensor: cannot convert ", dtype_name(file_dtype), " to ", dtype_name(dtype));
    auto out = std::make_shared<Tensor>();
    return Job::start(
        env, "moekit.readTensor",
        [=]() {
          *out = Tensor::empty(dtype, shape, Device{});
          const int64_t in_size = dtype_size(file_dtype), out_size = dtype_size(dtype);
          char* dst = static_cast<char*>(out->data());
          if (file_dtype == dtype) {
            for (const Part& p : parts) {
              read_file_range(p.path, p.offset, p.bytes, dst);
              dst += p.bytes;
            }
            return;
          }
          // NOTE: convert in 4 Mi-element chunks so the staging buffers stay small.
          const int64_t chunk = int64_t{1} << 22;
          std::vector<char> staging(static_cast<size_t>(chunk * in_size));
          std::vector<float> f32(static_cast<size_t>(chunk));
          for (const Part& p : parts) {
            const int64_t n = p.bytes / in_size;
            for (int64_t i = 0; i < n; i += chunk) {
              const int64_t m = std::min(chunk, n - i);
              read_file_range(p.path, p.offset + i * in_size, m * in_size, staging.data());
              cpu::convert_to_f32(file_dtype, staging.data(), f32.data(), m);
              cpu::convert_from_f32(dtype, f32.data(), dst, m);
              dst += m * out_size;
            }
          }
        },
        [out](Napi::Env e) -> Napi::Value { return NativeTensor::wrap(e, std::move(*out)); });
  });
}

// fileSize(path) -> number (bytes); ERR_IO when the file cannot be opened.
Napi::Value file_size_fn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    return Napi::Number::New(env, static_cast<double>(file_size(info[0].As<Napi::String>().Utf8Value())));
  });
}

}  // namespace

void register_io(Napi::Env env, Napi::Object exports) {
  exports.Set("readTensor", Napi::Function::New(env, read_tensor, "readTensor"));
  exports.Set("fileSize", Napi::Function::New(env, file_size_fn, "fileSize"));
}

}  // namespace moekit::native
