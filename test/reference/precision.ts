/**
 * Rounding helpers for the 16-bit float formats, used by tests to prepare
 * already-rounded weights for the float64 reference.
 *
 * Every function takes and returns a float64 number; the result is the value
 * nearest to the input that the target format can represent, with ties going
 * to the value whose last significand bit is even (IEEE 754 roundTiesToEven).
 * Values past the largest finite magnitude become ±Infinity exactly as IEEE
 * rounding does (a value at or beyond max + half an ulp overflows). NaN stays
 * NaN and signed zeros keep their sign. Subnormals of the target format are
 * produced where the format has them.
 *
 * @packageDocumentation
 */

/** Description of a binary floating-point format for {@link roundToFormat}. */
export interface FloatFormat {
  /** Significand precision in bits, counting the implicit leading bit (f16: 11, bf16: 8, f32: 24). */
  precision: number;
  /** Smallest normal exponent (f16: -14, bf16 and f32: -126). */
  minExponent: number;
  /** Largest finite exponent (f16: 15, bf16 and f32: 127). */
  maxExponent: number;
}

/** IEEE 754 binary16. */
export const F16_FORMAT: FloatFormat = { precision: 11, minExponent: -14, maxExponent: 15 };
/** bfloat16 (the upper half of a binary32). */
export const BF16_FORMAT: FloatFormat = { precision: 8, minExponent: -126, maxExponent: 127 };
/** IEEE 754 binary32. */
export const F32_FORMAT: FloatFormat = { precision: 24, minExponent: -126, maxExponent: 127 };

/**
 * Rounds `x` to the nearest value representable in `format`, ties to even.
 *
 * The algorithm: find the binade exponent e with 2^e <= |x| < 2^(e+1)
 * (clamped below at the smallest normal exponent, which yields the subnormal
 * spacing), scale |x| by the ulp 2^(e - precision + 1) — an exact operation in
 * float64 for these formats — round the scaled value to an integer with ties to
 * even, scale back, and map anything beyond the largest finite value to
 * infinity.
 */
export function roundToFormat(x: number, format: FloatFormat): number {
  if (Number.isNaN(x) || x === 0 || !Number.isFinite(x)) return x;
  const sign = x < 0 ? -1 : 1;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  // Math.log2 may be off by one right next to a power of two; fix the binade.
  if (2 ** e > a) e -= 1;
  else if (2 ** (e + 1) <= a) e += 1;
  if (e < format.minExponent) e = format.minExponent;
  const ulp = 2 ** (e - format.precision + 1);
  const scaled = a / ulp; // exact: division by a power of two within range
  const floor = Math.floor(scaled);
  const frac = scaled - floor; // exact
  let integer: number;
  if (frac > 0.5) integer = floor + 1;
  else if (frac < 0.5) integer = floor;
  else integer = floor % 2 === 0 ? floor : floor + 1;
  const rounded = integer * ulp;
  const maxFinite = (2 - 2 ** (1 - format.precision)) * 2 ** format.maxExponent;
  if (rounded > maxFinite) return sign * Infinity;
  return sign * rounded;
}

/** Rounds a float64 to the nearest IEEE binary16 value (ties to even), returned as float64. */
export function roundF16(x: number): number {
  return roundToFormat(x, F16_FORMAT);
}

/** Rounds a float64 to the nearest bfloat16 value (ties to even), returned as float64. */
export function roundBf16(x: number): number {
  return roundToFormat(x, BF16_FORMAT);
}

/** Rounds a float64 to the nearest binary32 value (same as `Math.fround`). */
export function roundF32(x: number): number {
  return Math.fround(x);
}

/** Returns a new Float64Array with every element of `values` passed through `round`. */
export function roundArray(values: ArrayLike<number>, round: (x: number) => number): Float64Array {
  const out = new Float64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = round(values[i] as number);
  return out;
}

/** Element type names accepted by {@link roundTo}. */
export type RoundingDType = 'f64' | 'f32' | 'f16' | 'bf16';

/** Rounds every element of `values` to `dtype` (f64 copies unchanged). */
export function roundTo(values: ArrayLike<number>, dtype: RoundingDType): Float64Array {
  switch (dtype) {
    case 'f64':
      return Float64Array.from(values);
    case 'f32':
      return roundArray(values, roundF32);
    case 'f16':
      return roundArray(values, roundF16);
    case 'bf16':
      return roundArray(values, roundBf16);
  }
}
