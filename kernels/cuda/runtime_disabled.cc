// The CUDA runtime interface for builds without nvcc: every call reports that this
// binary was built without the CUDA backend.
#include "kernels/common/error.h"
#include "kernels/cuda/combine.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/memcopy.h"
#include "kernels/cuda/cuda_runtime.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/gating.h"
#include "kernels/cuda/graph_cache.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/moe_layer.h"

namespace moekit::cuda {

namespace {
[[noreturn]] void not_compiled() {
  fail(code::kCudaUnavailable,
       "this moekit binary was built without the CUDA backend (nvcc was not found at build time); "
       "rebuild with nvcc on PATH or CUDACXX set: npm run rebuild");
}
}  // namespace

const RuntimeInfo& runtime_info() {
  static const RuntimeInfo info = [] {
    RuntimeInfo r;
    r.compiled_with_cuda = false;
    r.unavailable_reason = "this binary was built without the CUDA backend (nvcc was not found at build time)";
    return r;
  }();
  return info;
}

void require_device(int32_t) { not_compiled(); }
void run_on_device(int32_t, const std::function<void()>&) { not_compiled(); }
double run_copy_on_device(int32_t, const std::function<void()>&) { not_compiled(); }
void* current_stream() { not_compiled(); }
SideStream side_stream() { not_compiled(); }
void* device_alloc(int32_t, int64_t) { not_compiled(); }
void device_free(int32_t, void*) {}
void run_or_defer_on_device(int32_t, std::function<void()>) {}
void copy(int32_t, void*, const void*, int64_t, CopyKind) { not_compiled(); }
MemoryInfo memory_info(int32_t) { not_compiled(); }
Timing time_replays(const std::function<void(void*)>&, int, int, bool) { not_compiled(); }

// The CUDA kernel families: unreachable without a device (run_on_device refuses first),
// defined so the CPU-only build links.
void gating(const GatingParams&, void*) { not_compiled(); }
void dispatch(const DispatchParams&, void*) { not_compiled(); }
void permute_rows(const PermuteParams&, void*) { not_compiled(); }
void combine(const CombineParams&, void*) { not_compiled(); }
void grouped_gemm(const GroupedGemmParams&, void*) { not_compiled(); }
void moe_layer_forward(const MoELayerParams&, void*) { not_compiled(); }
class LayerGraphCache {};
std::shared_ptr<LayerGraphCache> make_layer_graph_cache() { return std::make_shared<LayerGraphCache>(); }
bool graph_forward(LayerGraphCache&, const MoELayerParams&, void*) { not_compiled(); }
void convert_to_f32(DType, const void*, float*, int64_t, void*) { not_compiled(); }
void convert_from_f32(DType, const float*, void*, int64_t, void*) { not_compiled(); }
void copy_device(void*, const void*, int64_t, void*) { not_compiled(); }

}  // namespace moekit::cuda
