#include "native/errors.h"

#include <new>

namespace moekit::native {

AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

Napi::Object make_error(Napi::Env env, const std::string& code, const std::string& message,
                        const std::string& cuda_error) {
  AddonData& data = addon_data(env);
  Napi::Object err;
  if (!data.error_class.IsEmpty()) {
    Napi::Value cuda = cuda_error.empty() ? env.Undefined() : Napi::String::New(env, cuda_error);
    err = data.error_class.New({Napi::String::New(env, message), Napi::String::New(env, code), cuda});
  } else {
    err = Napi::Error::New(env, message).Value();
    err.Set("code", Napi::String::New(env, code));
    if (!cuda_error.empty()) err.Set("cudaError", Napi::String::New(env, cuda_error));
  }
  return err;
}

Napi::Object make_error(Napi::Env env, const moekit::Error& e) {
  return make_error(env, e.code(), e.what(), e.cuda_error());
}

moekit::Error current_exception_as_error() {
  try {
    throw;
  } catch (const moekit::Error& e) {
    return e;
  } catch (const std::bad_alloc&) {
    return moekit::Error(code::kOutOfMemory, "out of host memory");
  } catch (const std::exception& e) {
    return moekit::Error(code::kInternal, std::string("internal error: ") + e.what());
  } catch (...) {
    return moekit::Error(code::kInternal, "internal error: unknown exception");
  }
}

}  // namespace moekit::native
