#include "kernels/cpu/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "kernels/common/dispatch_params.h"
#include "kernels/common/error.h"
#include "kernels/cpu/combine.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gating.h"
#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/thread_pool.h"

namespace moekit::cpu {

namespace {

// Per-forward float buffers, carved from one uninitialised block (every element
// is written before it is read). Up to kRetainFloats the block is the calling
// thread's and is kept for its next forward: a fresh multi-megabyte allocation is
// a fresh mapping, and its first-touch page faults cost as much as a gather.
constexpr int64_t kRetainFloats = int64_t{4} << 20;  // 16 MiB per thread

class Workspace {
 public:
  explicit Workspace(int64_t floats) {
    thread_local std::unique_ptr<float[]> kept;
    thread_local int64_t kept_floats = 0;
    floats = std::max<int64_t>(floats, 1);
    if (floats > kRetainFloats) {
      owned_.reset(new float[static_cast<size_t>(floats)]);
      base_ = owned_.get();
      return;
    }
    if (kept_floats < floats) {
      kept.reset();
      kept.reset(new float[static_cast<size_t>(floats)]);
      kept_floats = floats;
    }
    base_ = kept.get();
  }
  // The next n floats (64-byte multiples apart).
  float* take(int64_t n) {
    float* p = base_ + used_;
    used_ += padded(n);
    return p;
  }
  static int64_t padded(int64_t n) { return (std::max<int64_t>(n, 0) + 15) & ~int64_t{15}; }

 private:
  std::unique_ptr<float[]> owned_;
  float* base_ = nullptr;
  int64_t used_ = 0;
};

// One dense projection (a single "expert" covering every row): y = act(x . W^T + b).
void dense(const float* x, int64_t rows, int64_t in, int64_t out, const WeightRef& w, const WeightRef& b,
           const WeightRef& w_up, Activation act, float* y, const float* row_scale = nullptr) {
  const int32_t offsets[2] = {0, static_cast<int32_t>(rows)};
  grouped_gemm(dense_projection(x, rows, in, out, w, b, w_up, act, y, row_scale, offsets));
}

float score_of(Scoring s, float x) {
  switch (s) {
    case Scoring::kSigmoid: return 1.0f / (1.0f + std::exp(-x));
    case Scoring::kSqrtSoftplus: return std::sqrt(x > 20.0f ? x : std::log1p(std::exp(x)));
    default: return x;  // softmax is handled over the row
  }
}

// Weights of forced ids, from the router logits [tokens, cols]: the layer's scores at
// those ids (softmax over the row; over the chosen logits for top-k-then-softmax),
// then the layer's renormalisation and scaling. Unused slots (-1) get 0.
void forced_weights_from_logits(const GatingParams& g, int64_t tokens, const float* logits, int64_t cols,
                                const int32_t* ids, float* weights) {
  parallel_for(tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = logits + t * cols;
      const int32_t* id = ids + t * g.k;
      float* w = weights + t * g.k;
      if (g.selection == Selection::kTopkLogitsThenSoftmax || g.scoring == Scoring::kSoftmax) {
        const bool over_chosen = g.selection == Selection::kTopkLogitsThenSoftmax;
        float mx = -INFINITY;
        if (over_chosen) {
          for (int64_t s = 0; s < g.k; ++s)
            if (id[s] >= 0) mx = std::max(mx, row[id[s]]);
        } else {
          for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, row[c]);
        }
        float sum = 0.0f;
        if (over_chosen) {
          for (int64_t s = 0; s < g.k; ++s)
            if (id[s] >= 0) sum += std::exp(row[id[s]] - mx);
        } else {
          for (int64_t c = 0; c < cols; ++c) sum += std::exp(row[c] - mx);
        }
        for (int64_t s = 0; s < g.k; ++s) w[s] = id[s] >= 0 ? std::exp(row[id[s]] - mx) / sum : 0.0f;
      } else {
        for (int64_t s = 0; s < g.k; ++s) w[s] = id[s] >= 0 ? score_of(g.scoring, row[id[s]]) : 0.0f;
      }
      if (g.renormalize) {
        float sum = 0.0f;
        for (int64_t s = 0; s < g.k; ++s) sum += w[s];
        for (int64_t s = 0; s < g.k; ++s) w[s] /= (sum + 1e-20f);
      }
      for (int64_t s = 0; s < g.k; ++s) w[s] *= g.routed_scaling;
    }
  });
}

}  // namespace

void moe_layer_forward(const MoELayerParams& p) {
  // Shape contract: x [T, H]; router_w [E + null, H]; w_in per layout; w_out [E, H, I] / [E, I, H];
  // y [T, H]; ids, weights [T, k]; load [E].
  const int64_t T = p.tokens, H = p.hidden, E = p.experts, I = p.intermediate, K = p.gating.k;
  MOEKIT_REQUIRE(T >= 0 && H >= 1 && E >= 1 && I >= 1 && K >= 1, "moe_layer_forward: bad sizes T=", T,
                 " H=", H, " E=", E, " I=", I, " k=", K);
  MOEKIT_REQUIRE(dispatch_max_rows(T, K, E, p.block_size) <= INT32_MAX, "moe_layer_forward: ", T, " tokens x ", K,
                 " slots exceed 32-bit row indices");
  const bool glu = activation_is_glu(p.activation) || p.w_in_up.data != nullptr;
  const bool fused_glu = glu && p.w_in_up.data == nullptr;
  const int64_t n_in = fused_glu ? 2 * I : I;
  if (T == 0) {
    std::fill(p.load, p.load + E, 0);
    if (p.dropped) *p.dropped = 0;
    return;
  }

  // 1. Input as float32.
  const int64_t max_rows = dispatch_max_rows(T, K, E, p.block_size);
  Workspace ws(2 * Workspace::padded(T * H) + 2 * Workspace::padded(max_rows * H) + Workspace::padded(max_rows) +
               Workspace::padded(max_rows * I));
  float* const x = ws.take(T * H);
  convert_to_f32(p.x_dtype, p.x, x, T * H);

  // 2-3. Router and gate (or forced routing).
  const int64_t cols = p.gating.experts + p.gating.null_experts;
  std::vector<float> logits;
  const bool need_router = p.forced_ids == nullptr || p.forced_weights == nullptr;
  if (need_router) {
    MOEKIT_REQUIRE(p.router_w.data != nullptr, "moe_layer_forward: the router weight is missing");
    logits.resize(static_cast<size_t>(T * cols));
    dense(x, T, H, cols, p.router_w, p.router_b, WeightRef{}, Activation::kNone, logits.data());
  }
  if (p.forced_ids != nullptr) {
    std::copy(p.forced_ids, p.forced_ids + T * K, p.ids);
    std::fill(p.load, p.load + E, 0);
    for (int64_t i = 0; i < T * K; ++i) {  // checked before any weight lookup by id
      MOEKIT_REQUIRE(p.ids[i] >= -1 && p.ids[i] < E, "forced routing: expert id ", p.ids[i], " at [",
                     i / K, ", ", i % K, "] is out of range for ", E, " experts");
      if (p.ids[i] >= 0) ++p.load[p.ids[i]];
    }
    if (p.forced_weights != nullptr)
      std::copy(p.forced_weights, p.forced_weights + T * K, p.weights);
    else
      forced_weights_from_logits(p.gating, T, logits.data(), cols, p.ids, p.weights);
  } else {
    GatingParams g = p.gating;
    g.logits = logits.data();
    g.logits_dtype = DType::kF32;
    g.tokens = T;
    g.logit_bias = nullptr;  // the router bias is already in the logits
    g.ids = p.ids;
    g.weights = p.weights;
    g.load = p.load;
    gating(g);
  }

  // 4. Dispatch.
  std::vector<int32_t> counts(static_cast<size_t>(E)), offsets(static_cast<size_t>(E + 1)),
      sorted_pairs(static_cast<size_t>(max_rows)), pair_to_row(static_cast<size_t>(T * K));
  int64_t dropped = 0;
  DispatchParams d;
  d.ids = p.ids;
  d.tokens = T;
  d.k = K;
  d.experts = E;
  d.block_size = p.block_size;
  d.capacity = p.capacity;
  d.counts = counts.data();
  d.offsets = offsets.data();
  d.sorted_pairs = sorted_pairs.data();
  d.pair_to_row = pair_to_row.data();
  d.dropped = &dropped;
  dispatch(d);
  if (p.dropped) *p.dropped = dropped;
  const int64_t rows = offsets[static_cast<size_t>(E)];

  // 5. Gather rows in expert order; routing weight per row (0 for padding).
  float* const xs = ws.take(rows * H);
  PermuteParams perm;
  perm.x = x;
  perm.sorted_pairs = sorted_pairs.data();
  perm.rows = rows;
  perm.k = K;
  perm.hidden = H;
  perm.out = xs;
  permute_rows(perm);
  float* const row_weight = ws.take(rows);
  for (int64_t r = 0; r < rows; ++r) row_weight[r] = sorted_pairs[r] >= 0 ? p.weights[sorted_pairs[r]] : 0.0f;

  // 6. First projection with the activation fused: h [rows, I].
  float* const h = ws.take(rows * I);
  GroupedGemmParams g1;
  g1.x = xs;
  g1.offsets = offsets.data();
  g1.rows = rows;
  g1.experts = E;
  g1.n = n_in;
  g1.k = H;
  g1.w = p.w_in.data;
  g1.w_dtype = p.w_in.dtype;
  g1.layout = p.w_in.layout;
  g1.w_up = p.w_in_up.data;
  g1.bias = p.b_in.data;
  g1.bias_up = p.b_in_up.data;
  g1.activation = p.activation;
  g1.alpha = p.alpha;
  g1.limit = p.limit;
  g1.y = h;
  grouped_gemm(g1);

  // 7. Second projection with the routing weight fused: ye [rows, H].
  float* const ye = ws.take(rows * H);
  GroupedGemmParams g2;
  g2.x = h;
  g2.offsets = offsets.data();
  g2.rows = rows;
  g2.experts = E;
  g2.n = H;
  g2.k = I;
  g2.w = p.w_out.data;
  g2.w_dtype = p.w_out.dtype;
  g2.layout = p.w_out.layout;
  g2.bias = p.b_out.data;
  g2.activation = Activation::kNone;
  g2.row_scale = row_weight;
  g2.y = ye;
  grouped_gemm(g2);

  // 8. Shared experts: s = down(silu(gate) * up) (* sigmoid(x . shared_gate)).
  std::vector<float> shared;
  if (p.shared_intermediate > 0) {
    const int64_t Is = p.shared_intermediate;
    const bool separate = p.shared_w_in_up.data != nullptr;
    std::vector<float> hs(static_cast<size_t>(T * Is));
    dense(x, T, H, separate ? Is : 2 * Is, p.shared_w_in, WeightRef{}, p.shared_w_in_up, Activation::kSwiGLU,
          hs.data());
    std::vector<float> gate;
    if (p.shared_gate.data != nullptr) {
      gate.resize(static_cast<size_t>(T));
      dense(x, T, H, 1, p.shared_gate, WeightRef{}, WeightRef{}, Activation::kNone, gate.data());
      for (float& v : gate) v = 1.0f / (1.0f + std::exp(-v));
    }
    shared.resize(static_cast<size_t>(T * H));
    dense(hs.data(), T, Is, H, p.shared_w_out, WeightRef{}, WeightRef{}, Activation::kNone, shared.data(),
          gate.empty() ? nullptr : gate.data());
  }

  // 9. Combine in token order, then convert to the output dtype.
  float* const out = ws.take(T * H);
  CombineParams c;
  c.y = ye;
  c.pair_to_row = pair_to_row.data();
  c.weights = nullptr;  // already applied in the second projection
  c.shared = shared.empty() ? nullptr : shared.data();
  c.tokens = T;
  c.k = K;
  c.hidden = H;
  c.rows = rows;
  c.out = out;
  combine(c);
  convert_from_f32(p.y_dtype, out, p.y, T * H);
}

}  // namespace moekit::cpu
