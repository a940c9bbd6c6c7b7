/**
 * NaN and infinite router logits: the documented behaviour (kernels/common/gating_params.h)
 * against the float64 reference in every selection mode. NaN is never selected ahead of
 * a number; a row with fewer than k numbers fills the rest with the lowest unused ids at
 * weight 0; infinities clamp to ±FLT_MAX.
 */
import { Tensor, gate } from '../../lib';
import type { GateOptions } from '../../lib';
import { testSeed } from '../helpers';
import { Rng, awkwardMatrix, refGating } from '../reference';

test('hand-checked rows: NaN never wins, NaN-only tails get the lowest unused ids at weight 0, ±Infinity clamps', async () => {
  const logits = Tensor.from(new Float32Array([0.1, NaN, 0.5, 0.2, /**/ NaN, NaN, 1, NaN, /**/ 1, 2, Infinity, 4, /**/ NaN, NaN, NaN, NaN]), [4, 4]);
  const r = await gate(logits, { k: 2, renormalize: true });
  const ids = Array.from(r.ids.toArraySync() as Int32Array);
  const w = Array.from(r.weights.toFloat32Sync());
  // Row 2: FLT_MAX takes probability 1; the others tie at 0, so the lowest id (0) is next.
  expect(ids).toEqual([2, 3, 2, 0, 2, 0, 0, 1]);
  // Row 1: one number; the second slot is the lowest unused id (0) at weight 0.
  expect([w[2], w[3]]).toEqual([1, 0]);
  // Row 2: +Infinity -> FLT_MAX wins with probability 1.
  expect([w[4], w[5]]).toEqual([1, 0]);
  // Row 3: nothing selectable: ids 0, 1 at weight 0 (no NaN leaks out).
  expect([w[6], w[7]]).toEqual([0, 0]);
  expect(w.every(Number.isFinite)).toBe(true);
});

describe('NaN / ±Infinity logits match the reference in every mode', () => {
  const seed = testSeed('nan-logits');
  const modes: Omit<GateOptions, 'k'>[] = [
    {},
    { renormalize: true, routedScaling: 2 },
    { scoring: 'sigmoid', nGroup: 4, topkGroup: 2, renormalize: true },
    { scoring: 'sqrt-softplus' },
    { selection: 'topk-logits-softmax' },
    { selection: 'top-p', topP: 0.8 },
    { nullExperts: 2, renormalize: true },
    { selection: 'expert-choice', capacityFactor: 1.5, choiceK: 2 },
    { selection: 'sinkhorn', sinkhornIters: 2 },
  ];
  for (const mode of modes) {
    test(JSON.stringify(mode), async () => {
      const rng = new Rng(seed ^ JSON.stringify(mode).length);
      const [T, E, k] = [64, 16, 4];
      const cols = E + (mode.nullExperts ?? 0);
      const x = awkwardMatrix(rng, T, cols);
      for (let i = 0; i < x.length; i++) {
        const u = rng.uniform();
        if (u < 0.15) x[i] = NaN;
        else if (u < 0.18) x[i] = rng.uniform() < 0.5 ? Infinity : -Infinity;
      }
      for (let c = 0; c < cols; c++) x[3 * cols + c] = NaN; // an all-NaN row
      const ref = refGating(x, T, { ...(mode as object), experts: E, k } as Parameters<typeof refGating>[2]);
      const got = await gate(Tensor.from(Float32Array.from(x), [T, cols]), { ...mode, k, experts: E });
      const ids = got.ids.toArraySync() as Int32Array;
      const w = got.weights.toFloat32Sync();
      expect(Array.from(w).every(Number.isFinite)).toBe(true);
      const slots = ref.slots;
      for (let t = 0; t < T; t++) {
        if (mode.selection !== 'expert-choice' && ref.margin[t] < 1e-5) continue;
        for (let s = 0; s < slots; s++) {
          const i = t * slots + s;
          expect([t, s, ids[i]]).toEqual([t, s, ref.ids[i]]);
          expect(Math.abs(w[i] - ref.weights[i])).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(ref.weights[i])));
        }
      }
    });
  }
});
