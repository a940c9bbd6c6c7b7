// CUDA grouped GEMM: same semantics as moekit::cpu::grouped_gemm (see
// kernels/common/grouped_gemm_params.h), launched asynchronously on a stream.
// Every pointer in the params (x, offsets, w, w_up, bias, bias_up, row_scale, y)
// is a device pointer; offsets is never read on the host, so a forward pass does
// not synchronise. bf16/f16 weights run on tensor cores with x rounded to the
// weight's 16-bit type (the CPU backend keeps x in f32); see grouped_gemm.cu.
#pragma once

#include "kernels/common/grouped_gemm_params.h"

namespace moekit::cuda {

// Enqueues the grouped GEMM on `stream` (a cudaStream_t). Throws moekit::Error
// (ERR_INVALID_ARGUMENT) on malformed host-side params and ERR_CUDA on launch
// failure. Rows not covered by offsets are left untouched. Offsets that are not
// non-decreasing within [0, rows] give unspecified (but in-bounds) results.
void grouped_gemm(const GroupedGemmParams& p, void* stream);

}  // namespace moekit::cuda
