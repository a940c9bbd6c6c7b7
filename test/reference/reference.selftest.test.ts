/**
 * Checks of the float64 reference itself on small hand-computed cases, and
 * cross-checks between its independent parts (family routing vs generic
 * gating, direct layer vs dispatch + grouped GEMM + combine).
 */

import { describe, expect, it } from '@jest/globals';

import {
  BF16_FORMAT,
  F16_FORMAT,
  F32_FORMAT,
  Rng,
  applyActivation,
  awkwardMatrix,
  canonicalSlots,
  deepseekV2Routing,
  deepseekV3Routing,
  erf,
  erfc,
  expertChoiceCapacity,
  familyGatingOptions,
  familyRouting,
  float32Normals,
  gatherRows,
  gelu,
  geluTanh,
  gptOssMlpBlock,
  gptOssSwiglu,
  hfSwigluMoeBlock,
  mixtralRouting,
  refCombine,
  refDispatch,
  refGating,
  refGroupedGemm,
  refMoELayer,
  relu,
  roundBf16,
  roundF16,
  roundTo,
  roundToFormat,
  sigmoid,
  silu,
  sinkhornMatrix,
  softmax,
  type FamilyConfig,
  type GatingOptions,
} from './index';

/** Expects two arrays to agree elementwise within an absolute + relative tolerance. */
function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-12): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i] as number;
    const e = expected[i] as number;
    if (Math.abs(a - e) > tol * (1 + Math.abs(e))) {
      throw new Error(`element ${i}: got ${a}, expected ${e} (tol ${tol})`);
    }
  }
}

/** Reference bf16 rounding of a float32-representable value through its bit pattern. */
function bf16ViaBits(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  const bits = u[0] as number;
  if ((bits & 0x7f800000) === 0x7f800000) return x;
  u[0] = (((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) << 16) >>> 0;
  return f[0] as number;
}

describe('precision', () => {
  it('rounds bf16 ties to even', () => {
    expect(roundBf16(1 + 2 ** -8)).toBe(1);
    expect(roundBf16(1 + 3 * 2 ** -8)).toBe(1 + 2 ** -6);
    expect(roundBf16(-(1 + 3 * 2 ** -8))).toBe(-(1 + 2 ** -6));
    expect(roundBf16(1 + 2 ** -8 + 2 ** -20)).toBe(1 + 2 ** -7);
  });

  it('matches the bf16 bit trick on float32 inputs', () => {
    const rng = new Rng(1);
    for (let i = 0; i < 20000; i++) {
      const x = Math.fround(rng.normal(0, 1) * 2 ** rng.int(-140, 120));
      expect(roundBf16(x)).toBe(bf16ViaBits(x));
    }
  });

  it('matches Math.fround for the f32 format, subnormals included', () => {
    const rng = new Rng(2);
    for (let i = 0; i < 20000; i++) {
      const x = rng.normal(0, 1) * 2 ** rng.int(-155, 130);
      expect(roundToFormat(x, F32_FORMAT)).toBe(Math.fround(x));
    }
    expect(roundToFormat(2 ** -150, F32_FORMAT)).toBe(Math.fround(2 ** -150));
    expect(roundToFormat(3 * 2 ** -150, F32_FORMAT)).toBe(Math.fround(3 * 2 ** -150));
  });

  it('handles f16 overflow and subnormals', () => {
    expect(roundF16(65504)).toBe(65504);
    expect(roundF16(65519.99)).toBe(65504);
    expect(roundF16(65520)).toBe(Infinity);
    expect(roundF16(-1e6)).toBe(-Infinity);
    expect(roundF16(2 ** -24)).toBe(2 ** -24);
    expect(roundF16(2 ** -25)).toBe(0);
    expect(roundF16(3 * 2 ** -26)).toBe(2 ** -24);
    expect(roundF16(0.1)).toBe(0.0999755859375);
    expect(Number.isNaN(roundF16(NaN))).toBe(true);
    expect(Object.is(roundF16(-0), -0)).toBe(true);
    expect(roundToFormat(1 / 3, BF16_FORMAT)).toBe(0.333984375);
    expect(roundToFormat(1 / 3, F16_FORMAT)).toBe(0.333251953125);
    expect(Array.from(roundTo([1 + 2 ** -8, 2], 'bf16'))).toEqual([1, 2]);
  });
});

describe('rng', () => {
  it('is reproducible and makes awkward matrices with ties', () => {
    const a = awkwardMatrix(new Rng(7), 32, 16);
    const b = awkwardMatrix(new Rng(7), 32, 16);
    expect(Array.from(a)).toEqual(Array.from(b));
    let ties = 0;
    for (let r = 0; r < 32; r++) {
      const row = Array.from(a.subarray(r * 16, (r + 1) * 16));
      ties += row.length - new Set(row).size;
      for (const v of row) expect(Math.fround(v)).toBe(v);
    }
    expect(ties).toBeGreaterThan(10);
    const n = float32Normals(new Rng(3), 5);
    expect(n.length).toBe(5);
  });
});

describe('gating: top-k scores', () => {
  it('breaks ties toward the lower expert id and keeps selection order', () => {
    const logits = [1, 3, 3, 2];
    const r = refGating(logits, 1, { experts: 4, k: 3 });
    expect(Array.from(r.ids)).toEqual([1, 2, 3]);
    const p = softmax(logits);
    expectClose(r.weights, [p[1] as number, p[2] as number, p[3] as number]);
    expect(Array.from(r.load)).toEqual([0, 1, 1, 1]);
    expect(r.margin[0]).toBeGreaterThan(0);
    const two = refGating(logits, 1, { experts: 4, k: 2, renormalize: true, routedScaling: 2 });
    expect(Array.from(two.ids)).toEqual([1, 2]);
    expectClose(two.weights, [1, 1]);
    expect(two.margin[0]).toBeGreaterThan(0);
    const tie = refGating([3, 3, 3, 1], 1, { experts: 4, k: 2 });
    expect(Array.from(tie.ids)).toEqual([0, 1]);
    // Exact ties resolve by id in any precision: they are not near-tie decisions.
    expect(tie.margin[0]).toBe(Infinity);
  });

  it('orders NaN last', () => {
    const r = refGating([NaN, 1, 2], 1, { experts: 3, k: 3, scoring: 'sigmoid' });
    expect(Array.from(r.ids)).toEqual([2, 1, 0]);
  });

  it('applies the logit bias and the scoring functions', () => {
    const r = refGating([0, 0, 0], 1, { experts: 3, k: 1, scoring: 'sigmoid', logitBias: [0.5, 2, -1] });
    expect(Array.from(r.ids)).toEqual([1]);
    expectClose(r.weights, [sigmoid(2)]);
    const s = refGating([1, -2], 1, { experts: 2, k: 2, scoring: 'sqrt-softplus' });
    expectClose(s.weights, [Math.sqrt(Math.log(1 + Math.E)), Math.sqrt(Math.log(1 + Math.exp(-2)))]);
  });

  it('uses the correction bias for selection only', () => {
    const r = refGating([2, 0, 1], 1, { experts: 3, k: 1, scoring: 'sigmoid', correctionBias: [0, 1, 0] });
    expect(Array.from(r.ids)).toEqual([1]);
    expectClose(r.weights, [0.5]);
  });

  it('keeps the best groups by top-2 sum with a correction bias (ties to the lower group)', () => {
    // Scores are all sigmoid(0) = 0.5; choice = 0.5 + bias.
    const bias = [0.875, 0, 0.5, 0.5, 0.75, 0.125, 0, 0];
    // Group top-2 sums: g0 1.875, g1 2.0, g2 1.875, g3 1.0 -> keep g1 and g0.
    const r = refGating(new Array(8).fill(0), 1, {
      experts: 8,
      k: 3,
      scoring: 'sigmoid',
      correctionBias: bias,
      nGroup: 4,
      topkGroup: 2,
    });
    expect(Array.from(r.ids)).toEqual([0, 2, 3]);
    expectClose(r.weights, [0.5, 0.5, 0.5]);
    expect(r.margin[0]).toBe(0.125); // the group tie g0 / g2 resolves by id; the nearest real decision is 0.125 apart
  });

  it('uses the group max without a correction bias and the top-2 sum with one', () => {
    const logits = [3, -3, 2, 2];
    const base: GatingOptions = { experts: 4, k: 2, scoring: 'sigmoid', nGroup: 2, topkGroup: 1 };
    expect(Array.from(refGating(logits, 1, base).ids)).toEqual([0, 1]);
    expect(Array.from(refGating(logits, 1, { ...base, correctionBias: [0, 0, 0, 0] }).ids)).toEqual([2, 3]);
  });

  it('renormalises over null-expert slots, then zeroes them', () => {
    const logits = [1, 0, 0, 2]; // experts 0..2, null expert column 3
    const p = softmax(logits);
    const r = refGating(logits, 1, { experts: 3, nullExperts: 1, k: 2, renormalize: true, routedScaling: 2 });
    expect(Array.from(r.ids)).toEqual([-1, 0]);
    expectClose(r.weights, [0, (2 * (p[0] as number)) / ((p[0] as number) + (p[3] as number))]);
    expect(Array.from(r.load)).toEqual([1, 0, 0]);
    const grouped = refGating([0, 0, 0, 0, 5], 1, {
      experts: 4,
      nullExperts: 1,
      k: 2,
      scoring: 'sigmoid',
      nGroup: 2,
      topkGroup: 1,
    });
    expect(Array.from(grouped.ids)).toEqual([-1, 0]);
  });
});

describe('gating: other selections', () => {
  it('topk-logits-softmax equals softmax -> topk -> renormalise', () => {
    const rng = new Rng(11);
    const logits = awkwardMatrix(rng, 20, 9);
    const a = refGating(logits, 20, { experts: 9, k: 3, selection: 'topk-logits-softmax' });
    const b = refGating(logits, 20, { experts: 9, k: 3, renormalize: true });
    expect(Array.from(a.ids)).toEqual(Array.from(b.ids));
    expectClose(a.weights, b.weights);
  });

  it('top-p takes experts until the running sum reaches topP, at most k', () => {
    const logits = [0.5, 0.25, 0.125, 0.125].map(Math.log);
    const run = (topP: number, k: number): ReturnType<typeof refGating> =>
      refGating(logits, 1, { experts: 4, k, selection: 'top-p', topP });
    expect(Array.from(run(0.7, 4).ids)).toEqual([0, 1, -1, -1]);
    expectClose(run(0.7, 4).weights, [0.5, 0.25, 0, 0]);
    expect(Array.from(run(0.8, 4).ids)).toEqual([0, 1, 2, -1]);
    expect(Array.from(run(0.9, 2).ids)).toEqual([0, 1]);
    expect(Array.from(run(0.3, 3).ids)).toEqual([0, -1, -1]);
    expect(Array.from(run(1, 4).ids)).toEqual([0, 1, 2, 3]);
    const renorm = refGating(logits, 1, { experts: 4, k: 4, selection: 'top-p', topP: 0.7, renormalize: true });
    expectClose(renorm.weights, [2 / 3, 1 / 3, 0, 0]);
  });

  it('expert-choice picks the top-C tokens per expert, ties to the lower token', () => {
    const logits = [1, 0, 0, 1, 2, 0, 0, 0];
    const r = refGating(logits, 4, { experts: 2, k: 2, selection: 'expert-choice' });
    expect(r.slots).toBe(2);
    expect(Array.from(r.ids)).toEqual([0, -1, -1, 1, 0, -1, -1, 1]);
    expectClose(r.weights, [sigmoid(1), 0, 0, sigmoid(1), sigmoid(2), 0, 0, 0.5]);
    expect(Array.from(r.load)).toEqual([2, 2]);
    const ties = refGating(new Array(8).fill(0), 4, { experts: 2, k: 2, selection: 'expert-choice', routedScaling: 2 });
    expect(Array.from(ties.ids)).toEqual([0, 1, 0, 1, -1, -1, -1, -1]);
    expectClose(ties.weights, [1, 1, 1, 1, 0, 0, 0, 0]);
    expect(expertChoiceCapacity(4, 2, 1.5, 1)).toBe(3);
    expect(expertChoiceCapacity(4, 2, 10, 1)).toBe(4);
    expect(expertChoiceCapacity(10, 4, 1, 2)).toBe(5);
    expect(expertChoiceCapacity(10, 4, 0, 2)).toBe(0);
  });

  it('Sinkhorn with 0 iterations equals softmax top-k', () => {
    const rng = new Rng(5);
    const logits = awkwardMatrix(rng, 24, 10);
    const opts: GatingOptions = { experts: 8, nullExperts: 2, k: 3, renormalize: true, routedScaling: 1.5 };
    const a = refGating(logits, 24, { ...opts, selection: 'sinkhorn', sinkhornIters: 0 });
    const b = refGating(logits, 24, opts);
    expect(Array.from(a.ids)).toEqual(Array.from(b.ids));
    expectClose(a.weights, b.weights);
  });

  it('Sinkhorn iterations balance the columns', () => {
    const rng = new Rng(9);
    const x = float32Normals(rng, 6 * 3);
    const p = sinkhornMatrix(x, 6, 3, 300);
    for (let t = 0; t < 6; t++) expect(p[t * 3]! + p[t * 3 + 1]! + p[t * 3 + 2]!).toBeCloseTo(1, 12);
    for (let j = 0; j < 3; j++) {
      let s = 0;
      for (let t = 0; t < 6; t++) s += p[t * 3 + j]!;
      expect(s).toBeCloseTo(2, 8);
    }
    // The balanced selection differs from plain softmax top-k for a skewed input.
    // Token 2 moves from the overloaded expert 0 to the idle expert 2.
    const skew = [5, 0, 0, 5, 1, 0, 5, 0, 1, 0, 1, 0];
    const balanced = refGating(skew, 4, { experts: 3, k: 1, selection: 'sinkhorn', sinkhornIters: 50 });
    const plain = refGating(skew, 4, { experts: 3, k: 1 });
    expect(Array.from(plain.ids)).toEqual([0, 0, 0, 1]);
    expect(Array.from(balanced.ids)).toEqual([0, 0, 2, 1]);
    expectClose(balanced.weights, [0, 0, 0, 0].map((_, t) => softmax(skew.slice(t * 3, t * 3 + 3))[balanced.ids[t]!]!));
  });

  it('canonicalSlots sorts slots by id with unused slots last', () => {
    const c = canonicalSlots([3, -1, 1, 2, 0, -1], [0.3, 0, 0.1, 0.2, 0.5, 0], 2, 3);
    expect(Array.from(c.ids)).toEqual([1, 3, -1, 0, 2, -1]);
    expect(Array.from(c.weights)).toEqual([0.1, 0.3, 0, 0.5, 0.2, 0]);
  });
});

describe('dispatch', () => {
  const ids = [1, 0, 1, -1, 0, 1];
  it('groups pairs by expert, pads to the block size', () => {
    const d = refDispatch(ids, 3, 2, 3, 2);
    expect(Array.from(d.counts)).toEqual([2, 3, 0]);
    expect(Array.from(d.offsets)).toEqual([0, 2, 6, 6]);
    expect(Array.from(d.sortedPairs)).toEqual([1, 4, 0, 2, 5, -1]);
    expect(Array.from(d.pairToRow)).toEqual([2, 0, 3, -1, 1, 4]);
    expect(d.dropped).toBe(0);
    expect(d.rows).toBe(6);
    const x = [10, 11, 20, 21, 30, 31];
    expect(Array.from(gatherRows(x, 2, d, 2))).toEqual([10, 11, 30, 31, 10, 11, 20, 21, 30, 31, 0, 0]);
  });

  it('drops the pairs past the capacity', () => {
    const d = refDispatch(ids, 3, 2, 3, 2, 2);
    expect(Array.from(d.counts)).toEqual([2, 2, 0]);
    expect(Array.from(d.offsets)).toEqual([0, 2, 4, 4]);
    expect(Array.from(d.pairToRow)).toEqual([2, 0, 3, -1, 1, -1]);
    expect(d.dropped).toBe(1);
    expect(Array.from(d.droppedPerExpert)).toEqual([0, 1, 0]);
    const zero = refDispatch(ids, 3, 2, 3, 1, 0);
    expect(zero.rows).toBe(0);
    expect(zero.dropped).toBe(5);
  });
});

describe('activations', () => {
  it('match known values', () => {
    expect(silu(0)).toBe(0);
    expect(silu(1)).toBeCloseTo(0.7310585786300049, 15);
    expect(gelu(1)).toBeCloseTo(0.8413447460685429, 15);
    expect(gelu(-1)).toBeCloseTo(-0.15865525393145707, 15);
    expect(gelu(3)).toBeCloseTo(2.99595030590511, 14);
    expect(gelu(-5) / -1.4332578593959731e-6).toBeCloseTo(1, 12);
    expect(geluTanh(1)).toBeCloseTo(0.8411919906082768, 15);
    expect(relu(-2)).toBe(0);
    expect(relu(2)).toBe(2);
    expect(erf(0.5)).toBeCloseTo(0.5204998778130465, 15);
    expect(erf(2)).toBeCloseTo(0.9953222650189527, 15);
    expect(erf(-2)).toBeCloseTo(-0.9953222650189527, 15);
    expect(erf(1.999)).toBeCloseTo(0.9953015566513705, 14);
    const rel = (a: number, b: number): number => Math.abs(a / b - 1);
    expect(rel(erfc(2), 0.004677734981047265)).toBeLessThan(1e-13);
    expect(rel(erfc(1.999), 0.004698443348629488)).toBeLessThan(1e-12);
    expect(rel(erfc(2.5), 0.0004069520174449589)).toBeLessThan(1e-13);
    expect(rel(erfc(3), 2.2090496998585438e-5)).toBeLessThan(1e-13);
    expect(rel(erfc(5), 1.5374597944280351e-12)).toBeLessThan(1e-13);
    expect(rel(erfc(10), 2.088487583762545e-45)).toBeLessThan(1e-13);
    expect(rel(erfc(0.1), 0.8875370839817152)).toBeLessThan(1e-14);
  });

  it('clamps the gpt-oss SwiGLU', () => {
    const a = Math.fround(1.702);
    expect(gptOssSwiglu(10, -10, a, 7)).toBe(gptOssSwiglu(7, -7, a, 7));
    expect(gptOssSwiglu(7, -7, a, 7)).toBeCloseTo(7 * sigmoid(a * 7) * -6, 14);
    expect(gptOssSwiglu(-10, 0, a, 7)).toBeCloseTo(-10 * sigmoid(-10 * a), 18);
    expect(gptOssSwiglu(1, 20, a, 7)).toBeCloseTo(sigmoid(a) * 8, 14);
  });

  it('split GLU columns as documented', () => {
    const h = [0.5, -1, 2, 3];
    expectClose(applyActivation('swiglu', h), [silu(0.5) * 2, silu(-1) * 3]);
    expectClose(applyActivation('geglu', h), [gelu(0.5) * 2, gelu(-1) * 3]);
    expectClose(applyActivation('swiglu-interleaved', h), [silu(0.5) * -1, silu(2) * 3]);
    expectClose(applyActivation('gpt-oss-swiglu', h), [gptOssSwiglu(0.5, -1, Math.fround(1.702), 7), gptOssSwiglu(2, 3, Math.fround(1.702), 7)]);
    expectClose(applyActivation('swiglu', [0.5, -1], [2, 3]), [silu(0.5) * 2, silu(-1) * 3]);
    expectClose(applyActivation('gelu-tanh', h), h.map(geluTanh));
    expectClose(applyActivation('none', h), h);
  });
});

describe('grouped GEMM', () => {
  it('applies per-expert weights, bias, activation and row scale in both layouts', () => {
    // 3 rows, K = 2, N = 4; expert 0 has rows [0, 1), expert 1 rows [1, 3).
    const x = [1, 2, 3, -1, 0.5, 0.25];
    const wEnk = [
      // expert 0: [N=4][K=2]
      1, 0, 0, 1, 1, 1, 2, -1,
      // expert 1
      0.5, 0, 0, -1, 1, -1, 0, 2,
    ];
    const wEkn = new Array<number>(16);
    for (let e = 0; e < 2; e++) for (let n = 0; n < 4; n++) for (let k = 0; k < 2; k++) wEkn[(e * 2 + k) * 4 + n] = wEnk[(e * 4 + n) * 2 + k]!;
    const bias = [0, 0, 0, 1, 0.5, 0, 0, 0];
    const base = { x, offsets: [0, 1, 3], rows: 3, experts: 2, n: 4, k: 2, bias, activation: 'swiglu' as const, rowScale: [1, 2, 0.5] };
    const a = refGroupedGemm({ ...base, w: wEnk, layout: 'enk' });
    const b = refGroupedGemm({ ...base, w: wEkn, layout: 'ekn' });
    expect(a.nOut).toBe(2);
    // Row 0, expert 0: h = [1, 2, 3, 0 + 1] -> [silu(1) * 3, silu(2) * 1].
    // Row 1, expert 1: h = [1.5 + 0.5, 1, 4, -2] -> 2 * [silu(2) * 4, silu(1) * -2].
    // Row 2, expert 1: h = [0.25 + 0.5, -0.25, 0.25, 0.5] -> 0.5 * [silu(0.75) * 0.25, silu(-0.25) * 0.5].
    const expected = [silu(1) * 3, silu(2), 2 * silu(2) * 4, 2 * silu(1) * -2, 0.5 * silu(0.75) * 0.25, 0.5 * silu(-0.25) * 0.5];
    expectClose(a.y, expected);
    expectClose(b.y, expected);
    const none = refGroupedGemm({ x, offsets: [0, 1, 3], rows: 3, experts: 2, n: 4, k: 2, w: wEnk });
    expectClose(none.y.subarray(0, 4), [1, 2, 3, 0]);
  });

  it('takes the up projection from wUp', () => {
    const r = refGroupedGemm({
      x: [2],
      offsets: [0, 1],
      rows: 1,
      experts: 1,
      n: 2,
      k: 1,
      w: [1, -1],
      wUp: [3, 4],
      bias: [0.5, 0],
      biasUp: [0, 1],
      activation: 'geglu',
    });
    expectClose(r.y, [gelu(2.5) * 6, gelu(-2) * 9]);
  });
});

describe('combine', () => {
  it('sums weighted rows and the gated shared output', () => {
    const y = [1, 2, 10, 20, 100, 200];
    const out = refCombine({
      y,
      pairToRow: [2, 0, -1, 1],
      weights: [0.5, 2, 7, 1],
      tokens: 2,
      k: 2,
      hidden: 2,
      shared: [1, 1, 2, 2],
      x: [0, 0, 1, 1],
      sharedGateWeight: [1, 1],
    });
    expectClose(out, [50 + 2 + 0.5, 100 + 4 + 0.5, 10 + 2 * sigmoid(2), 20 + 2 * sigmoid(2)]);
  });
});

/** Random MoE weights for the layer tests. */
function randomLayer(rng: Rng, E: number, H: number, I: number) {
  const gate = float32Normals(rng, E * I * H, 0.3);
  const up = float32Normals(rng, E * I * H, 0.3);
  const down = float32Normals(rng, E * H * I, 0.3);
  // Fused [E, 2I, H] = per expert [gate; up].
  const w1 = new Float64Array(E * 2 * I * H);
  for (let e = 0; e < E; e++) {
    w1.set(gate.subarray(e * I * H, (e + 1) * I * H), e * 2 * I * H);
    w1.set(up.subarray(e * I * H, (e + 1) * I * H), e * 2 * I * H + I * H);
  }
  return { gate, up, down, w1 };
}

describe('MoE layer', () => {
  it('direct per-token evaluation equals dispatch + grouped GEMM + combine', () => {
    const rng = new Rng(21);
    const T = 12;
    const H = 6;
    const I = 4;
    const E = 5;
    const k = 2;
    const x = float32Normals(rng, T * H);
    const routerWeight = float32Normals(rng, E * H);
    const { w1, down } = randomLayer(rng, E, H, I);
    const b1 = float32Normals(rng, E * 2 * I, 0.1);
    const b2 = float32Normals(rng, E * H, 0.1);
    const shared = {
      intermediate: 3,
      gate: float32Normals(rng, 3 * H),
      up: float32Normals(rng, 3 * H),
      down: float32Normals(rng, H * 3),
      gateWeight: float32Normals(rng, H),
    };
    const gating: GatingOptions = { experts: E, k, renormalize: true };
    const capacity = 4;
    const layer = refMoELayer(x, T, H, {
      routerWeight,
      gating,
      experts: { activation: 'swiglu', w1, n1: 2 * I, b1, w2: down, b2 },
      shared,
      capacity,
    });

    const g = refGating(layer.logits, T, gating);
    const d = refDispatch(g.ids, T, k, E, 4, capacity);
    const xRows = gatherRows(x, H, d, k);
    const hid = refGroupedGemm({ x: xRows, offsets: d.offsets, rows: d.rows, experts: E, n: 2 * I, k: H, w: w1, bias: b1, activation: 'swiglu' });
    const yRows = refGroupedGemm({ x: hid.y, offsets: d.offsets, rows: d.rows, experts: E, n: H, k: I, w: down, bias: b2 });
    const sharedOut = refMoELayer(x, T, H, {
      logits: layer.logits,
      gating,
      experts: { activation: 'swiglu', w1, n1: 2 * I, w2: down },
      shared,
      forced: { ids: new Int32Array(T * k).fill(-1), k },
    }).shared;
    const out = refCombine({ y: yRows.y, pairToRow: d.pairToRow, weights: g.weights, tokens: T, k, hidden: H, shared: sharedOut });
    expect(d.dropped).toBeGreaterThan(0);
    expectClose(layer.out, out, 1e-12);
    let kept = 0;
    for (const v of layer.kept) kept += v;
    expect(kept).toBe(T * k - d.dropped);
  });

  it('forced routing without weights uses the softmax probability of each id', () => {
    const rng = new Rng(4);
    const T = 3;
    const H = 4;
    const E = 3;
    const x = float32Normals(rng, T * H);
    const routerWeight = float32Normals(rng, (E + 1) * H);
    const { w1, down } = randomLayer(rng, E, H, 2);
    const experts = { activation: 'swiglu' as const, w1, n1: 4, w2: down };
    const forcedIds = [2, -1, 0, 1, 1, 0];
    const r = refMoELayer(x, T, H, { routerWeight, gating: { experts: E, nullExperts: 1, k: 2 }, experts, forced: { ids: forcedIds, k: 2 } });
    for (let t = 0; t < T; t++) {
      const p = softmax(r.logits.subarray(t * (E + 1), (t + 1) * (E + 1)));
      for (let s = 0; s < 2; s++) {
        const id = forcedIds[t * 2 + s]!;
        expect(r.weights[t * 2 + s]).toBe(id < 0 ? 0 : p[id]);
      }
    }
    expect(Array.from(r.load)).toEqual([2, 2, 1]);
    const withWeights = refMoELayer(x, T, H, {
      routerWeight,
      gating: { experts: E, nullExperts: 1, k: 2 },
      experts,
      forced: { ids: forcedIds, k: 2, weights: [1, 0, 0.5, 0.5, 1, 1] },
    });
    expect(Array.from(withWeights.weights)).toEqual([1, 0, 0.5, 0.5, 1, 1]);
  });

  it('handles expert-choice routing ([T, E] slots)', () => {
    const rng = new Rng(8);
    const T = 6;
    const H = 3;
    const E = 3;
    const x = float32Normals(rng, T * H);
    const routerWeight = float32Normals(rng, E * H);
    const { w1, down } = randomLayer(rng, E, H, 2);
    const r = refMoELayer(x, T, H, {
      routerWeight,
      gating: { experts: E, k: E, selection: 'expert-choice', choiceK: 1 },
      experts: { activation: 'swiglu', w1, n1: 4, w2: down },
    });
    expect(r.slots).toBe(E);
    expect(Array.from(r.load)).toEqual([2, 2, 2]);
  });
});

describe('family references', () => {
  const T = 40;

  function expectSameRouting(spec: FamilyConfig, logits: ArrayLike<number>, tol = 1e-13): void {
    const fam = familyRouting(logits, T, spec);
    const gen = refGating(logits, T, familyGatingOptions(spec));
    expect(Array.from(gen.ids)).toEqual(Array.from(fam.ids));
    expectClose(gen.weights, fam.weights, tol);
  }

  it('mixtral, qwen2_moe, qwen3_moe and olmoe agree with the generic gating', () => {
    const rng = new Rng(31);
    const logits = awkwardMatrix(rng, T, 8);
    expectSameRouting({ family: 'mixtral', config: { num_local_experts: 8, num_experts_per_tok: 2 } }, logits);
    for (const norm of [false, true]) {
      expectSameRouting({ family: 'qwen2_moe', config: { num_experts: 8, num_experts_per_tok: 3, norm_topk_prob: norm } }, logits);
      expectSameRouting({ family: 'qwen3_moe', config: { num_experts: 8, num_experts_per_tok: 4, norm_topk_prob: norm } }, logits);
      expectSameRouting({ family: 'olmoe', config: { num_experts: 8, num_experts_per_tok: 2, norm_topk_prob: norm } }, logits);
    }
    // Mixtral's order equals top-k over logits then softmax.
    const m = mixtralRouting(logits, T, { num_local_experts: 8 });
    const g = refGating(logits, T, { experts: 8, k: 2, selection: 'topk-logits-softmax' });
    expect(Array.from(g.ids)).toEqual(Array.from(m.ids));
    expectClose(g.weights, m.weights);
  });

  it('deepseek_v2 agrees for greedy and group_limited_greedy', () => {
    const rng = new Rng(32);
    const logits = awkwardMatrix(rng, T, 16);
    const base = { n_routed_experts: 16, num_experts_per_tok: 3, routed_scaling_factor: 16 };
    expectSameRouting({ family: 'deepseek_v2', config: base }, logits);
    expectSameRouting({ family: 'deepseek_v2', config: { ...base, topk_method: 'group_limited_greedy', n_group: 4, topk_group: 2 } }, logits);
    // norm_topk_prob is ignored by transformers, honoured by the remote-code semantics.
    const withNorm = { ...base, norm_topk_prob: true };
    const hf = deepseekV2Routing(logits, T, withNorm);
    const plain = deepseekV2Routing(logits, T, base);
    expectClose(hf.weights, plain.weights, 0);
    expectSameRouting({ family: 'deepseek_v2', config: withNorm, semantics: 'deepseek-remote-code' }, logits);
    const remote = deepseekV2Routing(logits, T, withNorm, 'deepseek-remote-code');
    for (let t = 0; t < T; t++) expect(remote.weights[t * 3]! + remote.weights[t * 3 + 1]! + remote.weights[t * 3 + 2]!).toBeCloseTo(1, 12);
  });

  it('deepseek_v3 agrees when the biased scores are positive', () => {
    const rng = new Rng(33);
    const logits = awkwardMatrix(rng, T, 16);
    const bias = Float64Array.from({ length: 16 }, () => Math.fround(rng.uniform(0, 0.5)));
    const config = { n_routed_experts: 16, num_experts_per_tok: 4, n_group: 4, topk_group: 2, routed_scaling_factor: 2.5, e_score_correction_bias: bias };
    expectSameRouting({ family: 'deepseek_v3', config }, logits);
    expectSameRouting({ family: 'deepseek_v3', config: { ...config, e_score_correction_bias: undefined, norm_topk_prob: false } }, logits);
    expectSameRouting({ family: 'deepseek_v3', config: { ...config, n_group: 1, topk_group: 1 } }, logits);
  });

  it('deepseek_v3 masks dropped groups with 0.0, unlike the generic -inf', () => {
    const config = { n_routed_experts: 4, num_experts_per_tok: 2, n_group: 2, topk_group: 1, e_score_correction_bias: [-0.75, -0.75, -1, -1] };
    const hf = deepseekV3Routing([0, 0, 0, 0], 1, config);
    expect(Array.from(hf.ids)).toEqual([2, 3]);
    const gen = refGating([0, 0, 0, 0], 1, familyGatingOptions({ family: 'deepseek_v3', config }));
    expect(Array.from(gen.ids)).toEqual([0, 1]);
  });

  it('gpt_oss agrees with topk-logits-softmax and a logit bias', () => {
    const rng = new Rng(34);
    const logits = awkwardMatrix(rng, T, 12);
    const bias = Float64Array.from({ length: 12 }, () => Math.fround(rng.normal(0, 0.5)));
    const biased = logits.map((v, i) => v + bias[i % 12]!);
    const fam = familyRouting(biased, T, { family: 'gpt_oss', config: { num_local_experts: 12, num_experts_per_tok: 4 } });
    const gen = refGating(logits, T, { ...familyGatingOptions({ family: 'gpt_oss', config: { num_local_experts: 12, num_experts_per_tok: 4 } }), logitBias: bias });
    expect(Array.from(gen.ids)).toEqual(Array.from(fam.ids));
    expectClose(gen.weights, fam.weights);
  });

  it('qwen2_moe and deepseek_v3 blocks equal the generic layer', () => {
    const rng = new Rng(35);
    const Tn = 7;
    const H = 5;
    const I = 3;
    const E = 8;
    const x = float32Normals(rng, Tn * H);
    const routerWeight = float32Normals(rng, E * H);
    const { gate, up, down, w1 } = randomLayer(rng, E, H, I);
    const sharedMlp = { intermediate: 4, gate: float32Normals(rng, 4 * H), up: float32Normals(rng, 4 * H), down: float32Normals(rng, H * 4) };
    const sharedExpertGate = float32Normals(rng, H);
    const experts = { activation: 'swiglu' as const, w1, n1: 2 * I, w2: down };

    const qwenSpec: FamilyConfig = { family: 'qwen2_moe', config: { num_experts: E, num_experts_per_tok: 2, norm_topk_prob: true } };
    const qwen = hfSwigluMoeBlock(x, Tn, H, qwenSpec, routerWeight, { intermediate: I, gate, up, down }, { mlp: sharedMlp, sharedExpertGate });
    const qwenRef = refMoELayer(x, Tn, H, {
      routerWeight,
      gating: familyGatingOptions(qwenSpec),
      experts,
      shared: { ...sharedMlp, gateWeight: sharedExpertGate },
    });
    expectClose(qwenRef.out, qwen.out, 1e-12);

    const bias = Float64Array.from({ length: E }, () => Math.fround(rng.uniform(0, 0.25)));
    const dsSpec: FamilyConfig = {
      family: 'deepseek_v3',
      config: { n_routed_experts: E, num_experts_per_tok: 3, n_group: 4, topk_group: 2, routed_scaling_factor: 2.5, e_score_correction_bias: bias },
    };
    const ds = hfSwigluMoeBlock(x, Tn, H, dsSpec, routerWeight, { intermediate: I, gate, up, down }, { mlp: sharedMlp });
    const dsRef = refMoELayer(x, Tn, H, { routerWeight, gating: familyGatingOptions(dsSpec), experts, shared: sharedMlp });
    expectClose(dsRef.out, ds.out, 1e-12);
  });

  it('gpt_oss block equals the generic layer with the clamped SwiGLU and [E, K, N] weights', () => {
    const rng = new Rng(36);
    const Tn = 6;
    const H = 5;
    const I = 3;
    const E = 6;
    const x = float32Normals(rng, Tn * H, 2);
    const router = { weight: float32Normals(rng, E * H), bias: float32Normals(rng, E) };
    const experts = {
      intermediate: I,
      gate_up_proj: float32Normals(rng, E * H * 2 * I, 2),
      gate_up_proj_bias: float32Normals(rng, E * 2 * I),
      down_proj: float32Normals(rng, E * I * H),
      down_proj_bias: float32Normals(rng, E * H),
    };
    const config = { num_local_experts: E, num_experts_per_tok: 2, swiglu_alpha: Math.fround(1.702) };
    const block = gptOssMlpBlock(x, Tn, H, router, experts, config);
    const ref = refMoELayer(x, Tn, H, {
      routerWeight: router.weight,
      routerBias: router.bias,
      gating: familyGatingOptions({ family: 'gpt_oss', config }),
      experts: {
        activation: 'gpt-oss-swiglu',
        layout: 'ekn',
        w1: experts.gate_up_proj,
        n1: 2 * I,
        b1: experts.gate_up_proj_bias,
        w2: experts.down_proj,
        b2: experts.down_proj_bias,
      },
    });
    expectClose(ref.out, block.out, 1e-12);
    // The clamp is exercised by these inputs.
    let clamped = false;
    for (let t = 0; t < Tn && !clamped; t++) {
      for (let e = 0; e < E && !clamped; e++) {
        for (let n = 0; n < 2 * I; n++) {
          let acc = experts.gate_up_proj_bias[e * 2 * I + n]!;
          for (let h = 0; h < H; h++) acc += x[t * H + h]! * experts.gate_up_proj[(e * H + h) * 2 * I + n]!;
          if (Math.abs(acc) > 7) clamped = true;
        }
      }
    }
    expect(clamped).toBe(true);
  });
});
