/** dispatch(), groupedGemm() and combine() against the float64 reference, at awkward sizes. */
import { Tensor, combine, dispatch, groupedGemm } from '../../lib';
import type { Activation, WeightLayout } from '../../lib';
import { testSeed } from '../helpers';
import { Rng, activationIsGlu, refCombine, refDispatch, refGroupedGemm, roundTo } from '../reference';

const seed = testSeed('pipeline');

function randomIds(rng: Rng, T: number, k: number, E: number, skew: boolean, skipFraction = 0.1): Int32Array {
  const ids = new Int32Array(T * k).fill(-1);
  for (let t = 0; t < T; t++) {
    const used = new Set<number>();
    for (let s = 0; s < k; s++) {
      if (rng.uniform() < skipFraction) continue;
      let e = skew && rng.uniform() < 0.7 ? 0 : rng.int(0, E);
      while (used.has(e) && used.size < E) e = (e + 1) % E;
      if (used.has(e)) continue;
      used.add(e);
      ids[t * k + s] = e;
    }
  }
  return ids;
}

describe('dispatch() matches the reference exactly', () => {
  test('every combination of tokens, k, experts, block size and capacity', async () => {
    const rng = new Rng(seed);
    for (const T of [1, 3, 17, 256]) {
      for (const E of [8, 60, 64, 257]) {
        for (const k of [1, 2, 8]) {
          if (k > E) continue;
          for (const blockSize of [1, 16, 64]) {
            for (const capacity of [-1, 0, 3, Math.ceil((T * k) / E)]) {
              const ids = randomIds(rng, T, k, E, rng.uniform() < 0.3);
              const ref = refDispatch(ids, T, k, E, blockSize, capacity);
              const got = await dispatch(Tensor.from(ids, [T, k]), { experts: E, blockSize, ...(capacity >= 0 ? { capacity } : {}) });
              const where = `T=${T} E=${E} k=${k} block=${blockSize} capacity=${capacity} seed=${seed}`;
              expect([where, Array.from(got.counts.toArraySync() as Int32Array)]).toEqual([where, Array.from(ref.counts)]);
              expect([where, Array.from(got.offsets.toArraySync() as Int32Array)]).toEqual([where, Array.from(ref.offsets)]);
              expect([where, Array.from(got.sortedPairs.toArraySync() as Int32Array)]).toEqual([where, Array.from(ref.sortedPairs)]);
              expect([where, Array.from(got.pairToRow.toArraySync() as Int32Array)]).toEqual([where, Array.from(ref.pairToRow)]);
              expect([where, got.dropped]).toEqual([where, ref.dropped]);
            }
          }
        }
      }
    }
  });

  test('out-of-range ids are refused with the position', async () => {
    await expect(dispatch(Tensor.from(new Int32Array([0, 8]), [1, 2]), { experts: 8 })).rejects.toThrow(/expert id 8 at pair 1 is out of range for 8 experts/);
    await expect(dispatch(Tensor.from(new Int32Array([0, 1]), [1, 2]), { experts: 8, blockSize: 0 })).rejects.toThrow(
      new RangeError('Expected an integer between 1 and 4096 for options.blockSize but received 0 of type number'),
    );
  });
});

const ACTS: Activation[] = ['none', 'swiglu', 'swiglu-interleaved', 'gpt-oss-swiglu', 'geglu', 'gelu', 'relu', 'silu', 'gelu-tanh'];

describe('groupedGemm() matches the reference within float32 accumulation error', () => {
  const cases: { name: string; dtype: 'f32' | 'bf16' | 'f16'; layout: WeightLayout; sep?: boolean; bias?: boolean; upBiasOnly?: boolean; rowScale?: boolean }[] = [
    { name: 'f32 [E,N,K]', dtype: 'f32', layout: 'enk' },
    { name: 'bf16 [E,N,K] with bias', dtype: 'bf16', layout: 'enk', bias: true },
    { name: 'f16 [E,K,N] with bias and row scale', dtype: 'f16', layout: 'ekn', bias: true, rowScale: true },
    { name: 'f32 [E,K,N]', dtype: 'f32', layout: 'ekn' },
    { name: 'bf16 [E,K,N]', dtype: 'bf16', layout: 'ekn' },
    { name: 'bf16 separate gate and up with biases', dtype: 'bf16', layout: 'enk', sep: true, bias: true },
    { name: 'f32 separate gate and up with only an up bias', dtype: 'f32', layout: 'enk', sep: true, upBiasOnly: true },
    { name: 'bf16 [E,K,N] separate gate and up with biases', dtype: 'bf16', layout: 'ekn', sep: true, bias: true },
  ];
  for (const c of cases) {
    test(c.name, async () => {
      const rng = new Rng(seed ^ 0x5bd1);
      // Shapes 5 and 6 give every expert decode-sized groups (1..4 rows) with K long
      // enough that the [E, K, N] decode path splits K into slices (>= 128 rows each) and
      // sums them (3 and 4 slices on two threads; test/cpu-paths.test.ts reruns this file
      // with 13 threads: up to 7 and 4). The last two put group sizes on both sides of
      // the few-rows paths' limits ([E, N, K] dot products, AVX-512: up to 24 rows in
      // passes of at most 6; AVX2: up to 12 in passes of at most 5. [E, K, N] register
      // sums, from 5 rows, AVX-512: up to 24 in passes of at most 12; AVX2: 5..6), so
      // passes of unequal size and the hand-over to the next path all run; the last
      // shape's K spans three of the [E, K, N] path's K blocks (256 rows).
      const shapes: [number, number, number, number[] | null][] = [
        [1, 72, 80, null], [4, 200, 2 * 40, null], [7, 33, 2 * 17, null], [3, 1, 2, null],
        [3, 1000, 2 * 40, [1, 4, 3]], [2, 520, 2 * 24 + 2, [2, 1]],
        [6, 72, 2 * 40, [7, 13, 24, 25, 12, 8]], [5, 40, 2 * 17, [9, 17, 11, 5, 6]], [3, 600, 2 * 20, [5, 16, 13]],
      ];
      for (const [E, K, N, fixed] of shapes) {
        for (const act of c.sep ? (['swiglu', 'geglu'] as Activation[]) : ACTS) {
          if (!c.sep && activationIsGlu(act) && N % 2 !== 0) continue;
          // Skewed groups: one expert gets most rows, one is empty.
          const sizes = fixed ?? Array.from({ length: E }, (_, e) => (e === 0 ? rng.int(0, 40) : e === 1 ? 0 : rng.int(0, 9)));
          const offsets = new Int32Array(E + 1);
          for (let e = 0; e < E; e++) offsets[e + 1] = offsets[e] + sizes[e];
          const rows = offsets[E] + 2; // two rows no expert covers
          const x = roundTo(Float64Array.from({ length: rows * K }, () => rng.normal()), 'f32');
          const round = (v: Float64Array) => (c.dtype === 'f32' ? roundTo(v, 'f32') : roundTo(v, c.dtype));
          const w = round(Float64Array.from({ length: E * N * K }, () => rng.normal(0, 1 / Math.sqrt(K))));
          const wUp = c.sep ? round(Float64Array.from({ length: E * N * K }, () => rng.normal(0, 1 / Math.sqrt(K)))) : undefined;
          const bias = c.bias ? round(Float64Array.from({ length: E * N }, () => rng.normal(0, 0.5))) : undefined;
          const biasUp = (c.bias || c.upBiasOnly) && c.sep ? round(Float64Array.from({ length: E * N }, () => rng.normal(0, 0.5))) : undefined;
          const rowScale = c.rowScale ? roundTo(Float64Array.from({ length: rows }, () => rng.uniform(0, 2)), 'f32') : undefined;
          const ref = refGroupedGemm({ x, offsets, rows, experts: E, n: N, k: K, w, layout: c.layout, wUp, bias, biasUp, activation: act, rowScale });
          // Magnitude of each pre-activation output, for the error bound.
          const abs = (v?: Float64Array) => (v ? v.map(Math.abs) : undefined);
          const mag = refGroupedGemm({ x: abs(x) as Float64Array, offsets, rows, experts: E, n: N, k: K, w: abs(w) as Float64Array, layout: c.layout, bias: abs(bias), rowScale: abs(rowScale) }).y;
          const magUp = wUp ? refGroupedGemm({ x: abs(x) as Float64Array, offsets, rows, experts: E, n: N, k: K, w: abs(wUp) as Float64Array, layout: c.layout, bias: abs(biasUp), rowScale: abs(rowScale) }).y : undefined;
          const toTensor = (v: Float64Array, shape: number[]) => Tensor.from(Float32Array.from(v), shape, c.dtype);
          const wShape = c.layout === 'enk' ? [E, N, K] : [E, K, N];
          const tensors = {
            x: Tensor.from(Float32Array.from(x), [rows, K]),
            offsets: Tensor.from(offsets, [E + 1]),
            w: toTensor(w, wShape),
            wUp: wUp ? toTensor(wUp, wShape) : undefined,
            bias: bias ? toTensor(bias, [E, N]) : undefined,
            biasUp: biasUp ? toTensor(biasUp, [E, N]) : undefined,
            rowScale: rowScale ? Tensor.from(Float32Array.from(rowScale), [rows]) : undefined,
          };
          const y = await groupedGemm(tensors.x, tensors.offsets, tensors.w, {
            layout: c.layout,
            activation: act,
            ...(tensors.wUp ? { wUp: tensors.wUp } : {}),
            ...(tensors.bias ? { bias: tensors.bias } : {}),
            ...(tensors.biasUp ? { biasUp: tensors.biasUp } : {}),
            ...(tensors.rowScale ? { rowScale: tensors.rowScale } : {}),
          });
          const got = y.toFloat32Sync();
          const nOut = ref.nOut;
          expect(y.shape).toEqual([rows, nOut]);
          // Bound: float32 accumulation error u·K·Σ|x||w| on each pre-activation value, carried
          // through the activation (derivatives ≤ ~1.1, products scale by the other factor).
          const u = 2 ** -24;
          for (let r = 0; r < offsets[E]; r++) {
            for (let j = 0; j < nOut; j++) {
              let gCol = j;
              let uCol = -1;
              if (!c.sep && activationIsGlu(act)) {
                const interleaved = act === 'swiglu-interleaved' || act === 'gpt-oss-swiglu';
                gCol = interleaved ? 2 * j : j;
                uCol = interleaved ? 2 * j + 1 : j + N / 2;
              }
              const eg = 2 * u * (K + 2) * mag[r * N + gCol];
              let bound = eg * 1.2;
              if (c.sep) bound = eg * 1.2 * (1 + (magUp as Float64Array)[r * N + j]) + 2 * u * (K + 2) * (magUp as Float64Array)[r * N + j] * (1 + mag[r * N + j]);
              else if (uCol >= 0) bound = eg * 1.2 * (1 + mag[r * N + uCol]) + 2 * u * (K + 2) * mag[r * N + uCol] * (1.2 * mag[r * N + gCol] + 1);
              bound += 4e-7 * Math.abs(ref.y[r * nOut + j]) + 1e-30;
              const err = Math.abs(got[r * nOut + j] - ref.y[r * nOut + j]);
              if (!(err <= bound))
                throw new Error(`E=${E} K=${K} N=${N} ${act}: y[${r}, ${j}] = ${got[r * nOut + j]}, reference ${ref.y[r * nOut + j]}, error ${err} > bound ${bound} (seed ${seed})`);
            }
          }
          for (const t of Object.values(tensors)) t?.dispose();
          y.dispose();
        }
      }
    });
  }

  test('argument errors name the argument', async () => {
    const x = Tensor.from(new Float32Array(6), [2, 3]);
    const offsets = Tensor.from(new Int32Array([0, 2]), [2]);
    await expect(groupedGemm(x, offsets, Tensor.from(new Float32Array(8), [1, 2, 4]))).rejects.toThrow(/Expected 4 columns to match w \(layout 'enk'\) for x/);
    await expect(groupedGemm(x, Tensor.from(new Int32Array([0, 3]), [2]), Tensor.from(new Float32Array(6), [1, 2, 3]))).rejects.toThrow(
      /Expected non-decreasing values within \[0, 2\] for offsets/,
    );
    await expect(groupedGemm(x, offsets, Tensor.from(new Float32Array(9), [1, 3, 3]), { activation: 'swiglu' })).rejects.toThrow(
      /Expected an even output dimension for activation 'swiglu' for w/,
    );
  });
});

describe('combine() matches the reference', () => {
  test('weighted sum in token order with shared output, skipped and dropped pairs', async () => {
    const rng = new Rng(seed ^ 0xc0b1);
    for (const [T, k, E, H] of [[1, 1, 8, 24], [17, 4, 60, 72], [256, 8, 257, 40]] as const) {
      const ids = randomIds(rng, T, k, E, true);
      const d = refDispatch(ids, T, k, E, 16, Math.ceil((T * k) / E) + 1);
      const y = roundTo(Float64Array.from({ length: d.rows * H }, () => rng.normal()), 'f32');
      const weights = roundTo(Float64Array.from({ length: T * k }, () => rng.uniform()), 'f32');
      const shared = roundTo(Float64Array.from({ length: T * H }, () => rng.normal()), 'f32');
      const ref = refCombine({ y, pairToRow: d.pairToRow, weights, tokens: T, k, hidden: H, shared });
      const out = await combine(Tensor.from(Float32Array.from(y), [d.rows, H]), Tensor.from(d.pairToRow, [T, k]), {
        weights: Tensor.from(Float32Array.from(weights), [T, k]),
        shared: Tensor.from(Float32Array.from(shared), [T, H]),
      });
      const got = out.toFloat32Sync();
      for (let i = 0; i < T * H; i++) {
        const t = Math.floor(i / H);
        let mag = Math.abs(shared[i]);
        for (let s = 0; s < k; s++) if (d.pairToRow[t * k + s] >= 0) mag += Math.abs(weights[t * k + s] * y[d.pairToRow[t * k + s] * H + (i % H)]);
        expect(Math.abs(got[i] - ref[i])).toBeLessThanOrEqual(2 ** -23 * (k + 2) * mag + 1e-30);
      }
    }
  });

  test('row indices out of range are refused', async () => {
    await expect(combine(Tensor.from(new Float32Array(4), [2, 2]), Tensor.from(new Int32Array([2]), [1, 1]))).rejects.toThrow(
      /Expected row indices in \[-1, 2\) for pairToRow but received "2 at flat index 0"/,
    );
  });
});
