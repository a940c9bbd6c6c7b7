/**
 * Routing (gating) options: their types, validation and the native encoding.
 * The exact math of every option is documented in kernels/common/gating_params.h.
 */
import { checkBoolean, checkInteger, checkNumber, checkOneOf, rangeError } from './errors';

/** How router logits become scores. */
export type Scoring = 'softmax' | 'sigmoid' | 'sqrt-softplus';
/** How experts are picked from the scores. */
export type Selection = 'topk' | 'topk-logits-softmax' | 'top-p' | 'expert-choice' | 'sinkhorn';

export const SCORINGS: readonly Scoring[] = ['softmax', 'sigmoid', 'sqrt-softplus'];
export const SELECTIONS: readonly Selection[] = ['topk', 'topk-logits-softmax', 'top-p', 'expert-choice', 'sinkhorn'];

/** Routing options shared by the gate op and MoELayer. */
export interface RoutingOptions {
  /** Experts per token (the cap `maxK` for top-p). Ignored for expert-choice. */
  k: number;
  /** Default 'softmax'. */
  scoring?: Scoring;
  /** Default 'topk'. */
  selection?: Selection;
  /** AdaMoE null experts: extra router outputs after the real experts; a slot that lands on one is skipped. Default 0. */
  nullExperts?: number;
  /** Grouped top-k (DeepSeek): number of equal expert groups. Default 1 (no groups). */
  nGroup?: number;
  /** Grouped top-k: groups kept per token. */
  topkGroup?: number;
  /**
   * Grouped top-k: how a group is scored. 'top2-sum' (the sum of its two best biased
   * scores, DeepSeek-V3) or 'max' (its best score, DeepSeek-V2). Default: 'top2-sum'
   * when a correction bias is given, else 'max'.
   */
  groupScore?: 'max' | 'top2-sum';
  /** Renormalise each token's weights to sum 1 (denominator + 1e-20). Default false. */
  renormalize?: boolean;
  /** Multiply the weights by this factor (after renormalisation). Default 1. */
  routedScaling?: number;
  /** Top-p threshold in (0, 1] for selection 'top-p'. */
  topP?: number;
  /** Expert-choice capacity factor: C = ceil(capacityFactor · T · choiceK / E). Default 1. */
  capacityFactor?: number;
  /** Expert-choice: the k in the capacity formula. Default 1. */
  choiceK?: number;
  /** Sinkhorn iterations for selection 'sinkhorn'. Default 3. */
  sinkhornIters?: number;
}

/** Validated routing options with defaults filled in. */
export interface ResolvedRouting {
  experts: number;
  k: number;
  scoring: Scoring;
  selection: Selection;
  nullExperts: number;
  nGroup: number;
  topkGroup: number;
  groupScore: 'max' | 'top2-sum' | undefined;
  renormalize: boolean;
  routedScaling: number;
  topP: number;
  capacityFactor: number;
  choiceK: number;
  sinkhornIters: number;
  /** Slots per token in the ids/weights outputs (k, or experts for expert-choice). */
  slots: number;
}

/** Validates routing options for `experts` real experts; `prefix` names the argument in errors. */
export function resolveRouting(prefix: string, experts: number, o: Partial<RoutingOptions>): ResolvedRouting {
  const selection = o.selection === undefined ? 'topk' : checkOneOf(`${prefix}.selection`, o.selection, SELECTIONS);
  const scoring = o.scoring === undefined ? 'softmax' : checkOneOf(`${prefix}.scoring`, o.scoring, SCORINGS);
  const nullExperts = o.nullExperts === undefined ? 0 : checkInteger(`${prefix}.nullExperts`, o.nullExperts, 0, 1 << 20);
  const nGroup = o.nGroup === undefined ? 1 : checkInteger(`${prefix}.nGroup`, o.nGroup, 1, experts);
  const topkGroup = o.topkGroup === undefined ? nGroup : checkInteger(`${prefix}.topkGroup`, o.topkGroup, 1, nGroup);
  if (experts % nGroup !== 0) throw rangeError(`${prefix}.nGroup`, `a divisor of the expert count ${experts}`, nGroup);
  if (nGroup > 1 && nullExperts > 0) throw rangeError(`${prefix}.nullExperts`, '0 when experts are grouped (nGroup > 1)', nullExperts);
  const total = experts + nullExperts;
  let k: number;
  if (selection === 'expert-choice') {
    k = experts;
  } else {
    const maxK = nGroup > 1 ? topkGroup * (experts / nGroup) : total;
    k = checkInteger(`${prefix}.k`, o.k, 1, maxK);
  }
  if ((selection === 'expert-choice' || selection === 'sinkhorn') && nullExperts > 0)
    throw rangeError(`${prefix}.nullExperts`, `0 with selection '${selection}'`, nullExperts);
  if (selection === 'top-p' && scoring !== 'softmax') throw rangeError(`${prefix}.scoring`, "'softmax' with selection 'top-p'", scoring);
  const topP = o.topP === undefined ? 1 : checkNumber(`${prefix}.topP`, o.topP, Number.MIN_VALUE, 1);
  return {
    experts,
    k,
    scoring,
    selection,
    nullExperts,
    nGroup,
    topkGroup,
    groupScore: o.groupScore === undefined ? undefined : checkOneOf(`${prefix}.groupScore`, o.groupScore, ['max', 'top2-sum'] as const),
    renormalize: o.renormalize === undefined ? false : checkBoolean(`${prefix}.renormalize`, o.renormalize),
    routedScaling: o.routedScaling === undefined ? 1 : checkNumber(`${prefix}.routedScaling`, o.routedScaling),
    topP,
    capacityFactor: o.capacityFactor === undefined ? 1 : checkNumber(`${prefix}.capacityFactor`, o.capacityFactor, 0),
    choiceK: o.choiceK === undefined ? 1 : checkInteger(`${prefix}.choiceK`, o.choiceK, 1, experts),
    sinkhornIters: o.sinkhornIters === undefined ? 3 : checkInteger(`${prefix}.sinkhornIters`, o.sinkhornIters, 0, 1000),
    slots: k,
  };
}

/**
 * The correction bias to pass to the kernel: the kernel scores groups by the top-2 sum
 * exactly when it gets a bias, so 'top2-sum' without one gets zeros, and 'max' refuses one.
 * `zeros(E)` makes the zero tensor when needed.
 */
export function correctionBiasFor<T>(prefix: string, r: ResolvedRouting, given: T | undefined, zeros: (n: number) => T): T | undefined {
  if (r.groupScore === 'max' && given !== undefined && r.nGroup > 1)
    throw rangeError(`${prefix}.groupScore`, "'top2-sum' (or no groupScore) with a correction bias", 'max');
  if (r.groupScore === 'top2-sum' && given === undefined && r.nGroup > 1) return zeros(r.experts);
  return given;
}

/** The fields the native gating reads (codes per kernels/common/gating_params.h). */
export function encodeRouting(r: ResolvedRouting): Record<string, number | boolean> {
  return {
    experts: r.experts,
    nullExperts: r.nullExperts,
    k: r.slots,
    scoring: SCORINGS.indexOf(r.scoring),
    selection: SELECTIONS.indexOf(r.selection),
    nGroup: r.nGroup,
    topkGroup: r.topkGroup,
    renormalize: r.renormalize,
    routedScaling: r.routedScaling,
    topP: r.topP,
    capacityFactor: r.capacityFactor,
    choiceK: r.choiceK,
    sinkhornIters: r.sinkhornIters,
  };
}

/** Load statistics of one routing, cheap enough to compute on every forward. */
export interface RoutingStats {
  /** Pairs routed (after capacity drops). */
  routed: number;
  /** Largest expert load divided by the mean load (1 = perfectly balanced). */
  maxOverMean: number;
  /** Coefficient of variation of the loads (std / mean). */
  coefficientOfVariation: number;
  /** Entropy of the load distribution in nats (ln E = perfectly balanced). */
  entropy: number;
  /** Entropy divided by ln E (1 = perfectly balanced). */
  normalizedEntropy: number;
  /** Experts that received no pair. */
  idleExperts: number;
  /** Pairs dropped by an expert capacity. */
  dropped: number;
}

/** Statistics of a per-expert load vector. */
export function routingStats(load: ArrayLike<number>, dropped = 0): RoutingStats {
  const E = load.length;
  let total = 0;
  let max = 0;
  let idle = 0;
  for (let e = 0; e < E; e++) {
    total += load[e];
    if (load[e] > max) max = load[e];
    if (load[e] === 0) idle++;
  }
  const mean = E > 0 ? total / E : 0;
  let variance = 0;
  let entropy = 0;
  for (let e = 0; e < E; e++) {
    variance += (load[e] - mean) ** 2;
    if (load[e] > 0) {
      const p = load[e] / total;
      entropy -= p * Math.log(p);
    }
  }
  variance = E > 0 ? variance / E : 0;
  return {
    routed: total,
    maxOverMean: mean > 0 ? max / mean : 0,
    coefficientOfVariation: mean > 0 ? Math.sqrt(variance) / mean : 0,
    entropy,
    normalizedEntropy: E > 1 ? entropy / Math.log(E) : 1,
    idleExperts: idle,
    dropped,
  };
}
