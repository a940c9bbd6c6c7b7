// CUDA combine: weighted sum of each token's expert outputs back in token order,
// float32 accumulation in the same order as kernels/cpu/combine.cc (bit-identical).
// No CUDA includes here: stream is a cudaStream_t passed as void*.
#pragma once

#include "kernels/common/combine_params.h"

namespace moekit::cuda {

// See combine_params.h; every pointer is device memory. Unlike the CPU version, a
// pair_to_row entry >= rows cannot be reported from the device: it is skipped.
void combine(const CombineParams& p, void* stream);

}  // namespace moekit::cuda
