/**
 * Every op on the CUDA backend against the CPU backend on fresh random data:
 * integer outputs (ids, load, counts, offsets, rows) exactly, floats within the
 * bounds of the 16-bit rounding the tensor-core path applies to activations.
 */
import { Tensor, combine, dispatch, gate, groupedGemm } from '../../lib';
import type { Activation, GateOptions } from '../../lib';
import { testSeed } from '../helpers';
import { Rng, awkwardMatrix, refGating, roundTo } from '../reference';
import { GPU_TOKENS, describeGpu, intMismatch, mismatches } from './gpu';

const seed = testSeed('gpu-ops');
const TOKENS = GPU_TOKENS;
const EXPERTS = [8, 64, 128, 257];

async function both<T>(fn: (device: 'cpu' | 'cuda') => Promise<T>): Promise<[T, T]> {
  return [await fn('cpu'), await fn('cuda')];
}
async function ints(t: Tensor): Promise<number[]> {
  return Array.from((await t.toArray()) as Int32Array);
}

describeGpu('CUDA ops match the CPU backend', () => {
  const modes: { name: string; opts: (E: number) => Omit<GateOptions, 'k'> | null }[] = [
    { name: 'softmax top-k', opts: () => ({}) },
    { name: 'softmax top-k renormalised', opts: () => ({ renormalize: true }) },
    { name: 'sigmoid grouped top-2-sum with correction bias', opts: (E) => (E % 8 === 0 ? { scoring: 'sigmoid', nGroup: 8, topkGroup: 4, renormalize: true, routedScaling: 2.5 } : null) },
    { name: 'top-k logits then softmax', opts: () => ({ selection: 'topk-logits-softmax' }) },
    { name: 'top-p', opts: () => ({ selection: 'top-p', topP: 0.7 }) },
    { name: 'null experts', opts: () => ({ nullExperts: 2, renormalize: true }) },
    { name: 'expert-choice', opts: () => ({ selection: 'expert-choice', capacityFactor: 1.25, choiceK: 2 }) },
    { name: 'sinkhorn', opts: () => ({ selection: 'sinkhorn', sinkhornIters: 3 }) },
  ];
  for (const mode of modes) {
    test(`gate: ${mode.name}`, async () => {
      const rng = new Rng(seed ^ mode.name.length);
      for (const E of EXPERTS) {
        const extra = mode.opts(E);
        if (extra === null) continue;
        for (const T of TOKENS) {
          if (mode.name === 'expert-choice' && T > 4096) continue;
          // Grouped selection can pick at most topkGroup groups' worth of experts.
          const k = Math.min(8, extra.nGroup !== undefined ? (E / extra.nGroup) * (extra.topkGroup ?? 1) : E);
          const cols = E + (extra.nullExperts ?? 0);
          const logits = awkwardMatrix(rng, T, cols);
          const ref = refGating(logits, T, { ...(extra as object), experts: E, k } as Parameters<typeof refGating>[2]);
          const host = Tensor.from(Float32Array.from(logits), [T, cols], 'bf16');
          const dev = await host.to('cuda');
          const corr = extra.scoring === 'sigmoid' ? Tensor.from(Float32Array.from({ length: E }, () => Math.round(rng.uniform(0, 0.1) * 64) / 64), [E]) : undefined;
          const [c, g] = await both(async (d) =>
            gate(d === 'cpu' ? host : dev, { ...extra, k, ...(corr ? { correctionBias: d === 'cpu' ? corr : await corr.to('cuda') } : {}) }),
          );
          const [ci, gi] = [await ints(c.ids), await ints(g.ids)];
          const slots = c.ids.shape[1];
          const rowsDiffer: string[] = [];
          for (let t = 0; t < T; t++) {
            if (mode.name !== 'expert-choice' && ref.margin[t] < 1e-5) continue;
            const [a, b] = [gi.slice(t * slots, (t + 1) * slots).join(), ci.slice(t * slots, (t + 1) * slots).join()];
            if (a !== b) rowsDiffer.push(`t=${t}: cuda [${a}] cpu [${b}]`);
          }
          expect([E, T, rowsDiffer.length, rowsDiffer.slice(0, 3)]).toEqual([E, T, 0, []]);
          if (Array.from(ref.margin).every((m) => m >= 1e-5)) expect(intMismatch(await ints(g.load), await ints(c.load), `E=${E} T=${T} load`)).toBeNull();
          const [cw, gw] = [await c.weights.toFloat32(), await g.weights.toFloat32()];
          expect(mismatches(gw, cw, (i) => (ci[i] === gi[i] ? 1e-5 * Math.max(1, Math.abs(cw[i])) : Infinity), `E=${E} T=${T} weights`)).toBeNull();
        }
      }
    });
  }

  test('NaN and ±Infinity logits give the ids and weights of the CPU backend in every mode', async () => {
    const rng = new Rng(seed ^ 0x4a4e);
    const [T, E, k] = [257, 64, 4];
    const x = awkwardMatrix(rng, T, E);
    for (let i = 0; i < x.length; i++) {
      const u = rng.uniform();
      if (u < 0.15) x[i] = NaN;
      else if (u < 0.18) x[i] = rng.uniform() < 0.5 ? Infinity : -Infinity;
    }
    const host = Tensor.from(Float32Array.from(x), [T, E]);
    const dev = await host.to('cuda');
    for (const opts of [{}, { renormalize: true }, { scoring: 'sigmoid' as const }, { selection: 'top-p' as const, topP: 0.8 }, { selection: 'topk-logits-softmax' as const }, { selection: 'sinkhorn' as const, sinkhornIters: 2 }, { selection: 'expert-choice' as const, capacityFactor: 1.5, choiceK: 2 }]) {
      const [c, g] = await both(async (d) => gate(d === 'cpu' ? host : dev, { ...opts, k }));
      expect(intMismatch(await ints(g.ids), await ints(c.ids), JSON.stringify(opts))).toBeNull();
      const [cw, gw] = [await c.weights.toFloat32(), await g.weights.toFloat32()];
      expect(mismatches(gw, cw, (i) => 1e-5 * Math.max(1, Math.abs(cw[i])), JSON.stringify(opts))).toBeNull();
    }
  });

  test('dispatch: counts, offsets, rows and drops are identical, including one expert taking most tokens', async () => {
    const rng = new Rng(seed ^ 0xd1);
    for (const E of EXPERTS)
      for (const T of TOKENS) {
        const k = Math.min(8, E);
        const ids = new Int32Array(T * k);
        for (let t = 0; t < T; t++) for (let s = 0; s < k; s++) ids[t * k + s] = s === 0 && rng.uniform() < 0.8 ? 0 : (1 + ((t * 7 + s * 13) % (E - 1)));
        const host = Tensor.from(ids, [T, k]);
        for (const [blockSize, capacity] of [[1, undefined], [64, undefined], [16, Math.ceil((T * k) / E)]] as const) {
          const [c, g] = await both(async (d) => dispatch(d === 'cpu' ? host : await host.to('cuda'), { experts: E, blockSize, ...(capacity !== undefined ? { capacity } : {}) }));
          for (const key of ['counts', 'offsets', 'sortedPairs', 'pairToRow'] as const) expect(intMismatch(await ints(g[key]), await ints(c[key]), `E=${E} T=${T} blockSize=${blockSize} ${key}`)).toBeNull();
          expect(g.dropped).toBe(c.dropped);
        }
      }
  });

  const ACTS: Activation[] = ['swiglu', 'swiglu-interleaved', 'gpt-oss-swiglu', 'geglu', 'gelu', 'relu', 'silu', 'none'];
  test('groupedGemm: every activation, both layouts, bf16 / f16 / f32 weights, decode and prefill group sizes', async () => {
    const rng = new Rng(seed ^ 0x6e);
    for (const dtype of ['bf16', 'f16', 'f32'] as const)
      for (const layout of ['enk', 'ekn'] as const)
        for (const act of ACTS)
          // The last two: 2 and 3 k-tiles of 32 in 64-row tiles (the edge cases of a 3-stage weight
          // pipeline, MOEKIT_TC_STAGES=3), with K % 8 != 0 or n_out % 8 != 0 forcing the synchronous
          // weight loads on one layout each.
          for (const [E, K, N, maxRows] of [[8, 256, 2 * 128, 4], [4, 512, 2 * 96, 300], [3, 72, 2 * 40, 1], [3, 40, 2 * 36, 40], [3, 70, 2 * 36, 40]] as const) {
            const sizes = Array.from({ length: E }, (_, e) => (e === 1 ? 0 : rng.int(0, maxRows)));
            const offsets = new Int32Array(E + 1);
            for (let e = 0; e < E; e++) offsets[e + 1] = offsets[e] + sizes[e];
            const rows = offsets[E];
            const x = Tensor.from(Float32Array.from(roundTo(Float64Array.from({ length: rows * K }, () => rng.normal()), dtype === 'f32' ? 'f32' : dtype)), [rows, K]);
            const w = Tensor.from(Float32Array.from({ length: E * N * K }, () => rng.normal(0, 1 / Math.sqrt(K))), layout === 'enk' ? [E, N, K] : [E, K, N], dtype);
            const offs = Tensor.from(offsets, [E + 1]);
            const [c, g] = await both(async (d) =>
              groupedGemm(d === 'cpu' ? x : await x.to('cuda'), d === 'cpu' ? offs : await offs.to('cuda'), d === 'cpu' ? w : await w.to('cuda'), { layout, activation: act }),
            );
            const [cy, gy] = [await c.toFloat32(), await g.toFloat32()];
            // x was pre-rounded to the weight dtype, so the tensor-core path sees the same inputs;
            // the bound covers float32 accumulation in a different order.
            let scale = 0;
            for (const v of cy) scale = Math.max(scale, Math.abs(v));
            expect(mismatches(gy, cy, () => 1e-4 * (scale + 1), `${dtype} ${layout} ${act} E=${E} K=${K} N=${N}`)).toBeNull();
          }
  });

  test('combine matches, and five runs give identical bits (determinism)', async () => {
    const rng = new Rng(seed ^ 0xcb);
    const [T, k, H, rows] = [4099, 8, 512, 4099 * 8];
    const y = Tensor.from(Float32Array.from({ length: rows * H }, () => rng.normal()), [rows, H]);
    const p2r = Tensor.from(Int32Array.from({ length: T * k }, (_, i) => (i % 11 === 0 ? -1 : (i * 7919) % rows)), [T, k]);
    const w = Tensor.from(Float32Array.from({ length: T * k }, () => rng.uniform()), [T, k]);
    const c = await (await combine(y, p2r, { weights: w })).toFloat32();
    const [yd, pd, wd] = [await y.to('cuda'), await p2r.to('cuda'), await w.to('cuda')];
    const runs: Float32Array[] = [];
    for (let r = 0; r < 5; r++) runs.push(await (await combine(yd, pd, { weights: wd })).toFloat32());
    for (const r of runs) expect(Buffer.from(r.buffer).equals(Buffer.from(runs[0].buffer))).toBe(true);
    expect(Buffer.from(runs[0].buffer).equals(Buffer.from(c.buffer))).toBe(true);
  });
});
