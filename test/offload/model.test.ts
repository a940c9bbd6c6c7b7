/**
 * OffloadedMoE against the non-offloaded MoELayer on tiny checkpoints of every family
 * (test/pretrained/tiny.ts): outputs must be bit-identical over many random forwards
 * with caches small enough to evict, under pin pressure, with and without prefetch.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FAMILIES, MoELayer, Tensor } from '../../lib';
import type { Family } from '../../lib';
import { OffloadedMoE } from '../../lib/offload';
import { testSeed, firstMismatch } from '../helpers';
import { Rng } from '../reference';
import { tinyModel, writeModel } from '../pretrained/tiny';

const seed = testSeed('offload-model');
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-offload-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

const POLICIES = ['lru', 'lfu', 'lfru', 'static'] as const;

async function checkpoint(family: Family, s: number): Promise<{ dir: string; decoderLayers: number[]; experts: number; k: number; hidden: number }> {
  const model = tinyModel(family, s);
  const dir = path.join(tmp, `${family}-${s}`);
  await writeModel(dir, model, { shards: 2, index: true });
  return { dir, decoderLayers: [...model.moe.keys()].sort((a, b) => a - b), experts: model.experts, k: model.k, hidden: model.hidden };
}

function randomX(rng: Rng, T: number, H: number, dtype: 'f32' | 'bf16'): Tensor {
  return Tensor.from(Float32Array.from({ length: T * H }, () => rng.normal(0, 1)), [T, H], dtype);
}

async function bits(t: Tensor): Promise<ArrayLike<number>> {
  return (await t.toArray()) as unknown as ArrayLike<number>;
}

describe('OffloadedMoE equals MoELayer bit for bit', () => {
  for (const family of FAMILIES) {
    test(`${family}: random forwards with a small cache`, async () => {
      const rng = new Rng(seed ^ family.length * 7919);
      const ck = await checkpoint(family, seed + family.length);
      const refs = await Promise.all(ck.decoderLayers.map((layer) => MoELayer.fromPretrained(ck.dir, { layer })));
      const perLayer = rng.uniform(0, 1) < 0.5;
      const policy = POLICIES[Math.floor(rng.uniform(0, POLICIES.length))];
      const capacity = perLayer ? ck.k : ck.k + 1;
      const model = await OffloadedMoE.fromPretrained(ck.dir, { cache: { capacity, perLayer, policy } });
      try {
        expect(model.layers).toBe(ck.decoderLayers.length);
        for (let i = 0; i < 14; i++) {
          const layer = Math.floor(rng.uniform(0, model.layers));
          const T = [1, 1, 2, 3, 5][Math.floor(rng.uniform(0, 5))];
          const dtype = rng.uniform(0, 1) < 0.3 ? 'bf16' : 'f32';
          const x = randomX(rng, T, ck.hidden, dtype);
          const got = await model.forward(layer, x);
          const want = await refs[layer].forward(x);
          const where = `${family} forward ${i} layer ${layer} T ${T} ${dtype} (${policy}, perLayer ${perLayer}, capacity ${capacity}, seed ${seed})`;
          expect(got.dtype).toBe(want.dtype);
          expect(got.shape).toEqual(want.shape);
          expect([where, firstMismatch(await bits(got), await bits(want))]).toEqual([where, null]);
          for (const t of [x, got, want]) t.dispose();
        }
        const st = model.stats().total;
        expect(st.hits + st.misses).toBe(st.accesses);
        // The cache is smaller than the experts used: some accesses must have missed after the first fills.
        expect(st.misses).toBeGreaterThan(capacity);
      } finally {
        model.dispose();
        for (const r of refs) r.dispose();
      }
    });
  }
});

describe('pinned experts are never evicted', () => {
  test('a batch needing more distinct experts than the cache holds computes with the right weights', async () => {
    const rng = new Rng(seed ^ 0x5151);
    const ck = await checkpoint('olmoe', seed + 101); // 8 experts, k = 2
    const refs = await Promise.all(ck.decoderLayers.map((layer) => MoELayer.fromPretrained(ck.dir, { layer })));
    const model = await OffloadedMoE.fromPretrained(ck.dir, { cache: { capacity: 1, perLayer: true, policy: 'lru' } });
    try {
      for (let i = 0; i < 6; i++) {
        const layer = i % model.layers;
        const T = 7 + Math.floor(rng.uniform(0, 9));
        const x = randomX(rng, T, ck.hidden, 'f32');
        const [got, want] = [await model.forward(layer, x), await refs[layer].forward(x)];
        expect([i, firstMismatch(await bits(got), await bits(want))]).toEqual([i, null]);
        for (const t of [x, got, want]) t.dispose();
      }
      const st = model.stats().total;
      expect(st.rejected).toBeGreaterThan(0);
      expect(st.hits + st.misses).toBe(st.accesses);
    } finally {
      model.dispose();
      for (const r of refs) r.dispose();
    }
  });

  test('concurrent forwards on a shared cache pin each other out and stay exact', async () => {
    const rng = new Rng(seed ^ 0x7777);
    const ck = await checkpoint('deepseek_v3', seed + 202); // 8 experts, k = 2, 2 MoE layers
    const refs = await Promise.all(ck.decoderLayers.map((layer) => MoELayer.fromPretrained(ck.dir, { layer })));
    const model = await OffloadedMoE.fromPretrained(ck.dir, { cache: { capacity: 3, perLayer: false, policy: 'lfru' } });
    try {
      for (let i = 0; i < 5; i++) {
        const xs = [randomX(rng, 2 + i, ck.hidden, 'f32'), randomX(rng, 3, ck.hidden, 'f32'), randomX(rng, 1, ck.hidden, 'f32')];
        const layers = [0, 1, i % 2];
        const got = await Promise.all(xs.map((x, j) => model.forward(layers[j], x)));
        for (let j = 0; j < xs.length; j++) {
          const want = await refs[layers[j]].forward(xs[j]);
          expect([i, j, firstMismatch(await bits(got[j]), await bits(want))]).toEqual([i, j, null]);
          want.dispose();
        }
        for (const t of [...xs, ...got]) t.dispose();
      }
      expect(model.stats().total.rejected).toBeGreaterThan(0);
    } finally {
      model.dispose();
      for (const r of refs) r.dispose();
    }
  });
});

describe('prefetch changes traffic, never outputs', () => {
  test('decode through the stack with prefetch none / affinity / pre-gating / both', async () => {
    const rng = new Rng(seed ^ 0x3333);
    const ck = await checkpoint('qwen2_moe', seed + 303); // 8 experts, k = 4, 2 MoE layers
    const inputs = Array.from({ length: 12 }, () => randomX(rng, 1, ck.hidden, 'f32'));
    const modes = [{}, { affinity: true }, { pregating: true, guard: false }, { affinity: true, pregating: true, maxPerStep: 4, minProbability: 0.2 }, { layerwise: true, minProbability: 0.1, protectProbability: 0.2 }];
    const outputs: ArrayLike<number>[][] = [];
    const stats = [];
    for (const prefetch of modes) {
      const model = await OffloadedMoE.fromPretrained(ck.dir, { cache: { capacity: 5, perLayer: true, policy: 'lru' }, prefetch });
      try {
        const outs: ArrayLike<number>[] = [];
        for (const x of inputs) {
          const y = await model.forwardAll(x);
          outs.push(await bits(y));
          y.dispose();
        }
        await model.settle();
        outputs.push(outs);
        const s = model.stats();
        stats.push(s.total);
        for (const l of s.perLayer) {
          expect(l.hits + l.misses).toBe(l.accesses);
          expect(l.bytesMoved).toBe(l.misses * model.store.expertBytes + l.prefetchBytes);
          expect(l.prefetchBytes).toBe(l.prefetchesIssued * model.store.expertBytes);
          expect(l.prefetchesUsed + l.prefetchesWasted).toBeLessThanOrEqual(l.prefetchesIssued);
          expect(l.transferMs).toBeGreaterThanOrEqual(0);
          expect(l.stallMs).toBeGreaterThanOrEqual(0);
        }
      } finally {
        model.dispose();
      }
    }
    for (let m = 1; m < modes.length; m++)
      for (let i = 0; i < inputs.length; i++) expect([m, i, firstMismatch(outputs[m][i], outputs[0][i])]).toEqual([m, i, null]);
    expect(stats[0].prefetchesIssued).toBe(0);
    // Pre-gating on a pure MoE stack predicts the next layer exactly: its prefetches get used.
    expect(stats[2].prefetchesIssued).toBeGreaterThan(0);
    expect(stats[2].prefetchesUsed).toBeGreaterThan(0);
    for (const x of inputs) x.dispose();
  });
});
