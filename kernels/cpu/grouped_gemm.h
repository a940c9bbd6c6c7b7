// CPU grouped GEMM with fused activation epilogue (see grouped_gemm_params.h for
// the exact semantics). The SIMD path (AVX-512, AVX2+FMA, or portable scalar) is
// picked at run time from the CPU's features; MOEKIT_CPU_ISA=avx512|avx2|scalar
// caps it (used by tests to exercise every path on one machine).
#pragma once

#include "kernels/common/grouped_gemm_params.h"

namespace moekit::cpu {

// Computes p.y for every row covered by p.offsets; throws moekit::Error
// (ERR_INVALID_ARGUMENT) on malformed params. Uses all pool threads.
void grouped_gemm(const GroupedGemmParams& p);

// Name of the SIMD path grouped_gemm uses on this machine ("avx512", "avx2", "scalar").
const char* grouped_gemm_isa();

}  // namespace moekit::cpu
