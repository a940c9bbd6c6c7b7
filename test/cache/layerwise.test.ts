import { ExpertCacheCore } from '../../lib/cache/expert_cache';
import { AffinityPrefetchSource, LayerwisePrefetchSource, PrefetchCandidate, Prefetcher, PrefetchSource } from '../../lib/cache/prefetch';
import { simulate } from '../../lib/cache/simulate';
import { makeTrace, RoutingTrace } from '../../lib/cache/trace';
import { rng, zipfTrace } from './synthetic';

const seed = (Date.now() ^ (Math.random() * 0x7fffffff)) >>> 0;
beforeAll(() => {
  // Printed so that a failure can be replayed.
  process.stdout.write(`layerwise.test seed ${seed}\n`);
});

/**
 * Layer l+1 is a fixed map of layer l-1 (l >= 1); layers 0 and 1 are drawn at random, so
 * layer l carries no information about layer l+1 (two independent chains, even and odd).
 */
function skipChainTrace(tokens: number, layers: number, experts: number, k: number, s: number): RoutingTrace {
  const r = rng(s);
  const ids: number[] = [];
  for (let t = 0; t < tokens; t++) {
    const rows: number[][] = [];
    for (let l = 0; l < layers; l++) {
      if (l < 2) {
        const set = new Set<number>();
        while (set.size < k) set.add(Math.floor(r() * experts));
        rows.push([...set]);
      } else rows.push(rows[l - 2].map((e) => (e * 5 + 3 + l) % experts));
      ids.push(...rows[l]);
    }
  }
  return makeTrace({ ids, tokens, layers, topK: k, expertsPerLayer: experts });
}

/** The top-k of `p` (ties: lower id), as a sorted array. */
function topK(p: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: p.length }, (_, i) => i).sort((a, b) => p[b] - p[a] || a - b);
  return idx.slice(0, k).sort((a, b) => a - b);
}

/** Fraction of steps (layers 1..L-2) whose next-layer top-k prediction is exactly right, over the last `tail` tokens. */
function exactNextLayer(src: { observe: PrefetchSource['observe']; predict(l: number, e: ArrayLike<number>): Float64Array; startSequence(): void }, t: RoutingTrace, tail: number): number {
  const { ids, tokens, layers: L, topK: K } = t;
  let right = 0;
  let n = 0;
  for (let tok = 0; tok < tokens; tok++) {
    for (let l = 0; l < L; l++) {
      const cur = ids.subarray((tok * L + l) * K, (tok * L + l + 1) * K);
      src.observe(l, cur);
      if (l === 0 || l + 1 >= L) continue;
      const p = src.predict(l, cur);
      if (tok < tokens - tail) continue;
      const truth = Array.from(ids.subarray((tok * L + l + 1) * K, (tok * L + l + 2) * K)).sort((a, b) => a - b);
      n++;
      if (topK(p, K).join() === truth.join()) right++;
    }
  }
  return right / n;
}

describe('LayerwisePrefetchSource', () => {
  test('learns a dependence on the layer before the previous one, which single-layer affinity cannot see', () => {
    // The map e -> 5e + c (mod E) must be one-to-one: E coprime with 5.
    const experts = [16, 17, 18, 19, 21, 22, 23][seed % 7];
    const t = skipChainTrace(300, 7, experts, 2, seed);
    const deep = exactNextLayer(new LayerwisePrefetchSource(7, experts, { depth: 2 }), t, 100);
    const shallow = exactNextLayer(new LayerwisePrefetchSource(7, experts, { depth: 1 }), t, 100);
    const affinity = exactNextLayer(new AffinityPrefetchSource(7, experts), t, 100);
    expect(deep).toBeGreaterThan(0.95);
    expect(shallow).toBeLessThan(0.3);
    expect(affinity).toBeLessThan(0.3);
  });

  test('predictions use only the past: two traces with a common prefix predict the same during it', () => {
    const L = 5;
    const E = 9 + (seed % 5);
    const a = zipfTrace({ tokens: 120, layers: L, experts: E, k: 3, seed });
    const b = zipfTrace({ tokens: 120, layers: L, experts: E, k: 3, seed: seed + 1 });
    const prefix = 37 + (seed % 20);
    const mixed = new Uint8Array(a.ids);
    mixed.set(b.ids.subarray(prefix * L * 3), prefix * L * 3);
    const c = { ...a, ids: mixed };
    const record = (tr: RoutingTrace): number[][] => {
      const src = new LayerwisePrefetchSource(L, E);
      const out: number[][] = [];
      for (let tok = 0; tok < tr.tokens; tok++)
        for (let l = 0; l < L; l++) {
          const cur = tr.ids.subarray((tok * L + l) * 3, (tok * L + l + 1) * 3);
          src.observe(l, cur);
          out.push(Array.from(src.predict(l, cur)));
        }
      return out;
    };
    const ra = record(a);
    const rc = record(c);
    expect(rc.slice(0, prefix * L)).toEqual(ra.slice(0, prefix * L));
    // After the prefix the inputs differ, and so do the predictions (the comparison can fail).
    expect(rc.slice(prefix * L)).not.toEqual(ra.slice(prefix * L));
  });

  test('deterministic, and the prefetch bookkeeping balances', () => {
    const t = zipfTrace({ tokens: 260, layers: 4, experts: 16, k: 2, seed, sequences: [0, 70, 260] });
    const opts = { capacity: 5, policy: 'lfru' as const, prefetch: 'layerwise' as const, perLayer: true, resetPerSequence: true, prefetchMinProbability: 0.1, prefetchMaxPerStep: 3, prefetchProtectProbability: 0.3 };
    const r1 = simulate(t, opts);
    const r2 = simulate(t, opts);
    expect(r2.run.total).toEqual(r1.run.total);
    const s = r1.run.total;
    expect(s.prefetchesIssued).toBeGreaterThan(0);
    expect(s.prefetchesUsed + s.prefetchesWasted).toBe(s.prefetchesIssued);
    expect(s.bytesMoved).toBe(s.misses + s.prefetchesIssued);
    expect(s.hits + s.misses).toBe(s.accesses);
    expect(r1.run.name).toBe('lfru+layerwise');
  });

  test('startSequence forgets the current token; argument errors', () => {
    const src = new LayerwisePrefetchSource(3, 4);
    src.observe(0, [1]);
    src.observe(1, [2]);
    src.observe(2, [3]);
    src.startSequence();
    const out: PrefetchCandidate[] = [];
    src.propose(2, [3], out); // last layer
    expect(out).toEqual([]);
    expect(() => new LayerwisePrefetchSource(3, 4, { depth: 0 })).toThrow(RangeError);
    expect(() => new LayerwisePrefetchSource(3, 4, { minProposal: 2 })).toThrow(RangeError);
    expect(() => src.observe(3, [0])).toThrow(RangeError);
    expect(() => src.observe(0, [4])).toThrow(/experts\[0\]/);
  });
});

/** A source that proposes a fixed list. */
class FixedSource implements PrefetchSource {
  readonly name = 'fixed';
  constructor(private readonly list: PrefetchCandidate[]) {}
  observe(): void {}
  propose(_layer: number, _experts: ArrayLike<number>, out: PrefetchCandidate[]): void {
    for (const c of this.list) out.push({ ...c });
  }
  startSequence(): void {}
}

describe('Prefetcher protectProbability', () => {
  function filled(): ExpertCacheCore {
    const c = new ExpertCacheCore({ layers: 2, expertsPerLayer: 8, capacity: 3, perLayer: true, policy: 'lru' });
    for (const [e, time] of [[0, 0], [1, 1], [2, 2]]) {
      c.access(1, [e], time);
      c.release(1, [e]);
    }
    return c;
  }
  const list = [
    { layer: 1, expert: 5, probability: 0.9 },
    { layer: 1, expert: 0, probability: 0.6 },
  ];

  test('a resident expert rated likely is not evicted by a prefetch; pins are restored', () => {
    const plain = filled();
    new Prefetcher(plain, [new FixedSource(list)], { maxPerStep: 1, minProbability: 0.8, guard: false }).issue(0, [3], 3);
    expect(plain.residentExperts(1)).toEqual([1, 2, 5]); // LRU evicts 0
    const kept = filled();
    kept.pin(1, 0); // a pin held by someone else survives the protection
    new Prefetcher(kept, [new FixedSource(list)], { maxPerStep: 1, minProbability: 0.8, guard: false, protectProbability: 0.5 }).issue(0, [3], 3);
    expect(kept.residentExperts(1)).toEqual([0, 2, 5]); // 0 protected: 1 goes
    expect(kept.isPinned(1, 0)).toBe(true);
    kept.unpin(1, 0);
    for (let e = 0; e < 8; e++) expect(kept.isPinned(1, e)).toBe(false);
    expect(() => new Prefetcher(kept, [], { protectProbability: -1 })).toThrow(RangeError);
  });

  test('when protection leaves nothing to evict, the prefetch is not made', () => {
    const c = filled();
    const all = [{ layer: 1, expert: 6, probability: 0.95 }, ...[0, 1, 2].map((e) => ({ layer: 1, expert: e, probability: 0.7 }))];
    expect(new Prefetcher(c, [new FixedSource(all)], { maxPerStep: 2, minProbability: 0.8, guard: false, protectProbability: 0.5 }).issue(0, [3], 3)).toBe(0);
    expect(c.residentExperts(1)).toEqual([0, 1, 2]);
    for (let e = 0; e < 8; e++) expect(c.isPinned(1, e)).toBe(false);
  });
});
