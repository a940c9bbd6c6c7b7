/**
 * The routing math of each Hugging Face MoE family, as MoELayer configuration.
 * Each preset follows the family's modeling code in transformers; the float64
 * references in test/reference/families.ts re-derive them independently.
 */
import { checkBoolean, checkInteger, checkNumber, checkOneOf, checkOptions } from './errors';
import type { Activation, WeightLayout } from './ops';
import type { RoutingOptions } from './routing';

/** Model families with a preset. */
export type Family = 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'olmoe' | 'deepseek_v2' | 'deepseek_v3' | 'gpt_oss';
export const FAMILIES: readonly Family[] = ['mixtral', 'qwen2_moe', 'qwen3_moe', 'olmoe', 'deepseek_v2', 'deepseek_v3', 'gpt_oss'];

/** The family's config values a preset needs (HF config.json names in comments). */
export interface PresetOptions {
  /** num_experts_per_tok. */
  k: number;
  /** norm_topk_prob (qwen2_moe, qwen3_moe, olmoe, deepseek_v2; deepseek_v3 defaults true). */
  normTopkProb?: boolean;
  /** routed_scaling_factor (deepseek_v2 / v3). */
  routedScalingFactor?: number;
  /** n_group (deepseek). */
  nGroup?: number;
  /** topk_group (deepseek). */
  topkGroup?: number;
  /** topk_method (deepseek_v2): 'greedy' or 'group_limited_greedy'. */
  topkMethod?: 'greedy' | 'group_limited_greedy';
  /** swiglu_limit (gpt_oss), default 7. */
  swigluLimit?: number;
}

/** What a preset fixes: routing, expert activation, weight layouts. */
export interface Preset {
  family: Family;
  routing: RoutingOptions;
  activation: Activation;
  layoutIn: WeightLayout;
  layoutOut: WeightLayout;
  alpha?: number;
  limit?: number;
}

/** The MoELayer configuration of a family. */
export function preset(family: Family, options: PresetOptions): Preset {
  checkOneOf('family', family, FAMILIES);
  const o = checkOptions<PresetOptions>('options', options);
  const k = checkInteger('options.k', o.k, 1);
  const norm = (def: boolean) => (o.normTopkProb === undefined ? def : checkBoolean('options.normTopkProb', o.normTopkProb));
  const scaling = o.routedScalingFactor === undefined ? 1 : checkNumber('options.routedScalingFactor', o.routedScalingFactor);
  const hf: Omit<Preset, 'family' | 'routing'> = { activation: 'swiglu', layoutIn: 'enk', layoutOut: 'enk' };
  switch (family) {
    case 'mixtral':
      // softmax over all experts -> top-k -> renormalise the k weights.
      return { family, ...hf, routing: { k, scoring: 'softmax', selection: 'topk', renormalize: true } };
    case 'qwen2_moe':
    case 'olmoe':
      // softmax -> top-k -> renormalise only when norm_topk_prob (default false).
      return { family, ...hf, routing: { k, scoring: 'softmax', selection: 'topk', renormalize: norm(false) } };
    case 'qwen3_moe':
      // Same math; Qwen3 checkpoints set norm_topk_prob true.
      return { family, ...hf, routing: { k, scoring: 'softmax', selection: 'topk', renormalize: norm(true) } };
    case 'deepseek_v2': {
      // softmax; greedy top-k or group-limited greedy (group score = max); scaling.
      // NOTE: HF transformers' DeepseekV2 never applies norm_topk_prob (its config keeps it
      // for compatibility only); we follow transformers. Pass normTopkProb to renormalise as
      // DeepSeek's original remote code did.
      const method = o.topkMethod === undefined ? 'greedy' : checkOneOf('options.topkMethod', o.topkMethod, ['greedy', 'group_limited_greedy'] as const);
      const grouped = method === 'group_limited_greedy';
      return {
        family,
        ...hf,
        routing: {
          k,
          scoring: 'softmax',
          selection: 'topk',
          renormalize: norm(false),
          routedScaling: scaling,
          ...(grouped ? { nGroup: checkInteger('options.nGroup', o.nGroup, 1), topkGroup: checkInteger('options.topkGroup', o.topkGroup, 1), groupScore: 'max' as const } : {}),
        },
      };
    }
    case 'deepseek_v3':
      // sigmoid; e_score_correction_bias for selection; groups scored by the sum of their
      // top-2 biased scores (zeros when the checkpoint has no bias); renormalise (+1e-20);
      // routed_scaling_factor. NOTE: dropped groups are masked with -inf; transformers masks
      // them with 0.0, which differs only when a kept expert's biased score is negative.
      return {
        family,
        ...hf,
        routing: {
          k,
          scoring: 'sigmoid',
          selection: 'topk',
          renormalize: norm(true),
          routedScaling: scaling,
          nGroup: o.nGroup === undefined ? 1 : checkInteger('options.nGroup', o.nGroup, 1),
          topkGroup: o.topkGroup === undefined ? (o.nGroup ?? 1) : checkInteger('options.topkGroup', o.topkGroup, 1),
          groupScore: 'top2-sum',
        },
      };
    case 'gpt_oss':
      // router bias; top-k over logits, softmax over the k; clamped SwiGLU on interleaved gate/up.
      return {
        family,
        activation: 'gpt-oss-swiglu',
        layoutIn: 'ekn',
        layoutOut: 'ekn',
        alpha: 1.702,
        limit: o.swigluLimit === undefined ? 7 : checkNumber('options.swigluLimit', o.swigluLimit, 0),
        routing: { k, selection: 'topk-logits-softmax' },
      };
  }
}
