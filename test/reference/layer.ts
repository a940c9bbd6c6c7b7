/**
 * Float64 reference of a whole MoE layer, computed directly per token:
 *
 *   logits = x . routerWeight^T (+ routerBias)             [T, E + nullExperts]
 *   (ids, weights) = refGating(logits, gating options)     (or forced routing)
 *   out[t] = sum over kept slots s of weights[t, s] * expert_{ids[t,s]}(x[t])
 *            + sum over shared experts of gate_t * shared(x[t])
 *   expert_e(v) = down_e(act(w1_e . v + b1_e [, w1Up_e . v + b1Up_e])) + b2_e
 *
 * The routed experts are evaluated token by token from the weights — no
 * dispatch, no grouped GEMM, no combine — so comparing this with the native
 * pipeline (gating -> dispatch -> grouped GEMM -> combine) is an independent
 * check of the whole chain. The expert weights use the same tensors and
 * layouts as the two grouped GEMMs of the native pipeline (first projection
 * with fused activation, then the down projection).
 *
 * Forced routing: the caller gives ids [T, forcedK] (-1 = skip) and optionally
 * weights. Without weights, the weights come from the router the way the gate
 * would score them: the layer's score of each forced id (softmax over all
 * E + nullExperts columns of logits + logitBias; sigmoid or sqrt-softplus per
 * element; for 'topk-logits-softmax' the softmax over the forced ids' logits),
 * then the gate's renormalisation (+1e-20) and routed scaling. `load` counts
 * the forced ids.
 *
 * Capacity: with `capacity >= 0` each expert keeps only its first `capacity`
 * (token, slot) pairs in order p = t * k + s, exactly like the dispatch
 * semantics; dropped pairs contribute nothing. Computed directly from the ids.
 *
 * @packageDocumentation
 */

import { refGating, scoreRow, softmax, sigmoid, type GatingOptions, type GatingResult } from './gating';
import {
  activationOutputColumns,
  applyActivation,
  expertLinear,
  silu,
  sliceRow,
  type Activation,
  type WeightLayout,
} from './gemm';

/** Routed expert weights, in the layouts of the native pipeline's two grouped GEMMs. */
export interface ExpertWeights {
  /** Activation of the first projection (e.g. 'swiglu' for a fused [gate; up] weight). */
  activation: Activation;
  /** First projection: [E, n1, H] ('enk') or [E, H, n1] ('ekn'). */
  w1: ArrayLike<number>;
  /** Output columns of w1 (2I for a fused GLU projection, I with a separate w1Up). */
  n1: number;
  /** Optional separate up projection, same layout and shape as w1 ('swiglu' / 'geglu' only). */
  w1Up?: ArrayLike<number> | undefined;
  /** [E, n1] bias of w1. */
  b1?: ArrayLike<number> | undefined;
  /** [E, n1] bias of w1Up. */
  b1Up?: ArrayLike<number> | undefined;
  /** Down projection: [E, H, I] ('enk') or [E, I, H] ('ekn'). */
  w2: ArrayLike<number>;
  /** [E, H] bias of w2. */
  b2?: ArrayLike<number> | undefined;
  /** Layout of w1 / w1Up (default 'enk'). */
  layout?: WeightLayout | undefined;
  /** Layout of w2 (default: same as `layout`). */
  downLayout?: WeightLayout | undefined;
  /** gpt-oss SwiGLU alpha (default 1.702). */
  alpha?: number | undefined;
  /** gpt-oss SwiGLU limit (default 7). */
  limit?: number | undefined;
}

/** A shared (always-on) SwiGLU expert in HF nn.Linear layout. */
export interface SharedExpertWeights {
  /** Intermediate size Is. */
  intermediate: number;
  /** [Is, H] gate_proj weight. */
  gate: ArrayLike<number>;
  /** [Is, H] up_proj weight. */
  up: ArrayLike<number>;
  /** [H, Is] down_proj weight. */
  down: ArrayLike<number>;
  /** [H] optional sigmoid gate (Qwen2-MoE shared_expert_gate): output *= sigmoid(x . gateWeight). */
  gateWeight?: ArrayLike<number> | undefined;
}

/** Caller-chosen routing that replaces the gating op. */
export interface ForcedRouting {
  /** [T, k] expert ids, -1 = skip. */
  ids: ArrayLike<number>;
  /** Slots per token. */
  k: number;
  /** [T, k] weights; when absent, the softmax probability of each id over all columns of x. */
  weights?: ArrayLike<number> | undefined;
}

/** Parameters of {@link refMoELayer}. */
export interface MoELayerParams {
  /** [E + nullExperts, H] router weight (not needed when `logits` is given). */
  routerWeight?: ArrayLike<number> | undefined;
  /** [E + nullExperts] router bias added to the router output. */
  routerBias?: ArrayLike<number> | undefined;
  /** [T, E + nullExperts] router logits to use instead of computing them. */
  logits?: ArrayLike<number> | undefined;
  /** Gating options (experts, k, scoring, selection, ...). */
  gating: GatingOptions;
  /** Routed expert weights. */
  experts: ExpertWeights;
  /** Shared experts, added to every token. */
  shared?: SharedExpertWeights | readonly SharedExpertWeights[] | undefined;
  /** Forced routing instead of gating. */
  forced?: ForcedRouting | undefined;
  /** Per-expert capacity in pairs (< 0 or absent = unlimited). */
  capacity?: number | undefined;
}

/** Output of {@link refMoELayer}. */
export interface MoELayerResult {
  /** [T, H] layer output = routed + shared. */
  out: Float64Array;
  /** [T, H] routed-experts part. */
  routed: Float64Array;
  /** [T, H] shared-experts part (zeros when there are none). */
  shared: Float64Array;
  /** [T, E + nullExperts] router logits used. */
  logits: Float64Array;
  /** Slots per token of ids / weights. */
  slots: number;
  /** [T, slots] expert ids. */
  ids: Int32Array;
  /** [T, slots] routing weights. */
  weights: Float64Array;
  /** [T, slots] 1 where the pair was used (valid id and within capacity). */
  kept: Uint8Array;
  /** [E] pairs routed to each expert (before capacity). */
  load: Int32Array;
  /** The gating result, when gating ran (not with forced routing). */
  gating?: GatingResult | undefined;
}

/** Router logits x . W^T (+ b) for x [T, H] and W [C, H]; returns [T, C]. */
export function refRouterLogits(
  x: ArrayLike<number>,
  tokens: number,
  hidden: number,
  weight: ArrayLike<number>,
  columns: number,
  bias?: ArrayLike<number>,
): Float64Array {
  if (weight.length !== columns * hidden) throw new Error(`router weight: expected ${columns * hidden} values, got ${weight.length}`);
  const out = new Float64Array(tokens * columns);
  for (let t = 0; t < tokens; t++) {
    for (let c = 0; c < columns; c++) {
      let acc = 0;
      for (let h = 0; h < hidden; h++) acc += (x[t * hidden + h] as number) * (weight[c * hidden + h] as number);
      out[t * columns + c] = acc + (bias ? (bias[c] as number) : 0);
    }
  }
  return out;
}

/** One routed expert applied to one token row; returns H values. */
export function refExpertForward(xRow: ArrayLike<number>, e: number, w: ExpertWeights, hidden: number): Float64Array {
  const layout = w.layout ?? 'enk';
  const downLayout = w.downLayout ?? layout;
  const inter = activationOutputColumns(w.activation, w.n1, w.w1Up !== undefined);
  const h = expertLinear(xRow, w.w1, layout, e, w.n1, hidden, w.b1);
  const up = w.w1Up !== undefined ? expertLinear(xRow, w.w1Up, layout, e, w.n1, hidden, w.b1Up) : undefined;
  const a = applyActivation(w.activation, h, up, { alpha: w.alpha, limit: w.limit });
  return expertLinear(a, w.w2, downLayout, e, hidden, inter, w.b2);
}

/** A shared SwiGLU expert applied to one token row, including its sigmoid gate; returns H values. */
export function refSharedExpertForward(xRow: ArrayLike<number>, s: SharedExpertWeights, hidden: number): Float64Array {
  const I = s.intermediate;
  const act = new Float64Array(I);
  for (let i = 0; i < I; i++) {
    let g = 0;
    let u = 0;
    for (let h = 0; h < hidden; h++) {
      g += (xRow[h] as number) * (s.gate[i * hidden + h] as number);
      u += (xRow[h] as number) * (s.up[i * hidden + h] as number);
    }
    act[i] = silu(g) * u;
  }
  let gate = 1;
  if (s.gateWeight !== undefined) {
    let dot = 0;
    for (let h = 0; h < hidden; h++) dot += (xRow[h] as number) * (s.gateWeight[h] as number);
    gate = sigmoid(dot);
  }
  const out = new Float64Array(hidden);
  for (let h = 0; h < hidden; h++) {
    let acc = 0;
    for (let i = 0; i < I; i++) acc += (act[i] as number) * (s.down[h * I + i] as number);
    out[h] = gate * acc;
  }
  return out;
}

/**
 * Float64 reference MoE layer for x [tokens, hidden]. See the module comment
 * for the order of operations, forced routing and capacity.
 */
export function refMoELayer(x: ArrayLike<number>, tokens: number, hidden: number, params: MoELayerParams): MoELayerResult {
  if (x.length !== tokens * hidden) throw new Error(`x: expected ${tokens * hidden} values, got ${x.length}`);
  const E = params.gating.experts;
  const columns = E + (params.gating.nullExperts ?? 0);

  let logits: Float64Array;
  if (params.logits !== undefined) {
    if (params.logits.length !== tokens * columns) throw new Error(`logits: expected ${tokens * columns} values`);
    logits = Float64Array.from(params.logits);
  } else if (params.routerWeight !== undefined) {
    logits = refRouterLogits(x, tokens, hidden, params.routerWeight, columns, params.routerBias);
  } else if (params.forced !== undefined && params.forced.weights !== undefined) {
    logits = new Float64Array(tokens * columns); // not needed
  } else {
    throw new Error('refMoELayer: give routerWeight or logits');
  }

  let slots: number;
  let ids: Int32Array;
  let weights: Float64Array;
  let gating: GatingResult | undefined;
  const load = new Int32Array(E);
  if (params.forced !== undefined) {
    const f = params.forced;
    slots = f.k;
    if (f.ids.length !== tokens * slots) throw new Error(`forced ids: expected ${tokens * slots} values`);
    ids = Int32Array.from(f.ids);
    weights = new Float64Array(tokens * slots);
    const g = params.gating;
    const scoring = g.scoring ?? 'softmax';
    for (let t = 0; t < tokens; t++) {
      const row = sliceRow(logits, t * columns, columns);
      if (g.logitBias !== undefined) {
        for (let c = 0; c < columns; c++) row[c] = (row[c] as number) + Math.fround(g.logitBias[c] as number);
      }
      const valid: number[] = [];
      for (let s = 0; s < slots; s++) {
        const p = t * slots + s;
        const id = ids[p] as number;
        if (id < 0) continue;
        if (id >= E) throw new Error(`forced ids[${p}] = ${id} is not a real expert`);
        load[id] = (load[id] as number) + 1;
        valid.push(s);
      }
      if (f.weights !== undefined) {
        for (const s of valid) weights[t * slots + s] = f.weights[t * slots + s] as number;
        continue;
      }
      if (g.selection === 'topk-logits-softmax') {
        const chosen = softmax(valid.map((s) => row[ids[t * slots + s] as number] as number));
        valid.forEach((s, i) => (weights[t * slots + s] = chosen[i] as number));
      } else {
        const scores = scoreRow(row, scoring);
        for (const s of valid) weights[t * slots + s] = scores[ids[t * slots + s] as number] as number;
      }
      if (g.renormalize === true) {
        let sum = 0;
        for (const s of valid) sum += weights[t * slots + s] as number;
        for (const s of valid) weights[t * slots + s] = (weights[t * slots + s] as number) / (sum + 1e-20);
      }
      const scale = Math.fround(g.routedScaling ?? 1);
      for (const s of valid) weights[t * slots + s] = (weights[t * slots + s] as number) * scale;
    }
  } else {
    gating = refGating(logits, tokens, params.gating);
    slots = gating.slots;
    ids = gating.ids;
    weights = gating.weights;
    load.set(gating.load);
  }

  // Capacity: an expert keeps its first `capacity` pairs in pair order.
  const kept = new Uint8Array(tokens * slots);
  const used = new Int32Array(E);
  const capacity = params.capacity ?? -1;
  for (let p = 0; p < tokens * slots; p++) {
    const id = ids[p] as number;
    if (id < 0) continue;
    if (capacity >= 0 && (used[id] as number) >= capacity) continue;
    used[id] = (used[id] as number) + 1;
    kept[p] = 1;
  }

  const routed = new Float64Array(tokens * hidden);
  const shared = new Float64Array(tokens * hidden);
  const sharedList: readonly SharedExpertWeights[] =
    params.shared === undefined ? [] : Array.isArray(params.shared) ? params.shared : [params.shared as SharedExpertWeights];
  for (let t = 0; t < tokens; t++) {
    const xRow = sliceRow(x, t * hidden, hidden);
    for (let s = 0; s < slots; s++) {
      const p = t * slots + s;
      if (kept[p] === 0) continue;
      const y = refExpertForward(xRow, ids[p] as number, params.experts, hidden);
      const w = weights[p] as number;
      for (let h = 0; h < hidden; h++) routed[t * hidden + h] = (routed[t * hidden + h] as number) + w * (y[h] as number);
    }
    for (const se of sharedList) {
      const y = refSharedExpertForward(xRow, se, hidden);
      for (let h = 0; h < hidden; h++) shared[t * hidden + h] = (shared[t * hidden + h] as number) + (y[h] as number);
    }
  }
  const out = new Float64Array(tokens * hidden);
  for (let i = 0; i < out.length; i++) out[i] = (routed[i] as number) + (shared[i] as number);
  return { out, routed, shared, logits, slots, ids, weights, kept, load, gating };
}
