/** gate() against the float64 reference: every scoring and selection mode, awkward sizes, ties on purpose. */
import { Tensor, gate } from '../../lib';
import type { GateOptions } from '../../lib';
import { testSeed } from '../helpers';
import { GatingOptions, Rng, awkwardMatrix, refGating, roundTo } from '../reference';

interface Case {
  name: string;
  /** Options for experts E and slots k (return null when the case does not apply). */
  make(E: number, k: number, rng: Rng): (Omit<GatingOptions, 'experts' | 'k'> & { k?: number }) | null;
}

const divisor = (E: number) => [8, 6, 4, 2].find((g) => E % g === 0 && g < E);

const CASES: Case[] = [
  { name: 'softmax top-k', make: () => ({}) },
  { name: 'softmax top-k, renormalised', make: () => ({ renormalize: true }) },
  { name: 'sigmoid, correction bias, renormalised, scaled', make: (E, _k, rng) => ({ scoring: 'sigmoid', correctionBias: Array.from({ length: E }, () => Math.round(rng.normal(0, 0.5) * 64) / 64), renormalize: true, routedScaling: 2.5 }) },
  { name: 'sqrt-softplus top-k', make: () => ({ scoring: 'sqrt-softplus' }) },
  {
    name: 'grouped top-k, group score = max (DeepSeek-V2)',
    make: (E, k) => {
      const g = divisor(E);
      if (g === undefined) return null;
      const topkGroup = Math.max(1, g / 2);
      return k <= topkGroup * (E / g) ? { nGroup: g, topkGroup } : null;
    },
  },
  {
    name: 'grouped top-k, sigmoid, correction bias, top-2 sum (DeepSeek-V3)',
    make: (E, k, rng) => {
      const g = divisor(E);
      if (g === undefined || E / g < 2) return null;
      const topkGroup = Math.max(1, g / 2);
      if (k > topkGroup * (E / g)) return null;
      return { scoring: 'sigmoid', nGroup: g, topkGroup, renormalize: true, routedScaling: 2.5, correctionBias: Array.from({ length: E }, () => Math.round(rng.normal(0, 0.3) * 64) / 64) };
    },
  },
  { name: 'top-k over biased logits, then softmax (gpt-oss)', make: (E, _k, rng) => ({ selection: 'topk-logits-softmax', logitBias: Array.from({ length: E }, () => Math.round(rng.normal(0, 0.5) * 64) / 64) }) },
  { name: 'top-p 0.6 capped at k', make: () => ({ selection: 'top-p', topP: 0.6 }) },
  { name: 'top-p 0.9, renormalised', make: () => ({ selection: 'top-p', topP: 0.9, renormalize: true }) },
  { name: 'null experts (AdaMoE), renormalised', make: (E, k) => (k < E ? { nullExperts: 3, renormalize: true } : null) },
  { name: 'expert-choice, capacity factor 1.25, choiceK 2', make: (E) => (E >= 2 ? { selection: 'expert-choice', capacityFactor: 1.25, choiceK: 2, k: E } : null) },
  { name: 'Sinkhorn, 3 iterations', make: () => ({ selection: 'sinkhorn', sinkhornIters: 3 }) },
  { name: 'Sinkhorn, 0 iterations', make: () => ({ selection: 'sinkhorn', sinkhornIters: 0 }) },
];

const TOKENS = [1, 3, 17, 256];
const EXPERTS = [8, 60, 64, 257];

function kChoices(E: number): number[] {
  return Array.from(new Set([1, Math.min(6, E), E]));
}

describe('gate() matches the float64 reference', () => {
  const seed = testSeed('gating');
  for (const c of CASES) {
    test(c.name, async () => {
      const rng = new Rng(seed ^ c.name.length * 7919);
      let compared = 0;
      for (const E of EXPERTS) {
        for (const k of kChoices(E)) {
          const extra = c.make(E, k, rng);
          if (extra === null) continue;
          for (const T of TOKENS) {
            const dtype = T === 17 ? 'bf16' : 'f32';
            const cols = E + (extra.nullExperts ?? 0);
            let logits = awkwardMatrix(rng, T, cols);
            if (dtype === 'bf16') logits = roundTo(logits, 'bf16');
            const refOpts: GatingOptions = { ...extra, experts: E, k: extra.k ?? k };
            const ref = refGating(logits, T, refOpts);
            const options: GateOptions = {
              k: refOpts.k,
              experts: E,
              ...(extra.scoring ? { scoring: extra.scoring } : {}),
              ...(extra.selection ? { selection: extra.selection } : {}),
              ...(extra.nullExperts ? { nullExperts: extra.nullExperts } : {}),
              ...(extra.nGroup ? { nGroup: extra.nGroup, topkGroup: extra.topkGroup } : {}),
              ...(extra.renormalize ? { renormalize: true } : {}),
              ...(extra.routedScaling ? { routedScaling: extra.routedScaling } : {}),
              ...(extra.topP ? { topP: extra.topP } : {}),
              ...(extra.capacityFactor ? { capacityFactor: extra.capacityFactor, choiceK: extra.choiceK } : {}),
              ...(extra.sinkhornIters !== undefined ? { sinkhornIters: extra.sinkhornIters } : {}),
              ...(extra.logitBias ? { logitBias: Tensor.from(Float32Array.from(extra.logitBias), [E]) } : {}),
              ...(extra.correctionBias ? { correctionBias: Tensor.from(Float32Array.from(extra.correctionBias), [E]) } : {}),
            };
            const input = dtype === 'bf16' ? Tensor.from(Float32Array.from(logits), [T, cols], 'bf16') : Tensor.from(Float32Array.from(logits), [T, cols]);
            const got = await gate(input, options);
            const ids = got.ids.toArraySync() as Int32Array;
            const weights = got.weights.toFloat32Sync();
            const load = got.load.toArraySync() as Int32Array;
            const slots = ref.slots;
            expect(got.ids.shape).toEqual([T, slots]);
            const where = `E=${E} k=${k} T=${T} ${dtype} seed=${seed}`;
            // Rows (or, for expert-choice, every expert's column) decided by a near tie are
            // skipped: a float32 kernel may resolve a float64 gap of 1e-6 the other way.
            const safe = (t: number) =>
              extra.selection === 'expert-choice' ? Array.from(ref.margin).every((m) => m === 0 || m > 1e-5) : ref.margin[t] === 0 || ref.margin[t] > 1e-5;
            const scale = Math.abs(extra.routedScaling ?? 1);
            let allSafe = true;
            for (let t = 0; t < T; t++) {
              if (!safe(t)) {
                allSafe = false;
                continue;
              }
              for (let s = 0; s < slots; s++) {
                const i = t * slots + s;
                if (ids[i] !== ref.ids[i]) throw new Error(`${where}: ids[${t}, ${s}] = ${ids[i]}, reference ${ref.ids[i]}`);
                const err = Math.abs(weights[i] - ref.weights[i]);
                if (!(err <= 2e-6 * scale + 1e-5 * Math.abs(ref.weights[i])))
                  throw new Error(`${where}: weights[${t}, ${s}] = ${weights[i]}, reference ${ref.weights[i]}`);
              }
              compared++;
            }
            // The load always counts the kernel's own ids; it equals the reference's when every row was compared.
            const counted = new Int32Array(E);
            for (const id of ids) if (id >= 0) counted[id]++;
            expect(Array.from(load)).toEqual(Array.from(counted));
            if (allSafe) expect(Array.from(load)).toEqual(Array.from(ref.load));
            for (const t of [input, got.ids, got.weights, got.load, options.logitBias, options.correctionBias]) t?.dispose();
          }
        }
      }
      expect(compared).toBeGreaterThan(0);
    });
  }
});

describe('gate() ties and edge cases', () => {
  test('ties break toward the lower expert id in every mode', async () => {
    const E = 10;
    const logits = Tensor.from(new Float32Array(2 * E).fill(0.25), [2, E]);
    for (const selection of ['topk', 'topk-logits-softmax', 'top-p', 'sinkhorn'] as const) {
      const r = await gate(logits, { k: 3, selection, ...(selection === 'top-p' ? { topP: 0.25 } : {}) });
      const ids = Array.from(r.ids.toArraySync() as Int32Array);
      expect([selection, ids]).toEqual([selection, selection === 'top-p' ? [0, 1, 2, 0, 1, 2] : [0, 1, 2, 0, 1, 2]]);
    }
    // Expert-choice: tokens tie, the lower token id wins.
    const ec = await gate(logits, { k: 1, selection: 'expert-choice', capacityFactor: 1, choiceK: 1 });
    // C = ceil(1 * 2 * 1 / 10) = 1: every expert takes token 0.
    expect(Array.from(ec.ids.toArraySync() as Int32Array).slice(0, E)).toEqual(Array.from({ length: E }, (_, e) => e));
    expect(Array.from(ec.ids.toArraySync() as Int32Array).slice(E)).toEqual(new Array(E).fill(-1));
  });

  test('k = E selects every expert, in descending order', async () => {
    const logits = Tensor.from(new Float32Array([0.1, 0.9, 0.5, 0.5]), [1, 4]);
    const r = await gate(logits, { k: 4 });
    expect(Array.from(r.ids.toArraySync() as Int32Array)).toEqual([1, 2, 3, 0]);
    const w = r.weights.toFloat32Sync();
    expect(w[0] + w[1] + w[2] + w[3]).toBeCloseTo(1, 6);
  });

  test('zero tokens give empty ids and a zero load', async () => {
    const r = await gate(Tensor.from(new Float32Array(0), [0, 8]), { k: 2 });
    expect(r.ids.shape).toEqual([0, 2]);
    expect(Array.from(r.load.toArraySync() as Int32Array)).toEqual(new Array(8).fill(0));
  });

  test('argument errors name the argument', async () => {
    const logits = Tensor.from(new Float32Array(16), [2, 8]);
    await expect(gate(logits, { k: 9 })).rejects.toThrow(new RangeError('Expected an integer between 1 and 8 for options.k but received 9 of type number'));
    await expect(gate(logits, { k: 2, nGroup: 3 })).rejects.toThrow(/Expected a divisor of the expert count 8 for options.nGroup but received 3/);
    await expect(gate(logits, { k: 2, scoring: 'tanh' as never })).rejects.toThrow(/Expected one of 'softmax', 'sigmoid', 'sqrt-softplus' for options.scoring/);
    await expect(gate(logits, { k: 2, selection: 'top-p', scoring: 'sigmoid' })).rejects.toThrow(RangeError);
    await expect(gate(logits, { k: 2, correctionBias: Tensor.from(new Float32Array(7), [7]) })).rejects.toThrow(/options.correctionBias/);
    await expect(gate(Tensor.from(new Int32Array(16), [2, 8]), { k: 2 })).rejects.toThrow(/Expected a tensor of dtype f32 or f16 or bf16 for logits/);
    await expect(gate('x' as never, { k: 2 })).rejects.toThrow(new TypeError('Expected a Tensor for logits but received "x" of type string'));
  });
});
