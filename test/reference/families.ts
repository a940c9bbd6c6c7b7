/**
 * Family-specific routing (and MoE block) references, written in the order of
 * operations of the Hugging Face transformers modeling code for each model
 * family. They are independent of gating.ts (own top-k, own softmax order) so
 * that the generic reference and the presets that map a family onto generic
 * gating options can be checked against them.
 *
 * Facts below were read from huggingface/transformers
 * (src/transformers/models/<family>/modeling_*.py, modular_*.py and
 * configuration_*.py). Common to all: the router is an nn.Linear(hidden,
 * experts) (bias only in gpt-oss); HF's torch.topk breaks ties in an
 * unspecified order and DeepSeek uses `sorted=False`, so here slots are always
 * in descending order with ties to the lower expert id (the moekit rule).
 * Experts are SwiGLU MLPs `down(silu(gate(x)) * up(x))` except gpt-oss.
 *
 * ## mixtral (MixtralSparseMoeBlock)
 * Config: `num_local_experts` (default 8), `num_experts_per_tok` (default 2),
 * `router_jitter_noise` (0.0; training only, ignored), `hidden_act` "silu".
 * 1. `router_logits = gate(x)` (no bias).
 * 2. `routing_weights = softmax(router_logits, dim=1, dtype=float32)` over all experts.
 * 3. `topk(routing_weights, top_k)`.
 * 4. `routing_weights /= routing_weights.sum(-1)` — always, no epsilon.
 * 5. cast to the activation dtype; `out = sum_k w_k * expert(x)`.
 * Experts: `w1` = gate [I, H], `w3` = up [I, H], `w2` = down [H, I]
 * (newer releases fuse them into `gate_up_proj` [E, 2I, H] = [gate; up] and
 * `down_proj` [E, H, I]). Generic: softmax, topk, renormalize, scaling 1
 * (equivalently 'topk-logits-softmax').
 *
 * ## qwen2_moe (Qwen2MoeSparseMoeBlock / Qwen2MoeTopKRouter)
 * Config: `num_experts` (60), `num_experts_per_tok` (4), `norm_topk_prob`
 * (False), `moe_intermediate_size` (1408), `shared_expert_intermediate_size`
 * (5632), `decoder_sparse_step` (1), `mlp_only_layers` ([]).
 * 1. softmax(float32) over all experts; 2. topk; 3. only if `norm_topk_prob`:
 * `/= sum` (no epsilon). 4. routed sum. 5. shared expert: an MLP with
 * intermediate `shared_expert_intermediate_size`, multiplied by
 * `sigmoid(shared_expert_gate(x))` where `shared_expert_gate` =
 * nn.Linear(H, 1, bias=False); added to the routed output. No routed scaling.
 *
 * ## qwen3_moe (Qwen3MoeSparseMoeBlock, router = Qwen2MoeTopKRouter)
 * Config: `num_experts` (128), `num_experts_per_tok` (8), `norm_topk_prob`
 * (False in the config class; the released Qwen3 MoE checkpoints set True),
 * `moe_intermediate_size` (768). Same routing as qwen2_moe; no shared expert.
 *
 * ## olmoe (OlmoeSparseMoeBlock.route_tokens_to_experts)
 * Config: `num_experts` (64), `num_experts_per_tok` (8), `norm_topk_prob`
 * (False). softmax(router_logits.float()) -> topk -> `/= sum` only if
 * `norm_topk_prob` -> cast. No shared expert, no scaling.
 *
 * ## deepseek_v2 (DeepseekV2Moe.route_tokens_to_experts)
 * Config: `n_routed_experts` (64), `num_experts_per_tok`, `topk_method`
 * ("greedy"), `n_group`, `topk_group`, `routed_scaling_factor` (1.0),
 * `norm_topk_prob` (False), `n_shared_experts` (2), `moe_intermediate_size`
 * (1407).
 * 1. softmax(float32) over all experts.
 * 2. "greedy": topk. "group_limited_greedy": group score = max of the softmax
 *    scores in each of `n_group` groups; keep `topk_group` groups; the other
 *    experts' scores are `masked_fill`ed with 0.0; topk.
 * 3. `topk_weight *= routed_scaling_factor`.
 * HF's port never applies `norm_topk_prob` (kept "for backward
 * compatibility"). DeepSeek's original remote code (modeling_deepseek.py) did:
 * `if top_k > 1 and norm_topk_prob: w /= sum + 1e-20` (and then no scaling),
 * `else: w *= routed_scaling_factor`; pass `semantics: 'deepseek-remote-code'`
 * for that. Shared experts: one MLP with intermediate
 * `moe_intermediate_size * n_shared_experts`, added without a gate.
 *
 * ## deepseek_v3 (DeepseekV3TopkRouter)
 * Config: `n_routed_experts` (256), `num_experts_per_tok` (8), `n_group` (8),
 * `topk_group` (4), `norm_topk_prob` (True), `routed_scaling_factor` (2.5),
 * `n_shared_experts` (1), `moe_intermediate_size` (2048); buffer
 * `e_score_correction_bias` [n_routed_experts] (zeros by default).
 * 1. `router_logits = linear(x.float32, weight.float32)`; `scores = sigmoid`.
 * 2. `scores_for_choice = scores + e_score_correction_bias`.
 * 3. group score = sum of the top-2 `scores_for_choice` in each group (always,
 *    even when the bias is zero); keep `topk_group` groups;
 *    `scores_for_choice.masked_fill(~mask, 0.0)` — note 0.0, not -inf, so an
 *    expert of a dropped group can still win against negative biased scores;
 *    moekit masks with -inf, which agrees whenever the kept candidates' biased
 *    scores are positive.
 * 4. topk over the masked choice; `topk_weights = scores.gather(ids)` (unbiased).
 * 5. if `norm_topk_prob`: `/= (sum + 1e-20)`; 6. `*= routed_scaling_factor`
 *    (always, after the normalisation).
 * Shared experts: one MLP, intermediate `moe_intermediate_size *
 * n_shared_experts`, added without a gate. Generic: sigmoid, correction bias
 * (zeros if absent, so groups use the top-2 sum), nGroup, topkGroup,
 * renormalize = norm_topk_prob, routedScaling.
 *
 * ## gpt_oss (GptOssTopKRouter / GptOssExperts)
 * Config: `num_local_experts` (128), `num_experts_per_tok` (4),
 * `swiglu_alpha` (1.702) and `swiglu_limit` (7.0) in recent releases (older
 * ones hard-code alpha = 1.702, limit = 7.0).
 * 1. `router_logits = linear(x, weight, bias)` (router has a bias).
 * 2. `topk(router_logits, top_k)` over the logits.
 * 3. `softmax` over the k chosen logits. No renormalisation, no scaling.
 * Experts (stored transposed, "experts_are_transposed"): `gate_up_proj`
 * [E, H, 2I], `gate_up_proj_bias` [E, 2I], `down_proj` [E, I, H],
 * `down_proj_bias` [E, H]. `gate_up = x @ gate_up_proj[e] + bias`;
 * gate = even columns, up = odd columns; `gate = gate.clamp(max=limit)`,
 * `up = up.clamp(-limit, limit)`; `glu = gate * sigmoid(gate * alpha)`;
 * `out = ((up + 1) * glu) @ down_proj[e] + down_proj_bias[e]`, times the
 * routing weight. Generic: 'topk-logits-softmax' with logitBias = router bias
 * (or bias folded into the logits), activation 'gpt-oss-swiglu', layout 'ekn'.
 *
 * @packageDocumentation
 */

import type { GatingOptions } from './gating';
import { GPT_OSS_ALPHA, GPT_OSS_LIMIT, silu } from './gemm';

/** HF model families with a routing reference here. */
export type MoeFamily = 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'olmoe' | 'deepseek_v2' | 'deepseek_v3' | 'gpt_oss';

/** Routing decision of a family reference: ids and weights, [tokens, k], slots in descending order. */
export interface FamilyRouting {
  /** Tokens T. */
  tokens: number;
  /** Slots per token. */
  k: number;
  /** [T, k] expert ids. */
  ids: Int32Array;
  /** [T, k] routing weights. */
  weights: Float64Array;
}

/** Mixtral config keys used by routing. */
export interface MixtralRoutingConfig {
  /** Number of experts (default 8). */
  num_local_experts?: number | undefined;
  /** Experts per token (default 2). */
  num_experts_per_tok?: number | undefined;
}

/** Qwen2-MoE / Qwen3-MoE / OLMoE config keys used by routing. */
export interface SoftmaxTopkRoutingConfig {
  /** Number of experts. */
  num_experts: number;
  /** Experts per token. */
  num_experts_per_tok: number;
  /** Renormalise the top-k probabilities (default false). */
  norm_topk_prob?: boolean | undefined;
}

/** DeepSeek-V2 config keys used by routing. */
export interface DeepseekV2RoutingConfig {
  /** Routed experts (default 64). */
  n_routed_experts?: number | undefined;
  /** Experts per token. */
  num_experts_per_tok: number;
  /** 'greedy' (default) or 'group_limited_greedy'. */
  topk_method?: 'greedy' | 'group_limited_greedy' | undefined;
  /** Groups for group_limited_greedy. */
  n_group?: number | undefined;
  /** Groups kept for group_limited_greedy. */
  topk_group?: number | undefined;
  /** Scaling of the routed weights (default 1.0). */
  routed_scaling_factor?: number | undefined;
  /** Ignored by HF transformers; used with semantics 'deepseek-remote-code' (default false). */
  norm_topk_prob?: boolean | undefined;
}

/** Which DeepSeek-V2 code to follow. */
export type DeepseekV2Semantics = 'transformers' | 'deepseek-remote-code';

/** DeepSeek-V3 config keys used by routing. */
export interface DeepseekV3RoutingConfig {
  /** Routed experts (default 256). */
  n_routed_experts?: number | undefined;
  /** Experts per token (default 8). */
  num_experts_per_tok?: number | undefined;
  /** Expert groups (default 8). */
  n_group?: number | undefined;
  /** Groups kept (default 4). */
  topk_group?: number | undefined;
  /** Renormalise with +1e-20 (default true). */
  norm_topk_prob?: boolean | undefined;
  /** Scaling after the normalisation (default 2.5). */
  routed_scaling_factor?: number | undefined;
  /** [n_routed_experts] selection bias (default zeros). */
  e_score_correction_bias?: ArrayLike<number> | undefined;
}

/** gpt-oss config keys used by routing and experts. */
export interface GptOssRoutingConfig {
  /** Experts (default 128). */
  num_local_experts?: number | undefined;
  /** Experts per token (default 4). */
  num_experts_per_tok?: number | undefined;
  /** Clamped SwiGLU sigmoid gain (default 1.702). */
  swiglu_alpha?: number | undefined;
  /** Clamped SwiGLU limit (default 7.0). */
  swiglu_limit?: number | undefined;
}

/** Indices of the `k` largest values, descending, ties to the lower index (a stable descending sort). */
export function familyTopk(values: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((a, b) => {
    const va = values[a] as number;
    const vb = values[b] as number;
    if (Number.isNaN(va) !== Number.isNaN(vb)) return Number.isNaN(va) ? 1 : -1;
    if (va !== vb && !Number.isNaN(va)) return vb - va;
    return a - b;
  });
  return idx.slice(0, k);
}

/** Softmax as torch computes it: exp(v - max) / sum. */
function torchSoftmax(row: ArrayLike<number>): number[] {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i] as number);
  const ex: number[] = [];
  let sum = 0;
  for (let i = 0; i < row.length; i++) {
    const v = Math.exp((row[i] as number) - max);
    ex.push(v);
    sum += v;
  }
  return ex.map((v) => v / sum);
}

function logisticSigmoid(v: number): number {
  return v >= 0 ? 1 / (1 + Math.exp(-v)) : Math.exp(v) / (1 + Math.exp(v));
}

function rowOf(values: ArrayLike<number>, t: number, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(values[t * n + i] as number);
  return out;
}

/** Shared shape of the softmax -> topk (-> renormalise) families. */
function softmaxTopkRouting(
  logits: ArrayLike<number>,
  tokens: number,
  experts: number,
  k: number,
  normalize: boolean,
): FamilyRouting {
  const ids = new Int32Array(tokens * k);
  const weights = new Float64Array(tokens * k);
  for (let t = 0; t < tokens; t++) {
    const probs = torchSoftmax(rowOf(logits, t, experts));
    const top = familyTopk(probs, k);
    let vals = top.map((j) => probs[j] as number);
    if (normalize) {
      const sum = vals.reduce((a, b) => a + b, 0);
      vals = vals.map((v) => v / sum);
    }
    top.forEach((j, s) => {
      ids[t * k + s] = j;
      weights[t * k + s] = vals[s] as number;
    });
  }
  return { tokens, k, ids, weights };
}

/** Mixtral routing: softmax over all experts -> topk -> divide by the top-k sum. `logits` is [T, E]. */
export function mixtralRouting(logits: ArrayLike<number>, tokens: number, config: MixtralRoutingConfig = {}): FamilyRouting {
  return softmaxTopkRouting(logits, tokens, config.num_local_experts ?? 8, config.num_experts_per_tok ?? 2, true);
}

/** Qwen2-MoE routing: softmax -> topk -> divide by the top-k sum only if norm_topk_prob. */
export function qwen2MoeRouting(logits: ArrayLike<number>, tokens: number, config: SoftmaxTopkRoutingConfig): FamilyRouting {
  return softmaxTopkRouting(logits, tokens, config.num_experts, config.num_experts_per_tok, config.norm_topk_prob ?? false);
}

/** Qwen3-MoE routing (same router class as Qwen2-MoE). */
export function qwen3MoeRouting(logits: ArrayLike<number>, tokens: number, config: SoftmaxTopkRoutingConfig): FamilyRouting {
  return softmaxTopkRouting(logits, tokens, config.num_experts, config.num_experts_per_tok, config.norm_topk_prob ?? false);
}

/** OLMoE routing: softmax -> topk -> divide by the top-k sum only if norm_topk_prob (default false). */
export function olmoeRouting(logits: ArrayLike<number>, tokens: number, config: SoftmaxTopkRoutingConfig): FamilyRouting {
  return softmaxTopkRouting(logits, tokens, config.num_experts, config.num_experts_per_tok, config.norm_topk_prob ?? false);
}

/**
 * Group-limited masking as in DeepSeek's gates: `groupScore(members)` scores
 * each group, the best `topkGroup` groups are kept (ties to the lower group),
 * and every other expert's value becomes `fill` (HF uses 0.0).
 */
function groupLimitedMask(
  values: readonly number[],
  nGroup: number,
  topkGroup: number,
  groupScore: (members: number[]) => number,
  fill: number,
): number[] {
  const size = values.length / nGroup;
  if (!Number.isInteger(size)) throw new Error(`experts (${values.length}) not divisible by n_group (${nGroup})`);
  const scores: number[] = [];
  for (let g = 0; g < nGroup; g++) scores.push(groupScore(values.slice(g * size, (g + 1) * size)));
  const keep = new Set(familyTopk(scores, topkGroup));
  return values.map((v, j) => (keep.has(Math.floor(j / size)) ? v : fill));
}

/** DeepSeek-V2 routing (HF transformers order by default; see the module comment). `logits` is [T, n_routed_experts]. */
export function deepseekV2Routing(
  logits: ArrayLike<number>,
  tokens: number,
  config: DeepseekV2RoutingConfig,
  semantics: DeepseekV2Semantics = 'transformers',
): FamilyRouting {
  const E = config.n_routed_experts ?? 64;
  const k = config.num_experts_per_tok;
  const scaling = config.routed_scaling_factor ?? 1.0;
  const method = config.topk_method ?? 'greedy';
  const ids = new Int32Array(tokens * k);
  const weights = new Float64Array(tokens * k);
  for (let t = 0; t < tokens; t++) {
    const scores = torchSoftmax(rowOf(logits, t, E));
    let candidates = scores;
    if (method === 'group_limited_greedy') {
      const nGroup = config.n_group ?? 1;
      const topkGroup = config.topk_group ?? nGroup;
      candidates = groupLimitedMask(scores, nGroup, topkGroup, (m) => Math.max(...m), 0.0);
    }
    const top = familyTopk(candidates, k);
    // HF takes the weights from the (masked) topk values themselves.
    let vals = top.map((j) => candidates[j] as number);
    if (semantics === 'deepseek-remote-code' && k > 1 && (config.norm_topk_prob ?? false)) {
      const denom = vals.reduce((a, b) => a + b, 0) + 1e-20;
      vals = vals.map((v) => v / denom);
    } else {
      vals = vals.map((v) => v * scaling);
    }
    top.forEach((j, s) => {
      ids[t * k + s] = j;
      weights[t * k + s] = vals[s] as number;
    });
  }
  return { tokens, k, ids, weights };
}

/** DeepSeek-V3 routing in DeepseekV3TopkRouter order (sigmoid, biased grouped top-k with 0.0 masking). */
export function deepseekV3Routing(logits: ArrayLike<number>, tokens: number, config: DeepseekV3RoutingConfig = {}): FamilyRouting {
  const E = config.n_routed_experts ?? 256;
  const k = config.num_experts_per_tok ?? 8;
  const nGroup = config.n_group ?? 8;
  const topkGroup = config.topk_group ?? 4;
  const norm = config.norm_topk_prob ?? true;
  const scaling = config.routed_scaling_factor ?? 2.5;
  const bias = config.e_score_correction_bias;
  const ids = new Int32Array(tokens * k);
  const weights = new Float64Array(tokens * k);
  for (let t = 0; t < tokens; t++) {
    const scores = rowOf(logits, t, E).map(logisticSigmoid);
    const forChoice = scores.map((s, j) => s + (bias ? (bias[j] as number) : 0));
    const masked = groupLimitedMask(
      forChoice,
      nGroup,
      topkGroup,
      (m) => {
        const two = familyTopk(m, 2);
        return two.reduce((acc, j) => acc + (m[j] as number), 0);
      },
      0.0,
    );
    const top = familyTopk(masked, k);
    let vals = top.map((j) => scores[j] as number);
    if (norm) {
      const denom = vals.reduce((a, b) => a + b, 0) + 1e-20;
      vals = vals.map((v) => v / denom);
    }
    vals = vals.map((v) => v * scaling);
    top.forEach((j, s) => {
      ids[t * k + s] = j;
      weights[t * k + s] = vals[s] as number;
    });
  }
  return { tokens, k, ids, weights };
}

/** gpt-oss routing: topk over the router logits (bias included), then softmax over the k values. */
export function gptOssRouting(logits: ArrayLike<number>, tokens: number, config: GptOssRoutingConfig = {}): FamilyRouting {
  const E = config.num_local_experts ?? 128;
  const k = config.num_experts_per_tok ?? 4;
  const ids = new Int32Array(tokens * k);
  const weights = new Float64Array(tokens * k);
  for (let t = 0; t < tokens; t++) {
    const row = rowOf(logits, t, E);
    const top = familyTopk(row, k);
    const probs = torchSoftmax(top.map((j) => row[j] as number));
    top.forEach((j, s) => {
      ids[t * k + s] = j;
      weights[t * k + s] = probs[s] as number;
    });
  }
  return { tokens, k, ids, weights };
}

/** Family config accepted by {@link familyRouting} / {@link familyGatingOptions}. */
export type FamilyConfig =
  | { family: 'mixtral'; config: MixtralRoutingConfig }
  | { family: 'qwen2_moe' | 'qwen3_moe' | 'olmoe'; config: SoftmaxTopkRoutingConfig }
  | { family: 'deepseek_v2'; config: DeepseekV2RoutingConfig; semantics?: DeepseekV2Semantics | undefined }
  | { family: 'deepseek_v3'; config: DeepseekV3RoutingConfig }
  | { family: 'gpt_oss'; config: GptOssRoutingConfig };

/** Runs the routing reference of a family on router logits [T, E] (gpt-oss: router bias included). */
export function familyRouting(logits: ArrayLike<number>, tokens: number, spec: FamilyConfig): FamilyRouting {
  switch (spec.family) {
    case 'mixtral':
      return mixtralRouting(logits, tokens, spec.config);
    case 'qwen2_moe':
      return qwen2MoeRouting(logits, tokens, spec.config);
    case 'qwen3_moe':
      return qwen3MoeRouting(logits, tokens, spec.config);
    case 'olmoe':
      return olmoeRouting(logits, tokens, spec.config);
    case 'deepseek_v2':
      return deepseekV2Routing(logits, tokens, spec.config, spec.semantics);
    case 'deepseek_v3':
      return deepseekV3Routing(logits, tokens, spec.config);
    case 'gpt_oss':
      return gptOssRouting(logits, tokens, spec.config);
  }
}

/**
 * Generic gating options equivalent to a family's routing (up to the
 * documented differences: DeepSeek-V3's 0.0 masking, the 1e-20 epsilon of the
 * generic renormalisation, and float32 rounding of routedScaling).
 */
export function familyGatingOptions(spec: FamilyConfig): GatingOptions {
  switch (spec.family) {
    case 'mixtral':
      return {
        experts: spec.config.num_local_experts ?? 8,
        k: spec.config.num_experts_per_tok ?? 2,
        scoring: 'softmax',
        selection: 'topk',
        renormalize: true,
      };
    case 'qwen2_moe':
    case 'qwen3_moe':
    case 'olmoe':
      return {
        experts: spec.config.num_experts,
        k: spec.config.num_experts_per_tok,
        scoring: 'softmax',
        selection: 'topk',
        renormalize: spec.config.norm_topk_prob ?? false,
      };
    case 'deepseek_v2': {
      const c = spec.config;
      const grouped = (c.topk_method ?? 'greedy') === 'group_limited_greedy';
      const remoteNorm = spec.semantics === 'deepseek-remote-code' && c.num_experts_per_tok > 1 && (c.norm_topk_prob ?? false);
      return {
        experts: c.n_routed_experts ?? 64,
        k: c.num_experts_per_tok,
        scoring: 'softmax',
        selection: 'topk',
        nGroup: grouped ? (c.n_group ?? 1) : 1,
        topkGroup: grouped ? (c.topk_group ?? c.n_group ?? 1) : 1,
        renormalize: remoteNorm,
        routedScaling: remoteNorm ? 1 : (c.routed_scaling_factor ?? 1),
      };
    }
    case 'deepseek_v3': {
      const c = spec.config;
      const E = c.n_routed_experts ?? 256;
      return {
        experts: E,
        k: c.num_experts_per_tok ?? 8,
        scoring: 'sigmoid',
        selection: 'topk',
        correctionBias: c.e_score_correction_bias ?? new Float64Array(E),
        nGroup: c.n_group ?? 8,
        topkGroup: c.topk_group ?? 4,
        renormalize: c.norm_topk_prob ?? true,
        routedScaling: c.routed_scaling_factor ?? 2.5,
      };
    }
    case 'gpt_oss':
      return {
        experts: spec.config.num_local_experts ?? 128,
        k: spec.config.num_experts_per_tok ?? 4,
        selection: 'topk-logits-softmax',
      };
  }
}

/** Per-expert SwiGLU MLP weights in HF nn.Linear layout (Mixtral w1/w3/w2, Qwen/OLMoE/DeepSeek gate/up/down_proj). */
export interface HfSwigluExperts {
  /** Intermediate size I. */
  intermediate: number;
  /** [E, I, H] gate_proj (Mixtral w1). */
  gate: ArrayLike<number>;
  /** [E, I, H] up_proj (Mixtral w3). */
  up: ArrayLike<number>;
  /** [E, H, I] down_proj (Mixtral w2). */
  down: ArrayLike<number>;
}

/** One HF SwiGLU MLP (expert `e` of a stacked set, or a single MLP with e = 0): down(silu(gate x) * up x). */
export function hfSwigluMlp(xRow: ArrayLike<number>, mlp: HfSwigluExperts, e: number, hidden: number): Float64Array {
  const I = mlp.intermediate;
  const act = new Float64Array(I);
  for (let i = 0; i < I; i++) {
    let g = 0;
    let u = 0;
    const base = (e * I + i) * hidden;
    for (let h = 0; h < hidden; h++) {
      g += (xRow[h] as number) * (mlp.gate[base + h] as number);
      u += (xRow[h] as number) * (mlp.up[base + h] as number);
    }
    act[i] = silu(g) * u;
  }
  const out = new Float64Array(hidden);
  for (let h = 0; h < hidden; h++) {
    let acc = 0;
    const base = (e * hidden + h) * I;
    for (let i = 0; i < I; i++) acc += (act[i] as number) * (mlp.down[base + i] as number);
    out[h] = acc;
  }
  return out;
}

/** Router logits of an HF nn.Linear router: x [T, H] . W^T [E, H] (+ bias). */
export function hfRouterLogits(
  x: ArrayLike<number>,
  tokens: number,
  hidden: number,
  weight: ArrayLike<number>,
  experts: number,
  bias?: ArrayLike<number>,
): Float64Array {
  const out = new Float64Array(tokens * experts);
  for (let t = 0; t < tokens; t++) {
    for (let e = 0; e < experts; e++) {
      let acc = 0;
      for (let h = 0; h < hidden; h++) acc += (x[t * hidden + h] as number) * (weight[e * hidden + h] as number);
      out[t * experts + e] = acc + (bias ? (bias[e] as number) : 0);
    }
  }
  return out;
}

/** Output of a family MoE block reference. */
export interface FamilyBlockResult {
  /** [T, H] block output. */
  out: Float64Array;
  /** [T, E] router logits. */
  routerLogits: Float64Array;
  /** The routing decision. */
  routing: FamilyRouting;
}

/** Routed sum of a family block: out[t] += w[t,s] * expert_{ids[t,s]}(x[t]). */
function routedSum(
  x: ArrayLike<number>,
  tokens: number,
  hidden: number,
  routing: FamilyRouting,
  expert: (xRow: number[], e: number) => ArrayLike<number>,
): Float64Array {
  const out = new Float64Array(tokens * hidden);
  for (let t = 0; t < tokens; t++) {
    const xRow = rowOf(x, t, hidden);
    for (let s = 0; s < routing.k; s++) {
      const e = routing.ids[t * routing.k + s] as number;
      const w = routing.weights[t * routing.k + s] as number;
      const y = expert(xRow, e);
      for (let h = 0; h < hidden; h++) out[t * hidden + h] = (out[t * hidden + h] as number) + w * (y[h] as number);
    }
  }
  return out;
}

/**
 * A softmax/sigmoid-routed SwiGLU MoE block of the mixtral, qwen2_moe,
 * qwen3_moe, olmoe, deepseek_v2 or deepseek_v3 family, optionally with a
 * shared expert MLP (DeepSeek: intermediate = moe_intermediate_size *
 * n_shared_experts, ungated; Qwen2-MoE: gated by sigmoid(x . sharedExpertGate)).
 */
export function hfSwigluMoeBlock(
  x: ArrayLike<number>,
  tokens: number,
  hidden: number,
  spec: Exclude<FamilyConfig, { family: 'gpt_oss' }>,
  routerWeight: ArrayLike<number>,
  experts: HfSwigluExperts,
  shared?: { mlp: HfSwigluExperts; sharedExpertGate?: ArrayLike<number> | undefined },
): FamilyBlockResult {
  const E = familyGatingOptions(spec).experts;
  const routerLogits = hfRouterLogits(x, tokens, hidden, routerWeight, E);
  const routing = familyRouting(routerLogits, tokens, spec);
  const out = routedSum(x, tokens, hidden, routing, (xRow, e) => hfSwigluMlp(xRow, experts, e, hidden));
  if (shared !== undefined) {
    for (let t = 0; t < tokens; t++) {
      const xRow = rowOf(x, t, hidden);
      const y = hfSwigluMlp(xRow, shared.mlp, 0, hidden);
      let gate = 1;
      if (shared.sharedExpertGate !== undefined) {
        let dot = 0;
        for (let h = 0; h < hidden; h++) dot += (xRow[h] as number) * (shared.sharedExpertGate[h] as number);
        gate = logisticSigmoid(dot);
      }
      for (let h = 0; h < hidden; h++) out[t * hidden + h] = (out[t * hidden + h] as number) + gate * (y[h] as number);
    }
  }
  return { out, routerLogits, routing };
}

/** gpt-oss expert weights as stored by HF (transposed layout). */
export interface GptOssExpertWeights {
  /** Intermediate size I. */
  intermediate: number;
  /** [E, H, 2I] gate_up_proj, gate = even columns, up = odd columns. */
  gate_up_proj: ArrayLike<number>;
  /** [E, 2I] gate_up_proj_bias. */
  gate_up_proj_bias: ArrayLike<number>;
  /** [E, I, H] down_proj. */
  down_proj: ArrayLike<number>;
  /** [E, H] down_proj_bias. */
  down_proj_bias: ArrayLike<number>;
}

/** One gpt-oss expert on one token row, in GptOssExperts order. */
export function gptOssExpert(
  xRow: ArrayLike<number>,
  w: GptOssExpertWeights,
  e: number,
  hidden: number,
  config: GptOssRoutingConfig = {},
): Float64Array {
  const I = w.intermediate;
  const alpha = config.swiglu_alpha ?? GPT_OSS_ALPHA;
  const limit = config.swiglu_limit ?? GPT_OSS_LIMIT;
  const gateUp = new Float64Array(2 * I);
  for (let n = 0; n < 2 * I; n++) {
    let acc = 0;
    for (let h = 0; h < hidden; h++) acc += (xRow[h] as number) * (w.gate_up_proj[(e * hidden + h) * 2 * I + n] as number);
    gateUp[n] = acc + (w.gate_up_proj_bias[e * 2 * I + n] as number);
  }
  const gated = new Float64Array(I);
  for (let i = 0; i < I; i++) {
    const gate = Math.min(gateUp[2 * i] as number, limit);
    const up = Math.min(Math.max(gateUp[2 * i + 1] as number, -limit), limit);
    const glu = gate * logisticSigmoid(gate * alpha);
    gated[i] = (up + 1) * glu;
  }
  const out = new Float64Array(hidden);
  for (let h = 0; h < hidden; h++) {
    let acc = 0;
    for (let i = 0; i < I; i++) acc += (gated[i] as number) * (w.down_proj[(e * I + i) * hidden + h] as number);
    out[h] = acc + (w.down_proj_bias[e * hidden + h] as number);
  }
  return out;
}

/**
 * gpt-oss MLP block (GptOssMLP): router with bias -> topk over logits ->
 * softmax over k -> clamped-SwiGLU experts with biases. `alpha` / `limit` are
 * used as float64 numbers here (HF multiplies by the Python float).
 */
export function gptOssMlpBlock(
  x: ArrayLike<number>,
  tokens: number,
  hidden: number,
  router: { weight: ArrayLike<number>; bias: ArrayLike<number> },
  experts: GptOssExpertWeights,
  config: GptOssRoutingConfig = {},
): FamilyBlockResult {
  const E = config.num_local_experts ?? 128;
  const routerLogits = hfRouterLogits(x, tokens, hidden, router.weight, E, router.bias);
  const routing = gptOssRouting(routerLogits, tokens, config);
  const out = routedSum(x, tokens, hidden, routing, (xRow, e) => gptOssExpert(xRow, experts, e, hidden, config));
  return { out, routerLogits, routing };
}
