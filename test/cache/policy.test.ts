import { ExpertCacheCore } from '../../lib/cache/expert_cache';
import { BeladyPolicy, createPolicy, LfruPolicy, LookaheadPolicy, LruPolicy, StaticPolicy } from '../../lib/cache/policy';
import { simulate } from '../../lib/cache/simulate';
import { makeTrace, RoutingTrace } from '../../lib/cache/trace';
import { zipfTrace } from './synthetic';

/** One layer, k = 1: a plain reference string. */
function seq(ids: number[], experts = 4): RoutingTrace {
  return makeTrace({ ids, tokens: ids.length, layers: 1, topK: 1, expertsPerLayer: experts });
}

function hits(trace: RoutingTrace, capacity: number, policy: 'lru' | 'lfu' | 'lfru' | 'static' | 'belady'): number {
  return simulate(trace, { capacity, policy, perLayer: true, belady: false }).run.total.hits;
}

/** Independent reference: per-layer LRU / Belady written plainly over arrays. */
function reference(trace: RoutingTrace, capacity: number, kind: 'lru' | 'belady', reset: boolean): number {
  const { ids, tokens, layers: L, topK: K, sequences } = trace;
  let h = 0;
  for (let l = 0; l < L; l++) {
    const uses: { t: number; s: number; e: number }[] = [];
    for (let t = 0; t < tokens; t++) for (let s = 0; s < K; s++) uses.push({ t, s, e: ids[(t * L + l) * K + s] });
    let cache: { e: number; last: number }[] = [];
    let si = 0;
    for (let u = 0; u < uses.length; u++) {
      const { t, e } = uses[u];
      while (si + 1 < sequences.length && t >= sequences[si + 1]) {
        si++;
        if (reset) cache = [];
      }
      const step = new Set(uses.filter((x) => x.t === t).map((x) => x.e));
      const found = cache.find((c) => c.e === e);
      if (found) {
        h++;
        found.last = u;
        continue;
      }
      if (cache.length >= capacity) {
        const free = cache.filter((c) => !step.has(c.e));
        let victim = free[0];
        for (const c of free) {
          if (kind === 'lru' ? c.last < victim.last : nextUse(uses, u, c.e, t) > nextUse(uses, u, victim.e, t)) victim = c;
        }
        cache = cache.filter((c) => c !== victim);
      }
      cache.push({ e, last: u });
    }
  }
  return h;
  function nextUse(uses: { t: number; e: number }[], from: number, e: number, t: number): number {
    for (let v = from + 1; v < uses.length; v++) if (uses[v].e === e && uses[v].t > t) return uses[v].t;
    return Infinity;
  }
}

describe('eviction policies on hand-made traces', () => {
  // C = 2, reference string 0 1 0 2 1 0 3 0.
  const s = seq([0, 1, 0, 2, 1, 0, 3, 0]);
  test('LRU: hits at positions 2 and 7', () => {
    // [0] [0 1] hit0 | 2 evicts 1 → [0 2] | 1 evicts 0 → [2 1] | 0 evicts 2 → [1 0] | 3 evicts 1 → [0 3] | hit0
    expect(hits(s, 2, 'lru')).toBe(2);
  });
  test('LFU (in-sequence counts, ties by recency): 3 hits', () => {
    // 2 evicts 1 (count 1 < 2); 1 evicts 2 (1 < 2); 0 hit; 3 evicts 1 (2 < 3); 0 hit
    expect(hits(s, 2, 'lfu')).toBe(3);
  });
  test('Belady: 3 hits (the optimum for this string)', () => {
    expect(hits(s, 2, 'belady')).toBe(3);
  });
  test('LFU ties go to the least recently used', () => {
    // 0 1 2: counts all 1; 2 evicts 0 (older) → 1 hits, 0 misses
    expect(hits(seq([0, 1, 2, 1, 0]), 2, 'lfu')).toBe(1);
  });
  test('cyclic pattern of C+1 experts: LRU never hits, Belady does', () => {
    const cyc = seq(Array.from({ length: 40 }, (_, i) => i % 4), 4);
    expect(hits(cyc, 3, 'lru')).toBe(0);
    expect(hits(cyc, 3, 'belady')).toBeGreaterThan(20);
  });
  test('the k experts of a step cannot evict each other', () => {
    // k = 2, C = 2: step [0 1] then [2 0]: 2 must evict 1 (0 is needed by the same step), then 0 hits.
    const t = makeTrace({ ids: [0, 1, 2, 0], tokens: 2, layers: 1, topK: 2, expertsPerLayer: 3 });
    for (const p of ['lru', 'lfu', 'lfru', 'static', 'belady'] as const) expect(hits(t, 2, p)).toBe(1);
  });
  test('within a step, earlier slots are older (LRU)', () => {
    // step [0 1], step [2]: C = 2, LRU evicts 0 (slot 0 is older), then 1 hits and 0 misses.
    const t = makeTrace({ ids: [[[0, 1]], [[2, 3]]].flatMap((x) => x.flat()), tokens: 2, layers: 1, topK: 2, expertsPerLayer: 4 });
    expect(hits(t, 2, 'lru')).toBe(0);
    const u = makeTrace({ ids: [0, 1, 2, 1], tokens: 4, layers: 1, topK: 1, expertsPerLayer: 3, sequences: [0, 4] });
    expect(hits(u, 2, 'lru')).toBe(1);
  });
});

describe('policies on random traces', () => {
  const seeds = [1, 2, 3, 4, 5];
  test.each(seeds)('matches an independent reference (LRU, Belady; seed %i)', (seed) => {
    const t = zipfTrace({ tokens: 60, layers: 2, experts: 8, k: 2, seed, sequences: [0, 25, 60] });
    for (const reset of [false, true]) {
      for (const kind of ['lru', 'belady'] as const) {
        const r = simulate(t, { capacity: 4, policy: kind, perLayer: true, resetPerSequence: reset, belady: false });
        expect(r.run.total.hits).toBe(reference(t, 4, kind, reset));
      }
    }
  });
  test.each(seeds)('Belady is at least every online policy (seed %i)', (seed) => {
    const t = zipfTrace({ tokens: 300, layers: 3, experts: 16, k: 2, seed: seed * 7, sequences: [0, 100, 300] });
    for (const perLayer of [true, false]) {
      for (const capacity of perLayer ? [2, 4, 8] : [6, 12]) {
        for (const policy of ['lru', 'lfu', 'lfru', 'static'] as const) {
          const r = simulate(t, { capacity, policy, perLayer, resetPerSequence: seed % 2 === 0 });
          expect(r.belady!.total.hits).toBeGreaterThanOrEqual(r.run.total.hits);
          expect(r.belady!.total.bytesMoved).toBeLessThanOrEqual(r.run.total.bytesMoved);
        }
      }
    }
  });
  test('LFRU spans LRU (short half-life) and LFU (long half-life)', () => {
    const t = zipfTrace({ tokens: 400, layers: 2, experts: 16, k: 2, seed: 11 });
    const lru = simulate(t, { capacity: 5, policy: 'lru', perLayer: true, belady: false }).run.total.hits;
    const lfu = simulate(t, { capacity: 5, policy: 'lfu', perLayer: true, belady: false }).run.total.hits;
    expect(simulate(t, { capacity: 5, policy: 'lfru', halfLife: 1e-3, perLayer: true, belady: false }).run.total.hits).toBe(lru);
    // A huge half-life weighs all accesses (almost) alike: LFU up to how near-ties break.
    const long = simulate(t, { capacity: 5, policy: 'lfru', halfLife: 1e9, perLayer: true, belady: false }).run.total.hits;
    expect(Math.abs(long - lfu)).toBeLessThanOrEqual(lfu * 0.01);
  });
  test.each(seeds)('lookahead spans LFRU (no view) and Belady (unbounded view) (seed %i)', (seed) => {
    const t = zipfTrace({ tokens: 250, layers: 3, experts: 12, k: 3, seed: seed * 13 + 5, sequences: [0, 90, 250] });
    for (const perLayer of [true, false]) {
      const capacity = perLayer ? 5 : 14;
      const o = { capacity, perLayer, resetPerSequence: true, halfLife: 6 };
      const lfru = simulate(t, { ...o, policy: 'lfru' });
      const blind = simulate(t, { ...o, policy: 'lookahead', lookahead: 0 });
      const full = simulate(t, { ...o, policy: 'lookahead', lookahead: 1e9 });
      const one = simulate(t, { ...o, policy: 'lookahead', lookahead: 1 });
      expect(blind.run.total.hits).toBe(lfru.run.total.hits);
      expect(full.run.total.hits).toBe(full.belady!.total.hits);
      expect(one.run.total.hits).toBeLessThanOrEqual(full.run.total.hits);
      expect(one.run.name).toBe('lookahead');
    }
  });
  test('LFRU keeps its order across long runs (rebasing)', () => {
    const p = new LfruPolicy(4, { halfLife: 1 });
    p.onAccess(0, 0);
    p.onAccess(0, 0.5);
    p.onAccess(1, 10000); // forces a rebase
    p.onAccess(2, 10000.5);
    expect(p.chooseVictim([0, 1, 2], new Set())).toBe(0);
    expect(p.chooseVictim([1, 2], new Set())).toBe(1);
  });
});

describe('policy objects', () => {
  test('a victim is never pinned; undefined when all are', () => {
    for (const name of ['lru', 'lfu', 'lfru', 'static', 'belady', 'lookahead'] as const) {
      const p = createPolicy(name, 4);
      p.onInsert(0, 0, false);
      p.onAccess(0, 0, 5);
      p.onInsert(1, 1, false);
      p.onAccess(1, 1, 9);
      expect(p.chooseVictim([0, 1], new Set([0]))).toBe(1);
      expect(p.chooseVictim([0, 1], new Set([0, 1]))).toBeUndefined();
    }
  });
  test('static keeps the profile popular keys', () => {
    const p = new StaticPolicy(3, { popularity: [5, 1, 3] });
    expect(p.chooseVictim([0, 1, 2], new Set())).toBe(1);
    expect(() => new StaticPolicy(3, { popularity: [1] })).toThrow(RangeError);
  });
  test('Belady and lookahead need next uses', () => {
    expect(() => new BeladyPolicy(2).onAccess(0, 0)).toThrow(/Expected the next use time/);
    expect(() => new LookaheadPolicy(2).onAccess(0, 0)).toThrow(/Expected the next use time/);
    expect(() => new LookaheadPolicy(2, { lookahead: -1 })).toThrow(RangeError);
  });
  test('lookahead keeps keys needed within its view, the farthest going first, and LFRU-ranks the rest', () => {
    const p = new LookaheadPolicy(5, { lookahead: 2, halfLife: 8 });
    p.onAccess(0, 0, 1.5); // in view (1.5 - 1 <= 2)
    p.onAccess(1, 0, 2.5); // in view
    p.onAccess(2, 0, 9); // out of view, used once
    p.onAccess(3, 0, 9); // out of view, used twice
    p.onAccess(3, 0.5, 9);
    p.advanceTo(1);
    const none = new Set<number>();
    expect(p.chooseVictim([0, 1, 2, 3], none)).toBe(2);
    expect(p.chooseVictim([0, 1, 3], none)).toBe(3);
    expect(p.chooseVictim([0, 1], none)).toBe(1);
    expect(p.chooseVictim([0, 1], new Set([1]))).toBe(0);
    expect(p.priority(0)).toBe(Infinity);
    p.advanceTo(7); // 9 - 7 <= 2: now 2 and 3 are in view too; 0 and 1 are past (next < now) and stay in view
    expect(p.chooseVictim([2, 3], none)).toBe(2); // same next use: the least recently used
  });
  test('unknown names and bad options are argument errors', () => {
    expect(() => createPolicy('fifo' as never, 4)).toThrow(RangeError);
    expect(() => new LfruPolicy(4, { halfLife: -1 })).toThrow(/Expected .* for options.halfLife but received -1/);
    expect(() => new ExpertCacheCore({ layers: 1, expertsPerLayer: 4, capacity: 2, policy: 'mru' as never })).toThrow(RangeError);
    expect(new LruPolicy(2).name).toBe('lru');
  });
});
