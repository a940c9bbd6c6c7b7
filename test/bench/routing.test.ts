import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readTrace, writeTrace } from '../../lib/cache/trace';
import { makeRng, touchedExperts, traceIds, uniformIds, weightedIds, zipfPopularity } from '../../lib/bench/routing';
import { testSeed } from '../helpers';

function rows(ids: Int32Array, k: number): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < ids.length; i += k) out.push(Array.from(ids.subarray(i, i + k)));
  return out;
}

function expectDistinctInRange(ids: Int32Array, k: number, E: number): void {
  let problem: string | null = null;
  for (const [t, r] of rows(ids, k).entries()) {
    if (new Set(r).size !== k) problem ??= `row ${t} repeats an id: ${r}`;
    for (const e of r) if (!(e >= 0 && e < E)) problem ??= `row ${t}: id ${e} outside [0, ${E})`;
  }
  expect(problem).toBeNull();
}

/** Each count within 6 binomial standard deviations of n·p. */
function expectFrequencies(counts: number[], n: number, p: ArrayLike<number>): void {
  const off: string[] = [];
  for (let e = 0; e < counts.length; e++) {
    const sd = Math.sqrt(n * p[e] * (1 - p[e]));
    if (!(Math.abs(counts[e] - n * p[e]) <= 6 * sd + 1)) off.push(`expert ${e}: ${counts[e]} vs ${(n * p[e]).toFixed(1)} ± ${sd.toFixed(1)}`);
  }
  expect(off).toEqual([]);
}

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-bench-routing-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('uniform routing', () => {
  test.each([
    [2001, 7, 3],
    [513, 13, 13],
    [300, 257, 8],
    [1, 1, 1],
  ])('T %i, E %i, k %i: k distinct ids per token, each expert equally likely', (T, E, k) => {
    const seed = testSeed(`uniform ${T} ${E} ${k}`);
    const ids = uniformIds(T, E, k, makeRng(seed));
    expect(ids.length).toBe(T * k);
    expectDistinctInRange(ids, k, E);
    const counts = new Array(E).fill(0);
    for (const e of ids) counts[e]++;
    // Each expert is in a row with probability k / E.
    expectFrequencies(counts, T, new Array(E).fill(k / E));
  });
});

describe('zipf routing', () => {
  test('popularity is 1/rank^S over a random ranking, normalised', () => {
    const { p, rank } = zipfPopularity(11, 1.3, makeRng(testSeed('zipf popularity')));
    expect(Array.from(rank).sort((a, b) => a - b)).toEqual([...Array(11).keys()]);
    let z = 0;
    for (let r = 0; r < 11; r++) z += 1 / Math.pow(r + 1, 1.3);
    for (let e = 0; e < 11; e++) expect(p[e]).toBeCloseTo(1 / Math.pow(rank[e] + 1, 1.3) / z, 14);
    const flat = zipfPopularity(6, 0, makeRng(1)).p;
    for (const v of flat) expect(v).toBeCloseTo(1 / 6, 14);
  });

  test('k = 1 draws each expert with its popularity', () => {
    const rng = makeRng(testSeed('zipf k1'));
    const { p } = zipfPopularity(13, 1.2, rng);
    const T = 6000;
    const ids = weightedIds(T, 1, p, rng);
    const counts = new Array(13).fill(0);
    for (const e of ids) counts[e]++;
    expectFrequencies(counts, T, p);
  });

  test('k > 1: distinct ids, skewed toward the popular experts', () => {
    const rng = makeRng(testSeed('zipf k3'));
    const { p, rank } = zipfPopularity(17, 1.5, rng);
    const T = 3000;
    const ids = weightedIds(T, 3, p, rng);
    expectDistinctInRange(ids, 3, 17);
    const counts = new Array(17).fill(0);
    for (const e of ids) counts[e]++;
    const byRank = Array.from(rank).map((r, e) => [r, counts[e]]).sort((a, b) => a[0] - b[0]).map((x) => x[1]);
    // The top-ranked expert is in almost every row (first draw alone: p ≈ 0.42); the last in few.
    expect(byRank[0]).toBeGreaterThan(0.6 * T);
    expect(byRank[16]).toBeLessThan(0.1 * T);
    expect(byRank[0]).toBeGreaterThan(byRank[4]);
    expect(byRank[4]).toBeGreaterThan(byRank[16]);
    // The first slot alone follows p exactly.
    const first = new Array(17).fill(0);
    for (let t = 0; t < T; t++) first[ids[t * 3]]++;
    expectFrequencies(first, T, p);
  });
});

describe('trace routing', () => {
  function randomTrace(tokens: number, layers: number, experts: number, k: number, seed: number) {
    const rng = makeRng(seed);
    const ids: number[] = [];
    for (let i = 0; i < tokens * layers; i++) ids.push(...uniformIds(1, experts, k, rng));
    const stem = path.join(dir, `t${seed}-${experts}-${k}`);
    writeTrace(stem, { ids, tokens, layers, topK: k, expertsPerLayer: experts });
    return readTrace(stem);
  }
  const at = (tr: ReturnType<typeof readTrace>, t: number, l: number) => Array.from(tr.ids.subarray((t * tr.layers + l) * tr.topK, (t * tr.layers + l + 1) * tr.topK));

  test('same E and k: the trace layer ids as they are; more tokens repeat the trace', () => {
    const seed = testSeed('trace same');
    const tr = randomTrace(37, 3, 8, 2, seed);
    const { ids, notes } = traceIds(tr, 1, 80, 8, 2, makeRng(seed));
    const want = Array.from({ length: 80 }, (_, t) => at(tr, t % 37, 1));
    expect(rows(ids, 2)).toEqual(want);
    expect(notes).toEqual(['trace has 37 tokens; repeated to 80']);
  });

  test('more experts scale ids by E / E_trace; fewer slots keep the first ids', () => {
    const seed = testSeed('trace scale');
    const tr = randomTrace(50, 2, 8, 4, seed);
    const { ids, notes } = traceIds(tr, 0, 50, 24, 3, makeRng(seed));
    expect(rows(ids, 3)).toEqual(Array.from({ length: 50 }, (_, t) => at(tr, t, 0).slice(0, 3).map((e) => e * 3)));
    expect(notes).toContain('trace top-4 cut to its first 3 ids');
    expect(notes).toContain('trace ids over 8 experts mapped to 24 as floor(id*24/8), collisions to the next free id');
  });

  test('fewer experts merge ids (collisions move to the next free id); more slots are filled with distinct ids', () => {
    const seed = testSeed('trace merge');
    const tr = randomTrace(200, 1, 10, 3, seed);
    const E = 4;
    const { ids } = traceIds(tr, 0, 200, E, 4, makeRng(seed));
    expectDistinctInRange(ids, 4, E);
    const want = Array.from({ length: 200 }, (_, t) => {
      // Independent re-derivation of the first three slots.
      const row: number[] = [];
      for (const id of at(tr, t, 0)) {
        let e = Math.floor((id * E) / 10);
        while (row.includes(e)) e = (e + 1) % E;
        row.push(e);
      }
      return row;
    });
    expect(rows(ids, 4).map((r) => r.slice(0, 3))).toEqual(want);
  });

  test('touched experts', () => {
    expect(touchedExperts(Int32Array.from([3, 1, 3, -1, 1, 0]), 5)).toBe(3);
    expect(touchedExperts(new Int32Array(0), 5)).toBe(0);
  });
});
