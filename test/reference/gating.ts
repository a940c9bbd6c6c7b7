/**
 * Float64 reference of the gating (routing) op described by
 * kernels/common/gating_params.h: router logits [tokens, experts + nullExperts]
 * -> per-token expert ids, routing weights and per-expert load.
 *
 * Semantics (fixed; the native kernels implement exactly these):
 *
 * - x = logit + logitBias, in float64. Parameters that are `float` in the
 *   params struct (logitBias, correctionBias, routedScaling, topP,
 *   capacityFactor) are rounded to float32 first, since that is what the
 *   kernel receives. Logits are used as given (tests pass float32 or
 *   bf16-rounded values).
 * - Scoring: 'softmax' over all experts + null-expert columns; 'sigmoid';
 *   'sqrt-softplus' = sqrt(log(1 + e^x)).
 * - Ordering everywhere: value descending, NaN last, then id ascending.
 * - 'topk' (kTopkScores): choice = score + correctionBias (real experts only).
 *   When nGroup > 1 the real experts are split into nGroup equal consecutive
 *   groups; group score = sum of the two largest choice values of the group
 *   when a correction bias is given, else the largest; the best topkGroup
 *   groups are kept (ties to the lower group id) and the other groups' choice
 *   values become -Infinity. Null experts belong to no group and are always
 *   eligible. Then top-k over choice; weight = the unbiased score.
 * - 'topk-logits-softmax': top-k over x, then softmax over those k values.
 * - 'top-p': softmax probabilities sorted descending; experts are taken while
 *   the running sum is below topP, at most k (the first one always); weights
 *   are the probabilities; unused slots are -1 / 0.
 * - 'expert-choice': C = ceil(capacityFactor * T * choiceK / E) clamped to
 *   [0, T]; each real expert takes its top-C tokens by score (ties to the
 *   lower token id). ids/weights are [T, E]: slot e holds e (weight = score)
 *   if expert e took the token, else -1 (weight 0). Only routedScaling is
 *   applied (no renormalisation).
 * - 'sinkhorn': P = exp(x - rowmax); sinkhornIters times: divide every column
 *   by its sum (over tokens), then every row by its sum; top-k over P;
 *   weights = softmax probabilities of the chosen experts.
 * - Post-processing (all but expert-choice): the raw weights of the k chosen
 *   slots, null experts included, are summed; if renormalize, w /= (sum +
 *   1e-20); then null-expert slots become id -1 / weight 0; then
 *   w *= routedScaling. Slot order = selection order.
 * - load[e] = number of (token, slot) pairs with id e.
 *
 * Resolved details not spelled out by the header: 'top-p', 'sinkhorn' and
 * 'topk-logits-softmax' always use softmax probabilities (the `scoring`
 * option only affects 'topk' and 'expert-choice'); correctionBias and groups
 * only affect 'topk'; a group of one expert has "top-2 sum" = that expert's
 * value; in Sinkhorn a column or row whose sum is 0 is left undivided.
 *
 * @packageDocumentation
 */

/** Scoring function applied to x = logit + logitBias. */
export type Scoring = 'softmax' | 'sigmoid' | 'sqrt-softplus';

/** Expert selection mode (Selection in gating_params.h). */
export type Selection = 'topk' | 'topk-logits-softmax' | 'top-p' | 'expert-choice' | 'sinkhorn';

/** Options of {@link refGating}, mirroring GatingParams in camelCase. */
export interface GatingOptions {
  /** Real (routed) experts E. */
  experts: number;
  /** AdaMoE null experts: extra router columns after the real ones (default 0). */
  nullExperts?: number | undefined;
  /** Slots per token (max k for top-p; ignored for expert-choice, whose slots are E). */
  k: number;
  /** Scoring function (default 'softmax'). */
  scoring?: Scoring | undefined;
  /** Selection mode (default 'topk'). */
  selection?: Selection | undefined;
  /** [E + nullExperts] added to the logits first. */
  logitBias?: ArrayLike<number> | undefined;
  /** [E] added to the scores for selection only ('topk'). */
  correctionBias?: ArrayLike<number> | undefined;
  /** Number of expert groups for grouped top-k (default 1 = no grouping). */
  nGroup?: number | undefined;
  /** Groups kept per token when nGroup > 1 (default 1). */
  topkGroup?: number | undefined;
  /** Divide the weights by (sum of the token's k raw weights + 1e-20) (default false). */
  renormalize?: boolean | undefined;
  /** Multiply the weights by this after renormalisation (default 1). */
  routedScaling?: number | undefined;
  /** Top-p threshold in (0, 1] (default 1). */
  topP?: number | undefined;
  /** Expert-choice capacity factor (default 1). */
  capacityFactor?: number | undefined;
  /** Expert-choice k in C = ceil(capacityFactor * T * choiceK / E) (default 1). */
  choiceK?: number | undefined;
  /** Sinkhorn iterations (default 0). */
  sinkhornIters?: number | undefined;
}

/** Output of {@link refGating}. */
export interface GatingResult {
  /** Tokens T. */
  tokens: number;
  /** Slots per token: k, or E for expert-choice. */
  slots: number;
  /** [T, slots] expert ids, -1 for unused slots. */
  ids: Int32Array;
  /** [T, slots] routing weights, 0 for unused slots. */
  weights: Float64Array;
  /** [E] number of (token, slot) pairs routed to each expert. */
  load: Int32Array;
  /** [T, E + nullExperts] output of the scoring function on x (softmax probabilities for top-p / Sinkhorn / topk-logits-softmax). */
  scores: Float64Array;
  /**
   * Smallest non-zero float64 gap at any decision that shapes the output
   * (which experts are chosen and their slot order): per token ([T]) for
   * every mode but expert-choice, per expert ([E]) for expert-choice. Exact
   * ties are left out: they resolve by id, identically in any precision
   * (except Sinkhorn's, which count as Number.MIN_VALUE). A small value means
   * a near tie that a float32 kernel may resolve the other way, so tests
   * should skip or loosen those rows. Infinity when nothing was close.
   */
  margin: Float64Array;
}

/**
 * Orders two (value, id) candidates: larger value first, NaN after every
 * number, then lower id first. Returns a negative number when `a` comes first.
 */
export function compareSelection(aValue: number, aId: number, bValue: number, bId: number): number {
  const aNaN = Number.isNaN(aValue);
  const bNaN = Number.isNaN(bValue);
  if (aNaN !== bNaN) return aNaN ? 1 : -1;
  if (!aNaN && aValue !== bValue) return aValue > bValue ? -1 : 1;
  return aId - bId;
}

/** Indices 0..values.length-1 sorted by {@link compareSelection} on `values`. */
export function selectionOrder(values: ArrayLike<number>): number[] {
  const order: number[] = [];
  for (let i = 0; i < values.length; i++) order.push(i);
  order.sort((a, b) => compareSelection(values[a] as number, a, values[b] as number, b));
  return order;
}

/** Gap between two ordered values for the margin diagnostic (0 for equal values, Infinity when unordered by NaN). */
function decisionGap(better: number, worse: number): number {
  if (better === worse) return 0;
  if (Number.isNaN(better) || Number.isNaN(worse)) return Infinity;
  return better - worse;
}

/** Logistic sigmoid, evaluated without overflow. */
export function sigmoid(x: number): number {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}

/** softplus(x) = log(1 + e^x), evaluated without overflow. */
export function softplus(x: number): number {
  return Math.max(x, 0) + Math.log1p(Math.exp(-Math.abs(x)));
}

/** Softmax of a vector (max-subtracted), in float64. */
export function softmax(values: ArrayLike<number>): Float64Array {
  const n = values.length;
  const out = new Float64Array(n);
  // NaN entries take no part: their probability is NaN, the rest are normalised without them.
  let max = -Infinity;
  for (let i = 0; i < n; i++) if ((values[i] as number) > max) max = values[i] as number;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp((values[i] as number) - max);
    out[i] = e;
    if (!Number.isNaN(e)) sum += e;
  }
  for (let i = 0; i < n; i++) out[i] = (out[i] as number) / sum;
  return out;
}

/** Applies a scoring function to one row of x. */
export function scoreRow(x: ArrayLike<number>, scoring: Scoring): Float64Array {
  if (scoring === 'softmax') return softmax(x);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    out[i] = scoring === 'sigmoid' ? sigmoid(v) : Math.sqrt(softplus(v));
  }
  return out;
}

/** Fully defaulted gating options (internal). */
interface ResolvedGating {
  experts: number;
  columns: number;
  k: number;
  scoring: Scoring;
  selection: Selection;
  logitBias: Float64Array | undefined;
  correctionBias: Float64Array | undefined;
  nGroup: number;
  topkGroup: number;
  renormalize: boolean;
  routedScaling: number;
  topP: number;
  capacityFactor: number;
  choiceK: number;
  sinkhornIters: number;
}

function toF32Array(values: ArrayLike<number> | undefined, expected: number, name: string): Float64Array | undefined {
  if (values === undefined) return undefined;
  if (values.length !== expected) throw new Error(`${name}: expected ${expected} values, got ${values.length}`);
  const out = new Float64Array(expected);
  for (let i = 0; i < expected; i++) out[i] = Math.fround(values[i] as number);
  return out;
}

function resolveGating(opts: GatingOptions): ResolvedGating {
  const experts = opts.experts;
  const nullExperts = opts.nullExperts ?? 0;
  if (!Number.isInteger(experts) || experts < 1) throw new Error(`experts must be a positive integer, got ${experts}`);
  if (!Number.isInteger(nullExperts) || nullExperts < 0) throw new Error(`nullExperts must be >= 0, got ${nullExperts}`);
  if (!Number.isInteger(opts.k) || opts.k < 0) throw new Error(`k must be a non-negative integer, got ${opts.k}`);
  const columns = experts + nullExperts;
  const nGroup = opts.nGroup ?? 1;
  const topkGroup = opts.topkGroup ?? 1;
  if (nGroup > 1) {
    if (experts % nGroup !== 0) throw new Error(`experts (${experts}) must be divisible by nGroup (${nGroup})`);
    if (topkGroup < 1 || topkGroup > nGroup) throw new Error(`topkGroup must be in [1, ${nGroup}], got ${topkGroup}`);
  }
  return {
    experts,
    columns,
    k: opts.k,
    scoring: opts.scoring ?? 'softmax',
    selection: opts.selection ?? 'topk',
    logitBias: toF32Array(opts.logitBias, columns, 'logitBias'),
    correctionBias: toF32Array(opts.correctionBias, experts, 'correctionBias'),
    nGroup,
    topkGroup,
    renormalize: opts.renormalize ?? false,
    routedScaling: Math.fround(opts.routedScaling ?? 1),
    topP: Math.fround(opts.topP ?? 1),
    capacityFactor: Math.fround(opts.capacityFactor ?? 1),
    choiceK: opts.choiceK ?? 1,
    sinkhornIters: opts.sinkhornIters ?? 0,
  };
}

/** The biased logits x = logit + logitBias, [T, columns]. */
function biasedLogits(logits: ArrayLike<number>, tokens: number, g: ResolvedGating): Float64Array {
  if (logits.length !== tokens * g.columns) {
    throw new Error(`logits: expected ${tokens} x ${g.columns} = ${tokens * g.columns} values, got ${logits.length}`);
  }
  const x = new Float64Array(tokens * g.columns);
  // Infinities (and float32 overflow of the biased sum) clamp to ±FLT_MAX; NaN stays NaN.
  const FLT_MAX = 3.4028234663852886e38;
  for (let i = 0; i < x.length; i++) {
    const v = (logits[i] as number) + (g.logitBias ? (g.logitBias[i % g.columns] as number) : 0);
    x[i] = Number.isNaN(v) ? v : Math.max(-FLT_MAX, Math.min(FLT_MAX, v));
  }
  return x;
}

/**
 * Top-`count` of `values` by {@link compareSelection}; also returns the smallest
 * non-zero gap between neighbours in the selection order, from the first taken
 * value to the first value left out: both which experts are chosen and their
 * slot order depend on those comparisons. Exact ties (gap 0) are skipped: they
 * resolve by id identically in any precision — unless `tiesAreFragile`, for
 * values computed along different arithmetic paths (Sinkhorn), where a float64
 * tie need not be a tie in another implementation; then a tie counts as a gap
 * of Number.MIN_VALUE.
 */
function topWithGap(values: ArrayLike<number>, count: number, tiesAreFragile = false): { chosen: number[]; gap: number } {
  const order = selectionOrder(values);
  const taken = Math.min(count, order.length);
  const chosen = order.slice(0, taken);
  let gap = Infinity;
  const last = Math.min(taken, order.length - 1);
  for (let i = 0; i < last; i++) {
    const d = decisionGap(values[order[i] as number] as number, values[order[i + 1] as number] as number);
    if (d > 0) gap = Math.min(gap, d);
    else if (d === 0 && tiesAreFragile) gap = Math.min(gap, Number.MIN_VALUE);
  }
  return { chosen, gap };
}

/**
 * Writes one token's chosen slots: renormalises over all chosen slots (null
 * experts included) when asked, zeroes null-expert slots, applies the routed
 * scaling, and counts the load. Slots past `chosen.length` stay -1 / 0.
 */
function writeSlots(
  chosen: readonly number[],
  raw: readonly number[],
  g: ResolvedGating,
  token: number,
  ids: Int32Array,
  weights: Float64Array,
  load: Int32Array,
): void {
  // A slot picked with a NaN score (fewer than k numbers in the row) has weight 0.
  const clean = raw.map((w) => (Number.isNaN(w) ? 0 : w));
  let sum = 0;
  for (const w of clean) sum += w;
  for (let s = 0; s < chosen.length; s++) {
    const id = chosen[s] as number;
    let w = clean[s] as number;
    if (g.renormalize) w = w / (sum + 1e-20);
    const slot = token * g.k + s;
    if (id >= g.experts) {
      ids[slot] = -1;
      weights[slot] = 0;
    } else {
      ids[slot] = id;
      weights[slot] = w * g.routedScaling;
      load[id] = (load[id] as number) + 1;
    }
  }
}

/**
 * Float64 reference gating. `logits` is [tokens, experts + nullExperts]
 * row-major (float32 or already-rounded values). See the module comment for
 * the exact semantics of every mode.
 */
export function refGating(logits: ArrayLike<number>, tokens: number, opts: GatingOptions): GatingResult {
  const g = resolveGating(opts);
  const x = biasedLogits(logits, tokens, g);
  const C = g.columns;
  const E = g.experts;
  const useSoftmaxProbs = g.selection === 'top-p' || g.selection === 'sinkhorn' || g.selection === 'topk-logits-softmax';
  const scores = new Float64Array(tokens * C);
  for (let t = 0; t < tokens; t++) {
    const row = scoreRow(x.subarray(t * C, (t + 1) * C), useSoftmaxProbs ? 'softmax' : g.scoring);
    scores.set(row, t * C);
  }
  const load = new Int32Array(E);

  if (g.selection === 'expert-choice') {
    return expertChoice(scores, tokens, g, load);
  }

  const ids = new Int32Array(tokens * g.k).fill(-1);
  const weights = new Float64Array(tokens * g.k);
  const margin = new Float64Array(tokens).fill(Infinity);

  // Sinkhorn-balanced matrix P, computed over all tokens at once.
  let sinkhornP: Float64Array | undefined;
  if (g.selection === 'sinkhorn') sinkhornP = sinkhornMatrix(x, tokens, C, g.sinkhornIters);

  for (let t = 0; t < tokens; t++) {
    const xRow = x.subarray(t * C, (t + 1) * C);
    const sRow = scores.subarray(t * C, (t + 1) * C);
    let chosen: number[];
    let raw: number[];
    switch (g.selection) {
      case 'topk': {
        const choice = new Float64Array(C);
        for (let j = 0; j < C; j++) {
          const bias = j < E && g.correctionBias ? (g.correctionBias[j] as number) : 0;
          choice[j] = (sRow[j] as number) + bias;
        }
        let groupGap = Infinity;
        if (g.nGroup > 1) groupGap = maskGroups(choice, E, g.nGroup, g.topkGroup, g.correctionBias !== undefined);
        const top = topWithGap(choice, g.k);
        chosen = top.chosen;
        raw = chosen.map((j) => sRow[j] as number);
        margin[t] = Math.min(top.gap, groupGap);
        break;
      }
      case 'topk-logits-softmax': {
        const top = topWithGap(xRow, g.k);
        chosen = top.chosen;
        raw = Array.from(softmax(chosen.map((j) => xRow[j] as number)));
        margin[t] = top.gap;
        break;
      }
      case 'sinkhorn': {
        const pRow = (sinkhornP as Float64Array).subarray(t * C, (t + 1) * C);
        const top = topWithGap(pRow, g.k, true);
        chosen = top.chosen;
        raw = chosen.map((j) => sRow[j] as number);
        margin[t] = top.gap;
        break;
      }
      case 'top-p': {
        const order = selectionOrder(sRow);
        chosen = [];
        raw = [];
        let cumulative = 0;
        let m = Infinity;
        for (const j of order) {
          if (chosen.length >= g.k) break;
          const p = sRow[j] as number;
          chosen.push(j);
          raw.push(p);
          cumulative += p;
          // The cut-off compares a running sum with topP: never an exact, id-resolved tie.
          if (chosen.length < g.k) m = Math.min(m, Math.max(Math.abs(cumulative - g.topP), Number.MIN_VALUE));
          if (cumulative >= g.topP) break;
        }
        for (let i = 0; i < Math.min(chosen.length, order.length - 1); i++) {
          const d = decisionGap(sRow[order[i] as number] as number, sRow[order[i + 1] as number] as number);
          if (d > 0) m = Math.min(m, d);
        }
        margin[t] = m;
        break;
      }
    }
    writeSlots(chosen, raw, g, t, ids, weights, load);
  }
  return { tokens, slots: g.k, ids, weights, load, scores, margin };
}

/**
 * Grouped top-k masking, in place: scores each group of `experts / nGroup`
 * consecutive real experts (sum of its two best choice values when
 * `sumTop2`, else its best), keeps the best `topkGroup` groups (ties to the
 * lower group id) and sets the choice of every expert in the other groups to
 * -Infinity. Columns past `experts` (null experts) are untouched. Returns the
 * gap between the last kept and the first dropped group score.
 */
function maskGroups(choice: Float64Array, experts: number, nGroup: number, topkGroup: number, sumTop2: boolean): number {
  const size = experts / nGroup;
  const groupScore = new Float64Array(nGroup);
  for (let gi = 0; gi < nGroup; gi++) {
    const members = choice.subarray(gi * size, (gi + 1) * size);
    const order = selectionOrder(members);
    const best = members[order[0] as number] as number;
    if (sumTop2 && size >= 2) groupScore[gi] = best + (members[order[1] as number] as number);
    else groupScore[gi] = best;
  }
  const top = topWithGap(groupScore, topkGroup);
  const kept = new Set(top.chosen);
  for (let gi = 0; gi < nGroup; gi++) {
    if (kept.has(gi)) continue;
    for (let j = gi * size; j < (gi + 1) * size; j++) choice[j] = -Infinity;
  }
  return top.gap;
}

/**
 * Sinkhorn balancing of exp(x - rowmax) over a [tokens, columns] matrix:
 * `iters` rounds of column normalisation followed by row normalisation.
 */
export function sinkhornMatrix(x: ArrayLike<number>, tokens: number, columns: number, iters: number): Float64Array {
  const p = new Float64Array(tokens * columns);
  for (let t = 0; t < tokens; t++) {
    let max = -Infinity;
    for (let j = 0; j < columns; j++) if ((x[t * columns + j] as number) > max) max = x[t * columns + j] as number;
    // A NaN logit counts 0 in the balancing.
    for (let j = 0; j < columns; j++) {
      const v = x[t * columns + j] as number;
      p[t * columns + j] = Number.isNaN(v) ? 0 : Math.exp(v - max);
    }
  }
  for (let it = 0; it < iters; it++) {
    for (let j = 0; j < columns; j++) {
      let sum = 0;
      for (let t = 0; t < tokens; t++) sum += p[t * columns + j] as number;
      if (sum === 0) continue;
      for (let t = 0; t < tokens; t++) p[t * columns + j] = (p[t * columns + j] as number) / sum;
    }
    for (let t = 0; t < tokens; t++) {
      let sum = 0;
      for (let j = 0; j < columns; j++) sum += p[t * columns + j] as number;
      if (sum === 0) continue;
      for (let j = 0; j < columns; j++) p[t * columns + j] = (p[t * columns + j] as number) / sum;
    }
  }
  return p;
}

/** Expert capacity C = ceil(capacityFactor * T * choiceK / E), clamped to [0, T] (capacityFactor as float32). */
export function expertChoiceCapacity(tokens: number, experts: number, capacityFactor: number, choiceK: number): number {
  const c = Math.ceil((Math.fround(capacityFactor) * tokens * choiceK) / experts);
  return Math.max(0, Math.min(tokens, c));
}

function expertChoice(scores: Float64Array, tokens: number, g: ResolvedGating, load: Int32Array): GatingResult {
  const E = g.experts;
  const C = g.columns;
  const capacity = expertChoiceCapacity(tokens, E, g.capacityFactor, g.choiceK);
  const ids = new Int32Array(tokens * E).fill(-1);
  const weights = new Float64Array(tokens * E);
  const margin = new Float64Array(E).fill(Infinity);
  const column = new Float64Array(tokens);
  for (let e = 0; e < E; e++) {
    for (let t = 0; t < tokens; t++) column[t] = scores[t * C + e] as number;
    const top = topWithGap(column, capacity);
    margin[e] = top.gap;
    for (const t of top.chosen) {
      ids[t * E + e] = e;
      weights[t * E + e] = Number.isNaN(column[t] as number) ? 0 : (column[t] as number) * g.routedScaling;
    }
    load[e] = top.chosen.length;
  }
  return { tokens, slots: E, ids, weights, load, scores, margin };
}

/**
 * Returns copies of ids/weights ([tokens, slots]) with each token's slots
 * sorted by id (unused -1 slots last), for comparisons that should not depend
 * on the order of slots (e.g. when near ties may reorder selected experts).
 */
export function canonicalSlots(
  ids: ArrayLike<number>,
  weights: ArrayLike<number>,
  tokens: number,
  slots: number,
): { ids: Int32Array; weights: Float64Array } {
  const outIds = new Int32Array(tokens * slots);
  const outWeights = new Float64Array(tokens * slots);
  for (let t = 0; t < tokens; t++) {
    const order: number[] = [];
    for (let s = 0; s < slots; s++) order.push(s);
    const key = (s: number): number => {
      const id = ids[t * slots + s] as number;
      return id < 0 ? Number.MAX_SAFE_INTEGER : id;
    };
    order.sort((a, b) => key(a) - key(b) || a - b);
    order.forEach((s, i) => {
      outIds[t * slots + i] = ids[t * slots + s] as number;
      outWeights[t * slots + i] = weights[t * slots + s] as number;
    });
  }
  return { ids: outIds, weights: outWeights };
}
