// CUDA-graph replay of MoE layer forwards. A layer forward launches a dozen or more
// kernels; at decode sizes launching them costs more host time than they take on the
// GPU. The cache captures the forward once per configuration (shapes, options, weight
// pointers) into a CUDA graph that reads its inputs from, and writes its outputs to,
// buffers the cache owns; a call copies its inputs in, replays the graph and copies the
// outputs out, all on the device's stream, with no host synchronisation.
// No CUDA includes here: the binding uses this header in every build.
#pragma once

#include <memory>

#include "kernels/common/moe_layer_params.h"

namespace moekit::cuda {

class LayerGraphCache;

// A cache for one layer (all its devices). Dropping the last reference releases the
// graphs and buffers; safe from any thread (device work is deferred to the device's worker).
std::shared_ptr<LayerGraphCache> make_layer_graph_cache();

// Inside run_on_device: runs the forward p (device pointers of the current device) by
// replaying the cached graph for its configuration, capturing it first when new.
// Returns false, having done nothing, when p's work cannot be captured (it is then not
// tried again for that configuration): the caller runs the forward eagerly.
bool graph_forward(LayerGraphCache& cache, const MoELayerParams& p, void* stream);

}  // namespace moekit::cuda
