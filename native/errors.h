// Turns moekit::Error (and anything else a kernel throws) into a real JavaScript
// MoekitError instance. lib/ hands the MoekitError class to the addon once at load.
#pragma once

#include <napi.h>

#include <exception>
#include <string>

#include "kernels/common/error.h"

namespace moekit::native {

// Per-environment state of the addon (worker threads each get their own).
struct AddonData {
  Napi::FunctionReference error_class;    // lib/errors.ts MoekitError
  Napi::FunctionReference tensor_class;   // NativeTensor
};

AddonData& addon_data(Napi::Env env);

// A MoekitError instance (falls back to a plain Error before the class is registered).
Napi::Object make_error(Napi::Env env, const std::string& code, const std::string& message,
                        const std::string& cuda_error = "");
Napi::Object make_error(Napi::Env env, const moekit::Error& e);

// The current C++ exception as a moekit::Error (bad_alloc becomes ERR_OOM).
moekit::Error current_exception_as_error();

// Runs fn; converts any C++ exception except a Napi::Error into a thrown MoekitError.
template <typename Fn>
auto guarded(Napi::Env env, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    moekit::Error e = current_exception_as_error();
    throw Napi::Error(env, make_error(env, e));
  }
}

}  // namespace moekit::native
