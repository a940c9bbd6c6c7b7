// Registers the op functions (gating, dispatch, grouped GEMM, combine, layer forward).
#pragma once

#include <napi.h>

namespace moekit::native {
void register_ops(Napi::Env env, Napi::Object exports);
// File bindings (native/io.cc).
void register_io(Napi::Env env, Napi::Object exports);
}
