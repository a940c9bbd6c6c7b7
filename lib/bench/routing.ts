/**
 * Routings the benchmark forces on a layer: expert ids [T, k] (int32, row-major), made
 * in JavaScript so that the experts a cell touches are known exactly.
 * - `uniform`: each token picks k distinct experts uniformly at random.
 * - `zipf:S`: expert popularity ∝ 1 / rank^S over a random ranking of the experts; each
 *   token draws k distinct experts by successive weighted sampling without replacement.
 * - `trace:FILE`: ids read from a routing trace (lib/cache/trace.ts), mapped onto the
 *   layer's E and k by {@link traceIds}.
 */
import { RoutingTrace } from '../cache/trace';

/** A parsed `--routing` value. */
export type RoutingSpec = { kind: 'uniform' } | { kind: 'zipf'; s: number } | { kind: 'trace'; file: string; layer: number };

/** A small, fast PRNG (mulberry32): uniform floats in [0, 1). */
export function makeRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** k distinct ids per token, uniform over the k-subsets of [0, E) (Floyd's sampling). */
export function uniformIds(tokens: number, experts: number, k: number, rng: () => number): Int32Array {
  const ids = new Int32Array(tokens * k);
  const taken = new Uint8Array(experts);
  for (let t = 0; t < tokens; t++) {
    const row = t * k;
    let n = 0;
    for (let j = experts - k; j < experts; j++) {
      const r = Math.floor(rng() * (j + 1));
      const pick = taken[r] ? j : r;
      taken[pick] = 1;
      ids[row + n++] = pick;
    }
    for (let s = 0; s < k; s++) taken[ids[row + s]] = 0;
  }
  return ids;
}

/** Zipf popularity of each expert: p[e] ∝ 1 / (rank[e] + 1)^s, with rank a random permutation. */
export function zipfPopularity(experts: number, s: number, rng: () => number): { p: Float64Array; rank: Int32Array } {
  const order = Int32Array.from({ length: experts }, (_, i) => i);
  for (let i = experts - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const tmp = order[i];
    order[i] = order[j];
    order[j] = tmp;
  }
  const rank = new Int32Array(experts);
  for (let r = 0; r < experts; r++) rank[order[r]] = r;
  const p = new Float64Array(experts);
  let sum = 0;
  for (let e = 0; e < experts; e++) sum += p[e] = 1 / Math.pow(rank[e] + 1, s);
  for (let e = 0; e < experts; e++) p[e] /= sum;
  return { p, rank };
}

/**
 * k distinct ids per token drawn without replacement with probabilities `p` (successive
 * sampling: the first slot ~ p, each next one ~ p over the experts not yet drawn), by the
 * keys u^(1/p) of Efraimidis and Spirakis: the k largest keys.
 */
export function weightedIds(tokens: number, k: number, p: Float64Array, rng: () => number): Int32Array {
  const E = p.length;
  const ids = new Int32Array(tokens * k);
  const keys = new Float64Array(E);
  for (let t = 0; t < tokens; t++) {
    // log(u) / p orders like u^(1/p), without underflow for small p; p = 0 is never drawn
    // ahead of p > 0 (the caller keeps k <= the experts with p > 0).
    for (let e = 0; e < E; e++) keys[e] = p[e] > 0 ? Math.log(1 - rng()) / p[e] : -Number.MAX_VALUE;
    for (let s = 0; s < k; s++) {
      let best = 0;
      for (let e = 1; e < E; e++) if (keys[e] > keys[best]) best = e;
      ids[t * k + s] = best;
      keys[best] = -Infinity;
    }
  }
  return ids;
}

/** How {@link traceIds} fitted a trace to the layer, in words. */
export interface TraceMapping {
  ids: Int32Array;
  notes: string[];
}

/**
 * T tokens of trace layer `layer` as ids for a layer of `experts` experts and `k` slots.
 * Token t takes trace token t mod traceTokens (the trace repeats when T is larger).
 * Different expert counts: id → floor(id · E / E_trace); an id that lands on one already
 * in its row moves to the next free id (cyclically). A smaller k keeps the trace's first
 * k ids (its router's top-k order); a larger k fills the rest with distinct random ids.
 */
export function traceIds(trace: RoutingTrace, layer: number, tokens: number, experts: number, k: number, rng: () => number): TraceMapping {
  if (trace.tokens === 0) throw new Error('unreachable: empty trace (checked by the caller)');
  const Et = trace.expertsPerLayer;
  const Kt = trace.topK;
  const L = trace.layers;
  const notes: string[] = [];
  if (tokens > trace.tokens) notes.push(`trace has ${trace.tokens} tokens; repeated to ${tokens}`);
  if (Et !== experts) notes.push(`trace ids over ${Et} experts mapped to ${experts} as floor(id*${experts}/${Et}), collisions to the next free id`);
  if (Kt > k) notes.push(`trace top-${Kt} cut to its first ${k} ids`);
  if (Kt < k) notes.push(`trace top-${Kt} filled to ${k} with random distinct ids`);
  const ids = new Int32Array(tokens * k);
  const taken = new Uint8Array(experts);
  let collisions = 0;
  for (let t = 0; t < tokens; t++) {
    const src = ((t % trace.tokens) * L + layer) * Kt;
    const row = t * k;
    let n = 0;
    for (let s = 0; s < Math.min(Kt, k); s++) {
      let e = Math.floor((trace.ids[src + s] * experts) / Et);
      if (taken[e]) {
        collisions++;
        while (taken[e]) e = (e + 1) % experts;
      }
      taken[e] = 1;
      ids[row + n++] = e;
    }
    while (n < k) {
      let e = Math.floor(rng() * experts);
      while (taken[e]) e = (e + 1) % experts;
      taken[e] = 1;
      ids[row + n++] = e;
    }
    for (let s = 0; s < k; s++) taken[ids[row + s]] = 0;
  }
  if (collisions > 0) notes.push(`T=${tokens}: ${collisions} id collision(s) moved to the next free id`);
  return { ids, notes };
}

/** Experts with at least one pair in `ids` (ids < 0 are skipped slots). */
export function touchedExperts(ids: Int32Array, experts: number): number {
  const seen = new Uint8Array(experts);
  let n = 0;
  for (let i = 0; i < ids.length; i++) {
    const e = ids[i];
    if (e >= 0 && !seen[e]) {
      seen[e] = 1;
      n++;
    }
  }
  return n;
}
