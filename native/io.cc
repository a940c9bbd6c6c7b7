// File bindings: tensor data read from checkpoint files straight into native memory,
// files mapped read-only, and byte ranges copied into existing tensors (expert offload).
#include <algorithm>
#include <chrono>
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

// A mapped file as JavaScript holds it: the External owns one reference; unmapFile drops
// it early, copies in flight hold their own.
struct MappingHolder {
  std::shared_ptr<MappedFile> file;
};
constexpr napi_type_tag kMappingTag = {0x6d6f656b69746d61ULL, 0x7070656466696c65ULL};

std::shared_ptr<MappedFile> mapping_of(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsExternal() || !v.As<Napi::External<MappingHolder>>().CheckTypeTag(&kMappingTag))
    throw Napi::TypeError::New(env, std::string("Expected a file mapping for ") + what);
  MappingHolder* h = v.As<Napi::External<MappingHolder>>().Data();
  if (!h->file) throw Napi::Error(env, make_error(env, code::kDisposed, "the file mapping has been released"));
  return h->file;
}

// mapFile(path) -> {handle, bytes}: maps a whole file read-only (see MappedFile).
Napi::Value map_file(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto* holder = new MappingHolder();
    try {
      holder->file = std::make_shared<MappedFile>(info[0].As<Napi::String>().Utf8Value());
    } catch (...) {
      delete holder;
      throw;
    }
    const double bytes = static_cast<double>(holder->file->size());
    auto ext = Napi::External<MappingHolder>::New(env, holder, [](Napi::Env, MappingHolder* h) { delete h; });
    ext.TypeTag(&kMappingTag);
    Napi::Object o = Napi::Object::New(env);
    o.Set("handle", ext);
    o.Set("bytes", bytes);
    return o;
  });
}

// unmapFile(handle): releases the mapping now (copies in flight keep it until they end).
Napi::Value unmap_file(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsExternal() || !info[0].As<Napi::External<MappingHolder>>().CheckTypeTag(&kMappingTag))
      throw Napi::TypeError::New(env, "Expected a file mapping for handle");
    info[0].As<Napi::External<MappingHolder>>().Data()->file.reset();
    return env.Undefined();
  });
}

// copyRanges([{dst, dstOffset, bytes, mapping? | src?, srcOffset}]) -> Promise<number>
// Copies byte ranges of mapped files or tensors into byte offsets of existing tensors
// (all on one device; tensor sources on the host or that device), off the JS thread.
// Resolves to the milliseconds the copies took. lib/offload has checked the ranges;
// they are checked again here.
Napi::Value copy_ranges_fn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    Napi::Array parts = info[0].As<Napi::Array>();
    std::vector<Tensor> tensors;  // every storage stays alive for the job
    std::vector<std::shared_ptr<MappedFile>> files;
    std::vector<RangeCopy> ranges;
    Device dev;
    for (uint32_t i = 0; i < parts.Length(); ++i) {
      Napi::Object p = parts.Get(i).As<Napi::Object>();
      const Tensor dst = NativeTensor::unwrap(env, p.Get("dst"), "dst");
      if (i == 0) dev = dst.device();
      MOEKIT_REQUIRE(dst.device() == dev, "copyRanges: destinations on ", dev.name(), " and ", dst.device().name());
      const int64_t dst_offset = p.Get("dstOffset").As<Napi::Number>().Int64Value();
      const int64_t bytes = p.Get("bytes").As<Napi::Number>().Int64Value();
      const int64_t src_offset = p.Get("srcOffset").As<Napi::Number>().Int64Value();
      MOEKIT_REQUIRE(bytes >= 0 && dst_offset >= 0 && src_offset >= 0, "copyRanges: negative range");
      // NOTE: written as bytes <= size && offset <= size - bytes, which cannot overflow.
      MOEKIT_REQUIRE(bytes <= dst.bytes() && dst_offset <= dst.bytes() - bytes, "copyRanges: ", bytes,
                     " bytes at offset ", dst_offset, " run past the destination's ", dst.bytes(), " bytes");
      RangeCopy r;
      r.dst = static_cast<char*>(dst.data()) + dst_offset;
      r.bytes = bytes;
      if (p.Has("mapping") && !p.Get("mapping").IsUndefined()) {
        std::shared_ptr<MappedFile> f = mapping_of(env, p.Get("mapping"), "mapping");
        MOEKIT_REQUIRE(bytes <= f->size() && src_offset <= f->size() - bytes, "copyRanges: ", bytes,
                       " bytes at offset ", src_offset, " run past the end of ", f->path(), " (", f->size(), " bytes)");
        r.src = f->data() + src_offset;
        r.src_on_host = true;
        files.push_back(std::move(f));
      } else {
        const Tensor src = NativeTensor::unwrap(env, p.Get("src"), "src");
        MOEKIT_REQUIRE(src.device().is_cpu() || src.device() == dev, "copyRanges: a source on ", src.device().name(),
                       " cannot be copied to ", dev.name());
        MOEKIT_REQUIRE(bytes <= src.bytes() && src_offset <= src.bytes() - bytes, "copyRanges: ", bytes,
                       " bytes at offset ", src_offset, " run past the source's ", src.bytes(), " bytes");
        r.src = static_cast<const char*>(src.data()) + src_offset;
        r.src_on_host = src.device().is_cpu();
        tensors.push_back(src);
      }
      tensors.push_back(dst);
      ranges.push_back(r);
    }
    auto ms = std::make_shared<double>(0.0);
    return Job::start(
        env, "moekit.copyRanges",
        [tensors, files, ranges, dev, ms]() {
          // The copy's own time, without waiting for the device's copy lock.
          *ms = copy_ranges(dev, ranges);
        },
        [ms](Napi::Env e) -> Napi::Value { return Napi::Number::New(e, *ms); });
  });
}

}  // namespace

void register_io(Napi::Env env, Napi::Object exports) {
  exports.Set("readTensor", Napi::Function::New(env, read_tensor, "readTensor"));
  exports.Set("fileSize", Napi::Function::New(env, file_size_fn, "fileSize"));
  exports.Set("mapFile", Napi::Function::New(env, map_file, "mapFile"));
  exports.Set("unmapFile", Napi::Function::New(env, unmap_file, "unmapFile"));
  exports.Set("copyRanges", Napi::Function::New(env, copy_ranges_fn, "copyRanges"));
}

}  // namespace moekit::native
