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
}

/** Issues a source's proposals into a cache, within a per-step budget. */
export class Prefetcher {
  readonly maxPerStep: number;
  readonly minProbability: number;
  readonly guard: boolean;
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
    let moved = 0;
    for (const c of buf) {
      if (moved >= this.maxPerStep || c.probability < this.minProbability) break;
      if (this.cache.isResident(c.layer, c.expert)) continue;
      const floor = this.guard ? this.cache.policyOf(c.layer).priority(this.cache.key(c.layer, c.expert)) : Infinity;
      const outcome = this.cache.prefetch(c.layer, c.expert, time, floor);
      if (outcome === 'fetched') moved++;
      else if (outcome === 'rejected') break;
    }
    return moved;
  }
}
