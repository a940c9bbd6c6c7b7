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

/** f32 → f16 bits for |x| < 65504; values below the normal range flush to ±0. */
export function f16Bits(x: number): number {
  const sign = x < 0 ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a < 6.103515625e-5) return sign;
  let e = Math.floor(Math.log2(a));
  let m = Math.round((a / Math.pow(2, e) - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e++;
  }
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
