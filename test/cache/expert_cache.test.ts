import { ExpertCacheCore } from '../../lib/cache/expert_cache';
import { AffinityPrefetchSource, Prefetcher } from '../../lib/cache/prefetch';
import { simulate } from '../../lib/cache/simulate';
import { MoekitError } from '../../lib/errors';
import { chainedTrace, zipfTrace } from './synthetic';

function cache(capacity: number, extra: Partial<ConstructorParameters<typeof ExpertCacheCore>[0]> = {}): ExpertCacheCore {
  return new ExpertCacheCore({ layers: 2, expertsPerLayer: 8, capacity, perLayer: true, policy: 'lru', ...extra });
}

describe('ExpertCacheCore', () => {
  test('pinned experts are never evicted; a full pinned cache rejects instead', () => {
    const c = cache(2);
    c.access(0, [0, 1], 0);
    // The step is still in flight (pinned): a new step at the same layer cannot evict 0 or 1.
    const r = c.access(0, [2], 0.5);
    expect(r).toEqual({ hits: 0, misses: 1, rejected: 1 });
    expect(c.residentExperts(0)).toEqual([0, 1]);
    expect(c.prefetch(0, 3, 0.5)).toBe('rejected');
    expect(c.residentExperts(0)).toEqual([0, 1]);
    c.release(0, [2]);
    c.release(0, [0, 1]);
    // Once released, the next access evicts the LRU one.
    c.access(0, [2], 1);
    c.release(0, [2]);
    expect(c.residentExperts(0)).toEqual([1, 2]);
    const s = c.stats().total;
    expect(s.rejected).toBe(1);
    expect(s.misses).toBe(4);
    expect(s.bytesMoved).toBe(4);
  });

  test('explicit pins count and protect across steps', () => {
    const c = cache(2);
    c.pin(0, 5);
    c.pin(0, 5);
    c.access(0, [5], 0);
    c.release(0, [5]);
    c.unpin(0, 5);
    c.access(0, [1], 1);
    c.release(0, [1]);
    c.access(0, [2], 2); // must evict 1, not the still-pinned 5
    c.release(0, [2]);
    expect(c.residentExperts(0)).toEqual([2, 5]);
    c.unpin(0, 5);
    expect(c.isPinned(0, 5)).toBe(false);
    expect(() => c.unpin(0, 5)).toThrow(MoekitError);
    c.pin(0, 1);
    expect(() => c.reset()).toThrow(/still pinned/);
  });

  test('capacity in bytes with per-expert sizes', () => {
    const sizes = new Array(16).fill(1);
    sizes[0] = 4;
    sizes[1] = 4;
    sizes[2] = 6;
    const c = cache(10, { capacityUnit: 'bytes', expertBytes: sizes });
    for (const [e, t] of [
      [0, 0],
      [1, 1],
      [2, 2],
    ]) {
      c.access(0, [e], t);
      c.release(0, [e]);
    }
    // 2 (6 bytes) needed 2 bytes more than free: LRU 0 went, 1 stayed.
    expect(c.residentExperts(0)).toEqual([1, 2]);
    expect(c.used(0)).toBe(10);
    expect(c.stats().total.bytesMoved).toBe(14);
    // An expert larger than the cache is never admitted.
    const d = cache(3, { capacityUnit: 'bytes', expertBytes: sizes });
    expect(d.access(0, [0], 0).rejected).toBe(1);
  });

  test('a shared cache evicts across layers; per-layer caches do not', () => {
    const shared = cache(2, { perLayer: false });
    const per = cache(2, { perLayer: true });
    for (const c of [shared, per]) {
      for (const [l, e, t] of [
        [0, 0, 0],
        [1, 0, 0.5],
        [0, 1, 1],
      ]) {
        c.access(l, [e], t);
        c.release(l, [e]);
      }
    }
    expect(shared.residentExperts(0)).toEqual([1]);
    expect(shared.residentExperts(1)).toEqual([0]);
    expect(per.residentExperts(0)).toEqual([0, 1]);
  });

  test('prefetch accounting: used, wasted by eviction, wasted by reset, at the end', () => {
    const c = cache(2);
    expect(c.prefetch(0, 3, 0)).toBe('fetched');
    expect(c.prefetch(0, 3, 0)).toBe('resident');
    expect(c.isPrefetchedUnused(0, 3)).toBe(true);
    expect(c.access(0, [3], 1).hits).toBe(1); // used
    c.release(0, [3]);
    expect(c.isPrefetchedUnused(0, 3)).toBe(false);
    c.access(0, [3], 2); // a second hit is not another use
    c.release(0, [3]);
    expect(c.prefetch(0, 4, 2)).toBe('fetched');
    c.access(0, [5], 3); // evicts 3? no: LRU is 3 (t=2) vs 4 (inserted t=2 later) → 3 goes
    c.release(0, [5]);
    c.access(0, [6], 4); // evicts 4, never used → wasted
    c.release(0, [6]);
    expect(c.prefetch(1, 1, 5)).toBe('fetched');
    c.reset(); // 1 at layer 1 never used → wasted
    expect(c.prefetch(1, 2, 6)).toBe('fetched');
    c.dropUnusedPrefetches(); // still unused at the end → wasted
    const s = c.stats();
    expect(s.total.prefetchesIssued).toBe(4);
    expect(s.total.prefetchesUsed).toBe(1);
    expect(s.total.prefetchesWasted).toBe(3);
    expect(s.total.prefetchBytes).toBe(4);
    expect(s.total.hits).toBe(2);
    expect(s.perLayer[1].prefetchesWasted).toBe(2);
    expect(s.total.transferMs).toBe(0);
    expect(s.total.stallMs).toBe(0);
    c.addTimes(1, 2.5, 1);
    expect(c.stats().perLayer[1].transferMs).toBe(2.5);
  });

  test('a prefetch never evicts the experts of the step in flight', () => {
    const c = cache(2);
    c.access(1, [0, 1], 0);
    expect(c.prefetch(1, 2, 0)).toBe('rejected');
    c.release(1, [0, 1]);
    expect(c.prefetch(1, 2, 0)).toBe('fetched');
  });

  test('guarded prefetches decline to evict more valuable experts', () => {
    const c = cache(2, { policy: 'lfu' });
    for (let i = 0; i < 3; i++) {
      c.access(0, [0, 1], i);
      c.release(0, [0, 1]);
    }
    // 7 was never used: its LFU priority (0) is below both residents' (3).
    expect(c.prefetch(0, 7, 3, c.policyOf(0).priority(c.key(0, 7)))).toBe('declined');
    expect(c.residentExperts(0)).toEqual([0, 1]);
  });

  test('argument errors', () => {
    expect(() => cache(0)).toThrow(/Expected a positive integer for options.capacity but received 0/);
    const c = cache(2);
    expect(() => c.access(0, [8], 0)).toThrow(/Expected an integer between 0 and 7 for expert but received 8/);
    expect(() => c.access(2, [0], 0)).toThrow(RangeError);
    expect(() => c.access(0, [1, 1], 0)).toThrow(/distinct expert ids/);
    expect(() => cache(2, { expertBytes: [1, 2] })).toThrow(RangeError);
  });
});

describe('simulate', () => {
  test('prefetch bookkeeping balances: issued = used + wasted', () => {
    const t = zipfTrace({ tokens: 300, layers: 4, experts: 16, k: 2, seed: 3, sequences: [0, 120, 300] });
    for (const resetPerSequence of [false, true]) {
      const r = simulate(t, { capacity: 5, policy: 'lfru', prefetch: 'affinity', perLayer: true, resetPerSequence, prefetchMinProbability: 0.1, prefetchMaxPerStep: 3 });
      const s = r.run.total;
      expect(s.prefetchesIssued).toBeGreaterThan(0);
      expect(s.prefetchesUsed + s.prefetchesWasted).toBe(s.prefetchesIssued);
      expect(s.bytesMoved).toBe(s.misses + s.prefetchesIssued);
      expect(s.hits + s.misses).toBe(s.accesses);
      expect(r.run.demandHitRate - r.run.hitRate).toBeCloseTo(s.prefetchesUsed / s.accesses, 12);
      const perLayerSum = r.run.perLayer.reduce((a, p) => a + p.accesses, 0);
      expect(perLayerSum).toBe(s.accesses);
    }
  });

  test('affinity prefetch learns a deterministic layer-to-layer mapping', () => {
    const t = chainedTrace({ tokens: 400, layers: 6, experts: 16, k: 2, seed: 9 });
    const plain = simulate(t, { capacity: 4, policy: 'lru', perLayer: true });
    const pf = simulate(t, { capacity: 4, policy: 'lru', perLayer: true, prefetch: 'affinity', prefetchGuard: false, prefetchMaxPerStep: 2, prefetchMinProbability: 0.5 });
    // Layers 1..5 are predictable from the layer before: almost every access is resident.
    expect(pf.run.demandHitRate).toBeGreaterThan(0.75);
    expect(pf.run.demandHitRate).toBeGreaterThan(plain.run.demandHitRate + 0.3);
    expect(pf.run.total.prefetchesUsed).toBeGreaterThan(0.9 * pf.run.total.prefetchesIssued);
  });

  test('reset per sequence empties the cache', () => {
    // Two identical sequences of one layer: without reset the second one hits everything.
    const ids = [0, 1, 2, 0, 1, 2];
    const t = zipfTrace({ tokens: 1, layers: 1, experts: 4, k: 1, seed: 1 });
    const tr = { ...t, ids: Uint8Array.from(ids), tokens: 6, sequences: [0, 3, 6] };
    const keep = simulate(tr, { capacity: 3, policy: 'lru', perLayer: true });
    const reset = simulate(tr, { capacity: 3, policy: 'lru', perLayer: true, resetPerSequence: true });
    expect(keep.run.total.hits).toBe(3);
    expect(reset.run.total.hits).toBe(0);
    expect(reset.belady!.total.hits).toBe(0);
  });

  test('min sequence tokens keeps only long sequences', () => {
    const t = zipfTrace({ tokens: 50, layers: 2, experts: 8, k: 2, seed: 4, sequences: [0, 5, 45, 50] });
    const r = simulate(t, { capacity: 4, perLayer: true, minSequenceTokens: 10 });
    expect(r.trace.tokens).toBe(40);
    expect(r.trace.sequences).toBe(1);
    expect(r.run.total.accesses).toBe(40 * 2 * 2);
  });

  test('with capacity = k every policy is the same', () => {
    const t = zipfTrace({ tokens: 200, layers: 2, experts: 8, k: 2, seed: 8 });
    const b = simulate(t, { capacity: 2, policy: 'belady', perLayer: true }).run.total.hits;
    for (const p of ['lru', 'lfu', 'lfru', 'static'] as const) expect(simulate(t, { capacity: 2, policy: p, perLayer: true }).run.total.hits).toBe(b);
  });

  test('argument errors', () => {
    const t = zipfTrace({ tokens: 10, layers: 1, experts: 8, k: 2, seed: 1 });
    expect(() => simulate(t, { capacity: 1 })).toThrow(MoekitError);
    expect(() => simulate(t, { capacity: 4, policy: 'fifo' as never })).toThrow(/Expected one of 'lru'/);
    expect(() => simulate({} as never, { capacity: 4 })).toThrow(TypeError);
  });

  test('the prefetcher source interface', () => {
    const src = new AffinityPrefetchSource(2, 4);
    src.observe(0, [1]);
    src.observe(1, [2]);
    src.observe(0, [1]);
    src.observe(1, [3]);
    const p = src.predict(0, [1]);
    expect(Array.from(p)).toEqual([0, 0, 0.5, 0.5]);
    const out: { layer: number; expert: number; probability: number }[] = [];
    src.propose(1, [3], out); // last layer: nothing to propose
    expect(out).toEqual([]);
    const c = new ExpertCacheCore({ layers: 2, expertsPerLayer: 4, capacity: 2, perLayer: true });
    const pf = new Prefetcher(c, [src], { maxPerStep: 1, minProbability: 0.5, guard: false });
    expect(pf.issue(0, [1], 0)).toBe(1);
    expect(c.residentExperts(1)).toEqual([2]);
    expect(() => new Prefetcher(c, [src], { minProbability: 2 })).toThrow(RangeError);
  });
});
