/** Synthetic routing traces for the cache tests (never the real traces). */
import { makeRng } from '../../lib/bench/routing';
import { makeTrace, RoutingTrace } from '../../lib/cache/trace';

/** Small deterministic PRNG (mulberry32), the one `moekit bench` uses. */
export const rng: (seed: number) => () => number = makeRng;

/** k distinct experts drawn from a Zipf-like law (weight 1/(rank+1)^s), rank order permuted per layer. */
export function zipfTrace(opts: { tokens: number; layers: number; experts: number; k: number; s?: number; seed: number; sequences?: number[] }): RoutingTrace {
  const { tokens, layers, experts, k, seed } = opts;
  const s = opts.s ?? 1.1;
  const r = rng(seed);
  const perms: number[][] = [];
  for (let l = 0; l < layers; l++) {
    const p = Array.from({ length: experts }, (_, i) => i);
    for (let i = experts - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [p[i], p[j]] = [p[j], p[i]];
    }
    perms.push(p);
  }
  const w = Array.from({ length: experts }, (_, i) => 1 / Math.pow(i + 1, s));
  const ids: number[] = [];
  for (let t = 0; t < tokens; t++)
    for (let l = 0; l < layers; l++) {
      const chosen = new Set<number>();
      while (chosen.size < k) {
        let total = 0;
        for (let i = 0; i < experts; i++) if (!chosen.has(i)) total += w[i];
        let x = r() * total;
        let pick = -1;
        for (let i = 0; i < experts; i++) {
          if (chosen.has(i)) continue;
          pick = i;
          x -= w[i];
          if (x <= 0) break;
        }
        chosen.add(pick);
      }
      for (const c of chosen) ids.push(perms[l][c]);
    }
  return makeTrace({ ids, tokens, layers, topK: k, expertsPerLayer: experts, sequences: opts.sequences });
}

/** Trace whose layer l+1 experts are a fixed function of layer l's (affinity 1), layer 0 random. */
export function chainedTrace(opts: { tokens: number; layers: number; experts: number; k: number; seed: number }): RoutingTrace {
  const { tokens, layers, experts, k, seed } = opts;
  const r = rng(seed);
  const ids: number[] = [];
  for (let t = 0; t < tokens; t++) {
    let cur: number[] = [];
    const set = new Set<number>();
    while (set.size < k) set.add(Math.floor(r() * experts));
    cur = [...set];
    for (let l = 0; l < layers; l++) {
      ids.push(...cur);
      cur = cur.map((e) => (e * 5 + 3 + l) % experts);
    }
  }
  return makeTrace({ ids, tokens, layers, topK: k, expertsPerLayer: experts });
}
