/**
 * The bench's data helpers: f16/bf16 bit conversion (checked against the float64
 * reference rounding and the native conversion) and the tiled pattern.
 */
import { Tensor } from '../../lib';
import { bf16Bits, f16Bits, patterned } from '../../lib/bench/data';
import { testSeed } from '../helpers';
import { roundBf16, roundF16 } from '../reference/precision';
import { Rng } from '../reference/rng';

/** The float64 value of f16 bits (independent of the code under test). */
function decodeF16(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const e = (bits >> 10) & 0x1f;
  const m = bits & 0x3ff;
  if (e === 0x1f) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * 2 ** -24;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

const seed = testSeed('bench-data');

/** f32 values over the whole f16 range and beyond: normals, subnormals, ties, overflow. */
function values(rng: Rng): number[] {
  const out: number[] = [0, -0, 2 ** -24, 2 ** -25, 3 * 2 ** -26, 2 ** -14, 2 ** -14 - 2 ** -25, 65504, 65519.99, 65520, -65520, 1e10, Infinity, -Infinity];
  // Exact ties: f16 values plus half a step, both parities of the last bit.
  for (const base of [1, 1 + 2 ** -10, 1000, 1001, 2 ** -20, 3 * 2 ** -24]) {
    const step = base >= 2 ** -14 ? 2 ** (Math.floor(Math.log2(base)) - 10) : 2 ** -24;
    out.push(base + step / 2, -(base + step / 2));
  }
  for (let i = 0; i < 20000; i++) out.push(Math.fround((rng.uniform(0, 1) < 0.5 ? -1 : 1) * 2 ** rng.uniform(-27, 17)));
  return out;
}

describe('bench data', () => {
  test('f16Bits rounds like the float64 reference and the native conversion', () => {
    const rng = new Rng(seed ^ 0xf16);
    const xs = values(rng);
    const native = Tensor.from(Float32Array.from(xs), [xs.length], 'f16');
    const nativeBits = native.toArraySync() as Uint16Array;
    for (let i = 0; i < xs.length; i++) {
      const bits = f16Bits(xs[i]);
      const want = roundF16(xs[i]);
      const got = decodeF16(bits);
      if (!(Object.is(got, want) || got === want) || bits !== nativeBits[i])
        throw new Error(`f16Bits(${xs[i]}) = 0x${bits.toString(16)} (${got}); reference ${want}, native 0x${nativeBits[i].toString(16)} (seed ${seed})`);
    }
    expect(f16Bits(NaN)).toBe(0x7e00);
    native.dispose();
  });

  test('bf16Bits rounds like the float64 reference', () => {
    const rng = new Rng(seed ^ 0xbf16);
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let i = 0; i < 20000; i++) {
      const x = Math.fround((rng.uniform(0, 1) < 0.5 ? -1 : 1) * 2 ** rng.uniform(-60, 60));
      const bits = bf16Bits(x, f, u);
      const back = new Float32Array(new Uint32Array([bits << 16]).buffer)[0];
      if (back !== roundBf16(x)) throw new Error(`bf16Bits(${x}) = ${back}, reference ${roundBf16(x)} (seed ${seed})`);
    }
  });

  test('patterned data: the dtype asked for, values in range, the same seed gives the same data', () => {
    for (const dtype of ['f32', 'bf16', 'f16'] as const) {
      const n = 3 * 8191 + 17; // longer than the pattern, not a multiple of it
      const a = patterned(n, dtype, 0.25, 7);
      const b = patterned(n, dtype, 0.25, 7);
      expect(a.length).toBe(n);
      expect(a instanceof (dtype === 'f32' ? Float32Array : Uint16Array)).toBe(true);
      expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
      const t = Tensor.from(a, [n], dtype);
      const v = t.toFloat32Sync();
      t.dispose();
      const distinct = new Set<number>();
      for (let i = 0; i < n; i++) {
        if (!(Math.abs(v[i]) <= 0.25)) throw new Error(`${dtype}: value ${v[i]} at ${i} outside [-0.25, 0.25]`);
        distinct.add(v[i]);
        if (i >= 8191 && v[i] !== v[i - 8191]) throw new Error(`${dtype}: element ${i} does not repeat the pattern`);
      }
      expect(distinct.size).toBeGreaterThan(1000);
    }
  });
});
