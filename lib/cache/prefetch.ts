/**
 * Prefetching for expert caches.
 *
 * A {@link PrefetchSource} watches the routing as it happens and proposes experts the
 * next layer is likely to need; a {@link Prefetcher} turns proposals into
 * {@link ExpertCacheCore.prefetch} calls within a budget. Prefetches are issued while the
 * current step is still pinned (its forward is in flight), so they can never evict an
 * expert the current step needs.
 *
 * Sources:
 * - {@link AffinityPrefetchSource}: cross-layer affinity, counts of (expert i at layer l →
 *   expert j at layer l+1) learned online from the routing seen so far.
 * - {@link LayerwisePrefetchSource}: the current token's routing at several earlier layers
 *   and the next layer's recent use, combined by a logistic regression learned online.
 * - Pre-gating (applying layer l+1's router to layer l's output) needs the hidden states,
 *   so it lives with the GPU cache: it implements {@link PrefetchSource} there, with
 *   `observe` receiving nothing new and `propose` returning the next router's top experts.
 *   There is no pre-gating source in this file on purpose: a trace has no hidden states.
 */
import { checkInteger, checkNumber, checkOptions } from '../errors';
import { ExpertCacheCore } from './expert_cache';

/** A proposed prefetch: `expert` of `layer`, with an estimated probability of use. */
export interface PrefetchCandidate {
  layer: number;
  expert: number;
  /** Estimated probability that the next step at `layer` uses `expert` (0..1). */
  probability: number;
}

/** Something that predicts the experts of the next layer(s). */
export interface PrefetchSource {
  /** Short name, as printed by the simulator. */
  readonly name: string;
  /** The routing of one step, in execution order (token by token, layer by layer). */
  observe(layer: number, experts: ArrayLike<number>): void;
  /**
   * Candidates to fetch now that the step at `layer` has been routed to `experts`,
   * appended to `out`, most likely first.
   */
  propose(layer: number, experts: ArrayLike<number>, out: PrefetchCandidate[]): void;
  /** A new sequence starts (the token stream is not continuous across it). */
  startSequence(): void;
}

/**
 * Cross-layer affinity: P(j at layer l+1 | i at layer l), counted online over every step
 * observed. After a step at layer l routed to the set S, the probability that expert j is
 * used at layer l+1 is estimated as the mean over i in S of P(j | i). Nothing is learned
 * offline: before the first tokens it proposes nothing.
 */
export class AffinityPrefetchSource implements PrefetchSource {
  readonly name = 'affinity';
  private readonly counts: Float64Array;
  private readonly rows: Float64Array;
  private readonly scores: Float64Array;
  private prevLayer = -1;
  private prev: number[] = [];

  constructor(
    readonly layers: number,
    readonly expertsPerLayer: number,
  ) {
    checkInteger('layers', layers, 1);
    checkInteger('expertsPerLayer', expertsPerLayer, 1);
    const E = expertsPerLayer;
    this.counts = new Float64Array(Math.max(0, layers - 1) * E * E);
    this.rows = new Float64Array(layers * E);
    this.scores = new Float64Array(E);
  }

  observe(layer: number, experts: ArrayLike<number>): void {
    const E = this.expertsPerLayer;
    if (layer > 0 && this.prevLayer === layer - 1) {
      const l = layer - 1;
      for (const i of this.prev) {
        this.rows[l * E + i] += 1;
        const row = (l * E + i) * E;
        for (let q = 0; q < experts.length; q++) this.counts[row + experts[q]] += 1;
      }
    }
    this.prevLayer = layer;
    this.prev = Array.from(experts);
  }

  /** Estimated probabilities of each expert at `layer + 1` given `experts` at `layer` (a view, reused). */
  predict(layer: number, experts: ArrayLike<number>): Float64Array {
    const E = this.expertsPerLayer;
    this.scores.fill(0);
    if (layer + 1 >= this.layers) return this.scores;
    let n = 0;
    for (let q = 0; q < experts.length; q++) {
      const i = experts[q];
      const total = this.rows[layer * E + i];
      if (total === 0) continue;
      n++;
      const row = (layer * E + i) * E;
      for (let j = 0; j < E; j++) this.scores[j] += this.counts[row + j] / total;
    }
    if (n > 0) for (let j = 0; j < E; j++) this.scores[j] /= n;
    return this.scores;
  }

  propose(layer: number, experts: ArrayLike<number>, out: PrefetchCandidate[]): void {
    if (layer + 1 >= this.layers) return;
    const p = this.predict(layer, experts);
    const start = out.length;
    for (let j = 0; j < this.expertsPerLayer; j++) if (p[j] > 0) out.push({ layer: layer + 1, expert: j, probability: p[j] });
    const mine = out.splice(start).sort((a, b) => b.probability - a.probability);
    for (const c of mine) out.push(c);
  }

  startSequence(): void {
    this.prevLayer = -1;
    this.prev = [];
  }
}

/** Options of {@link LayerwisePrefetchSource}. */
export interface LayerwiseOptions {
  /** How many of the current token's layers (l, l-1, ...) inform the prediction for l+1. Default 3. */
  depth?: number;
  /** Step size of the online logistic regression. Default 0.02. */
  learningRate?: number;
  /** Half-life, in tokens, of the per-expert decayed use count (a feature). Default 8. */
  halfLife?: number;
  /** Candidates below this estimated probability are not proposed. Default 0.05. */
  minProposal?: number;
}

/**
 * Multi-layer prediction of the next layer's experts, learned online. For expert j at
 * layer l+1 the features are, for each of the current token's layers m = l, l-1, ...,
 * l-depth+1: the mean and the maximum over the experts i routed at m of
 * count(i at m → j at l+1) / count(i at m), and the log of that mean; plus whether j was
 * used at layer l+1 by the previous token, the log of j's decayed use count at l+1, and a
 * bias. A logistic regression combines them; its weights are updated by one gradient step
 * each time the true routing of a predicted layer is seen. Everything is learned from
 * steps already observed: counts and weights persist across sequences, the per-token
 * history is cleared by {@link LayerwisePrefetchSource.startSequence}.
 */
export class LayerwisePrefetchSource implements PrefetchSource {
  readonly name = 'layerwise';
  readonly depth: number;
  readonly learningRate: number;
  readonly halfLife: number;
  readonly minProposal: number;
  /** [depth, layers, E, E]: count(i at m → j at m+1+d). */
  private readonly counts: Float64Array;
  /** [depth, layers, E]: steps with i at m that had layer m+1+d observed. */
  private readonly rows: Float64Array;
  /** The current token's routing per layer (valid when `histToken[l] === token`). */
  private readonly hist: number[][];
  private readonly histToken: Int32Array;
  /** Last token each expert was used at, per key (layer * E + expert); -2 = not this sequence. */
  private readonly lastUse: Int32Array;
  /** Decayed use count per key, as of token `decayedAt[key]`. */
  private readonly decayed: Float64Array;
  private readonly decayedAt: Int32Array;
  private readonly weights: Float64Array;
  private readonly features: Float64Array;
  private readonly predicted: Float64Array;
  private readonly used: Uint8Array;
  private readonly nf: number;
  private token = -1;
  private prevLayer = Infinity;
  /** Layer whose prediction in `predicted` awaits its true routing (-1: none). */
  private pending = -1;
  private pendingToken = -1;

  constructor(
    readonly layers: number,
    readonly expertsPerLayer: number,
    options: LayerwiseOptions = {},
  ) {
    checkInteger('layers', layers, 1);
    checkInteger('expertsPerLayer', expertsPerLayer, 1);
    const o = checkOptions<LayerwiseOptions>('options', options);
    this.depth = checkInteger('options.depth', o.depth ?? 3, 1, 64);
    this.learningRate = checkNumber('options.learningRate', o.learningRate ?? 0.02, 0);
    this.halfLife = checkNumber('options.halfLife', o.halfLife ?? 8, Number.MIN_VALUE);
    this.minProposal = checkNumber('options.minProposal', o.minProposal ?? 0.05, 0, 1);
    const E = expertsPerLayer;
    this.counts = new Float64Array(this.depth * layers * E * E);
    this.rows = new Float64Array(this.depth * layers * E);
    this.hist = Array.from({ length: layers }, () => []);
    this.histToken = new Int32Array(layers).fill(-1);
    this.lastUse = new Int32Array(layers * E).fill(-2);
    this.decayed = new Float64Array(layers * E);
    this.decayedAt = new Int32Array(layers * E);
    this.nf = 3 * this.depth + 3;
    this.weights = new Float64Array(this.nf);
    // Start as single-layer affinity (the mean from layer l) until the weights are learned.
    this.weights[0] = 4;
    this.weights[this.nf - 1] = -3;
    this.features = new Float64Array(E * this.nf);
    this.predicted = new Float64Array(E);
    this.used = new Uint8Array(E);
  }

  observe(layer: number, experts: ArrayLike<number>): void {
    checkInteger('layer', layer, 0, this.layers - 1);
    const E = this.expertsPerLayer;
    const L = this.layers;
    for (let q = 0; q < experts.length; q++) {
      const e = experts[q];
      if (!Number.isInteger(e) || e < 0 || e >= E) checkInteger(`experts[${q}]`, e, 0, E - 1);
    }
    if (layer <= this.prevLayer) this.token++;
    this.prevLayer = layer;
    const t = this.token;
    if (this.pending === layer && this.pendingToken === t && this.learningRate > 0) {
      const used = this.used;
      used.fill(0);
      for (let q = 0; q < experts.length; q++) used[experts[q]] = 1;
      const w = this.weights;
      const nf = this.nf;
      for (let j = 0; j < E; j++) {
        const g = this.learningRate * (used[j] - this.predicted[j]);
        const f = j * nf;
        for (let k = 0; k < nf; k++) w[k] += g * this.features[f + k];
      }
    }
    this.pending = -1;
    for (let d = 0; d < this.depth; d++) {
      const m = layer - 1 - d;
      if (m < 0 || this.histToken[m] !== t) continue;
      for (const i of this.hist[m]) {
        const r = (d * L + m) * E + i;
        this.rows[r] += 1;
        for (let q = 0; q < experts.length; q++) this.counts[r * E + experts[q]] += 1;
      }
    }
    this.hist[layer] = Array.from(experts);
    this.histToken[layer] = t;
    for (let q = 0; q < experts.length; q++) {
      const key = layer * E + experts[q];
      this.lastUse[key] = t;
      this.decayed[key] = this.decayed[key] * Math.pow(2, -(t - this.decayedAt[key]) / this.halfLife) + 1;
      this.decayedAt[key] = t;
    }
  }

  /**
   * Estimated probability of each expert at `layer + 1` for the current token, given the
   * routing observed so far (a view, reused; zeros at the last layer). `experts` must be
   * the routing just passed to {@link LayerwisePrefetchSource.observe} for `layer`.
   */
  predict(layer: number, experts: ArrayLike<number>): Float64Array {
    checkInteger('layer', layer, 0, this.layers - 1);
    const E = this.expertsPerLayer;
    const L = this.layers;
    const D = this.depth;
    const nf = this.nf;
    const feat = this.features;
    const p = this.predicted;
    if (layer + 1 >= L) {
      p.fill(0);
      this.pending = -1;
      return p;
    }
    const t = this.token;
    feat.fill(0);
    for (let d = 0; d < D; d++) {
      const m = layer - d;
      if (m < 0) continue;
      const S = m === layer ? experts : this.histToken[m] === t ? this.hist[m] : undefined;
      if (S === undefined) continue;
      const k = S.length;
      for (let q = 0; q < k; q++) {
        const r = (d * L + m) * E + S[q];
        const total = this.rows[r];
        if (total === 0) continue;
        for (let j = 0; j < E; j++) {
          const pr = this.counts[r * E + j] / total;
          feat[j * nf + d] += pr / k;
          if (pr > feat[j * nf + D + d]) feat[j * nf + D + d] = pr;
        }
      }
    }
    const n = layer + 1;
    const w = this.weights;
    for (let j = 0; j < E; j++) {
      const f = j * nf;
      for (let d = 0; d < D; d++) feat[f + 2 * D + d] = Math.log(feat[f + d] + 0.01) / 4.6;
      const key = n * E + j;
      feat[f + 3 * D] = this.lastUse[key] === t - 1 ? 1 : 0;
      const decayed = this.decayed[key] === 0 ? 0 : this.decayed[key] * Math.pow(2, -(t - this.decayedAt[key]) / this.halfLife);
      feat[f + 3 * D + 1] = Math.log2(1 + decayed) / 3;
      feat[f + nf - 1] = 1;
      let z = 0;
      for (let k = 0; k < nf; k++) z += w[k] * feat[f + k];
      p[j] = 1 / (1 + Math.exp(-z));
    }
    this.pending = n;
    this.pendingToken = t;
    return p;
  }

  propose(layer: number, experts: ArrayLike<number>, out: PrefetchCandidate[]): void {
    if (layer + 1 >= this.layers) return;
    const p = this.predict(layer, experts);
    const start = out.length;
    for (let j = 0; j < this.expertsPerLayer; j++) if (p[j] >= this.minProposal && p[j] > 0) out.push({ layer: layer + 1, expert: j, probability: p[j] });
    const mine = out.splice(start).sort((a, b) => b.probability - a.probability || a.expert - b.expert);
    for (const c of mine) out.push(c);
  }

  /** The current logistic-regression weights (a copy). */
  weightsSnapshot(): Float64Array {
    return this.weights.slice();
  }

  startSequence(): void {
    this.token = -1;
    this.prevLayer = Infinity;
    this.pending = -1;
    this.histToken.fill(-1);
    this.lastUse.fill(-2);
    this.decayed.fill(0);
    this.decayedAt.fill(0);
  }
}

/** Options of {@link Prefetcher}. */
export interface PrefetcherOptions {
  /** At most this many prefetches per step (default 2). */
  maxPerStep?: number;
  /** Only candidates at least this likely are fetched (default 0.5). */
  minProbability?: number;
  /**
   * Only evict for a prefetch when the victim's policy priority is below the candidate's
   * own priority (the policy would rather keep the candidate). Default true. Free space
   * is always used.
   */
  guard?: boolean;
  /**
   * While prefetching for a layer, pin its resident experts that the sources rate at least
   * this likely, so no prefetch evicts them (they are unpinned right after). Default
   * undefined: off.
   */
  protectProbability?: number;
}

/** Issues a source's proposals into a cache, within a per-step budget. */
export class Prefetcher {
  readonly maxPerStep: number;
  readonly minProbability: number;
  readonly guard: boolean;
  readonly protectProbability: number | undefined;
  private readonly buf: PrefetchCandidate[] = [];

  constructor(
    readonly cache: ExpertCacheCore,
    readonly sources: PrefetchSource[],
    options: PrefetcherOptions = {},
  ) {
    const o = checkOptions<PrefetcherOptions>('options', options);
    this.maxPerStep = checkInteger('options.maxPerStep', o.maxPerStep ?? 2, 0);
    this.minProbability = checkNumber('options.minProbability', o.minProbability ?? 0.5, 0, 1);
    this.guard = o.guard ?? true;
    this.protectProbability = o.protectProbability === undefined ? undefined : checkNumber('options.protectProbability', o.protectProbability, 0, 1);
  }

  /** Feeds a step's routing to every source. */
  observe(layer: number, experts: ArrayLike<number>): void {
    for (const s of this.sources) s.observe(layer, experts);
  }

  /** A new sequence starts. */
  startSequence(): void {
    for (const s of this.sources) s.startSequence();
  }

  /**
   * After the step at `layer` (still pinned): asks the sources and prefetches the most
   * likely non-resident candidates. Returns the number of experts moved.
   */
  issue(layer: number, experts: ArrayLike<number>, time: number): number {
    if (this.maxPerStep === 0) return 0;
    const buf = this.buf;
    buf.length = 0;
    for (const s of this.sources) s.propose(layer, experts, buf);
    if (this.sources.length > 1) buf.sort((a, b) => b.probability - a.probability);
    const protect = this.protectProbability;
    const pinned: PrefetchCandidate[] = [];
    if (protect !== undefined) {
      for (const c of buf) {
        if (c.probability < protect) break;
        if (!this.cache.isResident(c.layer, c.expert)) continue;
        this.cache.pin(c.layer, c.expert);
        pinned.push(c);
      }
    }
    let moved = 0;
    try {
      for (const c of buf) {
        if (moved >= this.maxPerStep || c.probability < this.minProbability) break;
        if (this.cache.isResident(c.layer, c.expert)) continue;
        const floor = this.guard ? this.cache.policyOf(c.layer).priority(this.cache.key(c.layer, c.expert)) : Infinity;
        const outcome = this.cache.prefetch(c.layer, c.expert, time, floor);
        if (outcome === 'fetched') moved++;
        else if (outcome === 'rejected') break;
      }
    } finally {
      for (const c of pinned) this.cache.unpin(c.layer, c.expert);
    }
    return moved;
  }
}
