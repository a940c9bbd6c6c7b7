/**
 * A small seedable pseudo-random generator for reproducible test inputs.
 *
 * The core is mulberry32 (a 32-bit state, 32-bit output generator: add a Weyl
 * constant, then mix with two multiply–xorshift rounds). It is not suitable for
 * anything but test data, which is all it is used for. Normal deviates use the
 * Box–Muller transform.
 *
 * @packageDocumentation
 */

/**
 * Returns a mulberry32 generator: each call yields a uniform float in [0, 1)
 * with 32 random bits.
 */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  };
}

/** Seedable random source with the distributions the tests need. */
export class Rng {
  private readonly next: () => number;
  private spareNormal: number | undefined;

  /** Creates a generator; equal seeds give equal streams. */
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }

  /** Uniform float in [lo, hi). */
  uniform(lo = 0, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }

  /** Normal deviate with the given mean and standard deviation (Box–Muller). */
  normal(mean = 0, std = 1): number {
    if (this.spareNormal !== undefined) {
      const z = this.spareNormal;
      this.spareNormal = undefined;
      return mean + std * z;
    }
    let u = this.next();
    while (u <= 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spareNormal = r * Math.sin(2 * Math.PI * v);
    return mean + std * r * Math.cos(2 * Math.PI * v);
  }

  /** Uniform integer in [lo, hi) (hi exclusive). */
  int(lo: number, hi: number): number {
    if (!(hi > lo)) throw new Error(`Rng.int: empty range [${lo}, ${hi})`);
    return lo + Math.floor(this.next() * (hi - lo));
  }

  /** True with probability `p`. */
  bool(p = 0.5): boolean {
    return this.next() < p;
  }

  /** One element of a non-empty array, uniformly. */
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('Rng.pick: empty array');
    return items[this.int(0, items.length)] as T;
  }

  /** Shuffles `items` in place (Fisher–Yates) and returns it. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(0, i + 1);
      const tmp = items[i] as T;
      items[i] = items[j] as T;
      items[j] = tmp;
    }
    return items;
  }

  /** `n` uniform floats in [lo, hi). */
  uniformArray(n: number, lo = 0, hi = 1): Float64Array {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = this.uniform(lo, hi);
    return out;
  }

  /** `n` normal deviates. */
  normalArray(n: number, mean = 0, std = 1): Float64Array {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal(mean, std);
    return out;
  }

  /** `n` uniform integers in [lo, hi). */
  intArray(n: number, lo: number, hi: number): Int32Array {
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(lo, hi);
    return out;
  }
}

/** Options of {@link awkwardMatrix}. */
export interface AwkwardOptions {
  /** Standard deviation of the underlying normal values (default 1.5). */
  std?: number | undefined;
  /**
   * Values are multiples of this quantum (default 2^-6), so that two values
   * are either exactly equal or at least a quantum apart; this keeps float32
   * kernels and the float64 reference on the same side of every comparison
   * except for deliberate exact ties. Use 0 for unquantised values.
   */
  quantum?: number | undefined;
  /** Values are clamped to [-maxAbs, maxAbs] (default 6) so sigmoid and exp do not saturate. */
  maxAbs?: number | undefined;
  /** Probability that an element copies an earlier element of its row, creating an exact tie (default 0.15). */
  tieFraction?: number | undefined;
  /** Probability that a row is a copy of an earlier row, creating cross-token ties (default 0.05). */
  duplicateRowFraction?: number | undefined;
  /** Probability that a row is constant, so every column ties (default 0.02). */
  constantRowFraction?: number | undefined;
  /** Probability that an element is replaced by ±maxAbs (default 0.02). */
  extremeFraction?: number | undefined;
}

/**
 * Makes a [rows, cols] matrix of "awkward" values for routing tests: quantised
 * normal values with deliberate exact ties inside rows, duplicated rows,
 * constant rows and a few extreme values. Every value is exactly representable
 * in float32; pass the result through `roundTo(..., 'bf16')` if the test needs
 * bf16 logits.
 */
export function awkwardMatrix(rng: Rng, rows: number, cols: number, options: AwkwardOptions = {}): Float64Array {
  const std = options.std ?? 1.5;
  const quantum = options.quantum ?? 2 ** -6;
  const maxAbs = options.maxAbs ?? 6;
  const tieFraction = options.tieFraction ?? 0.15;
  const duplicateRowFraction = options.duplicateRowFraction ?? 0.05;
  const constantRowFraction = options.constantRowFraction ?? 0.02;
  const extremeFraction = options.extremeFraction ?? 0.02;
  const quantise = (v: number): number => {
    const clamped = Math.max(-maxAbs, Math.min(maxAbs, v));
    const q = quantum > 0 ? Math.round(clamped / quantum) * quantum : clamped;
    return Math.fround(q);
  };
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    if (r > 0 && rng.bool(duplicateRowFraction)) {
      const src = rng.int(0, r) * cols;
      for (let c = 0; c < cols; c++) out[base + c] = out[src + c] as number;
      continue;
    }
    if (rng.bool(constantRowFraction)) {
      const v = quantise(rng.normal(0, std));
      for (let c = 0; c < cols; c++) out[base + c] = v;
      continue;
    }
    for (let c = 0; c < cols; c++) {
      let v: number;
      if (c > 0 && rng.bool(tieFraction)) v = out[base + rng.int(0, c)] as number;
      else if (rng.bool(extremeFraction)) v = quantise(rng.bool() ? maxAbs : -maxAbs);
      else v = quantise(rng.normal(0, std));
      out[base + c] = v;
    }
  }
  return out;
}

/** Returns `n` normal values rounded to float32 (a plain, tie-free-in-practice input). */
export function float32Normals(rng: Rng, n: number, std = 1): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.fround(rng.normal(0, std));
  return out;
}
