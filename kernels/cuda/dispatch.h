// CUDA dispatch (stable counting sort of the (token, slot) pairs by expert) and the
// row gather into dispatch order, with the same outputs as kernels/cpu/dispatch.cc.
// No CUDA includes here: stream is a cudaStream_t passed as void*.
#pragma once

#include "kernels/common/dispatch_params.h"

namespace moekit::cuda {

// Counting sort of the pairs by expert (see dispatch_params.h); every pointer is
// device memory (p.dropped may be null). Stream-ordered, no host synchronisation.
// Unlike the CPU version, expert ids >= experts cannot be reported from the device:
// such pairs are treated like id -1 (skipped).
void dispatch(const DispatchParams& p, void* stream);

// Row gather into dispatch order (see PermuteParams); device pointers.
void permute_rows(const PermuteParams& p, void* stream);

}  // namespace moekit::cuda
