// Gating (routing): router logits [tokens, experts + null_experts] -> per-token
// expert ids, routing weights and per-expert load. Shared by kernels/cpu/gating.cc
// and the CUDA version. Scores are computed in float32 whatever the logits dtype.
//
// Output convention for every selection mode: ids and weights are [tokens, k]
// (k = max_k for top-p, k = experts for expert-choice). Slots a token does not use
// (top-p below max_k, a null expert, expert-choice) hold id -1 and weight 0.
// Ties always break toward the lower expert id.
//
// NaN and infinite logits (one behaviour on every backend): ±Infinity logits (after
// the logit bias) are clamped to ±FLT_MAX. A NaN logit ranks after every number, so
// it is never selected ahead of one; it takes no part in a softmax (its probability
// is NaN and the other entries are normalised without it) and counts 0 in Sinkhorn's
// balancing. A row with fewer than k selectable numbers fills its remaining slots
// with the lowest unused ids, and every slot whose weight would be NaN gets weight 0
// (before renormalisation).
#pragma once

#include <cstdint>

#include "kernels/common/dtype.h"

namespace moekit {

enum class Scoring : int32_t {
  kSoftmax = 0,       // softmax over all router outputs (experts + null experts)
  kSigmoid = 1,       // sigmoid(x) per expert (DeepSeek-V3)
  kSqrtSoftplus = 2,  // sqrt(softplus(x)) per expert
};

enum class Selection : int32_t {
  // top-k over scores (+ correction bias for selection, + groups when n_group > 1);
  // weights = unbiased scores of the chosen experts.
  kTopkScores = 0,
  // top-k over (biased) logits, then softmax over the chosen k (gpt-oss order).
  // Mixtral's softmax -> top-k -> renormalize gives the same weights.
  kTopkLogitsThenSoftmax = 1,
  // top-p: the smallest set of experts (by descending softmax probability) whose
  // probability sum reaches top_p, capped at k (= maxK). Weights are the probabilities.
  kTopP = 2,
  // expert-choice: each expert takes its top-C tokens by score,
  // C = ceil(capacity_factor * tokens * choice_k / experts); ids is [tokens, experts],
  // slot e holds e when expert e took the token, else -1.
  kExpertChoice = 3,
  // Sinkhorn-balanced: sinkhorn_iters iterations of row/column normalisation of
  // exp(logits) pick the top-k; weights are the plain softmax probabilities.
  kSinkhorn = 4,
};

struct GatingParams {
  const void* logits = nullptr;  // [tokens, experts + null_experts], dtype logits_dtype
  DType logits_dtype = DType::kF32;
  int64_t tokens = 0;
  int64_t experts = 0;       // real (routed) experts
  int64_t null_experts = 0;  // AdaMoE null experts: router outputs after the real ones
  int64_t k = 0;             // slots per token in ids/weights (see the convention above)
  Scoring scoring = Scoring::kSoftmax;
  Selection selection = Selection::kTopkScores;
  const float* logit_bias = nullptr;       // [experts + null_experts] or null: added to logits first
  const float* correction_bias = nullptr;  // [experts] or null: added to scores for selection only
  int32_t n_group = 1;       // grouped top-k when > 1: experts split into n_group equal groups
  int32_t topk_group = 1;    // groups kept; group score = sum of top-2 (with correction bias) else max
  bool renormalize = false;  // weights /= (sum of the token's weights + 1e-20)
  float routed_scaling = 1.0f;  // weights *= routed_scaling (after renormalisation)
  float top_p = 1.0f;        // kTopP threshold in (0, 1]
  float capacity_factor = 1.0f;  // kExpertChoice
  int64_t choice_k = 1;      // kExpertChoice: the k in C = ceil(capacity_factor * T * k / E)
  int32_t sinkhorn_iters = 0;  // kSinkhorn

  int32_t* ids = nullptr;   // [tokens, k] out; -1 for unused slots
  float* weights = nullptr; // [tokens, k] out; 0 for unused slots
  int32_t* load = nullptr;  // [experts] out; number of (token, slot) pairs routed to each expert
};

// Checks p against the rules above (ERR_INVALID_ARGUMENT); shared by every backend.
void check_gating_params(const GatingParams& p);

}  // namespace moekit
