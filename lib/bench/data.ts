/**
 * Cheap random-looking tensor data for benchmarks: a short random pattern tiled over the
 * array (a memory copy per doubling), so that gigabytes of weights take seconds, not
 * minutes. The values only need to be ordinary numbers (no NaN, no subnormals).
 */
import { DType } from '../dtype';
import { makeRng } from './routing';

// NOTE: a prime period, so consecutive rows of any width start at different pattern phases.
const PERIOD = 8191;

/** f32 → bf16 bits, rounding to nearest even (finite inputs). */
export function bf16Bits(x: number, f: Float32Array, u: Uint32Array): number {
  f[0] = x;
  const b = u[0];
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Rounds half-way cases to the even neighbour (v >= 0). */
function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
}

/** f32 → f16 bits, rounding to nearest even; subnormals kept, overflow to ±inf, NaN to 0x7e00. */
export function f16Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  // NOTE: one f16 subnormal step is 2^-24; a carry out of the subnormal range gives the
  // smallest normal's bits (0x0400) by itself.
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24);
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--; // Math.log2 may round across a power of two
  else if (2 ** (e + 1) <= a) e++;
  let m = roundHalfEven((a / 2 ** e - 1) * 1024); // exact in float64 for f32 inputs
  if (m === 1024) {
    m = 0;
    e++;
  }
  if (e > 15) return sign | 0x7c00; // includes a = Infinity
  return sign | ((e + 15) << 10) | m;
}

/** n values uniform in [-scale, scale) as f32 (Float32Array) or f16/bf16 bits (Uint16Array). */
export function patterned(n: number, dtype: DType, scale: number, seed: number): Float32Array | Uint16Array {
  const rng = makeRng(seed);
  const base = new Float32Array(Math.min(n, PERIOD));
  for (let i = 0; i < base.length; i++) base[i] = (rng() * 2 - 1) * scale;
  let out: Float32Array | Uint16Array;
  if (dtype === 'f32') {
    out = new Float32Array(n);
    out.set(base);
  } else if (dtype === 'bf16' || dtype === 'f16') {
    out = new Uint16Array(n);
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let i = 0; i < base.length; i++) out[i] = dtype === 'bf16' ? bf16Bits(base[i], f, u) : f16Bits(base[i]);
  } else {
    throw new Error(`unreachable: patterned data of dtype ${dtype}`);
  }
  for (let filled = base.length; filled < n; filled *= 2) out.copyWithin(filled, 0, Math.min(filled, n - filled));
  return out;
}
